//! The coherence bus: one pub/sub subscription per replica to every namespace's event, lease and
//! lock channels. Events are applied in sequence order; a gap or a dropped subscription means
//! events may have been missed, and only then is L1 cleared.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::StreamExt;

use crate::engine::{Cache, Inner};
use crate::event::{Event, EventKind};
use crate::namespace::Namespace;

/// The patterns every replica subscribes to: all namespaces' event, lease and lock channels.
const PATTERNS: [&str; 3] = ["tc:{*}:events", "tc:{*}:leases", "tc:{*}:locks"];

impl Cache {
    /// Starts the subscription task (two-tier mode); it lives as long as the engine.
    pub(crate) fn start_bus(&self, client: redis::Client) {
        let task = tokio::spawn(bus_loop(Arc::downgrade(&self.inner), client));
        *self.inner.bus_task.lock() = Some(task);
    }

    /// Forgets every namespace's sequence (L1 is then bypassed until resynced) and tells Watch
    /// streams about the gap.
    fn mark_unsynced_all(&self) {
        for ns in self.namespaces() {
            let mut s = ns.sync.write();
            s.epoch += 1;
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
        let Some(rest) = channel.strip_prefix("tc:{") else {
            return;
        };
        if let Some(name) = rest.strip_suffix("}:leases") {
            if let Ok(key) = std::str::from_utf8(payload) {
                self.inner.flights.wake(name, key);
            }
            return;
        }
        if let Some(name) = rest.strip_suffix("}:locks") {
            if let Ok(lock) = std::str::from_utf8(payload) {
                self.inner.lock_flights.wake(name, lock);
            }
            return;
        }
        let Some(name) = rest.strip_suffix("}:events") else {
            return;
        };
        let Some(ns) = self.inner.namespaces.read().get(name).cloned() else {
            return;
        };
        let Some(event) = std::str::from_utf8(payload).ok().and_then(Event::decode) else {
            tracing::warn!(namespace = name, "undecodable invalidation event");
            return;
        };
        if let EventKind::KeyChanged { key, .. } = &event.kind {
            self.inner.flights.wake(name, key);
        }
        apply_event(&ns, event);
    }
}

/// Applies one event from the bus to a namespace (two-tier mode).
fn apply_event(ns: &Namespace, event: Event) {
    let mut s = ns.sync.write();
    let Some(last) = s.last_seq else { return };
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
        s.last_seq = None;
        ns.clear_locked(&mut s);
        let _ = ns.events.send(Event {
            sequence: event.sequence,
            kind: EventKind::Gap {
                last_sequence: last,
            },
        });
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

async fn bus_loop(inner: Weak<Inner>, client: redis::Client) {
    let mut backoff = Duration::from_millis(20);
    loop {
        let timeout = match inner.upgrade() {
            Some(i) => i.store.redis().map(|l2| l2.options().connect_timeout),
            None => return,
        }
        .unwrap_or(Duration::from_secs(2));
        let subscribed = async {
            let mut ps = client.get_async_pubsub().await?;
            ps.psubscribe(&PATTERNS[..]).await?;
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
                let mut stream = ps.into_on_message();
                while let Some(msg) = stream.next().await {
                    let Some(i) = inner.upgrade() else { return };
                    Cache { inner: i }
                        .apply_message(msg.get_channel_name(), msg.get_payload_bytes());
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
