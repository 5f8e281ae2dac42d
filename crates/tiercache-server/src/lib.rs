//! The tiercache gRPC server: tonic services over the [`tiercache_core`] engine.
//!
//! # Layout
//! - [`config`]: the typed configuration (TOML, unknown fields rejected).
//! - The services, one file each: [`cache`] (`CacheService`: the unary RPCs and Watch),
//!   [`pipeline`] (its `Pipeline` stream, a layer below `cache`), [`lock`] (`LockService`),
//!   [`admin`] (`AdminService`).
//! - [`request`]: what every service does first: resolve the namespace (checked, the caller's
//!   right on it checked, resolved by the engine, noted on the RPC's span and metrics, rate
//!   limited) and read the caller's deadline.
//! - [`auth`]: tokens and client certificates → principals (the [`auth::AuthLayer`] on the
//!   server), rights per namespace pattern, rate limits ([`auth::Guard`]); [`identity`]: what
//!   the transport verified about a peer.
//! - [`validate`]: request checks, run before any tier is touched.
//! - [`convert`]: every mapping between engine and wire types (entries, outcomes, leases, locks,
//!   policies, stats, inspect, watch events); durations via `tiercache_proto::duration`.
//! - [`error`]: the one mapping from errors to gRPC statuses with `google.rpc` details.
//! - [`tls`]: TLS and mutual TLS on the gRPC port (certificate files reloaded on change);
//!   [`identity`]: the [`identity::PeerIdentity`] it hands to every request.
//! - [`codec`]: the codec of every service (prost, with malformed requests answered
//!   `INVALID_ARGUMENT` naming the field); [`services`]: the service traits generated with it.
//! - [`telemetry`]: [`telemetry::otel`] (providers and exporters, what the CLI installs for
//!   traces and trace-aware logs), [`telemetry::metrics`] (the meter provider and instruments),
//!   [`telemetry::rpc`] (the per-RPC span and metrics layer); [`admin_http`]: `/metrics` on the
//!   admin port.
//!
//! [`run`] is the one entry point for production, tests and benches: it serves on a listener the
//! caller bound (port 0 in tests) until `shutdown` completes.

pub mod admin;
pub mod admin_http;
pub mod auth;
pub mod cache;
pub mod codec;
pub mod config;
pub mod convert;
pub mod error;
pub mod identity;
pub mod lock;
pub mod pipeline;
pub mod request;
pub mod telemetry;
pub mod tls;
pub mod validate;

/// The server side of the v1 services, generated with [`codec::ServerCodec`] over the message
/// types of `tiercache_proto::v1` (see `build.rs`).
pub mod services {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("tiercache.v1");
}

use std::future::Future;
use std::sync::Arc;

pub use config::Config;
use services::admin_service_server::AdminServiceServer;
use services::cache_service_server::CacheServiceServer;
use services::lock_service_server::LockServiceServer;
use tiercache_core::{Cache, CacheConfig};
use tokio::net::TcpListener;
use tonic_health::ServingStatus;

