"""Certificates made at test time with the openssl CLI: CAs, server and client certificates."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


def _openssl(folder: Path, *args: str) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise RuntimeError("the openssl CLI is missing: apt-get install -y openssl")
    r = subprocess.run([exe, *args], cwd=folder, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)}: {r.stderr}")


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Ca:
    """A CA in ``folder``: ``ca.crt`` and its key, and what it signs."""

    folder: Path
    name: str

    @property
    def cert(self) -> Path:
        return self.folder / f"{self.name}.crt"

    @classmethod
    def make(cls, folder: Path, name: str) -> Ca:
        folder.mkdir(parents=True, exist_ok=True)
        _openssl(
            folder,
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2",
            "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        return cls(folder, name)

    def issue(self, name: str, dns: list[str], ips: list[str], usage: str) -> Issued:
        """A leaf certificate for ``dns`` and ``ips``; ``usage`` is serverAuth or clientAuth."""
        sans = ",".join([f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips])
        ext = self.folder / f"{name}.ext"
        ext.write_text(
            f"subjectAltName={sans}\nbasicConstraints=CA:FALSE\n"
            f"keyUsage=critical,digitalSignature\nextendedKeyUsage={usage}\n"
        )
        _openssl(
            self.folder,
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
        )  # fmt: skip
        _openssl(
            self.folder,
            "x509", "-req", "-in", f"{name}.csr", "-CA", self.cert.name,
            "-CAkey", f"{self.name}.key", "-CAcreateserial", "-out", f"{name}.crt",
            "-days", "2", "-extfile", ext.name,
        )  # fmt: skip
        return Issued(self.folder / f"{name}.crt", self.folder / f"{name}.key")


def sha256_hex(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
