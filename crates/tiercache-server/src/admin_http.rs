//! The admin HTTP port: `/metrics` in Prometheus text format.
//!
//! Separate from the gRPC port so it can stay on a private interface (default
//! `127.0.0.1:9464`) and be scraped without a gRPC client.

use std::future::Future;
use std::sync::Arc;

use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::telemetry::Metrics;

/// The content type of the Prometheus text exposition format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `/metrics` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                // Collection runs the observable callbacks (which take short locks); keep it off
                // the async workers.
                let text = tokio::task::spawn_blocking(move || metrics.prometheus_text())
                    .await
                    .unwrap_or_default();
                ([(CONTENT_TYPE, PROMETHEUS_TEXT)], text)
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
