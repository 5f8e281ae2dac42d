//! The SDK's error type, mapped from `tonic::Status` and its `google.rpc` details.
//!
//! The server reports expected outcomes (miss, version mismatch, lease revoked) as values, so an
//! [`Error`] always means the call did not do its job: bad input, missing namespace, limits,
//! credentials, or an unavailable server. The server attaches `google.rpc` details; this module
//! reads `BadRequest` (which field was wrong), `ErrorInfo` (a machine-readable reason) and
//! `RetryInfo` (when to try again) into the variants, so callers never decode details themselves.

use std::fmt;
use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt;

/// A `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One field the server rejected, from a `google.rpc.BadRequest` detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The path of the field, e.g. `key` or `tags[2]`.
    pub field: String,
    /// Why the value was rejected.
    pub description: String,
}

/// Why a call failed.
///
/// Built from a `tonic::Status` by [`From<tonic::Status>`]; each variant keeps the status
/// message and the details that matter for its code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request was malformed: a bad namespace, key, value size, TTL or batch size
    /// (`INVALID_ARGUMENT`). Not worth retrying.
    #[error("invalid argument: {message}{}", Violations(field_violations))]
    InvalidArgument {
        message: String,
        /// The rejected fields, from the `BadRequest` detail.
        field_violations: Vec<FieldViolation>,
        /// The `ErrorInfo` reason, when the server sent one.
        reason: Option<String>,
    },
    /// The namespace (or another named resource) does not exist (`NOT_FOUND`). A missing key is
    /// not an error: it is a miss.
    #[error("not found: {message}")]
    NotFound { message: String },
    /// The server cannot answer now, or could not be reached (`UNAVAILABLE`). Retry after
    /// `retry_after` when the server sent a `RetryInfo`, else with a backoff.
    #[error("unavailable: {message}")]
    Unavailable {
        message: String,
        retry_after: Option<Duration>,
    },
    /// A quota or rate limit was hit (`RESOURCE_EXHAUSTED`).
    #[error("resource exhausted: {message}")]
    ResourceExhausted {
        message: String,
        retry_after: Option<Duration>,
        /// The `ErrorInfo` reason, when the server sent one.
        reason: Option<String>,
    },
    /// The credential is valid but may not do this (`PERMISSION_DENIED`).
    #[error("permission denied: {message}")]
    PermissionDenied { message: String },
    /// No valid credential was sent (`UNAUTHENTICATED`).
    #[error("unauthenticated: {message}")]
    Unauthenticated { message: String },
    /// The deadline passed before the server answered: either the server's `DEADLINE_EXCEEDED`
    /// or the request timeout set on the [`ClientBuilder`](crate::ClientBuilder).
    #[error("deadline exceeded: {message}")]
    DeadlineExceeded { message: String },
    /// Any other status code.
    #[error("{}: {message}", code_name(*code))]
    Other { code: Code, message: String },
    /// The connection could not be set up (bad address, connect failure or timeout). Its
    /// `source()` chain names the cause, e.g. `tcp connect error: Connection refused`.
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    /// The server answered with something this SDK does not understand, such as an unknown
    /// outcome; usually a server newer than the SDK.
    #[error("unexpected response: {0}")]
    UnexpectedResponse(String),
    /// The client settings cannot work, e.g. a TLS certificate that does not parse or a token that
    /// is not valid metadata.
    #[error("invalid client config: {0}")]
    InvalidConfig(String),
    /// A value could not be encoded or decoded by a typed helper (`get_json`, `set_json`, …).
    #[error("codec: {0}")]
    Codec(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    /// Returns the gRPC code this error stands for (`UNAVAILABLE` for transport errors, `INTERNAL`
    /// for unexpected responses).
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::NotFound { .. } => Code::NotFound,
            Error::Unavailable { .. } | Error::Transport(_) => Code::Unavailable,
            Error::ResourceExhausted { .. } => Code::ResourceExhausted,
            Error::PermissionDenied { .. } => Code::PermissionDenied,
            Error::Unauthenticated { .. } => Code::Unauthenticated,
            Error::DeadlineExceeded { .. } => Code::DeadlineExceeded,
            Error::Other { code, .. } => *code,
            Error::UnexpectedResponse(_) | Error::Codec(_) => Code::Internal,
            Error::InvalidConfig(_) => Code::InvalidArgument,
        }
    }

    /// Returns whether the same call may succeed later without changes: unavailable, rate
    /// limited, timed out or not connected.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Unavailable { .. }
                | Error::ResourceExhausted { .. }
                | Error::DeadlineExceeded { .. }
                | Error::Transport(_)
        )
    }

    /// Returns how long the server asked the caller to wait before retrying, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Unavailable { retry_after, .. }
            | Error::ResourceExhausted { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl Error {
    pub(crate) fn deadline(message: &str) -> Self {
        Error::DeadlineExceeded {
            message: message.to_string(),
        }
    }

    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Error::Unavailable {
            message: message.into(),
            retry_after: None,
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        let message = status.message().to_string();
        // ErrorInfo.reason is a required field; treat an empty one as absent.
        let reason = || {
            status
                .get_details_error_info()
                .map(|info| info.reason)
                .filter(|r| !r.is_empty())
        };
        let retry_after = || status.get_details_retry_info().and_then(|r| r.retry_delay);
        match status.code() {
            Code::InvalidArgument => Error::InvalidArgument {
                field_violations: status
                    .get_details_bad_request()
                    .map(|br| {
                        br.field_violations
                            .into_iter()
                            .map(|v| FieldViolation {
                                field: v.field,
                                description: v.description,
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                reason: reason(),
                message,
            },
            Code::NotFound => Error::NotFound { message },
            Code::Unavailable => Error::Unavailable {
                retry_after: retry_after(),
                message,
            },
            Code::ResourceExhausted => Error::ResourceExhausted {
                retry_after: retry_after(),
                reason: reason(),
                message,
            },
            Code::PermissionDenied => Error::PermissionDenied { message },
            Code::Unauthenticated => Error::Unauthenticated { message },
            Code::DeadlineExceeded => Error::DeadlineExceeded { message },
            // tonic reports its own request timeout as CANCELLED with the TimeoutExpired text.
            Code::Cancelled if message == tonic::TimeoutExpired(()).to_string() => {
                Error::DeadlineExceeded { message }
            }
            code => Error::Other { code, message },
        }
    }
}

/// Formats field violations as ` (field: description; …)`, or nothing when there are none.
struct Violations<'a>(&'a [FieldViolation]);

impl fmt::Display for Violations<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            let sep = if i == 0 { " (" } else { "; " };
            write!(f, "{sep}{}: {}", v.field, v.description)?;
        }
        if !self.0.is_empty() {
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// Returns the lowercase gRPC name of `code`, e.g. `failed precondition`.
fn code_name(code: Code) -> String {
    // Code's Debug is CamelCase (`FailedPrecondition`); split it into words.
    let camel = format!("{code:?}");
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push(' ');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tonic::Status;
    use tonic_types::{ErrorDetails, StatusExt};

    #[test]
    fn invalid_argument_reads_field_violations_and_reason() {
        let mut details = ErrorDetails::with_bad_request_violation("key", "must not be empty");
        details.add_bad_request_violation("tags[1]", "longer than 128 bytes");
        details.set_error_info("KEY_INVALID", "tiercache.dev", HashMap::new());
        let status = Status::with_error_details(Code::InvalidArgument, "bad request", details);
        let err = Error::from(status);
        match &err {
            Error::InvalidArgument {
                message,
                field_violations,
                reason,
            } => {
                assert_eq!(message, "bad request");
                assert_eq!(
                    field_violations,
                    &[
                        FieldViolation {
                            field: "key".into(),
                            description: "must not be empty".into()
                        },
                        FieldViolation {
                            field: "tags[1]".into(),
                            description: "longer than 128 bytes".into()
                        },
                    ]
                );
                assert_eq!(reason.as_deref(), Some("KEY_INVALID"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            err.to_string(),
            "invalid argument: bad request (key: must not be empty; tags[1]: longer than 128 bytes)"
        );
        assert!(!err.is_retryable());
        assert_eq!(err.code(), Code::InvalidArgument);
    }

    #[test]
    fn invalid_argument_without_details() {
        let err = Error::from(Status::invalid_argument("nope"));
        match &err {
            Error::InvalidArgument {
                field_violations,
                reason,
                ..
            } => {
                assert!(field_violations.is_empty());
                assert!(reason.is_none());
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(err.to_string(), "invalid argument: nope");
    }

    #[test]
    fn unavailable_reads_retry_info() {
        let details = ErrorDetails::with_retry_info(Some(Duration::from_millis(250)));
        let status = Status::with_error_details(Code::Unavailable, "redis down", details);
        let err = Error::from(status);
        assert!(matches!(
            &err,
            Error::Unavailable { message, retry_after: Some(d) }
                if message == "redis down" && *d == Duration::from_millis(250)
        ));
        assert!(err.is_retryable());
        assert_eq!(err.retry_after(), Some(Duration::from_millis(250)));

        let err = Error::from(Status::unavailable("no route"));
        assert!(matches!(
            err,
            Error::Unavailable {
                retry_after: None,
                ..
            }
        ));
    }

    #[test]
    fn resource_exhausted_reads_retry_info_and_reason() {
        let mut details = ErrorDetails::with_retry_info(Some(Duration::from_secs(1)));
        details.set_error_info("RATE_LIMITED", "tiercache.dev", HashMap::new());
        let status = Status::with_error_details(Code::ResourceExhausted, "slow down", details);
        match Error::from(status) {
            Error::ResourceExhausted {
                retry_after,
                reason,
                ..
            } => {
                assert_eq!(retry_after, Some(Duration::from_secs(1)));
                assert_eq!(reason.as_deref(), Some("RATE_LIMITED"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn simple_codes_map_to_their_variants() {
        assert!(matches!(
            Error::from(Status::not_found("namespace nope")),
            Error::NotFound { message } if message == "namespace nope"
        ));
        assert!(matches!(
            Error::from(Status::permission_denied("x")),
            Error::PermissionDenied { .. }
        ));
        assert!(matches!(
            Error::from(Status::unauthenticated("x")),
            Error::Unauthenticated { .. }
        ));
        assert!(matches!(
            Error::from(Status::deadline_exceeded("x")),
            Error::DeadlineExceeded { .. }
        ));
    }

    #[test]
    fn client_timeout_maps_to_deadline_exceeded() {
        let status = Status::cancelled(tonic::TimeoutExpired(()).to_string());
        assert!(matches!(
            Error::from(status),
            Error::DeadlineExceeded { .. }
        ));
        // A plain cancellation stays what it is.
        assert!(matches!(
            Error::from(Status::cancelled("client went away")),
            Error::Other {
                code: Code::Cancelled,
                ..
            }
        ));
    }

    #[test]
    fn other_codes_keep_code_and_message() {
        let err = Error::from(Status::failed_precondition("lease held"));
        assert!(matches!(
            &err,
            Error::Other { code: Code::FailedPrecondition, message } if message == "lease held"
        ));
        assert_eq!(err.to_string(), "failed precondition: lease held");
        assert_eq!(err.code(), Code::FailedPrecondition);
    }

    #[test]
    fn garbage_details_are_ignored() {
        let status = Status::with_details(
            Code::InvalidArgument,
            "bad",
            bytes::Bytes::from_static(b"\xff\xff\xff"),
        );
        assert!(matches!(
            Error::from(status),
            Error::InvalidArgument { field_violations, reason: None, .. } if field_violations.is_empty()
        ));
    }
}
