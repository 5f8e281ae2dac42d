//! [`RetryPolicy`]: exponential backoff with jitter for idempotent calls.

use std::time::Duration;

/// How idempotent calls (reads and health checks) are retried after `UNAVAILABLE`.
///
/// Attempt `n` (from 1) that fails waits a random time between half and all of
/// `min(initial_backoff × multiplier^(n-1), max_backoff)` before the next one, or longer when the
/// server's `RetryInfo` asks for it. Retries stop after `max_attempts` attempts or when the next
/// one could not start before the request timeout ends. Writes, leases and locks are never
/// retried: a write that timed out may have been applied.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 means no retries.
    pub max_attempts: u32,
    /// The pause after the first failed attempt, before jitter.
    pub initial_backoff: Duration,
    /// The longest pause, before jitter.
    pub max_backoff: Duration,
    /// The factor the pause grows by after each failed attempt.
    pub multiplier: f64,
}

impl Default for RetryPolicy {
    /// 3 attempts, 25 ms growing ×2 up to 1 s.
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(25),
            max_backoff: Duration::from_secs(1),
            multiplier: 2.0,
        }
    }
}

impl RetryPolicy {
    /// Returns a policy that never retries.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// Returns the pause after failed attempt `n` (from 1), with jitter.
    pub(crate) fn backoff(&self, n: u32) -> Duration {
        let exp = self
            .multiplier
            .max(1.0)
            .powi(n.saturating_sub(1).min(64) as i32);
        let base = self
            .initial_backoff
            .as_secs_f64()
            .mul_add(exp, 0.0)
            .min(self.max_backoff.as_secs_f64());
        // "Equal jitter": at least half the pause, so retries never bunch up at zero.
        let factor = 0.5 + rand::random::<f64>() * 0.5;
        Duration::from_secs_f64((base * factor).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let p = RetryPolicy::default();
        for _ in 0..100 {
            let b1 = p.backoff(1);
            assert!(b1 >= Duration::from_micros(12_500) && b1 <= Duration::from_millis(25));
            let b3 = p.backoff(3);
            assert!(b3 >= Duration::from_millis(50) && b3 <= Duration::from_millis(100));
            assert!(p.backoff(50) <= Duration::from_secs(1));
            assert!(p.backoff(u32::MAX) <= Duration::from_secs(1));
        }
    }
}
