//! Distributed locks: [`Namespace::lock`] and the [`LockGuard`] that renews and releases.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tiercache_proto::duration::{from_proto_saturating, to_proto};
use tiercache_proto::v1;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::client::Idempotent;
use crate::{Client, Namespace, Result};

/// How long [`Namespace::lock`] waits for a held lock.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(10);

/// A held distributed lock.
///
/// While the guard lives, a background task renews the lock every `ttl / 3`, so it stays held
/// past its TTL for as long as the holder runs; if the holder process dies, renewals stop and
/// the lock expires after `ttl`. Release it with [`release`](Self::release), or drop the guard:
/// a spawned task releases it then. Pass [`fencing_token`](Self::fencing_token) to the resource
/// the lock protects so it can refuse a holder whose lock has since been granted to another.
///
/// [`is_held`](Self::is_held) turns false, for good, as soon as the guard can no longer vouch
/// for the lock: a renewal was refused or failed (the server or the network is gone), or the
/// TTL passed since the lock was last confirmed (a renewal that hangs). Renewals stop then; a
/// holder that still needs the lock takes it again.
#[derive(Debug)]
pub struct LockGuard {
    client: Client,
    namespace: String,
    name: String,
    owner_token: String,
    fencing_token: u64,
    ttl: Duration,
    hold: Arc<Hold>,
    /// Dropping it stops the renewal task.
    stop: Option<oneshot::Sender<()>>,
    released: bool,
}

impl LockGuard {
    /// Returns the fencing token: it strictly increases with every grant of this lock.
    pub fn fencing_token(&self) -> u64 {
        self.fencing_token
    }

    /// Returns the owner token (needed by the raw RPCs; the guard uses it itself).
    pub fn owner_token(&self) -> &str {
        &self.owner_token
    }

    /// Returns the lock name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Returns the TTL the lock was granted with.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Returns `false` once the lock may no longer be held, and from then on: a renewal found
    /// it taken or expired (for example after a long pause), a renewal failed (the server could
    /// not be reached or did not answer), or the TTL passed since the grant arrived or the last
    /// successful renewal was sent. Another owner may hold it now.
    pub fn is_held(&self) -> bool {
        self.hold.is_held()
    }

    /// Releases the lock now; returns whether this guard still held it.
    pub async fn release(mut self) -> Result<bool> {
        self.stop.take();
        self.released = true;
        release(&self.client, &self.namespace, &self.name, &self.owner_token).await
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.stop.take();
        if self.released {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (client, ns, name, owner) = (
                self.client.clone(),
                self.namespace.clone(),
                self.name.clone(),
                self.owner_token.clone(),
            );
            rt.spawn(async move {
                if let Err(e) = release(&client, &ns, &name, &owner).await {
                    tracing::warn!(namespace = ns, lock = name, error = %e,
                        "cannot release tiercache lock; it expires after its ttl");
                }
            });
        }
    }
}

async fn release(client: &Client, namespace: &str, name: &str, owner: &str) -> Result<bool> {
    let req = v1::ReleaseLockRequest {
        namespace: namespace.to_string(),
        name: name.to_string(),
        owner_token: owner.to_string(),
    };
    let r = client
        .call(Idempotent::No, req, |mut c, r| async move {
            c.locks().release_lock(r).await
        })
        .await?;
    Ok(r.outcome() == v1::LockOwnershipOutcome::Ok)
}

/// What the guard knows of its lock, shared with the renewal task.
#[derive(Debug)]
struct Hold {
    /// Set once the lock may be lost; never cleared.
    lost: AtomicBool,
    /// The lock is held at least until then: the grant's arrival, or the sending of the last
    /// successful renewal, plus the TTL.
    until: Mutex<Instant>,
}

impl Hold {
    fn new(until: Instant) -> Self {
        Self {
            lost: AtomicBool::new(false),
            until: Mutex::new(until),
        }
    }

