//! The RPC layer: a tower layer on the tonic server that makes one span per RPC (continued from
//! the caller's W3C trace context) and records `rpc.server.call.duration` and
//! `tiercache.rpc.requests` (a counter whose series exist at 0 from the start), with the namespace,
//! outcome and tier the services note while the RPC runs ([`note_namespace`], [`note_lookup`]).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use opentelemetry::metrics::{Counter, Histogram};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use prost::Message as _;
use tiercache_core::{Lookup, Tier};
use tonic::Code;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

tokio::task_local! {
    /// What the service learned about the RPC in flight; read when the RPC ends.
    static RPC_NOTES: Arc<RpcNotes>;
}

#[derive(Debug, Default)]
struct RpcNotes(parking_lot::Mutex<Notes>);

#[derive(Debug, Default)]
struct Notes {
    namespace: Option<Arc<str>>,
    outcome: Option<&'static str>,
    tier: Option<&'static str>,
}

/// Records the namespace of the RPC in flight (the first one noted wins). Only namespaces the
/// engine resolved should be noted, which keeps label cardinality bounded. A no-op outside an RPC.
pub fn note_namespace(name: &Arc<str>) {
    let _ = RPC_NOTES.try_with(|n| {
        let mut n = n.0.lock();
        if n.namespace.is_none() {
            n.namespace = Some(name.clone());
        }
    });
}

/// Records a lookup's result (`hit`, `stale`, `miss`) and tier as the RPC's outcome; an RPC with
/// several different results (GetMany) gets `mixed`.
pub fn note_lookup(lookup: &Lookup) {
    let (outcome, tier) = match lookup {
        Lookup::Miss => ("miss", None),
        Lookup::Hit(f) => (
            if f.stale { "stale" } else { "hit" },
            Some(match f.tier {
                Tier::L1 => "l1",
                Tier::L2 => "l2",
            }),
        ),
    };
    let _ = RPC_NOTES.try_with(|n| {
        let mut n = n.0.lock();
        n.outcome = match n.outcome {
            None => Some(outcome),
            Some(o) if o == outcome => Some(o),
            Some(_) => Some("mixed"),
        };
        n.tier = match (n.tier, tier) {
            (None, t) => t,
            (Some(a), Some(b)) if a != b => Some("mixed"),
            (t, _) => t,
        };
    });
}

/// The namespace label of RPC and per-namespace metrics.
pub(crate) fn ns_attr(name: &Arc<str>) -> KeyValue {
    KeyValue::new("tiercache.namespace", Value::from(name.clone()))
}

/// The semantic-conventions name of a gRPC status code.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Server-side gRPC codes that mark the span as an error (OpenTelemetry gRPC conventions).
fn is_server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// Reads W3C trace context from gRPC request metadata (HTTP/2 headers).
struct MetadataExtractor<'a>(&'a http::HeaderMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Returns every method the server serves, as `/pkg.Service/Method` → `pkg.Service/Method`.
fn known_methods() -> HashMap<String, Arc<str>> {
    let mut out = HashMap::new();
    let mut add = |full: String| {
        out.insert(format!("/{full}"), Arc::from(full));
    };
    if let Ok(set) = prost_types::FileDescriptorSet::decode(tiercache_proto::FILE_DESCRIPTOR_SET) {
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                for method in service.method {
                    add(format!(
                        "{package}.{}/{}",
                        service.name.as_deref().unwrap_or_default(),
                        method.name.as_deref().unwrap_or_default()
                    ));
                }
            }
        }
    }
    for m in [
        "grpc.health.v1.Health/Check",
        "grpc.health.v1.Health/Watch",
        "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ] {
        add(m.to_string());
    }
    out
}

/// The status codes whose `tiercache.rpc.requests` series exist from the start (at 0), for every
/// known method: OK and every code the server answers with on its own or sees when a caller
/// goes away. Rarer codes (DATA_LOSS, UNIMPLEMENTED) get their series on first use.
pub(crate) const PRECREATED_CODES: [Code; 8] = [
    Code::Ok,
    Code::Cancelled,
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::NotFound,
    Code::ResourceExhausted,
    Code::Unavailable,
    Code::Internal,
];

