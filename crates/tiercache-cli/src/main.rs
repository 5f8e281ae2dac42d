//! The `tiercache` binary: parses flags and hands over to `serve` or `commands`.
//!
//! # Layout
//!
//! - `args`: the clap command line.
//! - `serve`: `tiercache serve` (config, logging, signals, `tiercache_server::run`).
//! - `commands`: the client commands (get, set, del, get-or-set, invalidate-tags, flush, stats,
//!   inspect, watch, lock, health, token) and their output.
//! - `bench`: `tiercache bench`, the benchmark harness (docs/performance.md); only with the
//!   `bench` feature, which the shipped binary leaves out.
//! - `exit`: exit codes and the failure type that carries one.
//! - `out`: stdout that lets its reader go away (a broken pipe ends the output quietly).

mod args;
#[cfg(feature = "bench")]
mod bench;
mod commands;
mod exit;
mod out;
mod serve;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};
use crate::exit::{Exit, Failure};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return Exit::Failure.into();
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(exit) => exit.into(),
        Err(Failure { exit, error }) => {
            eprintln!("error: {error:#}");
            exit.into()
        }
    }
}

async fn dispatch(command: Command) -> Result<Exit, Failure> {
    match command {
        Command::Serve(args) => serve::serve(args).await,
        Command::Get(args) => commands::get(args).await,
        Command::Set(args) => commands::set(args).await,
        Command::Del(args) => commands::del(args).await,
        Command::GetOrSet(args) => commands::get_or_set(args).await,
        Command::InvalidateTags(args) => commands::invalidate_tags(args).await,
        Command::Flush(args) => commands::flush(args).await,
        Command::Stats(args) => commands::stats(args).await,
        Command::Inspect(args) => commands::inspect(args).await,
        Command::Watch(args) => commands::watch(args).await,
        Command::Lock(args) => commands::lock(args).await,
        Command::Health(args) => commands::health(args).await,
        Command::Token(args) => commands::token(args),
        #[cfg(feature = "bench")]
        Command::Bench(args) => bench::bench(args).await,
        #[cfg(not(feature = "bench"))]
        Command::Bench(_) => Err(bench_unavailable()),
    }
}

/// The answer of `tiercache bench` in a build without the harness: a usage error (exit 2) that
/// says how to get one.
#[cfg(not(feature = "bench"))]
fn bench_unavailable() -> Failure {
    Failure::usage(anyhow::anyhow!(
        "this tiercache was built without the bench feature; run the benchmark with \
         `cargo run -p tiercache-cli --release --features bench -- bench` (or `make bench`)"
    ))
}
