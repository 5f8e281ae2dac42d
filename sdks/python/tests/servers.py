"""Real processes for the tests: redis-server and `tiercache serve` on free ports."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import tiercache

ROOT = Path(__file__).resolve().parents[3]

CONFIG = (ROOT / "tests/conformance/server.toml").read_text()
"""The server config the SDK test kits share (dynamic namespaces on)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tiercache_bin() -> str:
    """The server binary: $TIERCACHE_BIN, else the debug build of the shared target dir."""
    if path := os.environ.get("TIERCACHE_BIN"):
        return path
    target = os.environ.get("CARGO_TARGET_DIR") or str(Path.home() / ".cache/tiercache-target")
    path = str(Path(target) / "debug" / "tiercache")
    if not os.access(path, os.X_OK):
        raise RuntimeError(
            f"no server binary at {path}; build it with: cargo build -p tiercache-cli "
            "(or set TIERCACHE_BIN)"
        )
    return path


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within 30s")


class Redis:
    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is missing: apt-get install -y redis-server")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.log = workdir / f"redis-{self.port}.log"
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
            ],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        wait_port(self.port, self.proc, "redis-server", self.log)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class Server:
    """One `tiercache serve` process; memory-only without ``redis_url``."""

    def __init__(
        self,
        workdir: Path,
        redis_url: str | None,
        *,
        dynamic: bool = True,
        extra_config: str = "",
        health_client: Callable[[str], tiercache.Client] | None = None,
    ) -> None:
        """``extra_config`` is TOML tables appended to the shared config ([tls], [auth]…);
        ``health_client`` makes the client the start-up health check uses (one with TLS for a
        TLS server)."""
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        config = workdir / f"tiercache-{self.port}.toml"
        config.write_text(
            CONFIG.replace(
                "dynamic_namespaces = true", f"dynamic_namespaces = {str(dynamic).lower()}", 1
            )
            + extra_config
        )
        self.log = workdir / f"tiercache-{self.port}.log"
        args = [tiercache_bin(), "serve", "--config", str(config), "--listen", self.address]
        if redis_url:
            args += ["--redis-url", redis_url]
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env.setdefault("RUST_LOG", "warn")
        self.proc = subprocess.Popen(
            args, stdout=self.log.open("wb"), stderr=subprocess.STDOUT, env=env
        )
        wait_port(self.port, self.proc, "tiercache serve", self.log)
        make = health_client or (lambda address: tiercache.Client(address, timeout=5))
        with make(self.address) as c:
            deadline = time.monotonic() + 30
            while c.health() != tiercache.HealthStatus.SERVING:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server on {self.address} not serving")
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Cluster:
    """What the suite runs against: one Redis, two replicas on it, one memory-only server."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="tiercache-py-"))
        self.redis = Redis(self.workdir)
        self.replicas = [Server(self.workdir, self.redis.url) for _ in range(2)]
        self.memory = Server(self.workdir, None)

    def stop(self) -> None:
        for s in [*self.replicas, self.memory]:
            s.stop()
        self.redis.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
