//! The commands that run a program, get-or-set (runs it on a miss, for the lease holder) and
//! lock (runs it holding the lock), against a real `tiercache serve` child process.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use common::{assert_exit, json, run, stderr, stdout, tiercache, ServerProcess};

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
