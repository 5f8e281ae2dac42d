//! A 30-second soak of the real `tiercache serve` binary (the `make soak` workload of
//! docs/performance.md, shortened): it must complete with no unexpected error and a clean exit
//! on SIGTERM. The RSS figure is not asserted: that belongs to the 20-minute run's report.

use std::time::Duration;

use tiercache_testkit::soak::{self, SoakConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_soak_of_the_real_binary_completes_without_errors() {
    let config = SoakConfig {
        duration: Duration::from_secs(30),
        sample_every: Duration::from_secs(1),
        rate: 300,
        workers: 4,
        watchers: 3,
        namespaces: 24,
        keys: 500,
        row: Duration::from_secs(10),
        ..SoakConfig::new(env!("CARGO_BIN_EXE_tiercache"))
    };
    let report = soak::run(config).await;
    let markdown = report.to_markdown();
    eprintln!("{markdown}");
    assert!(report.ok(), "the soak failed:\n{markdown}");
    for kind in [
        "get",
        "set",
        "delete",
        "get_or_set",
        "invalidate_tags",
        "watch",
    ] {
        assert!(
            report.calls.get(kind).copied().unwrap_or(0) > 0,
            "no successful {kind}:\n{markdown}"
        );
    }
    assert!(report.watch_events > 0, "no Watch event:\n{markdown}");
    assert!(
        report.samples.len() >= 20,
        "too few RSS samples:\n{markdown}"
    );
}
