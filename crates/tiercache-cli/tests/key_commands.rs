//! The commands on keys (get, set, del) and stats against a real `tiercache serve` child
//! process, and the usage errors (exit 2) of the command line.

mod common;

use common::{assert_exit, json, run, run_with_stdin, stderr, stdout, ServerProcess};

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["get"][..],
        &["set", "k"],
        &["set", "k", "v", "--ttl", "soon"],
        &["set", "k", "v", "--if-absent", "--if-version", "1"],
        &["del", "k", "--if-version", "minus-one"],
        &["frobnicate"],
    ] {
        let o = run(args);
        assert_exit(&o, 2);
    }
}

#[test]
fn set_then_get_returns_the_value() {
    let server = ServerProcess::start(&[]);
    let a = server.addr.as_str();

    let o = run(&["set", "greeting", "hello world", "--addr", a]);
    assert_exit(&o, 0);
    assert!(stdout(&o).starts_with("stored (version "), "{}", stdout(&o));

    let o = run(&["get", "greeting", "--addr", a]);
    assert_exit(&o, 0);
    assert_eq!(stdout(&o), "hello world\n");
}

#[test]
fn get_of_a_missing_key_exits_1() {
    let server = ServerProcess::start(&[]);
    let o = run(&["get", "nope", "--addr", &server.addr]);
    assert_exit(&o, 1);
    assert_eq!(stdout(&o), "");

    let o = run(&["get", "nope", "--addr", &server.addr, "--json"]);
    assert_exit(&o, 1);
    assert_eq!(json(&o)["outcome"], "miss");
}

#[test]
fn json_output_parses_and_carries_metadata() {
    let server = ServerProcess::start(&[]);
    let a = server.addr.as_str();

    let o = run(&[
        "set",
        "j",
        "v1",
        "--ttl",
        "30s",
        "--stale-ttl",
        "1m",
        "--tag",
        "t1",
        "--tag",
        "t2",
        "-n",
        "default",
        "--json",
        "--addr",
        a,
    ]);
    assert_exit(&o, 0);
    let set = json(&o);
    assert_eq!(set["outcome"], "stored");
    let version = set["version"].as_u64().expect("version");

    let o = run(&["get", "j", "--json", "--addr", a]);
    assert_exit(&o, 0);
    let got = json(&o);
    assert_eq!(got["outcome"], "hit");
    assert_eq!(got["key"], "j");
    assert_eq!(got["namespace"], "default");
    assert_eq!(got["value"], "v1");
    assert_eq!(got["version"].as_u64(), Some(version));
    assert_eq!(got["tags"], serde_json::json!(["t1", "t2"]));
    assert_eq!(got["stale"], false);
    let fresh = got["fresh_remaining_ms"].as_u64().unwrap();
    assert!(fresh > 0 && fresh <= 30_000, "{fresh}");

    let o = run(&["stats", "--json", "--addr", a]);
    assert_exit(&o, 0);
    let stats = json(&o);
    assert!(stats["namespaces"].is_array(), "{stats}");
    assert!(stats["mode"].is_string(), "{stats}");
}

#[test]
fn conditional_set_exits_1_when_the_condition_fails() {
    let server = ServerProcess::start(&[]);
    let a = server.addr.as_str();

    let o = run(&["set", "c", "first", "--if-absent", "--json", "--addr", a]);
    assert_exit(&o, 0);
    let version = json(&o)["version"].as_u64().unwrap();

    let o = run(&["set", "c", "second", "--if-absent", "--json", "--addr", a]);
    assert_exit(&o, 1);
    assert_eq!(json(&o)["outcome"], "exists");
    assert_eq!(json(&o)["current_version"].as_u64(), Some(version));

    let wrong = (version + 10).to_string();
    let o = run(&["set", "c", "second", "--if-version", &wrong, "--addr", a]);
    assert_exit(&o, 1);

    let right = version.to_string();
    let o = run(&["set", "c", "second", "--if-version", &right, "--addr", a]);
    assert_exit(&o, 0);

    let o = run(&["get", "c", "--addr", a]);
    assert_eq!(stdout(&o), "second\n");
}

#[test]
fn del_removes_the_key() {
    let server = ServerProcess::start(&[]);
    let a = server.addr.as_str();

    let o = run(&["set", "d", "x", "--json", "--addr", a]);
    assert_exit(&o, 0);
    let version = json(&o)["version"].as_u64().unwrap();

    let wrong = (version + 1).to_string();
    let o = run(&["del", "d", "--if-version", &wrong, "--json", "--addr", a]);
    assert_exit(&o, 1);
    assert_eq!(json(&o)["outcome"], "version_mismatch");

    let o = run(&["del", "d", "--addr", a]);
    assert_exit(&o, 0);
    assert_eq!(stdout(&o).trim(), "deleted");

    let o = run(&["get", "d", "--addr", a]);
    assert_exit(&o, 1);

    // Deleting what is not there is not a failure without a condition.
    let o = run(&["del", "d", "--json", "--addr", a]);
    assert_exit(&o, 0);
    assert_eq!(json(&o)["outcome"], "not_found");
}

#[test]
fn set_reads_the_value_from_stdin() {
    let server = ServerProcess::start(&[]);
    let a = server.addr.as_str();

    let o = run_with_stdin(&["set", "s", "-", "--addr", a], b"from\nstdin");
    assert_exit(&o, 0);

    let o = run(&["get", "s", "--addr", a]);
    assert_exit(&o, 0);
    assert_eq!(stdout(&o), "from\nstdin\n");
}

#[test]
fn namespaces_are_separate() {
    let server = ServerProcess::start(&[]);
    let a = server.addr.as_str();

    let o = run(&["set", "k", "in-a", "-n", "team-a", "--addr", a]);
    assert_exit(&o, 0);
    let o = run(&["get", "k", "-n", "team-b", "--addr", a]);
    assert_exit(&o, 1);
    let o = run(&["get", "k", "--namespace", "team-a", "--addr", a]);
    assert_exit(&o, 0);
    assert_eq!(stdout(&o), "in-a\n");
}

#[test]
fn invalid_namespace_is_a_usage_error() {
    let server = ServerProcess::start(&[]);
    let o = run(&["get", "k", "-n", "Not Valid", "--addr", &server.addr]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("invalid argument"), "{}", stderr(&o));
}
