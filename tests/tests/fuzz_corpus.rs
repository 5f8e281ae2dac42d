//! The fuzz targets on the stable toolchain: every committed corpus file (`fuzz/corpus/<target>/`,
//! the seeds and the reproducers of past findings) replayed through the same target bodies
//! cargo-fuzz runs (`fuzz/src/`, compiled here as a module), so the targets keep compiling and
//! every past finding stays fixed. Fuzzing itself is `make fuzz` (docs/testing.md, "Fuzzing").
//!
//! The seed files are what the targets' `seeds()` write; `seed_corpus_is_up_to_date` checks it
//! (and writes them with `TIERCACHE_WRITE_SEEDS=1`).

#[path = "../../fuzz/src/lib.rs"]
mod targets;

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the repository root")
        .to_path_buf()
}

fn corpus(target: &str) -> PathBuf {
    root().join("fuzz/corpus").join(target)
}

/// Runs every file of `target`'s corpus through `run`, naming each file that fails.
fn replay(target: &str, run: fn(&[u8])) {
    let dir = corpus(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    let failed: Vec<String> = files
        .iter()
        .filter(|f| {
            let data = std::fs::read(f).expect("corpus file");
            std::panic::catch_unwind(|| run(&data)).is_err()
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{target}: these inputs fail: {failed:#?}"
    );
}

#[test]
fn entry_codec_corpus() {
    replay("entry_codec", targets::entry_codec::run);
}

#[test]
fn key_codec_corpus() {
    replay("key_codec", targets::key_codec::run);
}

#[test]
fn event_parser_corpus() {
    replay("event_parser", targets::event_parser::run);
}

#[test]
fn config_corpus() {
    replay("config", targets::config::run);
}

#[test]
fn requests_corpus() {
    replay("requests", targets::requests::run);
}

/// Every RPC of the three services has a seed, so a new RPC cannot go unfuzzed.
#[test]
fn every_rpc_has_a_seed() {
    let seeds = targets::requests::seeds();
    for (i, rpc) in targets::requests::RPCS.iter().enumerate() {
        assert!(
            seeds
                .iter()
                .any(|(_, input)| input.first() == Some(&(i as u8))),
            "no seed calls {}",
            rpc.path
        );
    }
}

/// The request seeds reach the handlers: each answers as a client would expect from a fresh
/// server, so the target fuzzes past the codec rather than into a wall of errors.
#[test]
fn request_seeds_reach_the_handlers() {
    use tonic::Code;
    let ok = Some(Code::Ok);
    for (name, input) in targets::requests::seeds() {
        let codes = targets::requests::session(&input);
        let expected = match name.as_str() {
            "malformed-set" => vec![Some(Code::InvalidArgument)],
            // A fresh server holds no lease or lock with those tokens; Fill and the releases
            // answer in their outcome, not with an error.
            "session-set-get-inspect-invalidate" => vec![ok; 5],
            "session-lease-wait" | "session-lock-contended" => vec![ok; 2],
            // Four dynamic namespaces at most (the fuzz server's limits.max_namespaces).
            "session-dynamic-namespaces" => {
                vec![ok, ok, ok, ok, Some(Code::ResourceExhausted)]
            }
            // Cut off while open, after its first message.
            "watch" => vec![None],
            _ => vec![ok],
        };
        assert_eq!(codes, expected, "seed {name}");
    }
}

/// The committed seeds are what the targets' `seeds()` functions write, so a seed changed in
/// code (or a config file the config seeds copy, like the README's examples) cannot silently
/// leave the corpus behind. `TIERCACHE_WRITE_SEEDS=1 cargo test -p tiercache-e2e --test
/// fuzz_corpus seed_corpus_is_up_to_date` writes them instead.
#[test]
fn seed_corpus_is_up_to_date() {
    let write = std::env::var_os("TIERCACHE_WRITE_SEEDS").is_some_and(|v| v == "1");
    let all = [
        ("entry_codec", targets::entry_codec::seeds()),
        ("key_codec", targets::key_codec::seeds()),
        ("event_parser", targets::event_parser::seeds()),
        ("config", targets::config::seeds(&root())),
        ("requests", targets::requests::seeds()),
    ];
    let mut stale = Vec::new();
    for (target, seeds) in all {
        let dir = corpus(target);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        for (name, input) in seeds {
            let path = dir.join(format!("seed-{name}"));
            if write {
                std::fs::write(&path, input).expect("seed file");
            } else if std::fs::read(&path).ok().as_deref() != Some(input.as_slice()) {
                stale.push(path.display().to_string());
            }
        }
    }
    assert!(
        stale.is_empty(),
        "seed files differ from the targets' seeds() (run with TIERCACHE_WRITE_SEEDS=1 and \
         commit them): {stale:?}"
    );
}
