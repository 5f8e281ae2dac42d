//! Watch: a namespace's events as this replica applies them, for client-side near caches.
//!
//! The contract a consumer relies on:
//!
//! - [`Watch::start_sequence`] is the namespace sequence the stream starts after: every event
//!   with a larger sequence is delivered, in order, with consecutive sequences.
//! - When events were lost (the replica saw a gap on the bus, its subscription dropped, or the
//!   consumer fell behind the replica's buffer) the stream yields a
//!   [`EventKind::Gap`]: the consumer must clear everything it cached for the namespace. The gap's
//!   `sequence` is where the stream resumes (the next event has `sequence + 1`) and its
//!   `last_sequence` is the last sequence delivered before the loss.
//! - While the replica cannot resume yet (its subscription is down) it reports the loss at once
//!   with a gap whose `sequence == last_sequence`, and a second gap when it has resynchronized.
//!   A consumer simply clears on each gap: what it cached between the two may have missed events.
//!
//! In two-tier mode a replica stops applying a namespace's events after a gap until it re-reads
//! the namespace's sequence from Redis; a watch resynchronizes the namespace itself, so a
//! namespace that is only watched keeps flowing.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::{self, error::RecvError};

use crate::engine::Cache;
use crate::error::CoreError;
use crate::event::{Event, EventKind};
use crate::namespace::Namespace;

/// How long a watch waits between attempts to resynchronize while the subscription is down.
const RESYNC_BACKOFF_MIN: Duration = Duration::from_millis(10);
const RESYNC_BACKOFF_MAX: Duration = Duration::from_millis(500);

/// A stream of one namespace's events; see the module docs for the contract.
pub struct Watch {
    cache: Cache,
    ns: Arc<Namespace>,
    rx: broadcast::Receiver<Event>,
    start: u64,
    /// The last sequence the consumer knows about (delivered, started at, or resumed at).
    last: u64,
    /// The receiver fell behind: the next event is preceded by a gap.
    lagged: bool,
    /// The namespace must be re-read before the stream can go on.
    resync: bool,
    queued: VecDeque<Event>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("namespace", &self.ns.name)
            .field("last", &self.last)
            .finish()
    }
}

impl Cache {
    /// Starts watching a namespace. In two-tier mode the namespace is synced first, so the start
    /// sequence is the real current sequence. If the event subscription is down, the watch
    /// starts at 0 and its first event is a gap at the sequence it resumes from.
    pub async fn watch(&self, ns: &Arc<Namespace>) -> Result<Watch, CoreError> {
        self.ensure_synced(ns).await?;
        // Subscribing and reading the sequence under the lock that event delivery holds makes
        // "started at N" and "everything after N" one step.
        let (rx, last) = {
            let s = ns.sync.read();
            (ns.events.subscribe(), s.last_seq)
        };
        Ok(Watch {
            cache: self.clone(),
            ns: ns.clone(),
            rx,
            start: last.unwrap_or(0),
            last: last.unwrap_or(0),
            lagged: false,
            resync: last.is_none(),
            queued: VecDeque::new(),
        })
    }
}

impl Watch {
    /// The sequence the stream starts after.
    pub fn start_sequence(&self) -> u64 {
        self.start
    }

    /// Returns the next event, waiting for it; `None` once the engine is gone.
    ///
    /// Cancel-safe: dropping the future loses no event.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.queued.pop_front() {
                return Some(e);
            }
            if self.resync {
                let resumed = self.resynchronize().await;
                self.resync = false;
                let gap = self.gap(resumed);
                return Some(gap);
            }
            match self.rx.recv().await {
                Ok(Event {
                    kind: EventKind::Gap { .. },
                    ..
                }) => {
                    // The replica cleared the namespace and stopped applying its events.
                    self.resync = true;
                    if self.cache.degraded() {
                        // It cannot resume yet: report the loss now, and again on resuming.
                        let last = self.last;
                        return Some(self.gap(last));
                    }
                }
                Ok(e) if e.sequence <= self.last => {}
                Ok(e) if e.sequence == self.last + 1 && !self.lagged => {
                    self.last = e.sequence;
                    return Some(e);
                }
                Ok(e) => {
                    // Events between `last` and `e` were dropped from our buffer.
                    self.lagged = false;
                    let gap = self.gap(e.sequence - 1);
                    self.last = e.sequence;
                    self.queued.push_back(e);
                    return Some(gap);
                }
                Err(RecvError::Lagged(_)) => self.lagged = true,
                Err(RecvError::Closed) => return None,
            }
        }
    }

    /// A gap resuming at `resumed`; moves `last` there.
    fn gap(&mut self, resumed: u64) -> Event {
        let e = Event {
            sequence: resumed,
            kind: EventKind::Gap {
                last_sequence: self.last,
            },
        };
        self.last = resumed;
        self.lagged = false;
        e
    }

    /// Waits until the namespace is synced again; returns the sequence it resumes from. Events
    /// up to it that are still buffered are skipped by `next` (`sequence <= last`).
    async fn resynchronize(&mut self) -> u64 {
        let mut backoff = RESYNC_BACKOFF_MIN;
        loop {
            if let Ok(Some(_)) = self.cache.ensure_synced(&self.ns).await {
                if let Some(seq) = self.ns.sync.read().last_seq {
                    return seq;
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RESYNC_BACKOFF_MAX);
        }
    }
}