/// A failure that stops the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid config: {0}")]
    Config(#[from] config::ConfigError),
    #[error("cannot start storage: {0}")]
    Storage(#[from] tiercache_core::CoreError),
    #[error("cannot build reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot start telemetry: {0}")]
    Telemetry(#[from] telemetry::TelemetryError),
    #[error("cannot read the listener's address: {source}")]
    Listen { source: std::io::Error },
    #[error("cannot listen on {addr} (telemetry.admin_listen): {source}")]
    AdminListen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// The health sub-status of the shared tier: NOT_SERVING while the server runs degraded (Redis
/// unreachable or the event subscription down); the server itself stays SERVING.
pub const REDIS_HEALTH_SERVICE: &str = "tiercache.redis";

/// The gRPC service names whose health is reported besides the server-wide `""`.
const SERVICES: [&str; 3] = [
    "tiercache.v1.CacheService",
    "tiercache.v1.LockService",
    "tiercache.v1.AdminService",
];

/// Builds the engine the config describes: memory-only, or L1 over Redis.
pub async fn build_cache(config: &Config) -> Result<Cache, ServerError> {
    let cache_config = CacheConfig {
        namespaces: config.namespace_policies(),
        dynamic_namespaces: config.dynamic_namespaces,
        default_policy: config.default_policy(),
        max_namespaces: config.limits.max_namespaces,
        l1_max_bytes: config.l1.max_bytes,
    };
    Ok(match &config.redis {
        None => Cache::memory(cache_config),
        Some(r) => {
            let cache = Cache::two_tier(cache_config, r.options()?).await?;
            warn_on_eviction_policy(&cache).await;
            cache
        }
    })
}

/// Warns when Redis may evict any key: an evicted sequence, flush mark, tag mark, lease or lock
/// silently undoes invalidations and mutual exclusion (see docs/deploy.md, "What tiercache needs
/// from Redis"). A Redis that refuses `CONFIG GET` is not checked.
async fn warn_on_eviction_policy(cache: &Cache) {
    match cache.redis_maxmemory_policy().await {
        Some(policy) if policy.starts_with("allkeys-") => tracing::warn!(
            maxmemory_policy = %policy,
            "redis maxmemory-policy lets redis evict tiercache's sequences and invalidation marks; \
             set maxmemory-policy to noeviction (or volatile-*, see docs/deploy.md)"
        ),
        Some(policy) => tracing::debug!(maxmemory_policy = %policy, "redis eviction policy"),
        None => tracing::info!("cannot read redis maxmemory-policy (CONFIG GET refused)"),
    }
}

/// Binds the admin HTTP port the config asks for (`telemetry.metrics`), or returns `None`.
pub async fn bind_admin(config: &Config) -> Result<Option<TcpListener>, ServerError> {
    if !config.telemetry.metrics {
        return Ok(None);
    }
    let addr = config.telemetry.admin_listen;
    TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|source| ServerError::AdminListen { addr, source })
}

/// Serves the tiercache API on `listener` until `shutdown` completes: then reports NOT_SERVING,
/// drains (every GetOrSet and lock waiter, Watch and Pipeline stream is answered at once with
/// `UNAVAILABLE`, reason `DRAINING`), stops accepting connections and lets in-flight RPCs
/// finish for at most `config.shutdown_grace`. Binds the admin port (`/metrics`) from the config.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    config.validate()?;
    let admin = bind_admin(&config).await?;
    run_with_admin(listener, admin, config, shutdown).await
}

/// [`run`] with the admin listener bound by the caller (port 0 in tests); `None` serves no
/// admin port whatever the config says.
pub async fn run_with_admin(
    listener: TcpListener,
    admin: Option<TcpListener>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    config.validate()?;
    let bound = listener
        .local_addr()
        .map_err(|source| ServerError::Listen { source })?;
    config.check_exposure(bound)?;
    if !bound.ip().is_loopback() && config.auth.is_none() {
        tracing::warn!(
            listen = %bound,
            "allow_insecure = true: serving on a non-loopback address without auth; anyone who \
             reaches the port can read, overwrite and flush every namespace"
        );
    }
    let auth = match &config.auth {
        Some(a) => Some(Arc::new(auth::Auth::new(a)?)),
        None => None,
    };
    let admin_token = match &config.telemetry.admin_token_sha256 {
        Some(h) => Some(h.bytes().map_err(|message| config::ConfigError::Invalid {
            field: "telemetry.admin_token_sha256".into(),
            message,
        })?),
        None => None,
    };
    let tls = config
        .tls
        .as_ref()
        .map(tls::TlsAcceptor::load)
        .transpose()?;
    let cache = build_cache(&config).await?;
    let metrics = Arc::new(telemetry::Metrics::start(&config.telemetry, &cache)?);
    if let Some(tls) = &tls {
        metrics.observe_tls(tls.stats());
    }
    cache.observe_redis(metrics.redis_observer());
    let namespaces: Vec<Arc<str>> = cache.namespaces().iter().map(|n| n.name.clone()).collect();
    let guard = Arc::new(
        auth::Guard::new(&config, auth.clone())
            .with_counters(metrics.security_counters(), &namespaces),
    );
    let _tokens_watch = AbortOnDrop(auth.and_then(auth::spawn_tokens_file_watch));
    let (admin_stop_tx, admin_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let admin_task = admin.map(|l| {
        tokio::spawn(admin_http::serve(l, metrics.clone(), admin_token, async {
            let _ = admin_stop_rx.await;
        }))
    });
    let streams = Arc::new(telemetry::metrics::Streams::default());
    metrics.observe_streams(streams.clone());
    let reflection = config.reflection_on(bound);
    let served = serve_grpc(
        listener, tls, &config, cache, &metrics, streams, guard, reflection, shutdown,
    )
    .await;
    let _ = admin_stop_tx.send(());
    if let Some(task) = admin_task {
        match task.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "admin http server failed"),
            Err(e) => tracing::warn!(error = %e, "admin http server panicked"),
            Ok(Ok(())) => {}
        }
    }
    // The last OTLP push blocks on the exporter; keep it off the async workers.
    let m = metrics.clone();
    let _ = tokio::task::spawn_blocking(move || m.shutdown()).await;
    served
}

