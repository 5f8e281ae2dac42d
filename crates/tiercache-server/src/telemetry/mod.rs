//! Traces, metrics and trace-aware logs (DESIGN §8, docs/observability.md).
//!
//! # Components
//! - [`rpc`]: [`RpcLayer`], the tower layer on the tonic server. One span per RPC
//!   (OpenTelemetry RPC conventions), continued from the caller's W3C `traceparent`/`tracestate`
//!   metadata, and the `rpc.server.call.duration` histogram. The services add the namespace,
//!   outcome and tier with [`note_namespace`] and [`note_lookup`]; nothing else in them changes.
//! - [`metrics`]: [`Metrics`], the OpenTelemetry meter provider. Per-namespace counters are
//!   *observable* instruments that read the engine's atomics at collection time, so the hit path
//!   does no extra work. Exported as Prometheus text (the admin port's `/metrics`) and, with an
//!   endpoint, pushed by OTLP/gRPC.
//! - [`otel`]: the resource, sampler and exporters; [`tracer_provider`], [`otel_layer`] and
//!   [`JsonWithTraceIds`] are what the CLI installs in its `tracing` subscriber (the subscriber
//!   is process-wide, so `run` does not install it).
//!
//! `metrics` builds on `otel` (resource, errors) and `rpc` (it hands the RPC histogram to the
//! layer); `rpc` and `otel` depend on nothing here.

pub mod metrics;
pub mod otel;
pub mod rpc;

pub use metrics::{Metrics, DURATION_BUCKETS};
pub use otel::{otel_layer, resource, tracer_provider, JsonWithTraceIds, TelemetryError};
pub use rpc::{code_name, note_lookup, note_namespace, RpcLayer, RpcService};
