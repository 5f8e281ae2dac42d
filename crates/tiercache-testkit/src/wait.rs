//! Bounded polling: wait for a condition instead of sleeping a fixed time.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// The condition given to [`wait_for`] did not become true in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitTimeout {
    /// The bound that passed.
    pub timeout: Duration,
    /// How many times the condition was evaluated.
    pub attempts: u32,
}

impl std::fmt::Display for WaitTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "condition not met within {:?} ({} attempts)",
            self.timeout, self.attempts
        )
    }
}

impl std::error::Error for WaitTimeout {}

/// Polls `condition` every `poll_interval` until it returns `true` or `timeout` has passed.
///
/// The condition is always evaluated at least once, and once more at the deadline, so a
/// condition that becomes true during the last interval is not missed. Uses tokio's clock, so it
/// works with `tokio::time::pause()`.
///
/// ```no_run
/// # async fn example() {
/// use std::time::Duration;
/// use tiercache_testkit::wait_for;
///
/// wait_for(Duration::from_secs(5), Duration::from_millis(20), || async { true })
///     .await
///     .expect("the condition holds");
/// # }
/// ```
pub async fn wait_for<F, Fut>(
    timeout: Duration,
    poll_interval: Duration,
    mut condition: F,
) -> Result<(), WaitTimeout>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    let mut attempts = 0;
    loop {
        attempts += 1;
        if condition().await {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(WaitTimeout { timeout, attempts });
        }
        tokio::time::sleep(poll_interval.min(deadline - now)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn returns_once_the_condition_holds() {
        let calls = AtomicU32::new(0);
        wait_for(Duration::from_secs(5), Duration::from_millis(1), || async {
            calls.fetch_add(1, Ordering::SeqCst) >= 2
        })
        .await
        .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn times_out_with_the_bound() {
        let err = wait_for(
            Duration::from_secs(1),
            Duration::from_millis(100),
            || async { false },
        )
        .await
        .unwrap_err();
        assert_eq!(err.timeout, Duration::from_secs(1));
        assert!(err.attempts >= 10, "{err}");
    }
}
