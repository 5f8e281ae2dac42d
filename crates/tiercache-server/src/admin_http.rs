//! The admin HTTP port: `/metrics` in Prometheus text format.
//!
//! Separate from the gRPC port so it can stay on a private interface (default
//! `127.0.0.1:9464`) and be scraped without a gRPC client.

use std::future::Future;
use std::sync::Arc;

use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::telemetry::Metrics;

/// The content type of the Prometheus text exposition format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether `headers` carry `Authorization: Bearer <token>` whose SHA-256 is `hash`.
fn authorized(headers: &HeaderMap, hash: &[u8; 32]) -> bool {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .is_some_and(|(_, token)| crate::auth::token_hash(token.trim()) == *hash)
}

/// Serves `/metrics` on `listener` until `shutdown` completes. With `token_sha256` (from
/// `telemetry.admin_token_sha256`) a scrape must send that bearer token (else 401).
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    token_sha256: Option<[u8; 32]>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new().route(
        "/metrics",
        get(move |headers: HeaderMap| {
            let metrics = metrics.clone();
            async move {
                if let Some(hash) = &token_sha256 {
                    if !authorized(&headers, hash) {
                        return (
                            StatusCode::UNAUTHORIZED,
                            [(WWW_AUTHENTICATE, "Bearer")],
                            "a bearer token is required (telemetry.admin_token_sha256)\n",
                        )
                            .into_response();
                    }
                }
                // Collection runs the observable callbacks (which take short locks); keep it off
                // the async workers.
                let text = tokio::task::spawn_blocking(move || metrics.prometheus_text())
                    .await
                    .unwrap_or_default();
                ([(CONTENT_TYPE, PROMETHEUS_TEXT)], text).into_response()
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
