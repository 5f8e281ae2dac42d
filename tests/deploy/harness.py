"""Helpers of the deploy checks: render the chart, run the image with runc, probe gRPC health.

Run by `make deploy-check` (pytest in the venv of scripts/setup-deploy.sh), as root: runc needs it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "tiercache"
IMAGE_DIR = Path(os.environ.get("TIERCACHE_IMAGE_DIR", ROOT / "dist" / "image"))
OCI_ARCHIVE = IMAGE_DIR / "tiercache.oci.tar"
RELEASE = "rel"
NAMESPACE = "cache"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the chart -----------------------------------------------------------------------------------


# The one value the chart makes you choose: it refuses to render without auth (docs/deploy.md,
# "Security"). The "default" value set is the defaults plus that choice, made the insecure way.
INSECURE = {"auth": {"allowInsecure": True}}


def value_sets() -> dict[str, dict]:
    """The chart's value sets: the defaults (with auth.allowInsecure, the one required choice)
    and every helm/tiercache/ci/*-values.yaml."""
    sets = {"default": INSECURE}
    for path in sorted((CHART / "ci").glob("*-values.yaml")):
        sets[path.name.removesuffix("-values.yaml")] = yaml.safe_load(path.read_text()) or {}
    return sets


def render(values: dict | None = None) -> list[dict]:
    """Renders the chart as an install would; returns every manifest, hooks included."""
    import helm_python as helm

    with helm.Chart.load(str(CHART)) as chart:
        out = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def find(docs: list[dict], kind: str, name: str | None = None) -> dict:
    hits = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, got {len(hits)}"
    return hits[0]


# --- gRPC health, as the kubelet probes it -------------------------------------------------------


@dataclass
class TlsClient:
    """What a test client needs to reach a TLS pod: the CA, the name on the server certificate,
    and (mTLS) a client certificate and key, all PEM."""

    ca: str
    server_name: str
    cert: str | None = None
    key: str | None = None

    def channel(self, port: int) -> grpc.Channel:
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.ca.encode(),
            private_key=self.key.encode() if self.key else None,
            certificate_chain=self.cert.encode() if self.cert else None,
        )
        return grpc.secure_channel(f"127.0.0.1:{port}", creds,
                                   options=[("grpc.ssl_target_name_override", self.server_name)])


def channel(port: int, tls: TlsClient | None = None) -> grpc.Channel:
    return tls.channel(port) if tls else grpc.insecure_channel(f"127.0.0.1:{port}")


def grpc_probe(port: int, service: str, timeout: float, tls: TlsClient | None = None) -> str:
    """One kubelet gRPC probe: a new connection, one Health/Check. Returns the status name, or
    the error (the kubelet counts both a non-SERVING answer and an error as a failure). With
    `tls`, the same check over TLS (what the exec probes of a TLS pod run)."""
    with channel(port, tls) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as e:
            return f"error:{e.code().name}"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def exec_probe(container: Container, command: list[str], timeout: float) -> str:
    """One kubelet exec probe: the command in the container; exit 0 is a success."""
    try:
        r = container.exec(*command, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "error:timeout"
    return "SERVING" if r.returncode == 0 else f"exit {r.returncode}: {r.stdout.strip()} {r.stderr.strip()}"


def run_probe(name: str, probe: dict, container: Container | None = None) -> float:
    """Runs a rendered probe (startupProbe and friends) the kubelet's way: every periodSeconds,
    succeeding at the first SERVING (a gRPC probe) or exit 0 (an exec probe, run in `container`),
    failing after failureThreshold failures. Returns seconds."""
    period = probe.get("periodSeconds", 10)
    timeout = probe.get("timeoutSeconds", 1)
    threshold = probe.get("failureThreshold", 3)
    if "exec" in probe:
        assert container is not None, f"{name} is an exec probe: pass the container"
        where = " ".join(probe["exec"]["command"])

        def once() -> str:
            return exec_probe(container, probe["exec"]["command"], timeout)
    else:
        port = probe["grpc"]["port"]
        service = probe["grpc"].get("service", "")
        where = f"{port}/{service!r}"

        def once() -> str:
            return grpc_probe(port, service, timeout)
    start = time.monotonic()
    failures, last = 0, ""
    while True:
        last = once()
        if last == "SERVING":
            return time.monotonic() - start
        failures += 1
        if failures >= threshold:
            log = f"\n{container.output()[-3000:]}" if container is not None else ""
            raise AssertionError(f"{name} failed {failures} times on {where}: {last}{log}")
        time.sleep(period)


def make_certs(folder: Path, names: list[str]) -> dict[str, str]:
    """A CA and a certificate it signed for `names` (DNS names, and 127.0.0.1), made with the
    openssl CLI: {"ca.crt", "tls.crt", "tls.key"} as PEM text, like a cert-manager Secret. The
    certificate has no extended key usage, so it serves and (for the probes under mTLS) is a
    client certificate too, like cert-manager's default usages."""
    folder.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=tiercache test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    sans = ",".join([f"DNS:{n}" for n in names] + ["IP:127.0.0.1"])
    (folder / "ext.cnf").write_text(f"subjectAltName={sans}\nbasicConstraints=CA:FALSE\n")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "tls.key",
            "-out", "tls.csr", "-subj", f"/CN={names[0]}")
    openssl("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "tls.crt", "-days", "2", "-extfile", "ext.cnf")
    return {name: (folder / name).read_text() for name in ("ca.crt", "tls.crt", "tls.key")}


# --- the image, run with runc --------------------------------------------------------------------


@dataclass
class Image:
    """The image archive unpacked once into a runc bundle; containers share its read-only rootfs."""

    rootfs: Path
    config: dict
    workdir: Path

    @classmethod
    def unpack(cls) -> Image:
        assert OCI_ARCHIVE.exists(), f"no image at {OCI_ARCHIVE}: run `make image` first"
        work = Path(tempfile.mkdtemp(prefix="tiercache-runc-", dir="/tmp"))
        layout = work / "oci"
        subprocess.run(
            ["skopeo", "copy", "--quiet", f"oci-archive:{OCI_ARCHIVE}", f"oci:{layout}:image"],
            check=True,
        )
        subprocess.run(
            ["umoci", "unpack", "--image", f"{layout}:image", str(work / "bundle")],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        config = json.loads((work / "bundle" / "config.json").read_text())
        return cls(rootfs=work / "bundle" / "rootfs", config=config, workdir=work)

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class ContainerSpec:
    """What a pod's container says: args (with the image's entrypoint), env, mounts, user."""

    args: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    # (host directory, container path): bind-mounted read-only, like a ConfigMap volume.
    mounts: list[tuple[Path, str]] = field(default_factory=list)
    uid: int = 65532
    gid: int = 65532


class Container:
    """One container run with runc in the foreground: host network, read-only root, the given
    uid, every capability dropped, no-new-privileges. runc's exit code is the container's."""

    def __init__(self, image: Image, spec: ContainerSpec):
        self.id = f"tiercache-{uuid.uuid4().hex[:12]}"
        self.bundle = image.workdir / self.id
        self.bundle.mkdir()
        config = json.loads(json.dumps(image.config))
        process = config["process"]
        if spec.args is not None:
            # Kubernetes `args` replace the image's Cmd and keep its Entrypoint.
            process["args"] = ["tiercache", *spec.args]
        env = dict(e.split("=", 1) for e in process.get("env", []))
        env.update(spec.env)
        process["env"] = [f"{k}={v}" for k, v in env.items()]
        process["user"] = {"uid": spec.uid, "gid": spec.gid}
        process["terminal"] = False
        process["noNewPrivileges"] = True
        process["capabilities"] = {k: [] for k in ("bounding", "effective", "inheritable", "permitted", "ambient")}
        config["root"] = {"path": str(image.rootfs), "readonly": True}
        config["hostname"] = self.id
        linux = config.setdefault("linux", {})
        # Host network: drop the network namespace, keep the others.
        linux["namespaces"] = [n for n in linux.get("namespaces", []) if n["type"] != "network"]
        for host_dir, path in spec.mounts:
            config["mounts"].append(
                {"destination": path, "type": "bind", "source": str(host_dir), "options": ["rbind", "ro"]}
            )
        # The loader and the resolver read /etc/hosts and resolv.conf; host network uses the host's.
        for f in ("/etc/hosts", "/etc/resolv.conf"):
            config["mounts"].append({"destination": f, "type": "bind", "source": f, "options": ["rbind", "ro"]})
        (self.bundle / "config.json").write_text(json.dumps(config, indent=1))
        self.log = self.bundle / "output.log"
        self._log = open(self.log, "wb")
        self.proc = subprocess.Popen(
            ["runc", "run", "--bundle", str(self.bundle), self.id],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def exec(self, *args: str, timeout: float = 30, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Runs a command in the container as its user (like a kubelet exec hook)."""
        extra = [f"--env={k}={v}" for k, v in (env or {}).items()]
        return subprocess.run(
            ["runc", "exec", "--user", "65532:65532", "--no-new-privs", *extra, self.id, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def signal(self, name: str) -> None:
        subprocess.run(["runc", "kill", self.id, name], check=True)

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def output(self) -> str:
        self._log.flush()
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.running():
            subprocess.run(["runc", "kill", self.id, "KILL"], capture_output=True)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        subprocess.run(["runc", "delete", "--force", self.id], capture_output=True)
        self._log.close()


def wait_for(what: str, check, timeout: float = 10.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def redis_server(password: str | None = None) -> tuple[subprocess.Popen, int]:
    """A redis-server on a free port (never 6379), for the external-Redis value sets."""
    port = free_port()
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    if password:
        cmd += ["--requirepass", password]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def up() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            return False

    wait_for("redis-server", up)
    return proc, port
