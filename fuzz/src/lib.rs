//! The bodies of tiercache's fuzz targets, one module each, shared by the libFuzzer binaries
//! (`fuzz_targets/`) and the stable corpus replay (`tests/tests/fuzz_corpus.rs`).
//!
//! Each `run(data)` panics on a finding (a panic in the code under test, or a broken property
//! such as a round trip that is not the identity) and returns otherwise.
//!
//! # Targets
//! - [`entry_codec`]: the entry codec of `tiercache_core::codec` (decode; encode∘decode).
//! - [`key_codec`]: the Redis key layout of `tiercache_core::keys` (escaping, entry keys,
//!   channel names, hash tags).
//! - [`event_parser`]: invalidation events as they arrive on a namespace's channel.
//! - [`config`]: TOML text → `Config` → `validate()` → the engine it describes.
//! - [`requests`]: every RPC of CacheService, LockService and AdminService (Pipeline's
//!   operations included): bytes → the server's codec → the real handler on a memory-only engine.

#![allow(missing_docs)]

pub mod config;
pub mod entry_codec;
pub mod event_parser;
pub mod key_codec;
pub mod requests;

/// Splits `data` into at most `n` parts at the `0xff` bytes: a cheap way to fuzz several strings
/// at once whose corpus files stay readable (`ns\xffkey`).
pub fn split(data: &[u8], n: usize) -> Vec<&[u8]> {
    data.splitn(n, |&b| b == 0xff).collect()
}

/// A current-thread runtime with tokio's clock paused, so the waits of the code under test cost
/// no real time.
pub fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime")
}