/// True for the methods whose requests name a namespace (so their series carry it).
fn names_a_namespace(method: &str) -> bool {
    method.starts_with("tiercache.v1.CacheService/")
        || method.starts_with("tiercache.v1.LockService/")
        || method == "tiercache.v1.AdminService/Inspect"
        || method == "tiercache.v1.AdminService/GetStats"
}

/// Creates the `tiercache.rpc.requests` series at 0 (see [`PRECREATED_CODES`]): every known
/// method without a namespace (requests refused before their namespace is resolved, and the
/// methods that name none), and the namespaced methods in each of `namespaces`. A series that
/// first appears at 1 counts 0 in `rate()`/`increase()`; one that is there at 0 counts it.
pub(crate) fn precreate_requests(requests: &Counter<u64>, namespaces: &[Arc<str>]) {
    let mut methods: Vec<Arc<str>> = known_methods().into_values().collect();
    methods.sort();
    for method in &methods {
        for code in PRECREATED_CODES {
            let base = [
                KeyValue::new("rpc.method", Value::from(method.clone())),
                KeyValue::new("rpc.response.status_code", code_name(code)),
            ];
            requests.add(0, &base);
            if names_a_namespace(method) {
                for ns in namespaces {
                    let [a, b] = base.clone();
                    requests.add(0, &[a, b, ns_attr(ns)]);
                }
            }
        }
    }
}

struct RpcShared {
    duration: Histogram<f64>,
    requests: Counter<u64>,
    methods: HashMap<String, Arc<str>>,
    other: Arc<str>,
    propagator: TraceContextPropagator,
}

/// Traces and times every RPC; see the module docs.
#[derive(Clone)]
pub struct RpcLayer(Arc<RpcShared>);

impl std::fmt::Debug for RpcLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcLayer").finish_non_exhaustive()
    }
}

impl RpcLayer {
    pub(crate) fn new(duration: Histogram<f64>, requests: Counter<u64>) -> Self {
        RpcLayer(Arc::new(RpcShared {
            duration,
            requests,
            methods: known_methods(),
            // Unknown paths share one label value, so clients cannot blow up cardinality.
            other: Arc::from("_OTHER"),
            propagator: TraceContextPropagator::new(),
        }))
    }
}

impl<S> tower_layer::Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> RpcService<S> {
        RpcService {
            inner,
            shared: self.0.clone(),
        }
    }
}

/// The service [`RpcLayer`] wraps around the tonic router.
#[derive(Clone)]
pub struct RpcService<S> {
    inner: S,
    shared: Arc<RpcShared>,
}

impl<S> std::fmt::Debug for RpcService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcService").finish_non_exhaustive()
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, ReqBody> tower_service::Service<http::Request<ReqBody>> for RpcService<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let shared = self.shared.clone();
        let method = shared
            .methods
            .get(req.uri().path())
            .unwrap_or(&shared.other)
            .clone();
        // Health checks are polled every few seconds by orchestrators; they get metrics, not
        // spans.
        let span = if method.starts_with("grpc.health.") {
            tracing::Span::none()
        } else {
            let span = tracing::info_span!(
                "rpc",
                otel.name = %method,
                otel.kind = "server",
                rpc.system.name = "grpc",
                rpc.method = %method,
                rpc.response.status_code = tracing::field::Empty,
                tiercache.namespace = tracing::field::Empty,
                tiercache.outcome = tracing::field::Empty,
                tiercache.tier = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
            );
            if !span.is_disabled() {
                let parent = shared.propagator.extract(&MetadataExtractor(req.headers()));
                if parent.span().span_context().is_valid() {
                    let _ = span.set_parent(parent);
                }
            }
            span
        };
        let notes = Arc::new(RpcNotes::default());
        let mut guard = RpcGuard {
            shared,
            method,
            span: span.clone(),
            notes: notes.clone(),
            start: Instant::now(),
            status: None,
        };
        // The router was polled ready; take it and leave a fresh clone (tower's usual dance).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let call = span.in_scope(|| inner.call(req));
        let fut = RPC_NOTES.scope(notes, call.instrument(span));
        Box::pin(async move {
            let mut response = fut.await?;
            // Refusals tonic makes itself get the status every other limit gets.
            crate::error::remap_transport_refusal(response.headers_mut());
            // A trailers-only response (every error) carries the status in its headers.
            guard.status = grpc_status(response.headers());
            let (parts, body) = response.into_parts();
            Ok(http::Response::from_parts(
                parts,
                tonic::body::Body::new(RpcBody {
                    inner: body,
                    guard: Some(guard),
                }),
            ))
        })
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    let v = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(Code::from(v))
}

