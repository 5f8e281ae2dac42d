//! Test helpers for tiercache: real dependencies, started and stopped by guards.
//!
//! Tests use real processes rather than mocks: a `redis-server` on a free port and the real
//! server library on port 0, both stopped when their guard is dropped.
//!
//! # Layout
//!
//! - [`redis`]: [`RedisServer`], a guard that spawns `redis-server` on a free port in a temporary
//!   directory, can stop and restart it on the same port, kills it on drop and prints its log
//!   when a test panics.
//! - [`server`]: [`TestServer`], the in-process tiercache server (`tiercache_server::run`) on
//!   `127.0.0.1:0`, ready once its health service answers `SERVING`.
//! - [`fleet`]: [`Fleet`], one memory-only server or replicas sharing one Redis, with connected
//!   channels and clients of each service.
//! - [`proxy`]: [`Proxy`], a TCP proxy between servers and Redis that delays, blackholes or
//!   resets connections (the pub/sub subscription alone, or one direction only) and can move
//!   them to another upstream, for fault tests.
//! - [`req`]: requests of the gRPC API with the namespace `default` and the usual defaults.
//! - [`rpc`]: calls that check the expected outcome (a hit, a miss, stored) and return what the
//!   test goes on with.
//! - [`otlp`]: [`OtlpReceiver`], an OTLP/gRPC trace and metrics receiver on `127.0.0.1:0` that
//!   keeps what it is sent, for telemetry tests.
//! - [`soak`]: a soak of the real `tiercache serve` binary: a mixed workload for minutes with
//!   the server's RSS sampled, rendered as a table, a verdict, JSON and markdown (`make soak`).
//! - [`tls`]: [`TestPki`], a CA, server and client certificates made with rcgen and written to a
//!   temporary directory; [`TestServer::start_tls`] serves with them.
//! - [`wait`]: [`wait_for`], a bounded poll for conditions that become true eventually (no
//!   fixed sleeps in tests).

#![warn(missing_docs)]

pub mod fleet;
pub mod metrics;
pub mod otlp;
pub mod proxy;
pub mod redis;
pub mod req;
pub mod rpc;
pub mod server;
pub mod soak;
pub mod tls;
pub mod wait;

pub use crate::fleet::{Fleet, FleetBuilder};
pub use crate::metrics::{scrape_metrics, Scrape};
pub use crate::otlp::OtlpReceiver;
pub use crate::proxy::Proxy;
pub use crate::redis::{AclUser, RedisSecurity, RedisServer, RedisTlsFiles, TlsClientAuth};
pub use crate::server::{redis_config, TestServer};
pub use crate::tls::{CertPair, TestCa, TestPki, Validity};
pub use crate::wait::{wait_for, WaitTimeout};
pub use opentelemetry_proto;
/// The v1 API types, as the request builders and checks use them.
pub use tiercache_proto::v1 as pb;
