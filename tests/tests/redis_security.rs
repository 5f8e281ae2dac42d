//! Redis over TLS with an ACL user, as `tiercache serve` runs it: the `[redis]` settings of the
//! server config (username, password or password file, CA, client certificate) against a real
//! TLS-only `redis-server` with certificates made by the test. Start-up errors name the setting
//! to fix and never show a password.

use std::io::Write;
use std::time::Duration;

use tiercache_proto::v1::cache_service_client::CacheServiceClient;
use tiercache_server::config::{Config, RedisConfig};
use tiercache_testkit::{req, rpc, AclUser, RedisSecurity, RedisServer, TlsClientAuth};
use tokio::net::TcpListener;

/// A TLS-only Redis with the ACL user `tiercache` limited to the prefix `team-a`.
fn secure_redis(auth: TlsClientAuth) -> RedisServer {
    RedisServer::start_secure(RedisSecurity {
        tls: Some(auth),
        acl_user: Some(AclUser::limited_to("team-a")),
    })
}

/// The `[redis]` table that reaches `redis` as its ACL user over TLS, with the test CA and (if
/// `client_cert`) the client certificate; the password is left for the caller to set.
fn redis_config(redis: &RedisServer, client_cert: bool) -> RedisConfig {
    let tls = redis.tls_files().expect("a TLS redis");
    let user = redis.acl_user().expect("an ACL user");
    RedisConfig {
        username: Some(user.name.clone()),
        key_prefix: user.prefix.clone(),
        tls_ca_file: Some(tls.ca_file.clone()),
        tls_cert_file: client_cert.then(|| tls.cert_file.clone()),
        tls_key_file: client_cert.then(|| tls.key_file.clone()),
        ..tiercache_testkit::redis_config(&redis.url())
    }
}

fn config(redis: RedisConfig) -> Config {
    let mut config = Config {
        redis: Some(redis),
        ..Config::default()
    };
    config.telemetry.metrics = false;
    config
}

fn password_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

/// Runs the server with `config` and returns its start-up error.
///
/// # Panics
///
/// Panics if it starts (it would run until the timeout).
async fn start_error(config: Config) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let run = tiercache_server::run(listener, config, std::future::pending());
    match tokio::time::timeout(Duration::from_secs(20), run).await {
        Ok(Err(e)) => {
            eprintln!("start-up error: {e}");
            e.to_string()
        }
        Ok(Ok(())) => panic!("the server returned without an error"),
        Err(_) => panic!("the server started; a start-up error was expected"),
    }
}

