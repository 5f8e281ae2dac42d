//! Every mapping between the engine's types and the wire types, in one place so a field added on
//! either side has one spot to change. Pure functions: no validation (that is [`crate::validate`])
//! and no telemetry. Durations go through [`tiercache_proto::duration`], which the SDK and CLI use
//! too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tiercache_core::{
    DeleteOutcome, Event, EventKind, FillOutcome, Found, GetOrSetResult, Inspection, Lease,
    LockAcquire, Lookup, Mode, Namespace, NamespacePolicy, SetOutcome, Tier, TierInspection,
    Visibility, WriteCondition,
};
use tiercache_proto::duration::to_proto as duration;
use tiercache_proto::v1 as pb;

// ---- requests: wire to engine ----

/// Returns the engine's write condition for a Set's optional condition.
pub fn write_condition(c: Option<pb::WriteCondition>) -> WriteCondition {
    match c.and_then(|c| c.condition) {
        None => WriteCondition::None,
        Some(pb::write_condition::Condition::IfAbsent(true)) => WriteCondition::IfAbsent,
        Some(pb::write_condition::Condition::IfAbsent(false)) => WriteCondition::None,
        Some(pb::write_condition::Condition::IfVersion(v)) => WriteCondition::IfVersion(v),
    }
}

// ---- entries and reads ----

/// Converts a tier for the wire.
pub fn tier(t: Tier) -> pb::Tier {
    match t {
        Tier::L1 => pb::Tier::L1,
        Tier::L2 => pb::Tier::L2,
    }
}

/// Converts a found entry for the wire, with or without its value.
pub fn entry(f: Found, with_value: bool) -> pb::Entry {
    pb::Entry {
        value: if with_value {
            f.data.value
        } else {
            Default::default()
        },
        version: f.data.version,
        tags: f.data.tags.to_vec(),
        fresh_remaining: Some(duration(f.fresh_remaining)),
        stale_remaining: Some(duration(f.stale_remaining)),
        stale: f.stale,
        tier: tier(f.tier) as i32,
        absent: f.data.absent,
        born: f.data.born,
    }
}

/// Converts a lookup for the wire; a hit at version `if_version_not` is NOT_MODIFIED and
/// carries no value. `applied_sequence` is what [`tiercache_core::Cache::applied_sequence`]
/// returned before the lookup.
pub fn get_response(
    lookup: Lookup,
    if_version_not: Option<u64>,
    applied_sequence: u64,
) -> pb::GetResponse {
    let (outcome, entry) = match lookup {
        Lookup::Miss => (pb::GetOutcome::Miss, None),
        Lookup::Hit(f) if Some(f.data.version) == if_version_not => {
            (pb::GetOutcome::NotModified, Some(entry(f, false)))
        }
        Lookup::Hit(f) => (pb::GetOutcome::Hit, Some(entry(f, true))),
    };
    pb::GetResponse {
        outcome: outcome as i32,
        entry,
        applied_sequence,
    }
}

// ---- writes ----

/// Converts a Set's outcome for the wire.
pub fn set_response(outcome: SetOutcome) -> pb::SetResponse {
    match outcome {
        SetOutcome::Stored { version } => pb::SetResponse {
            outcome: pb::SetOutcome::Stored as i32,
            version,
            current_version: 0,
        },
        SetOutcome::VersionMismatch { current } => pb::SetResponse {
            outcome: pb::SetOutcome::VersionMismatch as i32,
            version: 0,
            current_version: current,
        },
        SetOutcome::Exists { current } => pb::SetResponse {
            outcome: pb::SetOutcome::Exists as i32,
            version: 0,
            current_version: current,
        },
    }
}

/// Converts a Delete's outcome for the wire.
pub fn delete_response(outcome: DeleteOutcome) -> pb::DeleteResponse {
    match outcome {
        DeleteOutcome::Deleted => pb::DeleteResponse {
            outcome: pb::DeleteOutcome::Deleted as i32,
            current_version: 0,
        },
        DeleteOutcome::NotFound => pb::DeleteResponse {
            outcome: pb::DeleteOutcome::NotFound as i32,
            current_version: 0,
        },
        DeleteOutcome::VersionMismatch { current } => pb::DeleteResponse {
            outcome: pb::DeleteOutcome::VersionMismatch as i32,
            current_version: current,
        },
    }
}

// ---- leases ----

