"""The examples run as a user would run them, against a real replica."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from servers import Cluster

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(cluster: Cluster, script: str) -> str:
    env = dict(os.environ, TIERCACHE_ADDR=cluster.replicas[0].address)
    env["PYTHONPATH"] = str(EXAMPLES.parent)
    r = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--address", cluster.replicas[0].address]
        if script == "cache_aside.py"
        else [sys.executable, str(EXAMPLES / script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_cache_aside_example(cluster: Cluster) -> None:
    out = run(cluster, "cache_aside.py")
    assert "database queries 1" in out and out.endswith("ok\n")


def test_quickstart(cluster: Cluster) -> None:
    out = run(cluster, "quickstart.py")
    assert "Grace" in out and "fencing token" in out