/// Starts the server and checks a Set and a Get go through Redis.
async fn serves(config: Config) {
    let server = tiercache_testkit::TestServer::start(config).await;
    let mut client = CacheServiceClient::new(server.channel());
    rpc::set(&mut client, req::set("k", "over tls")).await;
    assert_eq!(
        rpc::get_text(&mut client, req::get("k")).await.as_deref(),
        Some("over tls")
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn serves_over_tls_as_the_acl_user_with_a_password_file() {
    let redis = secure_redis(TlsClientAuth::Optional);
    let file = password_file(&format!("{}\n", redis.acl_user().unwrap().password));
    serves(config(RedisConfig {
        password_file: Some(file.path().to_path_buf()),
        ..redis_config(&redis, false)
    }))
    .await;
}

#[tokio::test]
async fn the_password_may_come_from_the_environment_or_the_url() {
    let redis = secure_redis(TlsClientAuth::Optional);
    let user = redis.acl_user().unwrap().clone();
    // What `tiercache serve` does with TIERCACHE_REDIS_PASSWORD.
    serves(config(
        redis_config(&redis, false).with_password_env(Some(user.password.clone())),
    ))
    .await;
    let url = format!(
        "rediss://{}:{}@127.0.0.1:{}",
        user.name,
        user.password,
        redis.port()
    );
    serves(config(RedisConfig {
        url,
        username: None,
        ..redis_config(&redis, false)
    }))
    .await;
}

#[tokio::test]
async fn a_wrong_password_fails_at_start_naming_the_settings() {
    let redis = secure_redis(TlsClientAuth::Optional);
    let wrong = "not-the-password-8d2f";
    let e = start_error(config(RedisConfig {
        password: Some(tiercache_core::Secret::new(wrong)),
        ..redis_config(&redis, false)
    }))
    .await;
    assert!(
        e.contains("WRONGPASS") && e.contains("redis.username") && e.contains("redis.password"),
        "{e}"
    );
    assert!(!e.contains(wrong), "the password shows in: {e}");
}

#[tokio::test]
async fn an_unknown_user_fails_at_start_naming_the_settings() {
    let redis = secure_redis(TlsClientAuth::Optional);
    let e = start_error(config(RedisConfig {
        username: Some("nobody".into()),
        password: Some(tiercache_core::Secret::new("whatever-5c1e")),
        ..redis_config(&redis, false)
    }))
    .await;
    assert!(e.contains("redis.username"), "{e}");
    assert!(!e.contains("whatever-5c1e"), "the password shows in: {e}");
}

#[tokio::test]
async fn a_password_in_the_url_or_config_never_shows_in_errors_or_debug() {
    let redis = secure_redis(TlsClientAuth::Optional);
    let wrong = "url-secret-71ab";
    let url = format!("rediss://tiercache:{wrong}@127.0.0.1:{}", redis.port());
    let in_url = config(RedisConfig {
        url: url.clone(),
        username: None,
        ..redis_config(&redis, false)
    });
    let debug = format!("{in_url:?}");
    assert!(!debug.contains(wrong), "{debug}");
    assert!(
        debug.contains("rediss://tiercache:***@127.0.0.1"),
        "{debug}"
    );
    let options = in_url.redis.as_ref().unwrap().options().unwrap();
    assert!(!format!("{options:?}").contains(wrong), "{options:?}");
    let e = start_error(in_url).await;
    assert!(e.contains("WRONGPASS"), "{e}");
    assert!(!e.contains(wrong), "the password shows in: {e}");

    let in_config = config(RedisConfig {
        password: Some(tiercache_core::Secret::new("config-secret-93c0")),
        ..redis_config(&redis, true)
    });
    let debug = format!("{in_config:?}");
    let options = format!("{:?}", in_config.redis.as_ref().unwrap().options().unwrap());
    for text in [&debug, &options] {
        assert!(!text.contains("config-secret-93c0"), "{text}");
        assert!(!text.contains("PRIVATE KEY"), "{text}");
    }
    let e = start_error(in_config).await;
    assert!(!e.contains("config-secret-93c0"), "{e}");
}

#[tokio::test]
async fn a_missing_password_file_names_the_setting() {
    let redis = secure_redis(TlsClientAuth::Optional);
    let e = start_error(config(RedisConfig {
        password_file: Some("/nonexistent/tiercache/redis-password".into()),
        ..redis_config(&redis, false)
    }))
    .await;
    assert!(
        e.contains("redis.password_file") && e.contains("/nonexistent/tiercache/redis-password"),
        "{e}"
    );
}

#[tokio::test]
async fn a_redis_that_requires_client_certificates() {
    let redis = secure_redis(TlsClientAuth::Required);
    let password = redis.acl_user().unwrap().password.clone();
    let with_cert = RedisConfig {
        password: Some(tiercache_core::Secret::new(password.clone())),
        ..redis_config(&redis, true)
    };
    serves(config(with_cert)).await;
    let without = RedisConfig {
        password: Some(tiercache_core::Secret::new(password)),
        ..redis_config(&redis, false)
    };
    let e = start_error(config(without)).await;
    assert!(
        e.contains("redis.tls_cert_file") && e.contains("redis.tls_key_file"),
        "{e}"
    );
}

#[tokio::test]
async fn a_server_certificate_from_an_unknown_ca_is_refused() {
    let redis = secure_redis(TlsClientAuth::Optional);
    let password = redis.acl_user().unwrap().password.clone();
    // Without the test CA only the system roots are trusted.
    let e = start_error(config(RedisConfig {
        password: Some(tiercache_core::Secret::new(password)),
        tls_ca_file: None,
        ..redis_config(&redis, false)
    }))
    .await;
    assert!(e.contains("redis.tls_ca_file"), "{e}");
}
