//! The coherence bus: one pub/sub subscription per replica to every namespace's event, lease and
//! lock channels. Events are applied in sequence order; a gap or a dropped subscription means
//! events may have been missed, and only then is L1 cleared.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::StreamExt;

use crate::engine::{Cache, Inner};
use crate::event::{Event, EventKind};
use crate::keys::ChannelKind;
use crate::namespace::{Namespace, SyncState, MAX_PENDING_EVENTS};

/// How often the subscriber connection is pinged; a ping unanswered within
/// [`SUBSCRIBER_PING_TIMEOUT`] counts as a dropped subscription.
pub const SUBSCRIBER_PING_INTERVAL: Duration = Duration::from_secs(1);
/// How long a ping of the subscriber connection may take.
pub const SUBSCRIBER_PING_TIMEOUT: Duration = Duration::from_secs(1);
/// How often each replica compares the sequences it applied with Redis's (one `MGET` for all its
/// synced namespaces). A namespace still behind what Redis said one check earlier missed an
/// event; one whose Redis sequence went backwards or changed run lost its state in Redis.
pub const SEQUENCE_CHECK_INTERVAL: Duration = Duration::from_millis(500);

impl Cache {
    /// Starts the subscription task (two-tier mode); it lives as long as the engine.
    pub(crate) fn start_bus(&self, client: redis::Client) {
        let task = tokio::spawn(bus_loop(Arc::downgrade(&self.inner), client));
        *self.inner.bus_task.lock() = Some(task);
    }

    /// Starts the periodic sequence check (two-tier mode); it lives as long as the engine.
    pub(crate) fn start_sequence_check(&self) {
        let task = tokio::spawn(check_loop(Arc::downgrade(&self.inner)));
        *self.inner.check_task.lock() = Some(task);
    }

    /// Forgets every namespace's sequence (L1 is then bypassed until resynced) and tells Watch
    /// streams about the gap.
    fn mark_unsynced_all(&self) {
        for ns in self.namespaces() {
            let mut s = ns.sync.write();
            s.epoch += 1;
            s.pending = None;
            s.resets += 1;
            if let Some(last) = s.last_seq.take() {
                let _ = ns.events.send(Event {
                    sequence: last,
                    kind: EventKind::Gap {
                        last_sequence: last,
                    },
                });
            }
        }
    }

    pub(crate) fn reset_all(&self) {
        for ns in self.namespaces() {
            let mut s = ns.sync.write();
            let last = s.last_seq.take();
            ns.clear_locked(&mut s);
            if let Some(last) = last {
                let _ = ns.events.send(Event {
                    sequence: last,
                    kind: EventKind::Gap {
                        last_sequence: last,
                    },
                });
            }
        }
    }

    fn apply_message(&self, channel: &str, payload: &[u8]) {
        let Some((name, kind)) = self.inner.key_space.parse_channel(channel) else {
            return;
        };
        match kind {
            ChannelKind::Leases => {
                if let Ok(key) = std::str::from_utf8(payload) {
                    self.inner.flights.wake(name, key);
                }
                return;
            }
            ChannelKind::Locks => {
                if let Ok(lock) = std::str::from_utf8(payload) {
                    self.inner.lock_flights.wake(name, lock);
                }
                return;
            }
            ChannelKind::Events => {}
        }
        let Some(ns) = self.inner.namespaces.read().get(name).cloned() else {
            return;
        };
        // `<run>\n<event>`: the run of the namespace sequence the event took its number in.
        let Some((run, event)) = Event::decode_message(payload) else {
            tracing::warn!(namespace = name, "undecodable invalidation event");
            return;
        };
        if let EventKind::KeyChanged { key, .. } = &event.kind {
            self.inner.flights.wake(name, key);
        }
        apply_event(&ns, run, event);
    }
}

/// Applies one event from the bus to a namespace (two-tier mode).
fn apply_event(ns: &Namespace, run: u64, event: Event) {
    let mut s = ns.sync.write();
    apply_locked(ns, &mut s, run, event);
}

