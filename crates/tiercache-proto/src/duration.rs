//! Conversions between `std::time::Duration` and `google.protobuf.Duration`, for the server, the
//! SDK and the CLI alike.
//!
//! The wire type is signed and bounded (±[`MAX_SECONDS`]); the std type is unsigned and wider.
//! Sending saturates: a duration too long for the wire goes as the protobuf maximum (the server
//! caps TTLs far below it anyway). Reading comes in two strengths: [`from_proto`] is for
//! requests and names what is wrong with a duration the protobuf spec forbids;
//! [`from_proto_saturating`] is for answers, where a negative remaining time simply reads as
//! zero.

use std::time::Duration;

/// The largest `seconds` a `google.protobuf.Duration` may carry (10,000 years).
pub const MAX_SECONDS: i64 = 315_576_000_000;

const NANOS_PER_SEC: i32 = 1_000_000_000;

/// Why a protobuf duration has no `std::time::Duration` equivalent. The messages read as the
/// second half of "`<field>` …", as in a request's field violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurationError {
    /// `seconds` or `nanos` is below zero.
    Negative,
    /// `nanos` is not below one second.
    NanosOutOfRange,
    /// `seconds` is beyond [`MAX_SECONDS`].
    TooLong,
}

impl std::fmt::Display for DurationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DurationError::Negative => "must not be negative",
            DurationError::NanosOutOfRange => "nanos must be below 1000000000",
            DurationError::TooLong => "must be at most 315576000000 seconds",
        })
    }
}

impl std::error::Error for DurationError {}

/// Returns `d` as a protobuf duration, saturating at [`MAX_SECONDS`].
pub fn to_proto(d: Duration) -> prost_types::Duration {
    match i64::try_from(d.as_secs()) {
        Ok(seconds) if seconds < MAX_SECONDS => prost_types::Duration {
            seconds,
            // subsec_nanos() < 1e9, so it always fits in i32.
            nanos: d.subsec_nanos() as i32,
        },
        _ => prost_types::Duration {
            seconds: MAX_SECONDS,
            nanos: 0,
        },
    }
}

/// Returns `d` as a std duration, or what makes it invalid under the protobuf spec: a negative
/// part, `nanos` of a second or more, or more than [`MAX_SECONDS`].
pub fn from_proto(d: &prost_types::Duration) -> Result<Duration, DurationError> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(DurationError::Negative);
    }
    if d.nanos >= NANOS_PER_SEC {
        return Err(DurationError::NanosOutOfRange);
    }
    if d.seconds > MAX_SECONDS {
        return Err(DurationError::TooLong);
    }
    // Both parts are non-negative and in range: the casts cannot wrap.
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// Returns `d` as a std duration, never failing: negative values (and non-normalized ones that
/// sum to a negative) read as zero, and out-of-range `nanos` are carried into the seconds.
pub fn from_proto_saturating(d: &prost_types::Duration) -> Duration {
    let per_sec = i128::from(NANOS_PER_SEC);
    // i128 holds any i64 seconds times 1e9 plus any i32 nanos without overflow.
    let total = i128::from(d.seconds) * per_sec + i128::from(d.nanos);
    if total <= 0 {
        return Duration::ZERO;
    }
    // total <= i64::MAX * 1e9 + i32::MAX, so the seconds are at most i64::MAX + 2 and fit in
    // u64; the remainder is below 1e9 and fits in u32.
    Duration::new((total / per_sec) as u64, (total % per_sec) as u32)
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
            assert_eq!(from_proto(&to_proto(d)), Ok(d), "{d:?}");
            assert_eq!(from_proto_saturating(&to_proto(d)), d, "{d:?}");
        }
        assert_eq!(to_proto(Duration::from_millis(1500)), pd(1, 500_000_000));
    }

    #[test]
    fn too_long_saturates_at_the_protobuf_maximum() {
        assert_eq!(to_proto(Duration::MAX), pd(MAX_SECONDS, 0));
        assert_eq!(
            to_proto(Duration::from_secs(u64::MAX / 2)),
            pd(MAX_SECONDS, 0)
        );
        assert_eq!(
            to_proto(Duration::from_secs(MAX_SECONDS as u64 - 1)),
            pd(MAX_SECONDS - 1, 0)
        );
    }

    #[test]
    fn strict_reading_names_the_problem() {
        assert_eq!(from_proto(&pd(-1, 0)), Err(DurationError::Negative));
        assert_eq!(from_proto(&pd(0, -1)), Err(DurationError::Negative));
        assert_eq!(
            from_proto(&pd(1, 1_000_000_000)),
            Err(DurationError::NanosOutOfRange)
        );
        assert_eq!(from_proto(&pd(i64::MAX, 0)), Err(DurationError::TooLong));
        assert_eq!(
            from_proto(&pd(MAX_SECONDS, 999_999_999)),
            Ok(Duration::new(MAX_SECONDS as u64, 999_999_999))
        );
        assert_eq!(DurationError::Negative.to_string(), "must not be negative");
    }

    #[test]
    fn negative_reads_as_zero() {
        assert_eq!(from_proto_saturating(&pd(-1, 0)), Duration::ZERO);
        assert_eq!(from_proto_saturating(&pd(0, -1)), Duration::ZERO);
        assert_eq!(
            from_proto_saturating(&pd(i64::MIN, i32::MIN)),
            Duration::ZERO
        );
        assert_eq!(
            from_proto_saturating(&pd(1, -1_000_000_000)),
            Duration::ZERO
        );
    }

    #[test]
    fn non_normalized_values_are_summed() {
        assert_eq!(
            from_proto_saturating(&pd(2, -500_000_000)),
            Duration::from_millis(1500)
        );
        assert_eq!(
            from_proto_saturating(&pd(0, 1_500_000_000)),
            Duration::from_millis(1500)
        );
        assert_eq!(
            from_proto_saturating(&pd(-1, 1_500_000_000)),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn extremes_do_not_panic() {
        let d = from_proto_saturating(&pd(i64::MAX, i32::MAX));
        assert_eq!(d.as_secs(), i64::MAX as u64 + 2);
    }
}
