//! The Rust SDK for tiercache.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tiercache_client::Error> {
//! use std::time::Duration;
//! use tiercache_client::{Client, Condition, GetOrSetOptions, NearCacheConfig, SetOptions, SetResult};
//!
//! let client = Client::builder("http://127.0.0.1:50051")
//!     .request_timeout(Some(Duration::from_secs(2)))
//!     .connect()
//!     .await?;
//! let users = client.namespace("users").with_near_cache(NearCacheConfig::default());
//! users.set("user:42", "alice").await?;
//! if let Some(entry) = users.get("user:42").await? {
//!     println!("{:?} v{} from {:?}", entry.value, entry.version, entry.tier);
//! }
//! let opts = SetOptions {
//!     ttl: Some(Duration::from_secs(30)),
//!     tags: vec!["org:7".into()],
//!     condition: Some(Condition::IfAbsent),
//!     ..Default::default()
//! };
//! if let SetResult::Exists { current } = users.set_with("user:42", "bob", opts).await? {
//!     println!("already there at version {current}");
//! }
//! users.invalidate_tags(["org:7"]).await?;
//!
//! // Cache-aside with fleet-wide stampede protection: only a lease holder runs the closure.
//! let profile = users
//!     .get_or_set("profile:42", GetOrSetOptions::default(), || async {
//!         // let row = db.query("…").await?;
//!         Ok::<_, tiercache_client::Error>(Some(tiercache_client::Bytes::from_static(b"{\"name\":\"Ada\"}")))
//!     })
//!     .await?;
//!
//! // A distributed lock, renewed while held and released on drop.
//! if let Some(guard) = users.lock("nightly-report", Duration::from_secs(10)).await? {
//!     println!("fencing token {}", guard.fencing_token());
//!     guard.release().await?;
//! }
//! # let _ = profile;
//! # Ok(()) }
//! ```
//!
//! Expected outcomes (a miss, a failed condition) are values; [`Error`] is for calls that could
//! not do their job, with the server's `google.rpc` details already decoded.
//!
//! # Bounds and guarantees
//!
//! - **Every call has a deadline**: [`DEFAULT_REQUEST_TIMEOUT`] (5 s, as in the Python SDK)
//!   unless [`ClientBuilder::request_timeout`] says otherwise, retries included; past it the
//!   call fails with [`Error::DeadlineExceeded`], even against a server that accepted the
//!   connection and never answers. Calls that wait on the server on purpose get the wait on
//!   top: `get_or_set` its `max_wait` (the server's default 5 s when unset), `lock_with` its
//!   `max_wait`.
//! - **Messages up to 16 MiB** ([`DEFAULT_MAX_MESSAGE_SIZE`]) are received and sent, the
//!   server's default `limits.max_message_bytes`; see
//!   [`ClientBuilder::max_receive_message_size`].
//! - **The near cache keeps nothing older than its Watch stream**: every read reply carries the
//!   sequence the answering replica had applied before its lookup, and a reply from a replica
//!   behind the stream's position is returned but not kept, so a per-request balancer that
//!   sends Watch and reads to different replicas cannot refill it with an invalidated value.
//! - **[`LockGuard::is_held`]** turns false for good once a renewal is refused or fails, or the
//!   TTL passes without a successful renewal.
//!
//! # Layout
//!
//! - `client`: [`Client`] (one shared HTTP/2 channel) and [`ClientBuilder`] (timeouts, retry
//!   policy, pipeline, concurrency, TCP and keepalive settings, TLS and token slots); the per-call
//!   deadlines and retries; admin calls ([`Client::stats`], [`Client::list_namespaces`]) and
//!   [`Client::health`].
//! - `retry`: [`RetryPolicy`], exponential backoff with jitter for idempotent calls.
//! - `pipeline`: the `Pipeline` stream multiplexer that carries get/set/delete. A layer below
//!   `client`: it knows the channel and the metadata, not the [`Client`].
//! - `transport`: the metadata interceptor (bearer token, `traceparent`) on every call and
//!   stream, shared by `client` and `pipeline`.
//! - `namespace`: [`Namespace`] and [`Client::namespace`], the
//!   get/set/delete/invalidate/watch/inspect calls of one namespace.
//! - `getorset`: [`Namespace::get_or_set`] and [`Namespace::get_or_set_many`], which drive the
//!   lease protocol.
//! - `lock`: [`Namespace::lock`] and the renewing [`LockGuard`].
//! - `near`: the opt-in near cache (L0), kept coherent by the Watch stream.
//! - `json` (feature `json`, default): `get_json`, `set_json`, `get_or_set_json`.
//! - `otel` (feature `otel`, default): the W3C `traceparent` of the current `tracing` span on
//!   every call, when a `tracing_opentelemetry` layer gives the span an OpenTelemetry context.
//! - `types`: [`Entry`], options and outcome enums, converted from the wire types (durations
//!   with `tiercache_proto::duration`).
//! - `error`: [`Error`], mapped from `tonic::Status`.
//!
//! TLS: [`ClientBuilder::tls`] with a [`TlsConfig`] (CA, client certificate, server name), or
//! an `https://` address for the system roots (rustls, ring provider).

mod client;
mod error;
mod getorset;
#[cfg(feature = "json")]
mod json;
mod lock;
mod namespace;
mod near;
#[cfg(feature = "otel")]
mod otel;
mod pipeline;
mod retry;
mod transport;
mod types;

pub use client::{
    Client, ClientBuilder, TlsConfig, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_REQUEST_TIMEOUT,
};
pub use error::{Error, FieldViolation, Result};
pub use lock::{LockGuard, DEFAULT_LOCK_WAIT};
pub use namespace::{Namespace, WatchStream};
pub use near::{NearCacheConfig, NearCacheStats};
pub use retry::RetryPolicy;
pub use types::{
    Condition, DeleteResult, Entry, GetOptions, GetOrSetOptions, GetResult, HealthStatus,
    Inspection, NamespaceInfo, NamespacePolicy, NamespaceStats, OnWaitTimeout, SetOptions,
    SetResult, Stats, StorageMode, Tier, WatchEvent, WatchEventKind,
};

pub use bytes::Bytes;

/// The generated wire types and clients, for calls this SDK does not wrap yet.
pub use tiercache_proto as proto;