/// Drops what the replica cached for `ns` and forgets its sequence (it is re-read on next use);
/// tells Watch streams about the gap.
pub(crate) fn lose_sync(ns: &Namespace, s: &mut SyncState, sequence: u64) {
    let last = s.last_seq.take().unwrap_or(0);
    ns.clear_locked(s);
    let _ = ns.events.send(Event {
        sequence,
        kind: EventKind::Gap {
            last_sequence: last,
        },
    });
}

/// Applies one event of run `run` under the namespace lock. While a sync read is under way the
/// event is buffered for it (see [`SyncState::pending`]).
pub(crate) fn apply_locked(ns: &Namespace, s: &mut SyncState, run: u64, event: Event) {
    let Some(last) = s.last_seq else {
        if let Some(pending) = &mut s.pending {
            if pending.len() < MAX_PENDING_EVENTS {
                pending.push((run, event));
            } else {
                s.pending = None;
            }
        }
        return;
    };
    if run != s.run {
        if s.run == 0 && last == 0 {
            // The namespace had no sequence when this replica synced: this is its first run.
            s.run = run;
        } else {
            tracing::warn!(
                namespace = %ns.name,
                last,
                got = event.sequence,
                "namespace sequence started over in redis (its state was lost), clearing L1"
            );
            lose_sync(ns, s, event.sequence);
            return;
        }
    }
    if event.sequence <= last {
        return;
    }
    if event.sequence > last + 1 {
        tracing::warn!(
            namespace = %ns.name,
            last,
            got = event.sequence,
            "invalidation event gap, clearing L1"
        );
        lose_sync(ns, s, event.sequence);
        return;
    }
    s.last_seq = Some(event.sequence);
    s.epoch += 1;
    match &event.kind {
        EventKind::KeyChanged { key, version } => {
            if let Some(l1) = &ns.l1 {
                let stale = l1
                    .get(key.as_str())
                    .is_some_and(|e| *version == 0 || e.data.version != *version);
                if stale {
                    l1.invalidate(key.as_str());
                }
            }
        }
        EventKind::TagsInvalidated { tags } => {
            for t in tags {
                s.learn_tag(t, event.sequence);
            }
        }
        EventKind::Flushed => {
            s.flush_mark = s.flush_mark.max(event.sequence);
            if let Some(l1) = &ns.l1 {
                l1.invalidate_all();
            }
        }
        EventKind::Gap { .. } => {}
    }
    let _ = ns.events.send(event);
}

/// Compares, every [`SEQUENCE_CHECK_INTERVAL`], the sequence each synced namespace applied with
/// Redis's, in one round trip. See docs/architecture.md, "After a fault: the staleness bound".
async fn check_loop(inner: Weak<Inner>) {
    // What Redis said at the previous check, per namespace: `(run, seq)`.
    let mut previous: HashMap<Arc<str>, (u64, u64)> = HashMap::new();
    let mut ticker = tokio::time::interval(SEQUENCE_CHECK_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(i) = inner.upgrade() else { return };
        let cache = Cache { inner: i };
        if !cache.inner.bus_up.load(Ordering::Acquire) || cache.redis_down() {
            previous.clear();
            continue;
        }
        let Some(l2) = cache.inner.store.redis() else {
            return;
        };
        // What each namespace applied, taken before asking Redis: Redis's sequence can then
        // never be below it unless Redis lost the namespace's state.
        let applied: Vec<(Arc<Namespace>, u64, u64)> = cache
            .namespaces()
            .into_iter()
            .filter_map(|ns| {
                let s = ns.sync.read();
                let last = s.last_seq?;
                let run = s.run;
                drop(s);
                Some((ns, last, run))
            })
            .collect();
        let keys: Vec<_> = applied.iter().map(|(ns, _, _)| &ns.keys).collect();
        let Ok(in_redis) = l2.sequences(&keys).await else {
            // The data path notices an unreachable Redis (degraded mode); try again next time.
            previous.clear();
            continue;
        };
        let mut next = HashMap::with_capacity(applied.len());
        for ((ns, seq, run), (redis_seq, redis_run)) in applied.iter().zip(in_redis) {
            let reset = (*run != 0 && redis_run != *run) || (redis_run == *run && redis_seq < *seq);
            let behind = previous.get(&ns.name).is_some_and(|&(prev_run, prev_seq)| {
                prev_seq != 0 && !(prev_run == *run && *seq >= prev_seq)
            });
            if reset || behind {
                let mut s = ns.sync.write();
                // Act only on the state the comparison was about (not on a fresh resync).
                if s.last_seq.is_some() && s.run == *run && s.last_seq >= Some(*seq) {
                    tracing::warn!(
                        namespace = %ns.name,
                        applied = *seq,
                        redis = redis_seq,
                        reset,
                        "applied sequence disagrees with redis, clearing L1"
                    );
                    lose_sync(ns, &mut s, redis_seq);
                }
                continue;
            }
            next.insert(ns.name.clone(), (redis_run, redis_seq));
        }
        previous = next;
    }
}

