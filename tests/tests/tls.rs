//! TLS and mutual TLS on the gRPC port, against the real server over real gRPC with
//! certificates made at test time (rcgen): what is refused (a wrong CA, an expired certificate,
//! a missing or foreign client certificate, plaintext), what a verified client certificate
//! becomes (`PeerIdentity`), and rotation of the certificate files while connections are open.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tiercache_client::{Client, ClientBuilder, TlsConfig};
use tiercache_server::identity::PeerIdentity;
use tiercache_server::tls::TlsAcceptor;
use tiercache_server::Config;
use tiercache_testkit::{wait_for, CertPair, TestCa, TestPki, TestServer, Validity};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;
use tonic::transport::server::Connected as _;

/// The SDK's TLS settings trusting `ca`.
fn trusting(ca: &TestCa) -> TlsConfig {
    TlsConfig {
        ca_certificate_pem: Some(ca.cert_pem().into_bytes()),
        ..TlsConfig::default()
    }
}

/// `trusting(ca)` presenting `client` as its certificate.
fn trusting_with_cert(ca: &TestCa, client: &CertPair) -> TlsConfig {
    TlsConfig {
        client_identity_pem: Some((
            client.cert_pem.clone().into_bytes(),
            client.key_pem.clone().into_bytes(),
        )),
        ..trusting(ca)
    }
}

fn tls_server_config(tls: tiercache_server::config::TlsConfig) -> Config {
    Config {
        tls: Some(tls),
        ..Config::default()
    }
}

async fn sdk(server: &TestServer, tls: TlsConfig) -> Result<Client, tiercache_client::Error> {
    ClientBuilder::new(format!("localhost:{}", server.addr().port()))
        .tls(tls)
        .connect_timeout(Some(Duration::from_secs(5)))
        .pipeline(false)
        .connect()
        .await
}

/// Connects and makes a call; TLS 1.3 clients learn that the server refused their certificate
/// only on their first read, so a refusal may show at either step.
async fn connect_and_call(addr: String, tls: TlsConfig) -> Result<(), String> {
    let client = ClientBuilder::new(addr)
        .tls(tls)
        .connect_timeout(Some(Duration::from_secs(5)))
        .pipeline(false)
        .connect()
        .await
        .map_err(|e| chain(&e))?;
    client.health().await.map(|_| ()).map_err(|e| chain(&e))
}

/// The error with its sources, as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// Reads one counter or gauge (summed over its series) from the server's `/metrics`.
async fn metric(admin: SocketAddr, name: &str) -> f64 {
    tiercache_testkit::scrape_metrics(admin, None)
        .await
        .unwrap()
        .sum(name)
}

/// Waits until the server has counted at least `n` failed handshakes.
async fn handshake_failures_reach(server: &TestServer, n: u32) {
    let admin = server.admin_addr().unwrap();
    wait_for(
        Duration::from_secs(5),
        Duration::from_millis(20),
        || async { metric(admin, "tiercache_tls_handshake_failures_total").await >= f64::from(n) },
    )
    .await
    .unwrap();
}

