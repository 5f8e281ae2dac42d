//! Inspect: what each tier holds for one key, and whether and why it is visible.
//!
//! Inspection is read-only: it neither fills L1 nor learns tag marks nor counts lookups, so
//! looking at a key does not change what the next `Get` sees or what `GetStats` reports.
//!
//! In two-tier mode one Lua script reads the entry, its remaining lifetime, the namespace
//! sequence and flush mark, and the marks of the entry's tags (and of the tags of this
//! replica's L1 copy) in one atomic step, so the answer is a consistent snapshot of Redis.
//! The verdict is Redis's: L1 of the answering replica is shown beside it, judged against the
//! same marks, because a replica may briefly hold a copy whose invalidation event is in flight.
//!
//! Leases are not shown yet. Adding them means: pass the lease key as `KEYS[4]`, return its
//! value and `PTTL` after the tag marks, and add a `lease` field to [`Inspection`].

use std::fmt::Write as _;
use std::time::Duration;

use tokio::time::Instant;

use crate::engine::Cache;
use crate::error::CoreError;
use crate::namespace::{L1Entry, Namespace};
use crate::types::{Found, Tier};

/// Whether an entry would be served, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Visibility {
    /// Visible and within its fresh period.
    Fresh,
    /// Visible, past its fresh period, within its stale window.
    Stale,
    /// Nothing is stored (never written, deleted, or expired).
    Absent,
    /// Born before the namespace's latest flush.
    HiddenByFlush { flush_mark: u64 },
    /// Born before `tag` was last invalidated (at sequence `mark`).
    HiddenByTag { tag: String, mark: u64 },
}

/// What one tier holds for the key.
#[derive(Debug, Clone)]
pub struct TierInspection {
    pub tier: Tier,
    /// The stored entry with its remaining lifetime, hidden or not; `None` when the tier holds
    /// nothing live for the key.
    pub entry: Option<Found>,
    /// The current invalidation mark of each of the entry's tags (0: never invalidated).
    pub tag_marks: Vec<(String, u64)>,
    pub visibility: Visibility,
}

/// The answer of [`Cache::inspect`].
#[derive(Debug, Clone)]
pub struct Inspection {
    /// The namespace's current sequence (Redis's in two-tier mode).
    pub sequence: u64,
    /// The namespace's flush mark (0: never flushed).
    pub flush_mark: u64,
    /// L1 of this replica (when the namespace has one), then L2 (two-tier mode).
    pub tiers: Vec<TierInspection>,
    /// The verdict of the authoritative tier: L2 in two-tier mode, L1 in memory-only mode.
    pub visibility: Visibility,
    /// One sentence explaining the verdict.
    pub explanation: String,
}

impl Cache {
    /// Explains one key: what L1 of this replica and L2 hold, the namespace sequence and flush
    /// mark, the marks of the entry's tags, and whether and why the entry is visible.
    ///
    /// Read-only: it does not fill L1, learn marks or change any counter.
    pub async fn inspect(&self, ns: &Namespace, key: &str) -> Result<Inspection, CoreError> {
        let now = Instant::now();
        match self.inner.store.redis() {
            None => {
                let (entry, sequence, flush, marks) = {
                    let s = ns.sync.read();
                    let entry = ns.l1.as_ref().and_then(|l1| l1.get(key));
                    let marks = entry
                        .as_ref()
                        .map(|e| {
                            e.data
                                .tags
                                .iter()
                                .map(|t| (t.clone(), s.tag_marks.get(t).copied().unwrap_or(0)))
                                .collect()
                        })
                        .unwrap_or_default();
                    (entry, s.last_seq.unwrap_or(0), s.flush_mark, marks)
                };
                let l1 = tier_view(Tier::L1, l1_found(entry.as_deref(), now), marks, flush);
                let explanation = explain(&l1, false, None, flush);
                Ok(Inspection {
                    sequence,
                    flush_mark: flush,
                    visibility: l1.visibility.clone(),
                    tiers: vec![l1],
                    explanation,
                })
            }
            Some(l2) => {
                let l1_entry = ns.l1.as_ref().and_then(|l1| l1.get(key));
                let l1_tags: Vec<String> = l1_entry
                    .as_ref()
                    .map(|e| e.data.tags.to_vec())
                    .unwrap_or_default();
                let snap = l2.inspect(&ns.keys, key, &l1_tags).await?;
                let now = Instant::now().max(now);
                let l2_found = snap.entry.map(|(data, remaining)| {
                    let fresh = remaining.saturating_sub(data.stale_window);
                    Found {
                        data,
                        fresh_remaining: fresh,
                        stale_remaining: remaining,
                        stale: fresh.is_zero(),
                        tier: Tier::L2,
                    }
                });
                let l2_marks = l2_found
                    .as_ref()
                    .map(|f| f.data.tags.iter().cloned().zip(snap.entry_marks).collect())
                    .unwrap_or_default();
                let l2_view = tier_view(Tier::L2, l2_found, l2_marks, snap.flush);
                let l1_view = ns.l1.as_ref().map(|_| {
                    let marks = l1_tags.into_iter().zip(snap.extra_marks).collect();
                    tier_view(
                        Tier::L1,
                        l1_found(l1_entry.as_deref(), now),
                        marks,
                        snap.flush,
                    )
                });
                let explanation = explain(&l2_view, true, l1_view.as_ref(), snap.flush);
                Ok(Inspection {
                    sequence: snap.sequence,
                    flush_mark: snap.flush,
                    visibility: l2_view.visibility.clone(),
                    tiers: l1_view.into_iter().chain([l2_view]).collect(),
                    explanation,
                })
            }
        }
    }
}

