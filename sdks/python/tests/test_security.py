"""Tokens, TLS and mTLS against real servers: `tiercache serve` with [tls] and [auth], and
certificates made at test time (tests/pki.py, the openssl CLI)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pki import Ca, Issued, sha256_hex
from servers import Server

import tiercache
import tiercache.aio

APP_TOKEN = "app-token-0123456789"
OPS_TOKEN = "ops-token-0123456789"
SERVER_NAME = "cache.tiercache.test"


@dataclass
class Pki:
    ca: Ca
    other_ca: Ca
    server: Issued
    client: Issued  # SAN ops.tiercache.test: the "ops" principal by its certificate
    stranger: Issued  # signed by other_ca: not trusted by the server


@dataclass
class Secured:
    pki: Pki
    tls: Server  # TLS, tokens
    mtls: Server  # TLS with client certificates required, tokens and certificate principals

    def config(self, **over: object) -> tiercache.TlsConfig:
        """TLS options trusting the test CA; ``over`` replaces any of them."""
        base: dict[str, object] = {"ca_file": self.pki.ca.cert, "server_name": SERVER_NAME}
        base.update(over)
        return tiercache.TlsConfig(**base)  # type: ignore[arg-type]


def auth_toml(server: Issued, ca: Ca, *, mtls: bool) -> str:
    client_ca = f'client_ca_file = "{ca.cert}"\n' if mtls else ""
    return f"""
[tls]
cert_file = "{server.cert}"
key_file = "{server.key}"
{client_ca}
[auth]

[auth.principals.app]
token_sha256 = ["{sha256_hex(APP_TOKEN)}"]

[auth.principals.app.rights]
"app*" = ["read", "write"]

[auth.principals.ops]
token_sha256 = ["{sha256_hex(OPS_TOKEN)}"]
client_cert_names = ["ops.tiercache.test"]

