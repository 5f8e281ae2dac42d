//! The client commands over TLS and mutual TLS against a real `tiercache serve` child whose
//! `[tls]` names certificates made at test time, and the start-up error of a bad `[tls]`.

mod common;

use common::{assert_exit, run, stderr, stdout, tiercache, ServerProcess};
use tiercache_testkit::{TestCa, TestPki};

/// Writes a config serving `pki`'s certificate (requiring client certificates when `mtls`)
/// and returns its path.
fn config(pki: &TestPki, mtls: bool) -> String {
    let ca = if mtls {
        format!("client_ca_file = {:?}\n", pki.path("ca.crt"))
    } else {
        String::new()
    };
    let text = format!(
        "[tls]\ncert_file = {:?}\nkey_file = {:?}\n{ca}",
        pki.path("tls.crt"),
        pki.path("tls.key"),
    );
    pki.write("server.toml", &text);
    pki.path("server.toml").display().to_string()
}

/// Starts `tiercache serve` on `pki`'s certificate (requiring client certificates when `mtls`);
/// returns it, its `https://localhost:<port>` address and the path of the CA that signed it.
fn serve_tls(pki: &TestPki, mtls: bool) -> (ServerProcess, String, String) {
    let server = ServerProcess::start(&["--config", &config(pki, mtls)]);
    let addr = https(&server);
    (server, addr, pki.path("ca.crt").display().to_string())
}

/// `https://localhost:<port>` of a server whose `addr` is `http://127.0.0.1:<port>`.
fn https(server: &ServerProcess) -> String {
    let port = server.addr.rsplit(':').next().unwrap();
    format!("https://localhost:{port}")
}

#[test]
fn commands_talk_tls_with_a_ca_from_a_flag_or_the_environment() {
    let pki = TestPki::new();
    let (server, addr, ca) = serve_tls(&pki, false);

    let o = run(&["set", "k", "secret", "--addr", &addr, "--tls-ca", &ca]);
    assert_exit(&o, 0);
    let o = tiercache()
        .args(["get", "k", "--addr", &addr])
        .env("TIERCACHE_TLS_CA", &ca)
        .output()
        .unwrap();
    assert_exit(&o, 0);
    assert_eq!(stdout(&o).trim_end(), "secret");
    // The server name override: connect by IP, verify the certificate's name.
    let ip = server.addr.replace("http://", "https://");
    let o = run(&[
        "get",
        "k",
        "--addr",
        &ip,
        "--tls-ca",
        &ca,
        "--tls-server-name",
        "localhost",
    ]);
    assert_exit(&o, 0);

    // A CA that did not sign the server's certificate: a connection failure, exit 3.
    let other = TestCa::new("another ca");
    pki.write("other-ca.crt", &other.cert_pem());
    let other = pki.path("other-ca.crt").display().to_string();
    let o = run(&["get", "k", "--addr", &addr, "--tls-ca", &other]);
    assert_exit(&o, 3);
    assert!(stderr(&o).contains("UnknownIssuer"), "{}", stderr(&o));
    // A CA file that is not there is a usage error naming the flag.
    let o = run(&[
        "get",
        "k",
        "--addr",
        &addr,
        "--tls-ca",
        "/nonexistent/ca.crt",
    ]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("--tls-ca"), "{}", stderr(&o));
}

#[test]
fn commands_present_a_client_certificate_under_mutual_tls() {
    let pki = TestPki::new();
    let (_server, addr, ca) = serve_tls(&pki, true);
    let client = pki.ca.client_cert(&["cli.test"]);
    pki.write("client.crt", &client.cert_pem);
    pki.write("client.key", &client.key_pem);
    let (cert, key) = (
        pki.path("client.crt").display().to_string(),
        pki.path("client.key").display().to_string(),
    );

    let o = tiercache()
        .args(["set", "k", "v", "--addr", &addr])
        .env("TIERCACHE_TLS_CA", &ca)
        .env("TIERCACHE_TLS_CERT", &cert)
        .env("TIERCACHE_TLS_KEY", &key)
        .output()
        .unwrap();
    assert_exit(&o, 0);
    let o = run(&[
        "get",
        "k",
        "--addr",
        &addr,
        "--tls-ca",
        &ca,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ]);
    assert_exit(&o, 0);
    // No client certificate: refused.
    let o = run(&["get", "k", "--addr", &addr, "--tls-ca", &ca]);
    assert_exit(&o, 3);
    // A certificate without its key is a usage error.
    let o = run(&["get", "k", "--addr", &addr, "--tls-cert", &cert]);
    assert_exit(&o, 2);
}

#[test]
fn a_bad_tls_section_stops_serve_naming_the_field() {
    let pki = TestPki::new();
    let path = config(&pki, false);
    std::fs::remove_file(pki.path("tls.key")).unwrap();
    let o = run(&[
        "serve",
        "--config",
        &path,
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    assert_exit(&o, 2);
    assert!(
        stderr(&o).contains("tls.key_file: cannot read"),
        "{}",
        stderr(&o)
    );
}

/// An expired certificate is served (its replacement may land any moment), with a warning at
/// start that names the file.
#[test]
fn an_expired_certificate_is_served_with_a_warning() {
    let pki = TestPki::with_server_validity(tiercache_testkit::Validity::Expired);
    let (server, _, _) = serve_tls(&pki, false);
    // "listening" is logged when the port is bound, before the TLS files are loaded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let warned =
        |log: &str| log.contains("the tls certificate has expired") && log.contains("tls.crt");
    while !warned(&server.log()) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let log = server.log();
    assert!(warned(&log), "{log}");
}