/// The live L1 entry as a [`Found`]; `None` when L1 holds nothing it could still serve.
fn l1_found(e: Option<&L1Entry>, now: Instant) -> Option<Found> {
    let e = e?;
    if now >= e.stale_until || now >= e.l1_until {
        return None;
    }
    Some(Found {
        data: e.data.clone(),
        fresh_remaining: e.fresh_until.saturating_duration_since(now),
        stale_remaining: e.stale_until.saturating_duration_since(now),
        stale: now >= e.fresh_until,
        tier: Tier::L1,
    })
}

fn tier_view(
    tier: Tier,
    entry: Option<Found>,
    tag_marks: Vec<(String, u64)>,
    flush: u64,
) -> TierInspection {
    let visibility = match &entry {
        None => Visibility::Absent,
        Some(f) if f.data.born < flush => Visibility::HiddenByFlush { flush_mark: flush },
        Some(f) => match tag_marks.iter().find(|(_, m)| f.data.born < *m) {
            Some((tag, mark)) => Visibility::HiddenByTag {
                tag: tag.clone(),
                mark: *mark,
            },
            None if f.stale => Visibility::Stale,
            None => Visibility::Fresh,
        },
    };
    TierInspection {
        tier,
        entry,
        tag_marks,
        visibility,
    }
}

fn secs(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

/// One sentence on the authoritative view, with a clause on L1 when it disagrees.
fn explain(
    view: &TierInspection,
    two_tier: bool,
    l1: Option<&TierInspection>,
    flush: u64,
) -> String {
    let mut s = String::new();
    if two_tier {
        s.push_str("In L2, ");
    }
    match (&view.entry, &view.visibility) {
        // Memory-only mode drops entries on a flush (L1 is the store); L2 keeps them hidden.
        (None, _) | (_, Visibility::Absent) if !two_tier && flush > 0 => {
            let _ = write!(
                s,
                "no entry is stored for the key (never written, deleted, expired, or dropped by \
                 the flush at sequence {flush})"
            );
        }
        (None, _) | (_, Visibility::Absent) => {
            s.push_str("no entry is stored for the key (never written, deleted, or expired)");
        }
        (Some(f), v) => {
            let what = if f.data.absent {
                "negative entry version"
            } else {
                "version"
            };
            let _ = write!(
                s,
                "{what} {} (born at sequence {}) ",
                f.data.version, f.data.born
            );
            let _ = match v {
                Visibility::Fresh => write!(
                    s,
                    "is visible and fresh for {} more, then stale for {}",
                    secs(f.fresh_remaining),
                    secs(f.stale_remaining.saturating_sub(f.fresh_remaining))
                ),
                Visibility::Stale => write!(
                    s,
                    "is past its fresh period and served stale for {} more",
                    secs(f.stale_remaining)
                ),
                Visibility::HiddenByFlush { flush_mark } => write!(
                    s,
                    "is hidden: the namespace was flushed at sequence {flush_mark}, after it was born"
                ),
                Visibility::HiddenByTag { tag, mark } => write!(
                    s,
                    "is hidden: tag \"{tag}\" was invalidated at sequence {mark}, after it was born"
                ),
                Visibility::Absent => Ok(()),
            };
        }
    }
    if let Some(l1) = l1 {
        let l2_version = view.entry.as_ref().map(|f| f.data.version);
        if let Some(f) = &l1.entry {
            if Some(f.data.version) != l2_version {
                let state = match &l1.visibility {
                    Visibility::HiddenByFlush { .. } | Visibility::HiddenByTag { .. } => "hidden",
                    _ => "not yet replaced (its invalidation event is in flight)",
                };
                let _ = write!(
                    s,
                    ", while this replica's L1 holds version {} ({state})",
                    f.data.version
                );
            }
        }
    }
    s.push('.');
    s
}
