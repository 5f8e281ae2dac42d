//! The one place where errors become gRPC statuses.

use std::collections::HashMap;
use std::time::Duration;

use tiercache_core::error::RedisErrorClass;
use tiercache_core::CoreError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every status this server returns.
pub const ERROR_DOMAIN: &str = "tiercache.v1";

/// How long a caller should wait before retrying a call Redis could not serve.
const REDIS_RETRY_AFTER: Duration = Duration::from_millis(200);
/// How long a caller released by a draining replica should wait (on another replica).
const DRAINING_RETRY_AFTER: Duration = Duration::from_millis(100);

/// A request that failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Bad input: one or more fields violate their rules.
    #[error("invalid request: {}", .0.iter().map(|(f, d)| format!("{f}: {d}")).collect::<Vec<_>>().join("; "))]
    InvalidArgument(Vec<(String, String)>),
    /// The engine failed.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// A GetOrSet waiter's bound passed and it asked for UNAVAILABLE.
    #[error("wait for fill of key timed out")]
    WaitTimeout { retry_after: Duration },
    /// A request that cannot be decoded (a broken wire format, invalid UTF-8 in a string);
    /// `field` is the path of the field at fault, empty when none can be blamed.
    #[error("malformed {message}{}: {description}", at(.field))]
    Malformed {
        message: String,
        field: String,
        description: String,
    },
    /// The reply to a batch would carry more than `limits.max_reply_bytes` of values.
    #[error("the reply would exceed {limit} bytes of values (limits.max_reply_bytes); ask for fewer {field}")]
    ReplyTooLarge { field: String, limit: u64 },
    /// No credential, or one that maps to no principal (auth on).
    #[error("missing or unknown credential: send `authorization: Bearer <token>` (or a client certificate under mTLS)")]
    Unauthenticated,
    /// The caller lacks a right on a namespace.
    #[error("principal {principal:?} lacks the {right} right on namespace {namespace}")]
    PermissionDenied {
        right: &'static str,
        namespace: String,
        principal: String,
    },
    /// A token bucket (`limit`: `principal` or `namespace`) is empty.
    #[error("rate limit of {limit} {subject} exceeded; retry in {retry_after:?}")]
    RateLimited {
        limit: &'static str,
        subject: String,
        retry_after: Duration,
    },
    /// A Watch consumer fell behind the server's buffer; its stream ends.
    #[error("watch consumer fell {buffered} events behind; the stream ends, watch again and clear what was cached")]
    WatchOverflow { buffered: usize },
}

fn at(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!(" at {field}")
    }
}

impl ApiError {
    /// A single field violation.
    pub fn field(field: impl Into<String>, description: impl Into<String>) -> Self {
        ApiError::InvalidArgument(vec![(field.into(), description.into())])
    }
}