/// Converts a lease for the wire.
pub fn lease(l: Lease) -> pb::Lease {
    pb::Lease {
        token: l.token,
        ttl: Some(duration(l.ttl)),
        refresh: l.refresh,
    }
}

/// Converts a GetOrSet result for `key` for the wire. A wait that timed out becomes COMPUTE;
/// the caller decides beforehand whether it should be UNAVAILABLE instead. `applied_sequence`
/// is what [`tiercache_core::Cache::applied_sequence`] returned before the call.
pub fn get_or_set_response(
    key: String,
    result: GetOrSetResult,
    applied_sequence: u64,
) -> pb::GetOrSetResponse {
    let mut r = pb::GetOrSetResponse {
        key,
        applied_sequence,
        ..Default::default()
    };
    match result {
        GetOrSetResult::Hit { found, refresh } => {
            r.outcome = pb::GetOrSetOutcome::Hit as i32;
            r.entry = Some(entry(found, true));
            r.lease = refresh.map(lease);
        }
        GetOrSetResult::Lease(l) => {
            r.outcome = pb::GetOrSetOutcome::Lease as i32;
            r.lease = Some(lease(l));
        }
        GetOrSetResult::Filled(found) => {
            r.outcome = pb::GetOrSetOutcome::Filled as i32;
            r.entry = Some(entry(found, true));
        }
        // Compute: Redis is unreachable, so nothing could be stored; the caller computes.
        GetOrSetResult::WaitTimedOut | GetOrSetResult::Compute => {
            r.outcome = pb::GetOrSetOutcome::Compute as i32;
        }
    }
    r
}

/// Converts a Fill's outcome for the wire.
pub fn fill_response(outcome: FillOutcome) -> pb::FillResponse {
    match outcome {
        FillOutcome::Stored { version } => pb::FillResponse {
            outcome: pb::FillOutcome::Stored as i32,
            version,
        },
        FillOutcome::LeaseRevoked => pb::FillResponse {
            outcome: pb::FillOutcome::LeaseRevoked as i32,
            version: 0,
        },
        FillOutcome::LeaseExpired => pb::FillResponse {
            outcome: pb::FillOutcome::LeaseExpired as i32,
            version: 0,
        },
    }
}

/// Converts whether a ReleaseLease found the lease held for the wire.
pub fn release_lease_response(released: bool) -> pb::ReleaseLeaseResponse {
    pb::ReleaseLeaseResponse {
        outcome: if released {
            pb::ReleaseLeaseOutcome::Released
        } else {
            pb::ReleaseLeaseOutcome::NotHeld
        } as i32,
    }
}

// ---- locks ----

/// Converts an AcquireLock result, granted for `ttl`, for the wire.
pub fn acquire_lock_response(got: LockAcquire, ttl: Duration) -> pb::AcquireLockResponse {
    match got {
        LockAcquire::Acquired {
            owner_token,
            fencing_token,
        } => pb::AcquireLockResponse {
            outcome: pb::AcquireLockOutcome::Acquired as i32,
            owner_token,
            fencing_token,
            ttl: Some(duration(ttl)),
            max_wait: None,
        },
        LockAcquire::Timeout => pb::AcquireLockResponse {
            outcome: pb::AcquireLockOutcome::Timeout as i32,
            ..Default::default()
        },
    }
}

/// Converts whether a renew or release found the lock held by the caller for the wire.
pub fn lock_ownership(held: bool) -> pb::LockOwnershipOutcome {
    if held {
        pb::LockOwnershipOutcome::Ok
    } else {
        pb::LockOwnershipOutcome::NotHeld
    }
}

// ---- namespaces and stats ----

/// Converts a policy for the wire.
pub fn policy(p: &NamespacePolicy) -> pb::NamespacePolicy {
    pb::NamespacePolicy {
        default_ttl: Some(duration(p.default_ttl)),
        max_ttl: Some(duration(p.max_ttl)),
        stale_ttl: Some(duration(p.stale_ttl)),
        negative_ttl: Some(duration(p.negative_ttl)),
        jitter: p.jitter,
        l1_max_bytes: p.l1_max_bytes,
        l1_max_ttl: Some(duration(p.l1_max_ttl)),
        max_value_bytes: p.max_value_bytes as u64,
        lease_ttl: Some(duration(p.lease_ttl)),
        max_wait: Some(duration(p.max_wait)),
        l1_enabled: p.l1_enabled,
    }
}

