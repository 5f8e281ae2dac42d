//! The tiercache gRPC server.
//!
//! [`run`] is the one entry point for production, tests and benches: it serves on a listener the
//! caller bound (port 0 in tests) until `shutdown` completes.

pub mod config;

use std::future::Future;

pub use config::Config;
use tokio::net::TcpListener;

/// A failure that stops the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid config: {0}")]
    Config(#[from] config::ConfigError),
    #[error("cannot start storage: {0}")]
    Storage(String),
    #[error("transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves the tiercache API on `listener` until `shutdown` completes, then drains in-flight RPCs
/// for at most `config.shutdown_grace`.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    config.validate()?;
    let (_reporter, health) = tonic_health::server::health_reporter();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(health)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}
