//! The soak of docs/performance.md: the real `tiercache serve` binary under a mixed workload for
//! N minutes, its RSS sampled; prints a table of RSS over time and the verdict (flat within 5 %
//! after warm-up), and writes `<out>.json` and `<out>.md`. Exits 1 if any call failed
//! unexpectedly or the server did not exit cleanly on SIGTERM (not on the RSS verdict).
//!
//! ```sh
//! make soak SOAK_MINUTES=20
//! # or, with a release binary already built:
//! cargo run --release -p tiercache-e2e --example soak -- \
//!     --binary target/release/tiercache --minutes 20 --out soak
//! ```
//!
//! Options: `--minutes M` (default `SOAK_MINUTES` or 20), `--binary PATH` (default
//! `$CARGO_TARGET_DIR/release/tiercache`, else `target/release/tiercache`), `--rate CALLS_PER_S`
//! (1000), `--namespaces N` (80), `--sample-every SECONDS` (5), `--warmup-minutes M` (a quarter of
//! the run), `--out PREFIX` (none: print only).

use std::path::PathBuf;
use std::time::Duration;

use tiercache_testkit::soak::{self, SoakConfig};

fn usage(problem: &str) -> ! {
    eprintln!(
        "soak: {problem}\nusage: soak [--minutes M] [--binary PATH] [--rate N] [--namespaces N] \
         [--sample-every S] [--warmup-minutes M] [--out PREFIX]"
    );
    std::process::exit(2);
}

fn number(flag: &str, v: Option<String>) -> f64 {
    let v = v.unwrap_or_else(|| usage(&format!("{flag} needs a value")));
    v.parse()
        .ok()
        .filter(|n: &f64| *n > 0.0)
        .unwrap_or_else(|| usage(&format!("{flag} {v}: not a positive number")))
}

#[tokio::main]
async fn main() {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let mut config = SoakConfig::new(PathBuf::from(target).join("release/tiercache"));
    let mut minutes: f64 = std::env::var("SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(20.0);
    let mut out = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--minutes" => minutes = number(&flag, args.next()),
            "--binary" => {
                config.binary = args
                    .next()
                    .unwrap_or_else(|| usage("--binary needs a path"))
                    .into()
            }
            "--rate" => config.rate = number(&flag, args.next()) as u32,
            "--namespaces" => config.namespaces = number(&flag, args.next()) as usize,
            "--sample-every" => {
                config.sample_every = Duration::from_secs_f64(number(&flag, args.next()))
            }
            "--warmup-minutes" => {
                config.warmup = Some(Duration::from_secs_f64(number(&flag, args.next()) * 60.0))
            }
            "--out" => out = Some(args.next().unwrap_or_else(|| usage("--out needs a prefix"))),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    config.duration = Duration::from_secs_f64(minutes * 60.0);
    if config.duration < Duration::from_secs(5 * 60) {
        // Short runs get a finer table.
        config.row = Duration::from_secs(15);
    }
    if !config.binary.exists() {
        usage(&format!(
            "{} does not exist: build it with `cargo build --release -p tiercache-cli`",
            config.binary.display()
        ));
    }
    eprintln!(
        "soak: {} for {minutes} min at {} calls/s…",
        config.binary.display(),
        config.rate
    );
    let report = soak::run(config).await;
    let markdown = report.to_markdown();
    println!("{markdown}");
    if let Some(prefix) = out {
        for (ext, text) in [("json", report.to_json()), ("md", markdown)] {
            let path = format!("{prefix}.{ext}");
            std::fs::write(&path, text)
                .unwrap_or_else(|e| usage(&format!("cannot write {path}: {e}")));
            eprintln!("soak: wrote {path}");
        }
    }
    if !report.ok() {
        std::process::exit(1);
    }
}