/// Opens a raw TLS connection trusting `roots` and returns the server's leaf certificate.
async fn served_cert(addr: SocketAddr, roots: &[&TestCa]) -> Result<Vec<u8>, String> {
    let mut store = rustls::RootCertStore::empty();
    for ca in roots {
        let der =
            rustls::pki_types::CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap();
        store.add(der).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(tiercache_server::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    Ok(tls.get_ref().1.peer_certificates().unwrap()[0].to_vec())
}

fn der_of(pem: &str) -> Vec<u8> {
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

use rustls::pki_types::pem::PemObject as _;

#[tokio::test]
async fn sdk_talks_to_a_tls_server() {
    let pki = TestPki::new();
    let server =
        TestServer::start_tls(tls_server_config(pki.server_config()), pki.client_config()).await;
    let client = sdk(&server, trusting(&pki.ca)).await.unwrap();
    client
        .namespace("default")
        .set("k", Bytes::from_static(b"over tls"))
        .await
        .unwrap();
    // An explicit https:// address with the server name given as an override.
    let client2 = ClientBuilder::new(format!("https://127.0.0.1:{}", server.addr().port()))
        .tls(TlsConfig {
            domain_name: Some("localhost".into()),
            ..trusting(&pki.ca)
        })
        .connect()
        .await
        .unwrap();
    let got = client2.namespace("default").get("k").await.unwrap();
    assert_eq!(got.unwrap().value, Bytes::from_static(b"over tls"));
    assert_eq!(
        metric(
            server.admin_addr().unwrap(),
            "tiercache_tls_handshake_failures_total"
        )
        .await,
        0.0
    );
    let expiry = metric(
        server.admin_addr().unwrap(),
        "tiercache_tls_cert_expiry_timestamp_seconds",
    )
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now + 86_000.0..now + 87_000.0).contains(&expiry),
        "expiry {expiry}, now {now}"
    );
}

#[tokio::test]
async fn a_client_trusting_another_ca_is_refused() {
    let pki = TestPki::new();
    let server =
        TestServer::start_tls(tls_server_config(pki.server_config()), pki.client_config()).await;
    let other = TestCa::new("another ca");
    let err = connect_and_call(server.endpoint(), trusting(&other))
        .await
        .unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    // Without a CA the system roots are used, which do not know the test CA either.
    let err = connect_and_call(server.endpoint(), TlsConfig::default())
        .await
        .unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    handshake_failures_reach(&server, 2).await;
}

/// Starts `run` on a bound listener without waiting for a health check (which an unusable
/// certificate would fail); connections wait in the backlog until it serves.
async fn spawn_unchecked(mut config: Config) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    config.listen = addr;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(tiercache_server::run_with_admin(
        listener,
        None,
        config,
        async {
            let _ = rx.await;
        },
    ));
    (addr, tx)
}

#[tokio::test]
async fn an_expired_server_certificate_is_refused() {
    let pki = TestPki::with_server_validity(Validity::Expired);
    let (addr, _stop) = spawn_unchecked(tls_server_config(pki.server_config())).await;
    let err = connect_and_call(format!("localhost:{}", addr.port()), trusting(&pki.ca))
        .await
        .unwrap_err();
    assert!(err.contains("certificate expired"), "{err}");
}

#[tokio::test]
async fn mutual_tls_refuses_a_missing_or_foreign_client_certificate() {
    let pki = TestPki::new();
    let server = TestServer::start_tls(
        tls_server_config(pki.mtls_server_config()),
        pki.mtls_client_config(&["health.test"]),
    )
    .await;
    let addr = server.endpoint();
    let good = pki.ca.client_cert(&["checkout.prod.svc"]);
    connect_and_call(addr.clone(), trusting_with_cert(&pki.ca, &good))
        .await
        .unwrap();

    // The server sends the TLS alert after the client's handshake finished (TLS 1.3), so the
    // client sees its first call fail on a closed connection; the server counts each refusal.
    connect_and_call(addr.clone(), trusting(&pki.ca))
        .await
        .unwrap_err();

    let other = TestCa::new("another ca");
    let foreign = other.client_cert(&["checkout.prod.svc"]);
    connect_and_call(addr, trusting_with_cert(&pki.ca, &foreign))
        .await
        .unwrap_err();
    handshake_failures_reach(&server, 2).await;
}

/// A real handshake through the server's acceptor: the verified client certificate's DNS and
/// URI SANs are the connection's `PeerIdentity`, the tonic `ConnectInfo` of every request.
#[tokio::test]
async fn a_verified_client_certificate_names_the_peer() {
    let pki = TestPki::new();
    let acceptor = TlsAcceptor::load(&pki.mtls_server_config()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let names = [
        "checkout.prod.svc",
        "spiffe://cluster.local/ns/shop/sa/checkout",
    ];
    let client_cert = pki.ca.client_cert(&names);
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let conn = acceptor.accept(tcp).await.unwrap();
        conn.connect_info()
    });
    let client = tokio::spawn(async move {
        // The SDK stack end to end: tonic's rustls connector with the client identity.
        connect_and_call(
            format!("localhost:{}", addr.port()),
            trusting_with_cert(&pki.ca, &client_cert),
        )
        .await
    });
    let identity: PeerIdentity = server.await.unwrap();
    assert_eq!(identity.cert_names, names.map(String::from).to_vec());
    assert_eq!(
        identity.remote_addr.map(|a| a.ip()),
        Some(std::net::Ipv4Addr::LOCALHOST.into())
    );
    client.abort();

    // Without mutual TLS there is no client certificate, so no names.
    let pki = TestPki::new();
    let acceptor = TlsAcceptor::load(&pki.server_config()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        acceptor.accept(tcp).await.unwrap().connect_info()
    });
    let _cert = served_cert(addr, &[&pki.ca]).await.unwrap();
    let identity = server.await.unwrap();
    assert!(identity.cert_names.is_empty(), "{identity:?}");
    assert!(identity.remote_addr.is_some());
}

