//! Errors of the engine.

/// A failure of the engine. Expected outcomes (miss, version mismatch, revoked lease) are values,
/// not errors.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The namespace is not configured and dynamic namespaces are off.
    #[error("namespace {0} not found")]
    NamespaceNotFound(String),
    /// Dynamic namespace creation hit the server's ceiling.
    #[error("too many namespaces (at most {0})")]
    TooManyNamespaces(usize),
    /// Redis could not be reached or answered with an error; no fallback applies.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// Redis held data this version cannot read.
    #[error("corrupt entry for key {key}: {reason}")]
    Corrupt { key: String, reason: String },
    /// The feature exists in the API but not yet in the engine.
    #[error("{0} is not implemented")]
    Unimplemented(&'static str),
}

impl From<redis::RedisError> for CoreError {
    fn from(e: redis::RedisError) -> Self {
        CoreError::Unavailable(e.to_string())
    }
}
