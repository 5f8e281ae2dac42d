//! Request validation: every check runs before any tier is touched, and each failure names the
//! field (`key`, `keys[3]`, `requests[2].ttl`, `tags[0]`).

use std::time::Duration;

use tiercache_core::policy::{is_valid_namespace, NamespacePolicy};
use tiercache_proto::duration::DurationError;

use crate::error::ApiError;

/// The longest TTL or wait a request may carry (Redis keeps milliseconds; stay far from overflow).
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Collects field violations.
#[derive(Debug, Default)]
pub struct Violations(Vec<(String, String)>);

impl Violations {
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push((field.into(), description.into()));
    }

    /// Ok when nothing was added.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::InvalidArgument(self.0))
        }
    }
}

/// Checks a namespace name.
pub fn namespace(field: &str, name: &str) -> Result<(), ApiError> {
    if is_valid_namespace(name) {
        Ok(())
    } else if name.is_empty() {
        Err(ApiError::field(field, "must not be empty"))
    } else {
        Err(ApiError::field(
            field,
            "must match [a-z0-9][a-z0-9_.-]{0,63}",
        ))
    }
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// Checks a key against the namespace policy.
pub fn key(v: &mut Violations, field: &str, key: &str, policy: &NamespacePolicy) {
    if key.is_empty() {
        v.add(field, "must not be empty");
    } else if key.len() > policy.max_key_bytes {
        v.add(
            field,
            format!(
                "must be at most {} bytes, got {}",
                policy.max_key_bytes,
                key.len()
            ),
        );
    } else if has_control(key) {
        v.add(field, "must not contain control characters");
    }
}

/// Checks a tag list against the namespace policy.
pub fn tags(v: &mut Violations, field: &str, tags: &[String], policy: &NamespacePolicy) {
    if tags.len() > policy.max_tags {
        v.add(
            field,
            format!("at most {} tags, got {}", policy.max_tags, tags.len()),
        );
        return;
    }
    for (i, t) in tags.iter().enumerate() {
        let f = format!("{field}[{i}]");
        if t.is_empty() {
            v.add(f, "must not be empty");
        } else if t.len() > policy.max_tag_bytes {
            v.add(f, format!("must be at most {} bytes", policy.max_tag_bytes));
        } else if has_control(t) {
            v.add(f, "must not contain control characters");
        }
    }
}

/// Checks a value size against the namespace policy.
pub fn value(v: &mut Violations, field: &str, value: &[u8], policy: &NamespacePolicy) {
    if value.len() > policy.max_value_bytes {
        v.add(
            field,
            format!(
                "must be at most {} bytes, got {}",
                policy.max_value_bytes,
                value.len()
            ),
        );
    }
}

/// Converts an optional protobuf duration; `positive` rejects zero.
pub fn duration(
    v: &mut Violations,
    field: &str,
    d: Option<&prost_types::Duration>,
    positive: bool,
) -> Option<Duration> {
    let out = match tiercache_proto::duration::from_proto(d?) {
        Ok(out) if out <= MAX_DURATION => out,
        // Beyond the protobuf range is beyond ours too: say so in our terms.
        Ok(_) | Err(DurationError::TooLong) => {
            v.add(field, "must be at most 10 years");
            return None;
        }
        Err(e) => {
            v.add(field, e.to_string());
            return None;
        }
    };
    if positive && out.is_zero() {
        v.add(field, "must be greater than zero");
        return None;
    }
    Some(out)
}

/// Checks a batch size.
pub fn batch(v: &mut Violations, field: &str, len: usize, max: usize) {
    if len == 0 {
        v.add(field, "must not be empty");
    } else if len > max {
        v.add(field, format!("at most {max} items, got {len}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let mut v = Violations::default();
        let d = |s, n| prost_types::Duration {
            seconds: s,
            nanos: n,
        };
        assert_eq!(
            duration(&mut v, "ttl", Some(&d(1, 5)), true),
            Some(Duration::new(1, 5))
        );
        assert_eq!(duration(&mut v, "ttl", None, true), None);
        assert!(v.0.is_empty());
        for bad in [
            d(-1, 0),
            d(0, -1),
            d(0, 0),
            d(i64::MAX, 0),
            d(1, 1_000_000_000),
        ] {
            let mut v = Violations::default();
            assert_eq!(duration(&mut v, "ttl", Some(&bad), true), None);
            assert_eq!(v.0[0].0, "ttl", "{bad:?}");
        }
    }

    #[test]
    fn keys() {
        let p = NamespacePolicy::default();
        for (k, bad) in [
            ("a", false),
            ("", true),
            ("a\nb", true),
            ("\u{7f}", true),
            (&"x".repeat(1025), true),
            ("ключ:{1}", false),
        ] {
            let mut v = Violations::default();
            key(&mut v, "key", k, &p);
            assert_eq!(!v.0.is_empty(), bad, "{k:?}");
        }
    }
}
