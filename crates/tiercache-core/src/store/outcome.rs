//! The outcomes both stores answer with.

use std::time::Duration;

use crate::codec::EntryData;

/// What a Set did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreSet {
    /// Stored with this version; `sequence` is the namespace sequence the write took (the
    /// entry's `born`).
    Stored {
        version: u64,
        sequence: u64,
    },
    VersionMismatch {
        current: u64,
    },
    Exists {
        current: u64,
    },
}

/// What a lease request got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseGrant {
    Granted { born: u64 },
    FreshEntryExists,
    Held { remaining: Duration },
}

/// What a Fill did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreFill {
    Stored {
        version: u64,
        sequence: u64,
        born: u64,
    },
    Revoked,
    Expired,
}

/// What a Delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreDelete {
    Deleted { sequence: u64 },
    NotFound { sequence: u64 },
    VersionMismatch { current: u64 },
}

/// An entry read from the store with its remaining lifetime.
#[derive(Debug, Clone)]
pub struct StoredEntry {
    pub data: EntryData,
    /// Time until the store drops the key (the end of the stale window).
    pub remaining: Duration,
}
