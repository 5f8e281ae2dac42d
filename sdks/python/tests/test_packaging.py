"""The wheel installs into a fresh venv with pip and runs the README's quick start."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

from servers import Cluster

SDK = Path(__file__).resolve().parents[1]


def test_wheel_installs_into_a_fresh_venv_and_works(cluster: Cluster, tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(dist),
            str(SDK),
        ],
        check=True,
    )
    (wheel,) = dist.glob("tiercache-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(wheel)],
        check=True,
    )
    # Run from tmp_path so the installed package is imported, not the source tree.
    r = subprocess.run(
        [str(py), str(SDK / "examples" / "quickstart.py")],
        cwd=tmp_path,
        env={"TIERCACHE_ADDR": cluster.replicas[0].address, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "Grace" in r.stdout
    site = subprocess.run(
        [str(py), "-c", "import tiercache, os; print(os.path.dirname(tiercache.__file__))"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert site.startswith(str(env_dir)) and (Path(site) / "py.typed").exists()
