//! The Rust SDK for tiercache.