/// Ends the RPC's span and records its duration when the response body is done or dropped.
struct RpcGuard {
    shared: Arc<RpcShared>,
    method: Arc<str>,
    span: tracing::Span,
    notes: Arc<RpcNotes>,
    start: Instant,
    status: Option<Code>,
}

impl Drop for RpcGuard {
    fn drop(&mut self) {
        // No status seen: the client went away before the trailers.
        let code = self.status.unwrap_or(Code::Cancelled);
        let notes = self.notes.0.lock();
        let outcome = notes
            .outcome
            .unwrap_or(if code == Code::Ok { "ok" } else { "error" });
        let mut attrs = Vec::with_capacity(5);
        attrs.push(KeyValue::new("rpc.system.name", "grpc"));
        attrs.push(KeyValue::new(
            "rpc.method",
            Value::from(self.method.clone()),
        ));
        attrs.push(KeyValue::new("rpc.response.status_code", code_name(code)));
        attrs.push(KeyValue::new("tiercache.outcome", outcome));
        let mut counted = [
            KeyValue::new("rpc.method", Value::from(self.method.clone())),
            KeyValue::new("rpc.response.status_code", code_name(code)),
            KeyValue::new("tiercache.namespace", ""),
        ];
        let counted: &[KeyValue] = if let Some(ns) = &notes.namespace {
            attrs.push(ns_attr(ns));
            self.span.record("tiercache.namespace", &**ns);
            counted[2] = ns_attr(ns);
            &counted
        } else {
            &counted[..2]
        };
        self.shared
            .duration
            .record(self.start.elapsed().as_secs_f64(), &attrs);
        self.shared.requests.add(1, counted);
        self.span
            .record("rpc.response.status_code", code_name(code));
        self.span.record("tiercache.outcome", outcome);
        if let Some(tier) = notes.tier {
            self.span.record("tiercache.tier", tier);
        }
        if is_server_error(code) {
            self.span.record("otel.status_code", "ERROR");
        }
    }
}

/// The response body, watched for the trailers that carry the gRPC status.
struct RpcBody {
    inner: tonic::body::Body,
    guard: Option<RpcGuard>,
}

impl http_body::Body for RpcBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        let this = self.get_mut();
        let polled = match &this.guard {
            // Streaming handlers do their work while the body is polled: keep them in the span
            // and let them note things.
            Some(g) => {
                let _entered = g.span.enter();
                let notes = g.notes.clone();
                RPC_NOTES.sync_scope(notes, || Pin::new(&mut this.inner).poll_frame(cx))
            }
            None => Pin::new(&mut this.inner).poll_frame(cx),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(trailers), Some(g)) = (frame.trailers_ref(), this.guard.as_mut()) {
                    g.status = grpc_status(trailers).or(g.status);
                }
            }
            Poll::Ready(Some(Err(status))) => {
                if let Some(g) = this.guard.as_mut() {
                    g.status = Some(status.code());
                }
            }
            Poll::Ready(None) => {
                if let Some(mut g) = this.guard.take() {
                    g.status = g.status.or(Some(Code::Unknown));
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
