//! Distributed locks: [`Namespace::lock`] and the [`LockGuard`] that renews and releases.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tiercache_proto::duration::{from_proto_saturating, to_proto};
use tiercache_proto::v1;
use tokio::sync::oneshot;

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
#[derive(Debug)]
pub struct LockGuard {
    client: Client,
    namespace: String,
    name: String,
    owner_token: String,
    fencing_token: u64,
    ttl: Duration,
    lost: Arc<AtomicBool>,
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

    /// Returns `false` once a renewal found the lock no longer held (it expired, for example
    /// after a long pause, and may belong to someone else now).
    pub fn is_held(&self) -> bool {
        !self.lost.load(Ordering::SeqCst)
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

async fn renew_loop(
    client: Client,
    namespace: String,
    name: String,
    owner: String,
    ttl: Duration,
    lost: Arc<AtomicBool>,
    mut stop: oneshot::Receiver<()>,
) {
    let every = (ttl / 3).max(Duration::from_millis(1));
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(every) => {}
        }
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
            Ok(r) if r.outcome() == v1::LockOwnershipOutcome::Ok => {}
            Ok(_) => {
                tracing::warn!(namespace, lock = name, "tiercache lock lost before release");
                lost.store(true, Ordering::SeqCst);
                return;
            }
            // Try again at the next tick; two more chances before the TTL ends.
            Err(e) => tracing::warn!(namespace, lock = name, error = %e, "cannot renew lock"),
        }
    }
}

impl Namespace {
    /// Takes the lock `name` for `ttl`, waiting up to [`DEFAULT_LOCK_WAIT`] while another owner
    /// holds it; `Ok(None)` when the wait ran out. See [`LockGuard`].
    pub async fn lock(&self, name: impl Into<String>, ttl: Duration) -> Result<Option<LockGuard>> {
        self.lock_with(name, ttl, DEFAULT_LOCK_WAIT).await
    }

    /// Like [`lock`](Self::lock), waiting up to `max_wait` (zero tries once). The client's
    /// request timeout bounds the wait too.
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
            .call(Idempotent::No, req, |mut c, r| async move {
                c.locks().acquire_lock(r).await
            })
            .await?;
        if r.outcome() != v1::AcquireLockOutcome::Acquired {
            return Ok(None);
        }
        let granted = r
            .ttl
            .as_ref()
            .map(from_proto_saturating)
            .unwrap_or_default();
        let ttl = if granted.is_zero() { ttl } else { granted };
        let lost = Arc::new(AtomicBool::new(false));
        let (stop_tx, stop_rx) = oneshot::channel();
        tokio::spawn(renew_loop(
            self.client.clone(),
            self.name.clone(),
            name.clone(),
            r.owner_token.clone(),
            ttl,
            Arc::clone(&lost),
            stop_rx,
        ));
        Ok(Some(LockGuard {
            client: self.client.clone(),
            namespace: self.name.clone(),
            name,
            owner_token: r.owner_token,
            fencing_token: r.fencing_token,
            ttl,
            lost,
            stop: Some(stop_tx),
            released: false,
        }))
    }
}
