"""The kubelet check: the chart and the image fit each other.

For each value set: render the chart, take the server Deployment's container as rendered (image,
args, env with its Secret references resolved, the ConfigMap written out and mounted where the
pod mounts it, ports, security context), run the built image with runc exactly that way, run the
startup, liveness and readiness probes as the kubelet does (a gRPC Health/Check on the probe's
port and service, every periodSeconds, up to failureThreshold), then terminate it as a rollout
does: the preStop hook, SIGTERM, and the pod's grace period. Readiness must turn NOT_SERVING while
the process still runs and drains, and the drain must end in a clean exit within the grace period.
"""

import base64
import hashlib
import json
import subprocess
import threading
import time
import urllib.error
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness import (
    Container,
    ContainerSpec,
    TlsClient,
    channel,
    find,
    free_port,
    grpc_probe,
    make_certs,
    redis_server,
    render,
    run_probe,
    value_sets,
    wait_for,
)

SETS = value_sets()
PASSWORD = SETS["secured"]["redis"]["password"]
USER = SETS["secured"]["redis"]["username"]


def merge(base: dict, over: dict) -> dict:
    out = json.loads(json.dumps(base))
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def container_spec(docs: list[dict], secrets: dict, tmp_path, image) -> tuple[ContainerSpec, dict, dict]:
    """The runc spec of the server container exactly as the rendered pod describes it."""
    pod = find(docs, "Deployment", "rel-tiercache")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    # The pod runs the image we built.
    labels = image.config.get("annotations", {})
    version = labels.get("org.opencontainers.image.version")
    assert c["image"] == f"tiercache:{version}", (c["image"], version)
    assert "command" not in c, "the pod keeps the image's entrypoint"
    # What runc enforces must be what the pod asks for.
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
    rendered_secrets = {
        d["metadata"]["name"]: {
            **d.get("stringData", {}),
            **{k: base64.b64decode(v).decode() for k, v in d.get("data", {}).items()},
        }
        for d in docs
        if d["kind"] == "Secret"
    }
    all_secrets = {**secrets, **rendered_secrets}
    env = {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = all_secrets[ref["name"]][ref["key"]]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = []
    for m in c["volumeMounts"]:
        folder = tmp_path / m["name"]
        folder.mkdir()
        volume = volumes[m["name"]]
        if "secret" in volume:
            # A Secret volume: the listed keys of the Secret, each at its path.
            data = all_secrets[volume["secret"]["secretName"]]
            for item in volume["secret"]["items"]:
                (folder / item["path"]).write_text(data[item["key"]])
                # The pod's fsGroup owns Secret files; here the container's user reads them.
                (folder / item["path"]).chmod(0o444)
        else:
            cm = find(docs, "ConfigMap", volume["configMap"]["name"])
            for key, text in cm["data"].items():
                (folder / key).write_text(text)
        folder.chmod(0o755)
        assert m.get("readOnly")
        mounts.append((folder, m["mountPath"]))
    spec = ContainerSpec(
        args=c["args"],
        env=env,
        mounts=mounts,
        uid=sc.get("runAsUser", pod["securityContext"]["runAsUser"]),
        gid=sc.get("runAsGroup", pod["securityContext"]["runAsGroup"]),
    )
    return spec, c, pod


class ReadinessWatch:
    """A held connection watching the readiness probe's health service, recording each status
    with whether the container was still running when it arrived."""

    def __init__(self, port: int, service: str, container: Container, tls: TlsClient | None = None):
        self.channel = channel(port, tls)
        stub = health_pb2_grpc.HealthStub(self.channel)
        self.call = stub.Watch(health_pb2.HealthCheckRequest(service=service))
        self.seen: list[tuple[float, str, bool]] = []
        self.thread = threading.Thread(target=self._run, args=(container,), daemon=True)
        self.thread.start()

    def _run(self, container):
        try:
            for reply in self.call:
                name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                self.seen.append((time.monotonic(), name, container.running()))
        except grpc.RpcError:
            pass

    def statuses(self) -> list[str]:
        return [s for _, s, _ in self.seen]

    def close(self):
        self.call.cancel()
        self.thread.join(timeout=5)
        self.channel.close()


# Every value set: each renders a different server config, and the server rejects unknown fields.
KUBELET_SETS = ["default", "ha", "secured", "external-redis", "memory-only"]


# The client token of each value set with auth: (principal, token); the Secret tokens files and
# the token_sha256 of the values hold their SHA-256.
TOKENS = {"secured": ("checkout", "checkout-token"), "ha": ("users-api", "users-api-token"),
          "external-redis": ("catalog", "foo")}
# sha256("test"): config.telemetry.adminTokenSha256 of the secured set.
METRICS_TOKEN = "test"


def tls_flags(probe: dict) -> list[str]:
    """The --tls-* flags of a rendered exec probe, for the test's own CLI calls."""
    cmd = probe["exec"]["command"]
    i = cmd.index("--tls-ca")
    return cmd[i:]


@pytest.mark.parametrize("name", KUBELET_SETS)
def test_kubelet_runs_the_rendered_pod(image, name, tmp_path):
    grpc_port, admin_port = free_port(), free_port()
    over = {"server": {"grpcPort": grpc_port, "adminPort": admin_port, "preStopDelaySeconds": 2,
                       "shutdownGraceSeconds": 5}}
    secrets, redis, redis_auth = {}, None, []
    values_in = SETS[name]
    if values_in.get("tls", {}).get("enabled"):
        # A cert-manager style Secret made at test time, for the name the probes check.
        server_name = values_in["tls"].get("serverName") or "rel-tiercache.cache.svc"
        secrets[values_in["tls"]["secretName"]] = make_certs(tmp_path / "certs", [server_name])
    if name in TOKENS and values_in["auth"].get("tokensSecret"):
        principal, token = TOKENS[name]
        secrets[values_in["auth"]["tokensSecret"]] = {
            values_in["auth"].get("tokensSecretKey", "tokens"):
                f"# made by the test\n{principal} {hashlib.sha256(token.encode()).hexdigest()}\n"}
    if name == "secured":
        # The Redis ACL user of the value set, with its password: the password reaches the server
        # only through the chart's Secret (TIERCACHE_REDIS_PASSWORD).
        redis, port = redis_server()
        subprocess.run(["redis-cli", "-p", str(port), "ACL", "SETUSER", USER, "on", f">{PASSWORD}",
                        "~*", "&*", "+@all"], check=True, capture_output=True)
        subprocess.run(["redis-cli", "-p", str(port), "ACL", "SETUSER", "default", "off"],
                       check=True, capture_output=True)
        over["redis"] = {"url": f"redis://127.0.0.1:{port}"}
        redis_auth = ["--user", USER, "--pass", PASSWORD]
    elif name == "external-redis":
        redis, port = redis_server()
        ext = SETS[name]["redis"]
        secrets[ext["existingSecret"]] = {ext["existingSecretKey"]: f"redis://127.0.0.1:{port}"}
    elif name in ("default", "ha"):
        # The in-chart dev Redis and the cluster's Redis are not reachable here: a local one
        # stands in through redis.url (which replaces the dev Redis in the default set); for ha
        # without its TLS and ACL user (tests/tests of the server cover Redis TLS).
        redis, port = redis_server()
        over["redis"] = {"url": f"redis://127.0.0.1:{port}"}
        if name == "ha":
            over["redis"].update(username="", passwordSecret="", tls={"secretName": ""})
            # Nothing listens there; the exporter must not keep the server from starting.
            over["config"] = {"telemetry": {"otlpEndpoint": f"http://127.0.0.1:{free_port()}"}}
    values = merge(SETS[name], over)
    docs = render(values)
    spec, c, pod = container_spec(docs, secrets, tmp_path, image)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    tls = None
    if "exec" in c["startupProbe"]:
        assert grpc_port == int(c["startupProbe"]["exec"]["command"][3].rsplit(":", 1)[1])
        certs = secrets[values["tls"]["secretName"]]
        flags = dict(zip(tls_flags(c["readinessProbe"])[::2], tls_flags(c["readinessProbe"])[1::2]))
        mtls = "--tls-cert" in flags
        tls = TlsClient(ca=certs["ca.crt"], server_name=flags["--tls-server-name"],
                        cert=certs["tls.crt"] if mtls else None, key=certs["tls.key"] if mtls else None)
        health_service = ""
    else:
        assert ports["grpc"] == grpc_port == c["startupProbe"]["grpc"]["port"]
        health_service = c["readinessProbe"]["grpc"]["service"]
    grace = pod["terminationGracePeriodSeconds"]
    container = Container(image, spec)
    watch = None
    try:
        # Start-up, then liveness and readiness, each the kubelet's way.
        started = run_probe("startupProbe", c["startupProbe"], container)
        run_probe("livenessProbe", c["livenessProbe"], container)
        run_probe("readinessProbe", c["readinessProbe"], container)
        assert started < 10, f"startup took {started:.1f}s"
        # It serves: a Set and a Get through the image's own client (with the set's token and
        # TLS flags when it has them).
        if tls:
            addr = f"https://127.0.0.1:{grpc_port}"
            conn = ["--addr", addr, *tls_flags(c["readinessProbe"])]
        else:
            conn = ["--addr", f"http://127.0.0.1:{grpc_port}"]
        env = {"TIERCACHE_TOKEN": TOKENS[name][1]} if name in TOKENS else {}
        if env:
            # Without the token: refused (UNAUTHENTICATED is a server error, exit 3).
            r = container.exec("tiercache", "get", "kubelet:k", *conn)
            assert r.returncode == 3, r.stdout + r.stderr
        r = container.exec("tiercache", "set", "kubelet:k", name, *conn, env=env)
        assert r.returncode == 0, r.stderr + container.output()
        r = container.exec("tiercache", "get", "kubelet:k", *conn, env=env)
        assert (r.returncode, r.stdout.strip()) == (0, name), r.stderr
        if redis is not None:
            # The value reached the shared tier: the Redis URL and credentials (from Secrets) work.
            keys = subprocess.run(["redis-cli", "-p", str(port), *redis_auth, "--no-auth-warning", "DBSIZE"],
                                  capture_output=True, text=True, check=True).stdout
            assert int(keys) > 0, keys
            assert grpc_probe(grpc_port, "tiercache.redis", 2, tls) == "SERVING"
        if "metrics" in ports:
            url = f"http://127.0.0.1:{ports['metrics']}/metrics"
            headers = {}
            if values.get("config", {}).get("telemetry", {}).get("adminTokenSha256"):
                with pytest.raises(urllib.error.HTTPError) as e:
                    urllib.request.urlopen(url, timeout=5)
                assert e.value.code == 401
                headers = {"Authorization": f"Bearer {METRICS_TOKEN}"}
            body = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5).read()
            assert b"tiercache" in body
        else:
            assert json.loads(json.dumps(values))["config"]["telemetry"]["metrics"] is False

        # Termination as in a rollout: preStop first, then SIGTERM, within the grace period.
        watch = ReadinessWatch(grpc_port, health_service, container, tls)
        wait_for("readiness watch", lambda: watch.statuses() == ["SERVING"])
        t0 = time.monotonic()
        pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
        r = container.exec(*pre_stop, timeout=grace)
        assert r.returncode == 0, r.stderr
        assert time.monotonic() - t0 >= values["server"]["preStopDelaySeconds"]
        # Endpoints had the preStop delay to drop the pod; it still served all along.
        assert watch.statuses() == ["SERVING"]
        assert grpc_probe(grpc_port, health_service, 2, tls) == "SERVING"
        t_term = time.monotonic()
        container.signal("TERM")
        # Readiness drops first: NOT_SERVING while the process still runs.
        wait_for("readiness NOT_SERVING", lambda: "NOT_SERVING" in watch.statuses(), timeout=5)
        t_unready, status, running = watch.seen[-1]
        assert (status, running) == ("NOT_SERVING", True)
        # A new readiness probe fails now (NOT_SERVING or refused): the kubelet marks it unready.
        if tls:
            r = container.exec(*c["readinessProbe"]["exec"]["command"], timeout=5)
            assert r.returncode != 0, r.stdout
        else:
            assert grpc_probe(grpc_port, health_service, 1) != "SERVING"
        # The drain waits for the in-flight call (the watch stream itself)...
        time.sleep(1)
        assert container.running(), "the server must drain in-flight calls, not drop them"
        # ...and ends as soon as it is done: a clean exit well within the grace period.
        t_close = time.monotonic()
        watch.close()
        watch = None
        code = container.wait(timeout=max(1, grace - (time.monotonic() - t0)))
        t_exit = time.monotonic()
        total = t_exit - t0
        out = container.output()
        assert code == 0, out
        assert total < grace, f"took {total:.1f}s of a {grace}s grace period"
        assert "stopped" in out and "grace period passed" not in out, out
        print(f"\n{name}: startup probe ok after {started:.2f}s; preStop {t_term - t0:.2f}s; "
              f"NOT_SERVING {1000 * (t_unready - t_term):.0f}ms after SIGTERM; exit {code} "
              f"{1000 * (t_exit - t_close):.0f}ms after the last call ended; {total:.2f}s of {grace}s grace")
    finally:
        if watch is not None:
            watch.close()
        container.stop()
        if redis is not None:
            redis.terminate()
            redis.wait()
