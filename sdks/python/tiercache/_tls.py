"""Client TLS: which certificates the channel trusts and presents, and the channel they make.

The options match the Rust SDK and the CLI: a CA (file or PEM) instead of the system roots, a
client certificate and key for mTLS, and a server name to check the certificate against when it
differs from the address. ``https://`` with no options means TLS with the system roots.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

__all__ = ["TlsConfig"]


@dataclass(frozen=True)
class TlsConfig:
    """TLS settings of a `Client` (``tls=True`` is TLS with the system roots).

    ``ca_file`` / ``ca_pem``: the CA certificate(s) that signed the server's certificate, instead
    of the system roots. ``cert_file`` + ``key_file`` (or ``cert_pem`` + ``key_pem``): a client
    certificate for servers that require one (mTLS). ``server_name``: the name the server
    certificate must carry, when the address is an IP or another name. Files are read when the
    client is made; a missing or non-PEM file is a `ValueError` naming the option.
    """

    ca_file: str | Path | None = None
    ca_pem: bytes | str | None = None
    cert_file: str | Path | None = None
    cert_pem: bytes | str | None = None
    key_file: str | Path | None = None
    key_pem: bytes | str | None = field(default=None, repr=False)
    server_name: str | None = None

    def __repr__(self) -> str:
        # Never the key; the rest is not secret but can be long, so name what is set.
        parts = [
            f"{name}={getattr(self, name)!r}"
            for name in ("ca_file", "cert_file", "key_file", "server_name")
            if getattr(self, name) is not None
        ]
        parts += [f"{name}=<pem>" for name in ("ca_pem", "cert_pem") if getattr(self, name)]
        if self.key_pem:
            parts.append("key_pem=<redacted>")
        return f"TlsConfig({', '.join(parts)})"

    def credentials(self) -> grpc.ChannelCredentials:
        """The gRPC channel credentials; raises `ValueError` naming a bad option."""
        ca = _pem("ca", self.ca_file, self.ca_pem, "CERTIFICATE")
        cert = _pem("cert", self.cert_file, self.cert_pem, "CERTIFICATE")
        key = _pem("key", self.key_file, self.key_pem, "PRIVATE KEY")
        if (cert is None) != (key is None):
            missing = "key_file/key_pem" if key is None else "cert_file/cert_pem"
            raise ValueError(
                f"tls: a client certificate needs a certificate and a key; {missing} is missing"
            )
        return grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )

    def channel_options(self) -> list[tuple[str, Any]]:
        if self.server_name is None:
            return []
        if not self.server_name or any(ch.isspace() for ch in self.server_name):
            raise ValueError(f"tls.server_name: {self.server_name!r} is not a host name")
        return [("grpc.ssl_target_name_override", self.server_name)]


def _pem(name: str, path: str | Path | None, pem: bytes | str | None, kind: str) -> bytes | None:
    if path is not None and pem is not None:
        raise ValueError(f"tls: give {name}_file or {name}_pem, not both")
    where = f"tls.{name}_pem"
    if path is not None:
        where = f"tls.{name}_file ({path})"
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise ValueError(f"{where}: cannot read: {e.strerror or e}") from None
    elif pem is not None:
        data = pem.encode() if isinstance(pem, str) else bytes(pem)
    else:
        return None
    # "PRIVATE KEY" also matches "RSA PRIVATE KEY" and "EC PRIVATE KEY" (PKCS#1, SEC1).
    if b"-----BEGIN " not in data or kind.encode() not in data:
        raise ValueError(f"{where}: not PEM (expected a -----BEGIN ...{kind}----- block)")
    return data


def channel_setup(
    address: str, tls: bool | TlsConfig | grpc.ChannelCredentials
) -> tuple[grpc.ChannelCredentials | None, Sequence[tuple[str, Any]]]:
    """What a channel to ``address`` needs: credentials (None: plaintext) and extra options.

    ``https://`` or any ``tls`` means TLS; ``http://`` with TLS options is refused rather than
    silently sending tokens in clear or ignoring the certificates.
    """
    wants_tls = tls is not False
    if address.startswith("http://") and wants_tls:
        raise ValueError(f"address {address!r} is plaintext (http://) but tls is set: use https://")
    if not wants_tls and not address.startswith("https://"):
        return None, []
    if isinstance(tls, TlsConfig):
        return tls.credentials(), tls.channel_options()
    if isinstance(tls, grpc.ChannelCredentials):
        return tls, []
    return grpc.ssl_channel_credentials(), []


def check_token(token: str | None) -> None:
    """Refuses a token gRPC metadata cannot carry, without echoing it."""
    if token is None:
        return
    if not token or any(not (0x21 <= ord(ch) <= 0x7E) for ch in token):
        raise ValueError(
            "token: must be non-empty printable ASCII without spaces (the value is not shown)"
        )
