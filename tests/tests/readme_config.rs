//! Keeps the configuration example in README.md honest: it must parse, and the values it calls
//! defaults must be the defaults.

use std::time::Duration;

use tiercache_core::policy::NamespacePolicy;
use tiercache_server::Config;

fn readme_toml() -> String {
    readme_toml_after("## Configuration")
}

/// The first ```toml block of README.md after `heading`.
fn readme_toml_after(heading: &str) -> String {
    let readme = include_str!("../../README.md");
    let at = readme
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("README.md has the heading {heading:?}"));
    let readme = &readme[at..];
    let start = readme
        .find("```toml\n")
        .expect("README.md has a ```toml block")
        + "```toml\n".len();
    let len = readme[start..].find("```").expect("the ```toml block ends");
    readme[start..start + len].to_string()
}

#[test]
fn readme_config_example_parses() {
    let config = Config::from_toml(&readme_toml()).unwrap();
    assert_eq!(
        config.redis.as_ref().map(|r| r.url.as_str()),
        Some("redis://127.0.0.1:6379")
    );
    let users = config
        .namespace_policies()
        .into_iter()
        .find(|(name, _)| name == "users")
        .expect("namespace users")
        .1;
    assert_eq!(users.default_ttl, Duration::from_secs(60));
    assert_eq!(users.stale_ttl, Duration::from_secs(30));
}

#[test]
fn readme_config_example_shows_the_defaults() {
    let config = Config::from_toml(&readme_toml()).unwrap();
    let builtin = Config::default();
    assert_eq!(config.default_policy(), NamespacePolicy::default());
    assert_eq!(config.listen, builtin.listen);
    assert_eq!(config.dynamic_namespaces, builtin.dynamic_namespaces);
    assert_eq!(config.shutdown_grace, builtin.shutdown_grace);
    assert_eq!(config.limits.max_batch, builtin.limits.max_batch);
    assert_eq!(
        config.limits.pipeline_max_in_flight,
        builtin.limits.pipeline_max_in_flight
    );
    assert_eq!(config.limits.max_namespaces, builtin.limits.max_namespaces);
    assert_eq!(config.l1.max_bytes, builtin.l1.max_bytes);
    assert_eq!(
        config.limits.max_reply_bytes,
        builtin.limits.max_reply_bytes
    );
    assert_eq!(
        config.limits.max_message_bytes,
        builtin.limits.max_message_bytes
    );
    assert_eq!(config.limits.watch_buffer, builtin.limits.watch_buffer);
    assert_eq!(
        config.server.http2_max_concurrent_streams,
        builtin.server.http2_max_concurrent_streams
    );
    assert_eq!(
        config.server.http2_keepalive_interval,
        builtin.server.http2_keepalive_interval
    );
    assert_eq!(
        config.server.http2_keepalive_timeout,
        builtin.server.http2_keepalive_timeout
    );
    assert_eq!(config.server.tcp_keepalive, builtin.server.tcp_keepalive);
    assert_eq!(config.telemetry, builtin.telemetry);
    let redis = config.redis.unwrap();
    let redis_defaults = tiercache_server::config::RedisConfig::new(redis.url.clone());
    assert_eq!(redis.connect_timeout, redis_defaults.connect_timeout);
    assert_eq!(redis.response_timeout, redis_defaults.response_timeout);
    assert_eq!(redis.key_prefix, redis_defaults.key_prefix);
}

