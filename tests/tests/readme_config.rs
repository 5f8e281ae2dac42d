//! Keeps the configuration example in README.md honest: it must parse, and the values it calls
//! defaults must be the defaults.

use std::time::Duration;

use tiercache_core::policy::NamespacePolicy;
use tiercache_server::Config;

fn readme_toml() -> String {
    let readme = include_str!("../../README.md");
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