async fn bus_loop(inner: Weak<Inner>, client: redis::Client) {
    let mut backoff = Duration::from_millis(20);
    loop {
        let timeout = match inner.upgrade() {
            Some(i) => i.store.redis().map(|l2| l2.options().connect_timeout),
            None => return,
        }
        .unwrap_or(Duration::from_secs(2));
        let patterns = match inner.upgrade() {
            Some(i) => i.key_space.patterns(),
            None => return,
        };
        let subscribed = async {
            let mut ps = client.get_async_pubsub().await?;
            ps.psubscribe(&patterns[..]).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        match tokio::time::timeout(timeout, subscribed).await {
            Ok(Ok(ps)) => {
                backoff = Duration::from_millis(20);
                {
                    let Some(i) = inner.upgrade() else { return };
                    let cache = Cache { inner: i };
                    cache.inner.bus_generation.fetch_add(1, Ordering::AcqRel);
                    cache.reset_all();
                    cache.inner.bus_up.store(true, Ordering::Release);
                    // Wake-ups may have been lost while unsubscribed.
                    cache.inner.flights.wake_all();
                    cache.inner.lock_flights.wake_all();
                    tracing::info!("subscribed to invalidation events");
                }
                let (mut sink, mut stream) = ps.split();
                // A half-open connection delivers nothing and reports nothing: ping it.
                let pinger = async move {
                    loop {
                        tokio::time::sleep(SUBSCRIBER_PING_INTERVAL).await;
                        let ping = sink.ping::<redis::Value>();
                        match tokio::time::timeout(SUBSCRIBER_PING_TIMEOUT, ping).await {
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => return e.to_string(),
                            Err(_) => return "no answer".to_string(),
                        }
                    }
                };
                tokio::pin!(pinger);
                loop {
                    tokio::select! {
                        msg = stream.next() => {
                            let Some(msg) = msg else { break };
                            let Some(i) = inner.upgrade() else { return };
                            Cache { inner: i }
                                .apply_message(msg.get_channel_name(), msg.get_payload_bytes());
                        }
                        error = &mut pinger => {
                            tracing::warn!(%error, "invalidation event subscriber failed its ping");
                            break;
                        }
                    }
                }
                let Some(i) = inner.upgrade() else { return };
                let cache = Cache { inner: i };
                cache.inner.bus_up.store(false, Ordering::Release);
                // L1 is bypassed from now on, and cleared when the subscription is back, before it
                // is trusted again. It is not cleared here: if Redis itself is down, L1 is what a
                // degraded replica serves (no other replica can write meanwhile either).
                cache.mark_unsynced_all();
                tracing::warn!("invalidation event subscription dropped, L1 bypassed");
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot subscribe to invalidation events"),
            Err(_) => tracing::warn!("timed out subscribing to invalidation events"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
