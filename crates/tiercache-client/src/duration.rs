//! Conversions between `std::time::Duration` and `google.protobuf.Duration`.
//!
//! The wire type is signed and bounded (±315,576,000,000 s); the std type is unsigned and wider.
//! Both directions saturate instead of panicking: a negative remaining time reads as zero, and a
//! duration too long for the wire is sent as the protobuf maximum (the server caps TTLs anyway).

use std::time::Duration;

/// The largest `seconds` a `google.protobuf.Duration` may carry (10,000 years).
pub(crate) const PROTO_MAX_SECONDS: i64 = 315_576_000_000;

const NANOS_PER_SEC: i128 = 1_000_000_000;

/// Returns `d` as a protobuf duration, saturating at the protobuf maximum.
pub(crate) fn to_proto(d: Duration) -> prost_types::Duration {
    match i64::try_from(d.as_secs()) {
        Ok(seconds) if seconds < PROTO_MAX_SECONDS => prost_types::Duration {
            seconds,
            // subsec_nanos() < 1e9, so it always fits in i32.
            nanos: d.subsec_nanos() as i32,
        },
        _ => prost_types::Duration {
            seconds: PROTO_MAX_SECONDS,
            nanos: 0,
        },
    }
}

/// Returns `d` as a std duration; negative values (and non-normalized ones that sum to a
/// negative) read as zero.
pub(crate) fn from_proto(d: &prost_types::Duration) -> Duration {
    // i128 holds any i64 seconds times 1e9 plus any i32 nanos without overflow.
    let total = i128::from(d.seconds) * NANOS_PER_SEC + i128::from(d.nanos);
    if total <= 0 {
        return Duration::ZERO;
    }
    let secs = total / NANOS_PER_SEC;
    let nanos = total % NANOS_PER_SEC;
    // total <= i64::MAX * 1e9 + i32::MAX, so secs <= i64::MAX + 2 and fits in u64.
    Duration::new(secs as u64, nanos as u32)
}

/// Returns an optional protobuf duration as a std duration, with `None` read as zero.
pub(crate) fn from_proto_opt(d: Option<&prost_types::Duration>) -> Duration {
    d.map(from_proto).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pd(seconds: i64, nanos: i32) -> prost_types::Duration {
        prost_types::Duration { seconds, nanos }
    }

    #[test]
    fn round_trips_ordinary_values() {
        for d in [
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::from_millis(1500),
            Duration::from_secs(30),
            Duration::new(86_400, 999_999_999),
        ] {
            assert_eq!(from_proto(&to_proto(d)), d, "{d:?}");
        }
        assert_eq!(to_proto(Duration::from_millis(1500)), pd(1, 500_000_000));
    }

    #[test]
    fn too_long_saturates_at_the_protobuf_maximum() {
        assert_eq!(to_proto(Duration::MAX), pd(PROTO_MAX_SECONDS, 0));
        assert_eq!(
            to_proto(Duration::from_secs(u64::MAX / 2)),
            pd(PROTO_MAX_SECONDS, 0)
        );
        assert_eq!(
            to_proto(Duration::from_secs(PROTO_MAX_SECONDS as u64 - 1)),
            pd(PROTO_MAX_SECONDS - 1, 0)
        );
    }

    #[test]
    fn negative_reads_as_zero() {
        assert_eq!(from_proto(&pd(-1, 0)), Duration::ZERO);
        assert_eq!(from_proto(&pd(0, -1)), Duration::ZERO);
        assert_eq!(from_proto(&pd(i64::MIN, i32::MIN)), Duration::ZERO);
        assert_eq!(from_proto(&pd(1, -1_000_000_000)), Duration::ZERO);
    }

    #[test]
    fn non_normalized_values_are_summed() {
        assert_eq!(
            from_proto(&pd(2, -500_000_000)),
            Duration::from_millis(1500)
        );
        assert_eq!(
            from_proto(&pd(0, 1_500_000_000)),
            Duration::from_millis(1500)
        );
        assert_eq!(
            from_proto(&pd(-1, 1_500_000_000)),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn extremes_do_not_panic() {
        let d = from_proto(&pd(i64::MAX, i32::MAX));
        assert_eq!(d.as_secs(), i64::MAX as u64 + 2);
        assert_eq!(from_proto_opt(None), Duration::ZERO);
    }
}