#[tokio::test]
async fn rotated_certificate_files_reach_new_connections_while_open_ones_keep_working() {
    let pki = TestPki::new();
    let tls = tiercache_server::config::TlsConfig {
        reload_interval: Duration::from_millis(100),
        ..pki.server_config()
    };
    let server = TestServer::start_tls(tls_server_config(tls), pki.client_config()).await;
    let addr = server.addr();
    let admin = server.admin_addr().unwrap();
    // Opened before the rotation, trusting only the first CA: if it ever reconnected after the
    // rotation its handshake would fail, so calls that succeed ran on the old connection.
    let old = sdk(&server, trusting(&pki.ca)).await.unwrap();
    let ns = old.namespace("default");
    ns.set("before", Bytes::from_static(b"1")).await.unwrap();
    assert_eq!(
        served_cert(addr, &[&pki.ca]).await.unwrap(),
        der_of(&pki.server.cert_pem)
    );

    let next_ca = TestCa::new("next ca");
    let next = next_ca.server_cert(Validity::Current);
    pki.write_server(&next);
    wait_for(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            served_cert(addr, &[&pki.ca, &next_ca]).await.ok() == Some(der_of(&next.cert_pem))
        },
    )
    .await
    .expect("new connections get the rotated certificate");
    // A new connection trusting only the old CA is refused now.
    let err = connect_and_call(server.endpoint(), trusting(&pki.ca))
        .await
        .unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    // The connection opened before keeps working.
    for i in 0..20 {
        ns.set(format!("after{i}"), Bytes::from_static(b"2"))
            .await
            .unwrap();
    }
    assert!(ns.get("before").await.unwrap().is_some());

    // A bad replacement keeps the rotated certificate serving, and is counted.
    let failures = metric(admin, "tiercache_tls_reload_failures_total").await;
    pki.write(
        "tls.crt",
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    );
    wait_for(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async { metric(admin, "tiercache_tls_reload_failures_total").await > failures },
    )
    .await
    .expect("the bad file is noticed and counted");
    assert_eq!(
        served_cert(addr, &[&pki.ca, &next_ca]).await.unwrap(),
        der_of(&next.cert_pem)
    );
    // A key that does not match the certificate is refused too.
    let failures = metric(admin, "tiercache_tls_reload_failures_total").await;
    pki.write("tls.crt", &pki.server.cert_pem);
    wait_for(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async { metric(admin, "tiercache_tls_reload_failures_total").await > failures },
    )
    .await
    .expect("the mismatched key is noticed and counted");
    assert_eq!(
        served_cert(addr, &[&pki.ca, &next_ca]).await.unwrap(),
        der_of(&next.cert_pem)
    );
    ns.get("before").await.unwrap();
}

#[tokio::test]
async fn a_plaintext_client_on_a_tls_port_fails_at_once() {
    let pki = TestPki::new();
    let server =
        TestServer::start_tls(tls_server_config(pki.server_config()), pki.client_config()).await;
    let started = std::time::Instant::now();
    let result = async {
        let client = ClientBuilder::new(format!("http://{}", server.addr()))
            .pipeline(false)
            .connect()
            .await?;
        client.health().await
    }
    .await;
    let err = result.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    // The server closes the connection on the bytes that are not TLS; tonic reports the closed
    // connection as UNKNOWN "transport error" (or a transport error when it shows at connect).
    assert!(
        matches!(
            err,
            tiercache_client::Error::Transport(_)
                | tiercache_client::Error::Unavailable { .. }
                | tiercache_client::Error::Other {
                    code: tonic::Code::Unknown,
                    ..
                }
        ),
        "{err:?}"
    );
    handshake_failures_reach(&server, 1).await;
}

/// A client that connects and never speaks TLS does not hold up other clients' handshakes.
#[tokio::test]
async fn a_silent_client_does_not_stall_other_handshakes() {
    let pki = TestPki::new();
    let server =
        TestServer::start_tls(tls_server_config(pki.server_config()), pki.client_config()).await;
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(server.addr()).await.unwrap());
    }
    let started = std::time::Instant::now();
    connect_and_call(server.endpoint(), trusting(&pki.ca))
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(silent);
}