[auth.principals.ops.rights]
"*" = ["read", "admin"]
"""


@pytest.fixture(scope="module")
def secured() -> Iterator[Secured]:
    workdir = Path(tempfile.mkdtemp(prefix="tiercache-py-tls-"))
    ca = Ca.make(workdir / "pki", "test-ca")
    other = Ca.make(workdir / "pki", "other-ca")
    pki = Pki(
        ca=ca,
        other_ca=other,
        server=ca.issue("server", [SERVER_NAME], ["127.0.0.1"], "serverAuth"),
        client=ca.issue("ops", ["ops.tiercache.test"], [], "clientAuth"),
        stranger=other.issue("stranger", ["ops.tiercache.test"], [], "clientAuth"),
    )
    tls_opts = tiercache.TlsConfig(ca_file=ca.cert, server_name=SERVER_NAME)
    mtls_opts = tiercache.TlsConfig(
        ca_file=ca.cert, server_name=SERVER_NAME, cert_file=pki.client.cert, key_file=pki.client.key
    )
    tls = Server(
        workdir,
        None,
        extra_config=auth_toml(pki.server, ca, mtls=False),
        health_client=lambda a: tiercache.Client(a, tls=tls_opts, timeout=5),
    )
    mtls = Server(
        workdir,
        None,
        extra_config=auth_toml(pki.server, ca, mtls=True),
        health_client=lambda a: tiercache.Client(a, tls=mtls_opts, timeout=5),
    )
    yield Secured(pki, tls, mtls)
    tls.stop()
    mtls.stop()
    shutil.rmtree(workdir, ignore_errors=True)


def failed_get(address: str, **client: object) -> tiercache.TiercacheError:
    """The error of one Get in namespace app1 through a client made with ``client``, no retries."""
    with (
        tiercache.Client(address, retries=0, **client) as c,  # type: ignore[arg-type]
        pytest.raises(tiercache.TiercacheError) as e,
    ):
        c.namespace("app1").get("k")
    return e.value


def test_token_works(secured: Secured) -> None:
    with tiercache.Client(secured.tls.address, token=APP_TOKEN, tls=secured.config()) as c:
        ns = c.namespace("app1")
        assert ns.set("k", b"v").stored
        entry = ns.get("k")
        assert entry is not None and entry.value == b"v"


@pytest.mark.parametrize("token", [None, "not-a-known-token"], ids=["no token", "wrong token"])
def test_no_or_wrong_token_is_unauthenticated(secured: Secured, token: str | None) -> None:
    with tiercache.Client(secured.tls.address, token=token, tls=secured.config(), retries=0) as c:
        with pytest.raises(tiercache.Unauthenticated) as e:
            c.namespace("app1").get("k")
        # Health stays open without a credential.
        assert c.health() == tiercache.HealthStatus.SERVING
    assert not e.value.retryable
    if token:
        assert token not in str(e.value)


def test_missing_right_is_permission_denied_naming_right_and_namespace(secured: Secured) -> None:
    with tiercache.Client(secured.tls.address, token=APP_TOKEN, tls=secured.config()) as c:
        with pytest.raises(tiercache.PermissionDenied) as e:
            c.namespace("billing").get("k")
        assert (e.value.right, e.value.namespace) == ("read", "billing")
        # Its own namespace, a right it lacks.
        with pytest.raises(tiercache.PermissionDenied) as e:
            c.namespace("app1").flush()
        assert (e.value.right, e.value.namespace) == ("invalidate", "app1")
        with pytest.raises(tiercache.PermissionDenied) as e:
            c.stats("app1")
        assert e.value.right == "admin"


def test_tls_with_a_wrong_ca_fails_clearly(secured: Secured) -> None:
    wrong = secured.config(ca_file=secured.pki.other_ca.cert)
    e = failed_get(secured.tls.address, token=APP_TOKEN, tls=wrong)
    assert isinstance(e, tiercache.Unavailable), e
    assert "CERTIFICATE_VERIFY_FAILED" in str(e) or "handshake" in str(e).lower(), e


def test_server_name_override(secured: Secured) -> None:
    # The certificate names cache.tiercache.test (and 127.0.0.1): another name is refused.
    wrong = secured.config(server_name="other.tiercache.test")
    e = failed_get(secured.tls.address, token=APP_TOKEN, tls=wrong)
    assert isinstance(e, tiercache.Unavailable), e
    # Without an override the address's IP is checked, which the certificate also carries.
    by_ip = tiercache.TlsConfig(ca_pem=secured.pki.ca.cert.read_bytes())
    with tiercache.Client(secured.tls.address, token=APP_TOKEN, tls=by_ip) as c:
        assert c.namespace("app1").get("absent") is None


def test_https_means_tls_with_the_system_roots(secured: Secured) -> None:
    # The test CA is not a system root: the handshake fails on the certificate, so TLS was tried.
    e = failed_get(f"https://{secured.tls.address}", token=APP_TOKEN)
    assert isinstance(e, tiercache.Unavailable), e
    assert "CERTIFICATE_VERIFY_FAILED" in str(e) or "handshake" in str(e).lower(), e


def test_mtls_client_certificate_is_a_principal(secured: Secured) -> None:
    pki = secured.pki
    opts = secured.config(cert_file=pki.client.cert, key_file=pki.client.key)
    # No token: the certificate's SAN makes it "ops", which has admin everywhere.
    with tiercache.Client(secured.mtls.address, tls=opts) as c:
        assert c.stats() is not None
        with pytest.raises(tiercache.PermissionDenied) as e:
            c.namespace("app1").set("k", b"v")
        assert (e.value.right, e.value.namespace) == ("write", "app1")
    # A token still works over mTLS, as its own principal.
    with tiercache.Client(secured.mtls.address, token=APP_TOKEN, tls=opts) as c:
        assert c.namespace("app1").set("k", b"v").stored


@pytest.mark.parametrize(
    "cert", [None, "stranger"], ids=["no client cert", "untrusted client cert"]
)
def test_mtls_refuses_clients_without_a_trusted_certificate(
    secured: Secured, cert: str | None
) -> None:
    pki = secured.pki
    opts = (
        secured.config()
        if cert is None
        else secured.config(cert_file=pki.stranger.cert, key_file=pki.stranger.key)
    )
    e = failed_get(secured.mtls.address, token=APP_TOKEN, tls=opts)
    assert isinstance(e, tiercache.Unavailable), e


async def test_aio_client_takes_the_same_options(secured: Secured) -> None:
    pki = secured.pki
    opts = secured.config(cert_pem=pki.client.cert.read_text(), key_pem=pki.client.key.read_bytes())
    async with tiercache.aio.Client(secured.mtls.address, token=APP_TOKEN, tls=opts) as c:
        ns = c.namespace("app2")
        assert (await ns.set("k", b"v")).stored
        with pytest.raises(tiercache.PermissionDenied) as e:
            await c.namespace("other").get("k")
        assert (e.value.right, e.value.namespace) == ("read", "other")
    async with tiercache.aio.Client(secured.tls.address, tls=secured.config(), retries=0) as c:
        with pytest.raises(tiercache.Unauthenticated):
            await c.namespace("app2").get("k")


# --- options refused before any connection -----------------------------------------------------


def test_bad_tls_options_are_clear_errors(tmp_path: Path) -> None:
    not_pem = tmp_path / "ca.crt"
    not_pem.write_text("hello")
    cases: list[tuple[dict[str, object], str, str]] = [
        ({"ca_file": tmp_path / "missing.crt"}, "tls.ca_file", "cannot read"),
        ({"ca_file": not_pem}, "tls.ca_file", "not PEM"),
        ({"cert_file": not_pem, "ca_pem": "x"}, "tls.ca_pem", "not PEM"),
        ({"ca_file": not_pem, "ca_pem": "x"}, "ca_file or ca_pem", "not both"),
        ({"server_name": "two words"}, "tls.server_name", "not a host name"),
    ]
    for options, names, says in cases:
        with pytest.raises(ValueError) as e:
            tiercache.Client("127.0.0.1:1", tls=tiercache.TlsConfig(**options))  # type: ignore[arg-type]
        assert names in str(e.value) and says in str(e.value), (options, str(e.value))


def test_client_certificate_needs_its_key(tmp_path: Path) -> None:
    ca = Ca.make(tmp_path, "ca")
    leaf = ca.issue("c", ["c.test"], [], "clientAuth")
    with pytest.raises(ValueError, match="key_file/key_pem is missing"):
        tiercache.Client("127.0.0.1:1", tls=tiercache.TlsConfig(cert_file=leaf.cert))
    with pytest.raises(ValueError, match="cert_file/cert_pem is missing"):
        tiercache.aio.Client("127.0.0.1:1", tls=tiercache.TlsConfig(key_file=leaf.key))


def test_plaintext_address_with_tls_is_refused() -> None:
    with pytest.raises(ValueError, match="use https://"):
        tiercache.Client("http://127.0.0.1:1", tls=True)


def test_bad_token_is_refused_without_showing_it() -> None:
    with pytest.raises(ValueError) as e:
        tiercache.Client("127.0.0.1:1", token="secret with space")
    assert "secret" not in str(e.value) and "token" in str(e.value)


def test_key_never_in_repr() -> None:
    opts = tiercache.TlsConfig(ca_file="/x/ca.crt", key_pem="-----BEGIN PRIVATE KEY-----SECRET")
    assert "SECRET" not in repr(opts) and "/x/ca.crt" in repr(opts)
