//! A seconds-long smoke run of `tiercache bench`: every scenario must complete without errors.
//! It asserts no timing (the figures of a debug build on a shared machine mean nothing).
//!
//! The harness is behind the `bench` feature (`make nextest` turns it on). Built without it,
//! this file checks instead that `tiercache bench` refuses with exit 2 and says how to build it,
//! so a run without the feature shows what it did not test rather than nothing.

mod common;

use common::{run, stderr, stdout};

#[cfg(not(feature = "bench"))]
#[test]
fn bench_without_the_feature_exits_2_and_says_how_to_build_it() {
    for args in [&["bench"][..], &["bench", "--duration", "1s", "--json"]] {
        let out = run(args);
        common::assert_exit(&out, 2);
        assert_eq!(stdout(&out), "");
        assert!(
            stderr(&out).contains("--features bench -- bench"),
            "{}",
            stderr(&out)
        );
    }
}

#[cfg(feature = "bench")]
#[test]
fn every_bench_scenario_completes_without_errors() {
    let out = run(&[
        "bench",
        "--duration",
        "300ms",
        "--warmup",
        "0s",
        "--concurrency",
        "8",
        "--keys",
        "200",
        "--stampede-callers",
        "20",
        "--stampede-keys",
        "2",
        "--stampede-fill",
        "20ms",
        "--memory-entries",
        "5000",
        "--telemetry",
        "off",
        "--json",
    ]);
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "bench failed ({}):\nstdout:\n{text}\nstderr:\n{}",
        out.status,
        stderr(&out)
    );
    let report: serde_json::Value = serde_json::from_str(&text).expect("one JSON object");
    assert_eq!(report["problems"], serde_json::json!([]), "{report:#}");
    let scenarios = report["scenarios"].as_array().expect("scenarios");
    let names: Vec<&str> = scenarios
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for expected in [
        "health",
        "get_l1",
        "get_l2",
        "getorset_hit",
        "set",
        "pipeline_get_l1",
        "pipeline_get_l2",
        "getmany_100",
        "redis_get",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    for s in scenarios {
        assert!(s["calls"].as_u64().unwrap() > 0, "{s}");
        assert_eq!(s["errors"], 0, "{s}");
    }
    assert_eq!(report["stampede"]["ok"], true, "{}", report["stampede"]);
    assert_eq!(
        report["stampede"]["origin_calls_per_key"],
        serde_json::json!([1, 1])
    );
    assert_eq!(report["memory"]["ok"], true, "{}", report["memory"]);
    // redis-benchmark is optional; when it ran it must have produced a GET row.
    let rb = &report["redis_benchmark"];
    assert!(
        rb.get("skipped").is_some() || rb["ops_per_sec"].as_f64().unwrap_or(0.0) > 0.0,
        "{rb}"
    );
}

#[cfg(feature = "bench")]
#[test]
fn bench_lists_its_scenarios_and_rejects_unknown_ones() {
    let out = run(&["bench", "--scenarios", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for name in [
        "health",
        "pipeline_get_l1",
        "redis_get",
        "stampede",
        "memory",
    ] {
        assert!(text.contains(name), "{name} not listed:\n{text}");
    }
    let out = run(&["bench", "--scenarios", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}
