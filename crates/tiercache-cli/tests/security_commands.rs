//! `tiercache token` and the client commands' `--token` / `TIERCACHE_TOKEN` against a real
//! `tiercache serve` with `[auth]` (the printed hash line goes into a config, and the printed
//! token authenticates), and `serve` on a non-loopback address: refused without `[auth]`, a
//! warning with `allow_insecure = true`.

mod common;

use common::{assert_exit, json, run, stdout, tiercache, ServerProcess};

/// Runs `tiercache token --principal NAME` and returns (token, config line, tokens-file line).
fn new_token(principal: &str) -> (String, String, String) {
    let o = run(&["token", "--principal", principal]);
    assert_exit(&o, 0);
    let out = stdout(&o);
    let mut lines = out.lines();
    let token = lines.next().expect("the token first").to_string();
    let config_line = out
        .lines()
        .find(|l| l.starts_with("token_sha256 = "))
        .unwrap_or_else(|| panic!("no config line in:\n{out}"))
        .to_string();
    let file_line = out
        .lines()
        .find(|l| l.starts_with(&format!("{principal} ")))
        .unwrap_or_else(|| panic!("no tokens-file line in:\n{out}"))
        .to_string();
    (token, config_line, file_line)
}

#[test]
fn token_output_round_trips_through_a_config() {
    let (token, config_line, file_line) = new_token("app");
    assert!(token.starts_with("tc_") && token.len() == 67, "{token}");
    let hash = file_line.split_whitespace().nth(1).unwrap().to_string();
    assert_eq!(config_line, format!("token_sha256 = [\"{hash}\"]"));
    assert!(
        !config_line.contains(&token[3..]),
        "only the hash goes in the config"
    );
    // Each run makes a new token.
    assert_ne!(new_token("app").0, token);

    // A second token, given to the server in TIERCACHE_AUTH_TOKENS.
    let (env_token, _, env_line) = new_token("app");

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tiercache.toml");
    std::fs::write(
        &config,
        format!("[auth.principals.app]\n{config_line}\n[auth.principals.app.rights]\n\"default\" = [\"read\", \"write\"]\n"),
    )
    .unwrap();
    let server = ServerProcess::start_with_env(
        &["--config", config.to_str().unwrap()],
        &[("TIERCACHE_AUTH_TOKENS", &env_line)],
    );
    let a = server.addr.as_str();

    let o = run(&["set", "k", "v", "--addr", a, "--token", &token]);
    assert_exit(&o, 0);
    let o = tiercache()
        .args(["get", "k", "--addr", a])
        .env("TIERCACHE_TOKEN", &env_token)
        .output()
        .unwrap();
    assert_exit(&o, 0);
    assert_eq!(stdout(&o), "v\n");
    // Without a token, or with an unknown one: refused (exit 3).
    assert_exit(&run(&["get", "k", "--addr", a]), 3);
    assert_exit(&run(&["get", "k", "--addr", a, "--token", "tc_nope"]), 3);
    // Neither the tokens nor their hashes reach the server's log.
    let log = server.log();
    assert!(
        !log.contains(&token) && !log.contains(&env_token) && !log.contains(&hash),
        "{log}"
    );
}

#[test]
fn token_json_names_every_line() {
    let o = run(&["token", "--principal", "ops", "--json"]);
    assert_exit(&o, 0);
    let v = json(&o);
    let hash = v["token_sha256"].as_str().unwrap();
    assert_eq!(hash.len(), 64);
    assert_eq!(v["tokens_file_line"], format!("ops {hash}"));
    assert_eq!(v["principal"], "ops");
    assert!(v["token"].as_str().unwrap().starts_with("tc_"));
    assert_exit(&run(&["token", "--principal", "bad name"]), 2);
}

#[test]
fn serve_refuses_a_non_loopback_listen_without_auth() {
    let o = tiercache()
        .args([
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_exit(&o, 2);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("auth") && err.contains("allow_insecure"),
        "{err}"
    );
}

#[test]
fn allow_insecure_starts_with_a_warning() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tiercache.toml");
    std::fs::write(&config, "allow_insecure = true\n").unwrap();
    let mut child = tiercache()
        .args([
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(["--log-format", "json", "--config", config.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut seen = Vec::new();
    let warned = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let warning = line.contains("\"WARN\"") && line.contains("allow_insecure");
                seen.push(line);
                if warning {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(warned, "no allow_insecure warning in:\n{}", seen.join("\n"));
}
