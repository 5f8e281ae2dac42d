//! Errors of the engine.

/// A failure of the engine. Expected outcomes (miss, version mismatch, revoked lease) are values,
/// not errors.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The namespace is not configured and dynamic namespaces are off.
    #[error("namespace {0} not found")]
    NamespaceNotFound(String),
    /// Dynamic namespace creation hit the server's ceiling.
    #[error("too many dynamic namespaces (limits.max_namespaces is {0})")]
    TooManyNamespaces(usize),
    /// Redis could not be reached: connection refused or reset, an I/O error, a dropped
    /// connection, or no answer within the response timeout. The only error that trips degraded
    /// mode.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// Redis answered, with an error reply or a reply this version cannot read. It is reachable,
    /// so no mode changes and nothing is cleared.
    #[error("redis error: {0}")]
    Redis(RedisReplyError),
    /// Redis held data this version cannot read.
    #[error("corrupt entry for key {key}: {reason}")]
    Corrupt { key: String, reason: String },
    /// The replica is shutting down ([`crate::Cache::drain`]): a waiter is released without an
    /// answer so its caller retries on another replica.
    #[error("the server is shutting down; retry on another replica")]
    Draining,
    /// A batch read would return more than its byte limit of values; nothing was returned.
    #[error("the reply would exceed {limit} bytes")]
    ReplyTooLarge { limit: u64 },
    /// A GetOrSet would have granted a lease to a caller that may not take one
    /// ([`crate::GetOrSetOptions::may_lease`] false): nothing was taken.
    #[error("a lease would be granted, but the caller may not take one")]
    LeaseRefused,
    /// The feature exists in the API but not yet in the engine.
    #[error("{0} is not implemented")]
    Unimplemented(&'static str),
}

/// An error reply from Redis, classified (see `store::redis::classify`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RedisReplyError {
    pub class: RedisErrorClass,
    /// The Redis error code, the reply's first word (`WRONGTYPE`, `ERR`, `OOM`, `READONLY`…);
    /// `UNEXPECTED_REPLY` for a reply of the wrong shape, `ERROR` when Redis gave none.
    pub code: String,
    pub message: String,
}

/// What an error reply means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisErrorClass {
    /// A script or type error (`WRONGTYPE`, `ERR`, `NOSCRIPT` after the reload…) or a reply this
    /// version cannot read: retrying the same call cannot succeed.
    Internal,
    /// Redis is out of memory (`OOM`).
    OutOfMemory,
    /// Redis cannot serve the call now but may soon (`READONLY`, `LOADING`, `BUSY`, `TRYAGAIN`,
    /// `MASTERDOWN`): retry later.
    Transient,
}

impl RedisReplyError {
    /// Returns the `ErrorInfo` reason: `REDIS_` and the error code (`REDIS_WRONGTYPE`).
    pub fn reason(&self) -> String {
        let code: String = self
            .code
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        format!("REDIS_{code}")
    }
}

impl CoreError {
    /// A reply of a shape the caller did not expect (a script or Redis version mismatch).
    pub(crate) fn unexpected_reply(what: impl std::fmt::Debug) -> CoreError {
        CoreError::Redis(RedisReplyError {
            class: RedisErrorClass::Internal,
            code: "UNEXPECTED_REPLY".into(),
            message: format!("unexpected reply from redis: {what:?}"),
        })
    }

    /// True when Redis could not be reached (the one error that trips degraded mode).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, CoreError::Unavailable(_))
    }
}