fn status(
    code: Code,
    message: String,
    reason: &str,
    extra: impl FnOnce(&mut ErrorDetails),
) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(reason, ERROR_DOMAIN, HashMap::new());
    extra(&mut details);
    Status::with_error_details(code, message, details)
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let message = e.to_string();
        match e {
            ApiError::InvalidArgument(violations) => {
                status(Code::InvalidArgument, message, "INVALID_ARGUMENT", |d| {
                    for (field, description) in violations {
                        d.add_bad_request_violation(field, description);
                    }
                })
            }
            ApiError::Malformed {
                message: m,
                field,
                description,
            } => {
                let mut info = HashMap::new();
                info.insert("message".to_string(), m);
                let mut details = ErrorDetails::new();
                details.set_error_info("MALFORMED_REQUEST", ERROR_DOMAIN, info);
                details.add_bad_request_violation(field, description);
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            ApiError::ReplyTooLarge { field, limit } => {
                let mut info = HashMap::new();
                info.insert("field".to_string(), field.clone());
                info.insert("limit".to_string(), limit.to_string());
                let mut details = ErrorDetails::new();
                details.set_error_info("REPLY_TOO_LARGE", ERROR_DOMAIN, info);
                details.add_bad_request_violation(field, "the reply would be too large");
                Status::with_error_details(Code::ResourceExhausted, message, details)
            }
            ApiError::Unauthenticated => {
                status(Code::Unauthenticated, message, "UNAUTHENTICATED", |_| {})
            }
            ApiError::PermissionDenied {
                right,
                namespace,
                principal,
            } => {
                let mut details = ErrorDetails::new();
                details.set_error_info(
                    "PERMISSION_DENIED",
                    ERROR_DOMAIN,
                    HashMap::from([
                        ("right".to_string(), right.to_string()),
                        ("namespace".to_string(), namespace),
                        ("principal".to_string(), principal),
                    ]),
                );
                Status::with_error_details(Code::PermissionDenied, message, details)
            }
            ApiError::RateLimited {
                limit,
                subject,
                retry_after,
            } => {
                let mut details = ErrorDetails::new();
                details.set_error_info(
                    "RATE_LIMITED",
                    ERROR_DOMAIN,
                    HashMap::from([
                        ("limit".to_string(), limit.to_string()),
                        (limit.to_string(), subject),
                    ]),
                );
                details.set_retry_info(Some(retry_after));
                Status::with_error_details(Code::ResourceExhausted, message, details)
            }
            ApiError::WatchOverflow { .. } => {
                status(Code::ResourceExhausted, message, "WATCH_OVERFLOW", |_| {})
            }
            ApiError::WaitTimeout { retry_after } => {
                status(Code::Unavailable, message, "WAIT_TIMEOUT", |d| {
                    d.set_retry_info(Some(retry_after));
                })
            }
            ApiError::Core(core) => match core {
                CoreError::NamespaceNotFound(_) => {
                    status(Code::NotFound, message, "NAMESPACE_NOT_FOUND", |_| {})
                }
                CoreError::TooManyNamespaces(max) => {
                    // ErrorInfo names the field and the limit (`limits.max_namespaces`).
                    let mut details = ErrorDetails::new();
                    details.set_error_info(
                        "TOO_MANY_NAMESPACES",
                        ERROR_DOMAIN,
                        HashMap::from([
                            ("field".to_string(), "namespace".to_string()),
                            ("limit".to_string(), max.to_string()),
                        ]),
                    );
                    Status::with_error_details(Code::ResourceExhausted, message, details)
                }
                CoreError::Unavailable(_) => {
                    status(Code::Unavailable, message, "REDIS_UNAVAILABLE", |d| {
                        d.set_retry_info(Some(REDIS_RETRY_AFTER));
                    })
                }
                CoreError::Redis(reply) => {
                    let reason = reply.reason();
                    match reply.class {
                        RedisErrorClass::Internal => {
                            status(Code::Internal, message, &reason, |_| {})
                        }
                        RedisErrorClass::OutOfMemory => {
                            status(Code::ResourceExhausted, message, &reason, |_| {})
                        }
                        RedisErrorClass::Transient => {
                            status(Code::Unavailable, message, &reason, |d| {
                                d.set_retry_info(Some(REDIS_RETRY_AFTER));
                            })
                        }
                    }
                }
                CoreError::Draining => status(Code::Unavailable, message, "DRAINING", |d| {
                    d.set_retry_info(Some(DRAINING_RETRY_AFTER));
                }),
                CoreError::ReplyTooLarge { limit } => ApiError::ReplyTooLarge {
                    field: String::new(),
                    limit,
                }
                .into(),
                CoreError::Corrupt { .. } => {
                    status(Code::DataLoss, message, "CORRUPT_ENTRY", |_| {})
                }
                CoreError::LeaseRefused => {
                    status(Code::PermissionDenied, message, "PERMISSION_DENIED", |_| {})
                }
                CoreError::Unimplemented(_) => {
                    status(Code::Unimplemented, message, "UNIMPLEMENTED", |_| {})
                }
            },
        }
    }
}

/// Maps a refusal tonic made before any service code ran, found in the headers of a
/// trailers-only response: a request message over `limits.max_message_bytes` (tonic says
/// `OUT_OF_RANGE`) becomes `RESOURCE_EXHAUSTED` with `ErrorInfo` `MESSAGE_TOO_LARGE`, like every
/// other limit. Called by the RPC layer on every response.
pub fn remap_transport_refusal(headers: &mut http::HeaderMap) {
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    if status.code() != Code::OutOfRange
        || !status
            .message()
            .contains("decoded message length too large")
    {
        return;
    }
    let remapped = self::status(
        Code::ResourceExhausted,
        format!(
            "{} (limits.max_message_bytes)",
            status.message().trim_start_matches("Error, ")
        ),
        "MESSAGE_TOO_LARGE",
        |_| {},
    );
    if remapped.add_header(headers).is_err() {
        tracing::debug!("cannot write the remapped status");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_request_names_the_field() {
        let s: Status = ApiError::field("key", "must not be empty").into();
        assert_eq!(s.code(), Code::InvalidArgument);
        let br = s.get_details_bad_request().unwrap();
        assert_eq!(br.field_violations[0].field, "key");
        assert_eq!(
            s.get_details_error_info().unwrap().reason,
            "INVALID_ARGUMENT"
        );
    }

    fn reply(class: RedisErrorClass, code: &str) -> Status {
        ApiError::Core(CoreError::Redis(tiercache_core::error::RedisReplyError {
            class,
            code: code.into(),
            message: format!("{code} something"),
        }))
        .into()
    }

    #[test]
    fn redis_error_replies_name_their_class() {
        let s = reply(RedisErrorClass::Internal, "WRONGTYPE");
        assert_eq!(s.code(), Code::Internal);
        assert_eq!(
            s.get_details_error_info().unwrap().reason,
            "REDIS_WRONGTYPE"
        );
        assert!(s.get_details_retry_info().is_none());
        let s = reply(RedisErrorClass::OutOfMemory, "OOM");
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(s.get_details_error_info().unwrap().reason, "REDIS_OOM");
        let s = reply(RedisErrorClass::Transient, "LOADING");
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(s.get_details_error_info().unwrap().reason, "REDIS_LOADING");
        assert!(s.get_details_retry_info().unwrap().retry_delay.is_some());
    }

    #[test]
    fn unavailable_has_retry_info() {
        let s: Status = ApiError::Core(CoreError::Unavailable("down".into())).into();
        assert_eq!(s.code(), Code::Unavailable);
        assert!(s.get_details_retry_info().unwrap().retry_delay.is_some());
    }
}