    fn is_held(&self) -> bool {
        if self.lost.load(Ordering::SeqCst) {
            return false;
        }
        if Instant::now() >= *self.until.lock() {
            // Sticky: a renewal that lands later cannot make it true again.
            self.lost.store(true, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// A renewal sent at `sent` succeeded.
    fn renewed(&self, sent: Instant, ttl: Duration) {
        let mut until = self.until.lock();
        *until = (*until).max(sent + ttl);
    }

    fn lose(&self) {
        self.lost.store(true, Ordering::SeqCst);
    }
}

async fn renew_loop(
    client: Client,
    namespace: String,
    name: String,
    owner: String,
    ttl: Duration,
    hold: Arc<Hold>,
    mut stop: oneshot::Receiver<()>,
) {
    let every = (ttl / 3).max(Duration::from_millis(1));
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(every) => {}
        }
        if !hold.is_held() {
            tracing::warn!(
                namespace,
                lock = name,
                "tiercache lock ttl passed without a renewal"
            );
            return;
        }
        let sent = Instant::now();
        let req = v1::RenewLockRequest {
            namespace: namespace.clone(),
            name: name.clone(),
            owner_token: owner.clone(),
            ttl: Some(to_proto(ttl)),
        };
        let r = client
            .call(Idempotent::No, req, |mut c, r| async move {
                c.locks().renew_lock(r).await
            })
            .await;
        match r {
            Ok(r) if r.outcome() == v1::LockOwnershipOutcome::Ok => hold.renewed(sent, ttl),
            Ok(_) => {
                tracing::warn!(namespace, lock = name, "tiercache lock lost before release");
                hold.lose();
                return;
            }
            // The guard cannot vouch for the lock any more: report it lost rather than keep
            // a holder working on the hope that the next renewal gets through in time.
            Err(e) => {
                tracing::warn!(namespace, lock = name, error = %e,
                    "cannot renew tiercache lock; reporting it lost");
                hold.lose();
                return;
            }
        }
    }
}

impl Namespace {
    /// Takes the lock `name` for `ttl`, waiting up to [`DEFAULT_LOCK_WAIT`] while another owner
    /// holds it; `Ok(None)` when the wait ran out. See [`LockGuard`].
    pub async fn lock(&self, name: impl Into<String>, ttl: Duration) -> Result<Option<LockGuard>> {
        self.lock_with(name, ttl, DEFAULT_LOCK_WAIT).await
    }

    /// Like [`lock`](Self::lock), waiting up to `max_wait` (zero tries once). The call's
    /// deadline is the client's request timeout plus `max_wait`.
    pub async fn lock_with(
        &self,
        name: impl Into<String>,
        ttl: Duration,
        max_wait: Duration,
    ) -> Result<Option<LockGuard>> {
        let name = name.into();
        let req = v1::AcquireLockRequest {
            namespace: self.name.clone(),
            name: name.clone(),
            ttl: Some(to_proto(ttl)),
            max_wait: Some(to_proto(max_wait)),
        };
        let r = self
            .client
            .call_waiting(Idempotent::No, Some(max_wait), req, |mut c, r| async move {
                c.locks().acquire_lock(r).await
            })
            .await?;
        // The grant happened just before its reply left the server.
        let granted_at = Instant::now();
        if r.outcome() != v1::AcquireLockOutcome::Acquired {
            return Ok(None);
        }
        let granted = r
            .ttl
            .as_ref()
            .map(from_proto_saturating)
            .unwrap_or_default();
        let ttl = if granted.is_zero() { ttl } else { granted };
        let hold = Arc::new(Hold::new(granted_at + ttl));
        let (stop_tx, stop_rx) = oneshot::channel();
        tokio::spawn(renew_loop(
            self.client.clone(),
            self.name.clone(),
            name.clone(),
            r.owner_token.clone(),
            ttl,
            Arc::clone(&hold),
            stop_rx,
        ));
        Ok(Some(LockGuard {
            client: self.client.clone(),
            namespace: self.name.clone(),
            name,
            owner_token: r.owner_token,
            fencing_token: r.fencing_token,
            ttl,
            hold,
            stop: Some(stop_tx),
            released: false,
        }))
    }
}
