//! Test helpers for tiercache.