/// The README's "TLS and tokens" example parses as written, and a server started from it (test
/// certificates in place of the paths, a token of the test's own in place of the hash) serves
/// over mutual TLS: the token's principal gets exactly its rights, a token from `tokens_file`
/// works too, and no token is refused.
#[tokio::test]
async fn readme_tls_and_tokens_example_starts_and_serves() {
    use tiercache_client::{ClientBuilder, Error, TlsConfig};
    use tiercache_server::auth::{generate_token, token_hash_hex};
    use tiercache_testkit::{TestPki, TestServer};

    let example = readme_toml_after("### TLS and tokens");
    let parsed = Config::from_toml(&example).expect("the README's TLS + tokens example parses");
    assert!(parsed.tls.is_some() && parsed.auth.is_some());
    assert!(
        !parsed.listen.ip().is_loopback(),
        "the example is for a network listen"
    );

    let pki = TestPki::new();
    let (token, file_token) = (generate_token(), generate_token());
    pki.write(
        "tokens",
        &format!("checkout {}\n", token_hash_hex(&file_token)),
    );
    let readme_hash = example
        .lines()
        .find_map(|l| l.strip_prefix("token_sha256 = [\""))
        .and_then(|l| l.get(..64))
        .expect("the example lists a token hash");
    let dir = pki.dir().display().to_string();
    let config = Config::from_toml(
        &example
            .replace("/etc/tiercache/tls", &dir)
            .replace("/etc/tiercache/tokens/tokens", &format!("{dir}/tokens"))
            .replace(readme_hash, &token_hash_hex(&token)),
    )
    .expect("the example with test paths parses");
    let server = TestServer::start_tls(config, pki.mtls_client_config(&["checkout.test"])).await;

    let client_cert = pki.ca.client_cert(&["checkout.test"]);
    let ops_cert = pki.ca.client_cert(&["ops.example.internal"]);
    let connect_as = |cert: &tiercache_testkit::CertPair, token: Option<String>| {
        let mut b = ClientBuilder::new(format!("localhost:{}", server.addr().port()))
            .tls(TlsConfig {
                ca_certificate_pem: Some(pki.ca.cert_pem().into_bytes()),
                client_identity_pem: Some((
                    cert.cert_pem.clone().into_bytes(),
                    cert.key_pem.clone().into_bytes(),
                )),
                ..TlsConfig::default()
            })
            .connect_timeout(Some(Duration::from_secs(5)))
            .pipeline(false);
        if let Some(t) = token {
            b = b.bearer_token(t);
        }
        b.connect()
    };
    let connect = |token: Option<String>| connect_as(&client_cert, token);

    let checkout = connect(Some(token)).await.expect("connect over mutual TLS");
    let orders = checkout.namespace("checkout-orders");
    orders
        .set("o1", "paid")
        .await
        .expect("checkout may write checkout*");
    let got = orders.get("o1").await.expect("checkout may read checkout*");
    assert_eq!(got.map(|e| e.value), Some("paid".into()));
    let denied = checkout
        .namespace("shared")
        .set("k", "v")
        .await
        .unwrap_err();
    assert!(
        matches!(denied, Error::PermissionDenied { .. }),
        "checkout has only read on shared: {denied:?}"
    );

    let from_file = connect(Some(file_token)).await.expect("connect");
    assert!(from_file
        .namespace("checkout-orders")
        .get("o1")
        .await
        .is_ok());

    // A certificate names no principal here (checkout.test is not in client_cert_names), so
    // without a token the call is unauthenticated.
    let anonymous = connect(None).await.expect("connect");
    let refused = anonymous
        .namespace("checkout-orders")
        .get("o1")
        .await
        .unwrap_err();
    assert!(
        matches!(refused, Error::Unauthenticated { .. }),
        "no token: {refused:?}"
    );

    // The ops principal is its client certificate (client_cert_names), no token: read and
    // admin on every namespace, no write.
    let ops = connect_as(&ops_cert, None).await.expect("connect");
    let got = ops.namespace("checkout-orders").get("o1").await;
    assert!(got.is_ok(), "ops reads any namespace: {got:?}");
    let names = ops.list_namespaces().await.expect("ops has admin");
    assert!(
        names.iter().any(|n| n.name == "checkout-orders"),
        "{names:?}"
    );
    let denied = ops
        .namespace("checkout-orders")
        .set("o1", "refunded")
        .await
        .unwrap_err();
    assert!(
        matches!(denied, Error::PermissionDenied { .. }),
        "ops has no write: {denied:?}"
    );
}
