//! Arbitrary text → TOML → `Config` → `validate()`: never a panic, and a config that validates
//! must run. So a valid config (with `[redis]` dropped: memory-only) builds the engine, and a
//! write and a read with its default policy (default TTL, stale window, L1 caps) go through on
//! each listed namespace and a dynamic one.

use std::time::Duration;

use bytes::Bytes;
use tiercache_core::{ReadOptions, WriteArgs};
use tiercache_server::Config;

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut config) = Config::from_toml(text) else {
        return;
    };
    config
        .validate()
        .expect("a config that validated validates again");
    let _ = config.default_policy();
    config.redis = None;
    let rt = super::paused_runtime();
    rt.block_on(async {
        let cache = tiercache_server::build_cache(&config)
            .await
            .expect("a valid memory-only config builds its engine");
        let mut names: Vec<String> = config.namespaces.keys().take(4).cloned().collect();
        names.push("fuzz-dynamic".into());
        for name in names {
            let Ok(ns) = cache.namespace(&name) else {
                assert!(
                    !config.dynamic_namespaces || config.limits.max_namespaces == 0,
                    "a dynamic namespace was refused"
                );
                continue;
            };
            let args = WriteArgs {
                value: Bytes::from_static(b"v"),
                ttl: None,
                stale_ttl: None,
                tags: vec!["t".into()],
                condition: Default::default(),
            };
            cache.set(&ns, "k", args).await.expect("set");
            let long = WriteArgs {
                value: Bytes::from_static(b"v"),
                ttl: Some(Duration::from_secs(10 * 365 * 24 * 3600)),
                stale_ttl: Some(Duration::from_secs(10 * 365 * 24 * 3600)),
                tags: Vec::new(),
                condition: Default::default(),
            };
            cache.set(&ns, "long", long).await.expect("set");
            let opts = ReadOptions { fresh_only: false };
            cache.get(&ns, "k", opts).await.expect("get");
            cache.get(&ns, "long", opts).await.expect("get");
        }
    });
}

/// The configuration issue 15 agreed on (TLS, auth, rate limits, Redis ACL and TLS): parsed
/// once those sections exist, refused field by field before.
const SECURITY_EXAMPLE: &str = r#"listen = "0.0.0.0:50051"
allow_insecure = false
reflection = true

[tls]
cert_file = "/etc/tiercache/tls/tls.crt"
key_file = "/etc/tiercache/tls/tls.key"
client_ca_file = "/etc/tiercache/tls/ca.crt"
reload_interval = "10s"

[auth]
tokens_file = "/etc/tiercache/tokens/tokens"
[auth.principals.checkout]
token_sha256 = ["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
client_cert_names = ["checkout.prod.svc"]
rate_limit = { per_second = 1000, burst = 2000 }
[auth.principals.checkout.rights]
"checkout*" = ["read", "write", "invalidate", "lock"]
"shared" = ["read", "admin"]

[defaults]
rate_limit = { per_second = 5000, burst = 10000 }
[namespaces.checkout]
rate_limit = { per_second = 100, burst = 200 }

[telemetry]
admin_listen = "127.0.0.1:9464"

[redis]
url = "rediss://redis.example:6380/0"
username = "tiercache"
password_file = "/etc/tiercache/redis/password"
tls_ca_file = "/etc/tiercache/redis/ca.crt"
"#;

/// The config files of the repository (`root`): the README's full example, the SDK test
/// server's, the container image's, and the security example: the seed corpus
/// (`(file name, input)`).
pub fn seeds(root: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let read = |path: &str| {
        std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    let readme = read("README.md");
    let example = readme
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("README.md has a toml example");
    vec![
        ("readme.toml".into(), example.as_bytes().to_vec()),
        (
            "conformance-server.toml".into(),
            read("tests/conformance/server.toml").into_bytes(),
        ),
        (
            "image.toml".into(),
            read("scripts/image/tiercache.toml").into_bytes(),
        ),
        ("security.toml".into(), SECURITY_EXAMPLE.as_bytes().to_vec()),
    ]
}