#[allow(clippy::too_many_arguments)]
async fn serve_grpc(
    listener: TcpListener,
    tls: Option<Arc<tls::TlsAcceptor>>,
    config: &Config,
    cache: Cache,
    metrics: &telemetry::Metrics,
    streams: Arc<telemetry::metrics::Streams>,
    guard: Arc<auth::Guard>,
    reflection_on: bool,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    for name in std::iter::once("").chain(SERVICES) {
        reporter
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }
    // Both reflection versions: v1, and v1alpha for the clients that speak only it
    // (grpcio-reflection's stock client, older grpcurl, grpcui, Evans). Each lists both.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tiercache_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
            .include_reflection_service(false)
    };
    // Off: not served at all (UNIMPLEMENTED), so a scanner learns nothing of the API.
    let reflection_v1 = if reflection_on {
        Some(reflection().build_v1()?)
    } else {
        None
    };
    let reflection_v1alpha = if reflection_on {
        Some(reflection().build_v1alpha()?)
    } else {
        None
    };

    let storage_health = (config.redis.is_some()).then(|| {
        let (reporter, cache) = (reporter.clone(), cache.clone());
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let degraded = cache.degraded();
                if last != Some(degraded) {
                    let status = if degraded {
                        ServingStatus::NotServing
                    } else {
                        ServingStatus::Serving
                    };
                    reporter
                        .set_service_status(REDIS_HEALTH_SERVICE, status)
                        .await;
                    last = Some(degraded);
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        })
    });
    let _storage_health = AbortOnDrop(storage_health);

    let limits = &config.limits;
    let max = limits.max_message_bytes;
    let cache_api = cache::CacheApi::new(cache.clone(), limits.clone())
        .with_streams(streams)
        .with_guard(guard.clone());
    let admin_api = admin::AdminApi::new(cache.clone()).with_guard(guard.clone());
    let lock_api = lock::LockApi::new(cache.clone()).with_guard(guard.clone());
    let keepalive = config::nonzero(config.server.tcp_keepalive);
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(keepalive);

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(config.server.http2_max_concurrent_streams)
        .http2_keepalive_interval(config::nonzero(config.server.http2_keepalive_interval))
        .http2_keepalive_timeout(config::nonzero(config.server.http2_keepalive_timeout))
        // Outermost first: the RPC layer sees (and counts) what auth refuses.
        .layer(metrics.rpc_layer())
        .layer(auth::AuthLayer::new(guard))
        .add_service(
            health
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_optional_service(reflection_v1.map(|s| {
            s.max_decoding_message_size(max)
                .max_encoding_message_size(max)
        }))
        .add_optional_service(reflection_v1alpha.map(|s| {
            s.max_decoding_message_size(max)
                .max_encoding_message_size(max)
        }))
        .add_service(
            CacheServiceServer::new(cache_api)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            LockServiceServer::new(lock_api)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            AdminServiceServer::new(admin_api)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        );
    let stop = async {
        let _ = stop_rx.await;
    };
    // With TLS, a task accepts and hands over finished handshakes; it stops with this function.
    type Serve =
        std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>;
    let (server, _accept_task): (Serve, _) = match tls {
        None => (
            Box::pin(router.serve_with_incoming_shutdown(incoming, stop)),
            AbortOnDrop(None),
        ),
        Some(tls) => {
            let (incoming, task) = tls.incoming(incoming);
            (
                Box::pin(router.serve_with_incoming_shutdown(incoming, stop)),
                AbortOnDrop(Some(task)),
            )
        }
    };
    tokio::pin!(server);
    tokio::pin!(shutdown);
    tokio::select! {
        r = &mut server => return Ok(r?),
        _ = &mut shutdown => {}
    }
    tracing::info!(grace = ?config.shutdown_grace, "shutting down");
    for name in std::iter::once("").chain(SERVICES) {
        reporter
            .set_service_status(name, ServingStatus::NotServing)
            .await;
    }
    // Answer every waiter and stream now, so their callers retry elsewhere instead of being
    // held for the grace period and then cut off.
    cache.drain();
    let _ = stop_tx.send(());
    match tokio::time::timeout(config.shutdown_grace, server).await {
        Ok(r) => r?,
        Err(_) => tracing::warn!("shutdown grace period passed, dropping in-flight rpcs"),
    }
    Ok(())
}

/// Aborts a background task when the server stops.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            t.abort();
        }
    }
}
