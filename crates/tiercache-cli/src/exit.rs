//! Exit codes and the failure type that carries one.

use std::process::ExitCode;

use tiercache_client::Error as ClientError;

/// The documented exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Success, or a hit.
    Ok = 0,
    /// A miss (get) or a failed condition (set, del).
    Negative = 1,
    /// Bad usage or config: the caller must change something.
    Usage = 2,
    /// The server or the connection failed.
    Failure = 3,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

/// An error together with the exit code it should produce.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub error: anyhow::Error,
}

impl Failure {
    /// A usage or config error (exit 2).
    pub fn usage(error: impl Into<anyhow::Error>) -> Self {
        Self {
            exit: Exit::Usage,
            error: error.into(),
        }
    }

    /// A server or transport error (exit 3).
    pub fn server(error: impl Into<anyhow::Error>) -> Self {
        Self {
            exit: Exit::Failure,
            error: error.into(),
        }
    }
}

impl From<ClientError> for Failure {
    /// The server rejecting the input (bad key, unknown namespace) is a usage error; everything
    /// else is a server or transport error.
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::InvalidArgument { .. } | ClientError::NotFound { .. } => Failure::usage(e),
            _ => Failure::server(e),
        }
    }
}