/// Converts a namespace and its effective policy for ListNamespaces.
pub fn namespace_info(ns: &Namespace) -> pb::NamespaceInfo {
    pb::NamespaceInfo {
        name: ns.name.to_string(),
        policy: Some(policy(&ns.policy)),
        dynamic: ns.dynamic,
    }
}

/// Reads a namespace's counters and L1 usage for GetStats.
pub fn namespace_stats(ns: &Namespace) -> pb::NamespaceStats {
    let s = &ns.stats;
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let (entries, bytes) = ns.l1_usage();
    pb::NamespaceStats {
        namespace: ns.name.to_string(),
        hits_l1: get(&s.hits_l1),
        hits_l2: get(&s.hits_l2),
        stale_hits_l1: get(&s.stale_hits_l1),
        stale_hits_l2: get(&s.stale_hits_l2),
        misses: get(&s.misses),
        sets: get(&s.sets),
        deletes: get(&s.deletes),
        fills: get(&s.fills),
        leases_granted: get(&s.leases_granted),
        lease_waits: get(&s.lease_waits),
        coalesced: get(&s.coalesced),
        invalidations: get(&s.invalidations),
        l1_evictions: get(&s.l1_evictions),
        l1_entries: entries,
        l1_bytes: bytes,
        l1_budget_bytes: ns.l1_budget(),
        l1_clears: get(&s.l1_clears),
    }
}

/// Converts the storage mode for the wire.
pub fn storage_mode(m: Mode) -> pb::StorageMode {
    match m {
        Mode::MemoryOnly => pb::StorageMode::Memory,
        Mode::TwoTier => pb::StorageMode::TwoTier,
    }
}

// ---- inspect ----

/// Converts an inspection, and the outstanding lease if any (`(born, remaining)`), for the
/// wire. Entries are shown without their values: Inspect explains state, it is not a read.
pub fn inspect_response(i: Inspection, lease: Option<(u64, Duration)>) -> pb::InspectResponse {
    let mut explanation = i.explanation;
    if let Some((born, remaining)) = lease {
        explanation.push_str(&format!(
            " A lease granted at sequence {born} is outstanding ({} ms left): a caller is computing the value.",
            remaining.as_millis()
        ));
    }
    pb::InspectResponse {
        tiers: i.tiers.into_iter().map(tier_view).collect(),
        sequence: i.sequence,
        flush_mark: i.flush_mark,
        lease_held: lease.is_some(),
        lease_remaining: lease.map(|(_, remaining)| duration(remaining)),
        lease_born: lease.map(|(born, _)| born).unwrap_or(0),
        explanation,
    }
}

fn tier_view(t: TierInspection) -> pb::TierView {
    pb::TierView {
        tier: tier(t.tier) as i32,
        present: t.entry.is_some(),
        entry: t.entry.map(|f| entry(f, false)),
        visibility: visibility(&t.visibility) as i32,
        tag_marks: t
            .tag_marks
            .into_iter()
            .map(|(tag, mark)| pb::TagMark { tag, mark })
            .collect(),
    }
}

/// Converts a visibility verdict for the wire.
pub fn visibility(v: &Visibility) -> pb::Visibility {
    match v {
        Visibility::Fresh => pb::Visibility::Fresh,
        Visibility::Stale => pb::Visibility::Stale,
        Visibility::Absent => pb::Visibility::Absent,
        Visibility::HiddenByFlush { .. } => pb::Visibility::HiddenByFlush,
        Visibility::HiddenByTag { .. } => pb::Visibility::HiddenByTag,
    }
}

// ---- watch ----

/// The first message of a Watch stream: events after `sequence` follow.
pub fn watch_started(sequence: u64) -> pb::WatchResponse {
    pb::WatchResponse {
        sequence,
        event: Some(pb::watch_response::Event::Started(pb::WatchStarted {})),
    }
}

/// Converts a namespace event for the Watch stream.
pub fn watch_event(e: Event) -> pb::WatchResponse {
    use pb::watch_response::Event as E;
    pb::WatchResponse {
        sequence: e.sequence,
        event: Some(match e.kind {
            EventKind::KeyChanged { key, version } => {
                E::KeyChanged(pb::KeyChanged { key, version })
            }
            EventKind::TagsInvalidated { tags } => E::TagsInvalidated(pb::TagsInvalidated { tags }),
            EventKind::Flushed => E::NamespaceFlushed(pb::NamespaceFlushed {}),
            EventKind::Gap { last_sequence } => E::Gap(pb::EventGap { last_sequence }),
        }),
    }
}
