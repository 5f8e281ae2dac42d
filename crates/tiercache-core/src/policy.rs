//! Namespace names and the per-namespace policy.

use std::time::Duration;

use rand::Rng;

/// The effective policy of one namespace: TTLs, L1 budget, limits and lease timing.
#[derive(Debug, Clone, PartialEq)]
pub struct NamespacePolicy {
    /// Fresh period used when a write names none.
    pub default_ttl: Duration,
    /// The longest fresh period a write may ask for; longer requests are capped.
    pub max_ttl: Duration,
    /// Stale window after the fresh period, used when a write names none.
    pub stale_ttl: Duration,
    /// Fresh period of negative (absent) entries.
    pub negative_ttl: Duration,
    /// Random fraction in `0.0..=1.0` added to every TTL so entries written together do not expire
    /// together.
    pub jitter: f64,
    /// Whether L1 holds entries of this namespace at all.
    pub l1_enabled: bool,
    /// L1 budget in bytes (keys, values and bookkeeping, see `l1::entry_weight`).
    pub l1_max_bytes: u64,
    /// The longest time L1 may hold an entry when an L2 is configured: the safety net for lost
    /// invalidation events.
    pub l1_max_ttl: Duration,
    /// The largest value accepted.
    pub max_value_bytes: usize,
    /// The longest key accepted, in bytes.
    pub max_key_bytes: usize,
    /// The most tags one entry may carry.
    pub max_tags: usize,
    /// The longest tag accepted, in bytes.
    pub max_tag_bytes: usize,
    /// Lease validity when a GetOrSet names none.
    pub lease_ttl: Duration,
    /// How long a GetOrSet waiter waits when it names no bound.
    pub max_wait: Duration,
    /// The longest lease a GetOrSet may ask for; longer requests get this (the reply says so).
    pub lease_ttl_max: Duration,
    /// The longest lock TTL an acquire or renew may ask for; longer requests get this.
    pub lock_ttl_max: Duration,
    /// The longest a GetOrSet or lock waiter may wait; longer requests wait this long.
    pub max_wait_max: Duration,
}

impl Default for NamespacePolicy {
    fn default() -> Self {
        Self {
            default_ttl: Duration::from_secs(300),
            max_ttl: Duration::from_secs(7 * 24 * 3600),
            stale_ttl: Duration::ZERO,
            negative_ttl: Duration::from_secs(30),
            jitter: 0.0,
            l1_enabled: true,
            l1_max_bytes: 64 * 1024 * 1024,
            l1_max_ttl: Duration::from_secs(60),
            max_value_bytes: 1024 * 1024,
            max_key_bytes: 1024,
            max_tags: 16,
            max_tag_bytes: 128,
            lease_ttl: Duration::from_secs(10),
            max_wait: Duration::from_secs(5),
            lease_ttl_max: Duration::from_secs(300),
            lock_ttl_max: Duration::from_secs(300),
            max_wait_max: Duration::from_secs(60),
        }
    }
}

impl NamespacePolicy {
    /// Returns the longest time an entry of this namespace can live (max TTL plus the widest
    /// stale window, with jitter): how long invalidation marks must be kept.
    pub fn max_lifetime(&self) -> Duration {
        let base = self.max_ttl.max(self.negative_ttl) + self.stale_ttl.max(self.max_ttl);
        base.mul_f64(1.0 + self.jitter.clamp(0.0, 1.0))
    }

    /// How long an invalidation mark must be kept: no entry born before it may outlive it. That is
    /// the longest entry lifetime, plus the longest lease (a fill keeps the birth of its lease
    /// grant, so a lease granted before the mark may store its entry up to a lease later).
    pub fn mark_lifetime(&self) -> Duration {
        self.max_lifetime() + self.lease_ttl_max
    }

    /// The lease TTL a GetOrSet gets: its own (or the namespace default), capped.
    pub fn effective_lease_ttl(&self, requested: Option<Duration>) -> Duration {
        requested.unwrap_or(self.lease_ttl).min(self.lease_ttl_max)
    }

    /// The lock TTL an acquire or renew gets, capped.
    pub fn effective_lock_ttl(&self, requested: Duration) -> Duration {
        requested.min(self.lock_ttl_max)
    }

