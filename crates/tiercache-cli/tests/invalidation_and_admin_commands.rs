//! invalidate-tags, flush, watch, inspect, stats and health against a real `tiercache serve`
//! child process, output into a pipe whose reader went away, and the exit code 3 of commands
//! whose server cannot be reached.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{assert_exit, json, run, stderr, stdout, tiercache, ServerProcess};
use serde_json::Value;

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
fn health_and_inspect() {
    let server = ServerProcess::start(&[]);
    let a = server.addr.as_str();
    let o = run(&["health", "--addr", a, "--json"]);
    assert_exit(&o, 0);
    assert_eq!(json(&o)["status"], "serving");

    assert_exit(&run(&["set", "i", "v", "--tag", "t", "--addr", a]), 0);
    let o = run(&["inspect", "i", "--addr", a, "--json"]);
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

/// Memory-only mode (this server has no Redis): a Get that found the key hidden by a tag does
/// not turn it into "never written"; inspect names the tag, its invalidation and the tag marks.
#[test]
fn inspect_names_the_tag_that_hid_a_key_after_a_get() {
    let server = ServerProcess::start(&[]);
    let a = server.addr.as_str();
    assert_exit(&run(&["set", "h", "v", "--tag", "team:7", "--addr", a]), 0);
    let o = run(&["invalidate-tags", "team:7", "--addr", a, "--json"]);
    assert_exit(&o, 0);
    let mark = json(&o)["sequence"].as_u64().unwrap();
    assert_exit(&run(&["get", "h", "--addr", a]), 1);

    let o = run(&["inspect", "h", "--addr", a]);
    assert_exit(&o, 0);
    let text = stdout(&o);
    assert!(
        text.contains(&format!(
            "is hidden: tag \"team:7\" was invalidated at sequence {mark}"
        )),
        "{text}"
    );
    assert!(text.contains("visibility=hidden_by_tag"), "{text}");
    assert!(text.contains(&format!("team:7@{mark}")), "{text}");

    let v = json(&run(&["inspect", "h", "--addr", a, "--json"]));
    let tier = &v["tiers"][0];
    assert_eq!(tier["visibility"], "hidden_by_tag", "{v}");
    assert_eq!(
        tier["tag_marks"],
        serde_json::json!([{"tag": "team:7", "mark": mark}]),
        "{v}"
    );
}

/// Runs `tiercache args…` with stdout a pipe whose reader is already gone, as in
/// `tiercache stats | head -0`: every write to it fails with EPIPE.
fn run_into_closed_pipe(args: &[&str]) -> Output {
    let mut child = tiercache()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tiercache");
    drop(child.stdout.take());
    child.wait_with_output().unwrap()
}

/// `tiercache stats | head`: a reader that goes away ends the output quietly (exit 0, no
/// panic, no error), for every command that prints.
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let server = ServerProcess::start(&[]);
    let a = server.addr.as_str();
    assert_exit(&run(&["set", "p", "v", "--tag", "t", "--addr", a]), 0);
    for args in [
        &["stats", "--addr", a][..],
        &["stats", "--addr", a, "--json"],
        &["get", "p", "--addr", a],
        &["inspect", "p", "--addr", a],
        &["health", "--addr", a],
        &["set", "q", "w", "--addr", a],
        &["invalidate-tags", "none", "--addr", a],
        &["--help"],
    ] {
        let o = run_into_closed_pipe(args);
        assert!(
            o.status.code() == Some(0) && o.stderr.is_empty(),
            "tiercache {}: {:?}, stderr:\n{}",
            args.join(" "),
            o.status,
            stderr(&o)
        );
    }
}

/// `tiercache watch | head -1`: the next event after the reader left ends the watch quietly.
#[test]
fn watch_ends_quietly_when_its_reader_goes_away() {
    let server = ServerProcess::start(&[]);
    let a = server.addr.clone();
    let mut child = tiercache()
        .args(["watch", "--addr", &a])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.ends_with("started\n"), "{first}");
    // The reader is gone; the next events hit the closed pipe.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "watch still runs after its reader left"
        );
        assert_exit(&run(&["set", "w", "1", "--addr", &a]), 0);
        std::thread::sleep(Duration::from_millis(100));
    };
    let o = child.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(0), "stderr:\n{}", stderr(&o));
    assert!(o.stderr.is_empty(), "stderr:\n{}", stderr(&o));
}
