//! `tiercache serve` as a real process: config errors, start-up, health, signals.
//! These pass against the skeleton server (health is served already).

mod common;

use std::io::Write;

use common::{assert_exit, run, stderr, stdout, tiercache, ServerProcess};

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[test]
fn unknown_config_field_exits_2_and_names_it() {
    let f = config_file("[defaults]\ndefault_tll = \"1s\"\n");
    let o = run(&["serve", "--config", f.path().to_str().unwrap()]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("default_tll"), "{}", stderr(&o));
}

#[test]
fn invalid_config_value_exits_2_and_names_the_field() {
    let f = config_file("[namespaces.users]\njitter = 2.0\n");
    let o = run(&["serve", "--config", f.path().to_str().unwrap()]);
    assert_exit(&o, 2);
    let err = stderr(&o);
    assert!(
        err.contains("namespaces.users") && err.contains("jitter"),
        "{err}"
    );
}

#[test]
fn config_from_env_var_is_used() {
    let f = config_file("listn = \"127.0.0.1:1\"\n");
    let o = tiercache()
        .arg("serve")
        .env("TIERCACHE_CONFIG", f.path())
        .output()
        .unwrap();
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("listn"), "{}", stderr(&o));
}

#[test]
fn missing_config_file_exits_2() {
    let o = run(&["serve", "--config", "/nonexistent/tiercache.toml"]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("/nonexistent/tiercache.toml"));
}

#[test]
fn bad_redis_url_flag_exits_2_and_names_the_field() {
    let o = run(&["serve", "--redis-url", "http://localhost:6379"]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("redis.url"), "{}", stderr(&o));
}

#[test]
fn the_redis_password_comes_from_the_environment_and_is_never_printed() {
    use tiercache_testkit::{AclUser, RedisSecurity, RedisServer, TlsClientAuth};
    let redis = RedisServer::start_secure(RedisSecurity {
        tls: Some(TlsClientAuth::Optional),
        acl_user: Some(AclUser::limited_to("team-a")),
    });
    let f = config_file(&format!(
        "listen = \"127.0.0.1:0\"\n[telemetry]\nmetrics = false\n[redis]\nurl = \"{}\"\n\
         username = \"tiercache\"\nkey_prefix = \"team-a\"\ntls_ca_file = \"{}\"\n",
        redis.url(),
        redis.tls_files().unwrap().ca_file.display()
    ));
    let o = tiercache()
        .args(["serve", "--config", f.path().to_str().unwrap()])
        .env("TIERCACHE_REDIS_PASSWORD", "wrong-env-secret-4411")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    // WRONGPASS: the variable's password was sent (without one the login is not tried).
    assert!(
        err.contains("WRONGPASS") && err.contains("redis.password"),
        "{err}"
    );
    assert!(!err.contains("wrong-env-secret-4411"), "{err}");
    let o = tiercache()
        .args(["serve", "--config", f.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_exit(&o, 2);
    assert!(
        stderr(&o).contains("TIERCACHE_REDIS_PASSWORD"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn bad_listen_address_is_a_usage_error() {
    let o = run(&["serve", "--listen", "not-an-address"]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("--listen"), "{}", stderr(&o));
}

#[test]
fn serve_answers_health_and_exits_0_on_sigterm() {
    let mut server = ServerProcess::start(&[]);
    let o = run(&["health", "--addr", &server.addr]);
    assert_exit(&o, 0);
    assert_eq!(stdout(&o).trim(), "serving");

    let o = run(&["health", "--addr", &server.addr, "--json"]);
    assert_exit(&o, 0);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["status"], "serving");

    let status = server.terminate();
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log());
    assert!(server.log().contains("shutting down"), "{}", server.log());
}

#[test]
fn serve_exits_0_on_sigint() {
    let mut server = ServerProcess::start(&[]);
    server.signal("INT");
    let status = server.wait();
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log());
    assert!(server.log().contains("SIGINT"), "{}", server.log());
}

#[test]
fn health_without_a_server_exits_3() {
    // Port 1 on loopback: nothing listens there in a test environment.
    let o = run(&["health", "--addr", "http://127.0.0.1:1", "--timeout", "2s"]);
    assert_exit(&o, 3);
    assert!(stderr(&o).contains("cannot connect"), "{}", stderr(&o));
}