    /// How long a waiter may wait: its own bound (or the namespace default), capped.
    pub fn effective_max_wait(&self, requested: Option<Duration>) -> Duration {
        requested.unwrap_or(self.max_wait).min(self.max_wait_max)
    }

    /// Checks the policy for values that cannot work, naming the first bad field.
    pub fn check(&self) -> Result<(), String> {
        if self.default_ttl.is_zero() {
            return Err("default_ttl must be greater than zero".into());
        }
        if self.default_ttl > self.max_ttl {
            return Err("default_ttl must not exceed max_ttl".into());
        }
        if !(0.0..=1.0).contains(&self.jitter) || self.jitter.is_nan() {
            return Err("jitter must be within 0.0..=1.0".into());
        }
        if self.negative_ttl.is_zero() {
            return Err("negative_ttl must be greater than zero".into());
        }
        if self.lease_ttl.is_zero() {
            return Err("lease_ttl must be greater than zero".into());
        }
        for (name, d, cap, cap_name) in [
            (
                "lease_ttl",
                self.lease_ttl,
                self.lease_ttl_max,
                "lease_ttl_max",
            ),
            ("max_wait", self.max_wait, self.max_wait_max, "max_wait_max"),
        ] {
            if d > cap {
                return Err(format!("{name} must not exceed {cap_name}"));
            }
        }
        if self.lease_ttl_max.is_zero() || self.lock_ttl_max.is_zero() {
            return Err("lease_ttl_max and lock_ttl_max must be greater than zero".into());
        }
        if self.max_key_bytes == 0 || self.max_key_bytes > 64 * 1024 {
            return Err("max_key_bytes must be within 1..=65536".into());
        }
        if self.max_value_bytes == 0 || self.max_value_bytes > 512 * 1024 * 1024 {
            return Err("max_value_bytes must be within 1..=536870912".into());
        }
        if self.max_tag_bytes == 0 || self.max_tag_bytes > 1024 {
            return Err("max_tag_bytes must be within 1..=1024".into());
        }
        if self.max_tags > 256 {
            return Err("max_tags must be at most 256".into());
        }
        // Redis keeps TTLs in milliseconds and the codec in u64; keep far from overflow.
        let ceiling = Duration::from_secs(10 * 365 * 24 * 3600);
        for (name, d) in [
            ("max_ttl", self.max_ttl),
            ("stale_ttl", self.stale_ttl),
            ("negative_ttl", self.negative_ttl),
            ("l1_max_ttl", self.l1_max_ttl),
            ("lease_ttl", self.lease_ttl),
            ("max_wait", self.max_wait),
            ("lease_ttl_max", self.lease_ttl_max),
            ("lock_ttl_max", self.lock_ttl_max),
            ("max_wait_max", self.max_wait_max),
        ] {
            if d > ceiling {
                return Err(format!("{name} must be at most 10 years"));
            }
        }
        Ok(())
    }
}

/// Returns whether `name` is a valid namespace name: `[a-z0-9][a-z0-9_.-]{0,63}`.
pub fn is_valid_namespace(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b[1..].iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'.' | b'-')
        })
}

/// Resolves the fresh period (default, capped, with jitter) and the stale window of a write.
pub fn lifetimes(
    policy: &NamespacePolicy,
    ttl: Option<Duration>,
    stale: Option<Duration>,
) -> (Duration, Duration) {
    let mut ttl = ttl.unwrap_or(policy.default_ttl).min(policy.max_ttl);
    if policy.jitter > 0.0 {
        let f: f64 = rand::rng().random_range(0.0..policy.jitter);
        ttl = ttl.mul_f64(1.0 + f);
    }
    let stale = stale.unwrap_or(policy.stale_ttl).min(policy.max_ttl);
    (ttl, stale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_names() {
        for ok in [
            "default",
            "a",
            "0",
            "user-profiles",
            "a.b_c-d",
            &"a".repeat(64),
        ] {
            assert!(is_valid_namespace(ok), "{ok}");
        }
        for bad in [
            "",
            "A",
            "-a",
            "_a",
            ".a",
            "a:b",
            "a b",
            "a{b}",
            &"a".repeat(65),
            "é",
        ] {
            assert!(!is_valid_namespace(bad), "{bad}");
        }
    }

    #[test]
    fn default_policy_is_valid() {
        NamespacePolicy::default().check().unwrap();
    }
}
