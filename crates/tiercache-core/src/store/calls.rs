//! What every Redis call shares: its name for spans and metrics, the observer the server
//! installs, and the one classification of its failures (unreachable or an error reply).

use std::time::Duration;

use crate::error::{CoreError, RedisErrorClass, RedisReplyError};

/// Receives the duration and result of every Redis call; the server turns them into metrics.
///
/// Called on the request path after each round trip, so it must be cheap and must not block.
pub trait RedisObserver: Send + Sync + 'static {
    /// Records one call: `operation` is one of the names in [`RedisOp`], `error` its failure.
    fn record(&self, operation: RedisOp, elapsed: Duration, error: Option<&CoreError>);
}

/// A kind of Redis call the L2 tier makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisOp {
    /// The tiercache operation (`read`, `set`, `delete`, `namespace_marks`, `tag_marks`,
    /// `invalidate_tags`, `flush`, `acquire_lease`, `fill`, `release_lease`, `lease_info`,
    /// `acquire_lock`, `renew_lock`, `release_lock`, `inspect`, `ping`, `sequence_check`,
    /// `health_check`).
    pub name: &'static str,
    /// The Redis command it sends (`EVALSHA`, `MGET`, `PING`).
    pub command: &'static str,
}

impl RedisOp {
    pub(super) const READ: RedisOp = RedisOp::script("read");
    pub(super) const SET: RedisOp = RedisOp::script("set");
    pub(super) const DELETE: RedisOp = RedisOp::script("delete");
    pub(super) const INVALIDATE_TAGS: RedisOp = RedisOp::script("invalidate_tags");
    pub(super) const FLUSH: RedisOp = RedisOp::script("flush");
    pub(super) const NAMESPACE_MARKS: RedisOp = RedisOp {
        name: "namespace_marks",
        command: "MGET",
    };
    /// The periodic comparison of every synced namespace's sequence with Redis's.
    pub(super) const SEQUENCE_CHECK: RedisOp = RedisOp {
        name: "sequence_check",
        command: "MGET",
    };
    pub(super) const TAG_MARKS: RedisOp = RedisOp {
        name: "tag_marks",
        command: "MGET",
    };
    pub(super) const ACQUIRE_LEASE: RedisOp = RedisOp::script("acquire_lease");
    pub(super) const FILL: RedisOp = RedisOp::script("fill");
    pub(super) const RELEASE_LEASE: RedisOp = RedisOp::script("release_lease");
    pub(super) const LEASE_INFO: RedisOp = RedisOp {
        name: "lease_info",
        command: "GET",
    };
    pub(super) const ACQUIRE_LOCK: RedisOp = RedisOp::script("acquire_lock");
    pub(super) const RENEW_LOCK: RedisOp = RedisOp::script("renew_lock");
    pub(super) const RELEASE_LOCK: RedisOp = RedisOp::script("release_lock");
    pub(super) const INSPECT: RedisOp = RedisOp::script("inspect");
    pub(super) const PING: RedisOp = RedisOp {
        name: "ping",
        command: "PING",
    };
    /// The background health check of the data connection (`crate::degraded`).
    pub(super) const HEALTH_CHECK: RedisOp = RedisOp {
        name: "health_check",
        command: "PING",
    };

    /// Every kind of call, so metrics can create their series before the first one.
    pub const ALL: [RedisOp; 18] = [
        Self::READ,
        Self::SET,
        Self::DELETE,
        Self::INVALIDATE_TAGS,
        Self::FLUSH,
        Self::NAMESPACE_MARKS,
        Self::SEQUENCE_CHECK,
        Self::TAG_MARKS,
        Self::ACQUIRE_LEASE,
        Self::FILL,
        Self::RELEASE_LEASE,
        Self::LEASE_INFO,
        Self::ACQUIRE_LOCK,
        Self::RENEW_LOCK,
        Self::RELEASE_LOCK,
        Self::INSPECT,
        Self::PING,
        Self::HEALTH_CHECK,
    ];

    const fn script(name: &'static str) -> RedisOp {
        RedisOp {
            name,
            command: "EVALSHA",
        }
    }
}

/// Every `error.type` a failed call can carry ([`error_type`]).
pub const ERROR_TYPES: [&str; 4] = ["unavailable", "redis_error", "corrupt", "other"];

/// The `error.type` of a failed call.
pub fn error_type(e: &CoreError) -> &'static str {
    match e {
        CoreError::Unavailable(_) => "unavailable",
        CoreError::Redis(_) => "redis_error",
        CoreError::Corrupt { .. } => "corrupt",
        _ => "other",
    }
}

/// Classifies a Redis failure: only "Redis unreachable" (refused, reset, dropped, an I/O error,
/// no answer within the response timeout) is [`CoreError::Unavailable`], which trips degraded
/// mode. An error reply means Redis is there: it becomes [`CoreError::Redis`] with its class and
/// code, and changes no mode.
pub fn classify(e: redis::RedisError) -> CoreError {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        return CoreError::Unavailable(e.to_string());
    }
    let code = match e.kind() {
        redis::ErrorKind::Parse | redis::ErrorKind::UnexpectedReturnType => "UNEXPECTED_REPLY",
        _ => e.code().unwrap_or("ERROR"),
    }
    .to_string();
    let class = match code.as_str() {
        "OOM" => RedisErrorClass::OutOfMemory,
        "READONLY" | "LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" => RedisErrorClass::Transient,
        _ => RedisErrorClass::Internal,
    };
    CoreError::Redis(RedisReplyError {
        class,
        code,
        message: e.to_string(),
    })
}

impl From<redis::RedisError> for CoreError {
    fn from(e: redis::RedisError) -> Self {
        classify(e)
    }
}
