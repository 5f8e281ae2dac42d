//! Every RPC of CacheService, LockService and AdminService, Pipeline's operations included:
//! arbitrary bytes → the server's codec → the real handler, on a fresh memory-only engine per
//! input. Calls go through the generated tonic services (`CacheServiceServer` and the others)
//! as an `http::Request`, as a connection would hand them over, so what runs is exactly what the
//! server runs behind its transport: decoding, validation, the handler and the engine.
//!
//! Never a panic, never a hang, and every error is a proper gRPC status: `grpc-status` set, not
//! `INTERNAL` or `UNKNOWN` (a memory-only engine has no internal failure to report), a message,
//! and `google.rpc` details carrying the server's `ErrorInfo`. A request prost cannot decode is
//! `INVALID_ARGUMENT` with reason `MALFORMED_REQUEST`. Pipeline answers are held to the same
//! rules one by one.
//!
//! # Input
//! A session of at most [`MAX_CALLS`] calls, each a 4-byte header and a body:
//! `[rpc selector, grpc-timeout in ms (0: none), body length (u16, little-endian)]`. The selector
//! picks from [`RPCS`] (modulo its length). The body is the request message, except for
//! Pipeline, where it is a list of `[length (u16, little-endian), PipelineRequest]` items, each
//! sent as one message of the stream. [`seeds`] writes valid sessions in this form.
//!
//! Time is tokio's paused clock: waits (GetOrSet on a leased key, AcquireLock on a held lock,
//! a Watch with no events) pass at once, so a slow target means slow code, not sleeping.

use std::sync::OnceLock;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use prost::Message;
use tiercache_proto::v1 as pb;
use tiercache_server::services::admin_service_server::AdminServiceServer;
use tiercache_server::services::cache_service_server::CacheServiceServer;
use tiercache_server::services::lock_service_server::LockServiceServer;
use tiercache_server::{admin, cache, lock, Config};
use tonic::codegen::{http, Service as _};
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// The most calls one input makes.
pub const MAX_CALLS: usize = 8;
/// The most messages one Pipeline call sends.
const MAX_PIPELINE_ITEMS: usize = 16;
/// A unary call or Pipeline not answered within this (virtual) time is a hang.
const HANG: Duration = Duration::from_secs(3600);
/// How long a Watch is read before the fuzzer hangs up.
const WATCH_READ: Duration = Duration::from_secs(5);

/// The server the calls reach: listed namespaces with tight limits, so limits are reachable
/// with small inputs, and dynamic namespaces on (at most a few).
const CONFIG: &str = r#"
dynamic_namespaces = true

[telemetry]
metrics = false

[limits]
max_batch = 8
max_namespaces = 4
max_reply_bytes = 256
pipeline_max_in_flight = 4
watch_buffer = 2

[namespaces.default]

[namespaces.users]

[namespaces.tiny]
max_value_bytes = 16
max_key_bytes = 8
max_tags = 2
max_tag_bytes = 4

[namespaces.stale]
default_ttl = "1s"
stale_ttl = "60s"

[namespaces.nol1]
l1_enabled = false
"#;

fn config() -> &'static Config {
    static CONFIG_ONCE: OnceLock<Config> = OnceLock::new();
    CONFIG_ONCE.get_or_init(|| Config::from_toml(CONFIG).expect("the fuzz server config is valid"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    Cache,
    Lock,
    Admin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Unary,
    /// Client stream of `PipelineRequest`s, server stream of `PipelineResponse`s.
    Pipeline,
    /// Server stream that does not end by itself.
    Watch,
}

/// One RPC: its path, its service, and whether a body decodes as its request type.
pub struct Rpc {
    pub path: &'static str,
    server: Server,
    shape: Shape,
    decodes: fn(&[u8]) -> bool,
}

macro_rules! rpc {
    ($server:ident, $service:literal, $method:literal, $req:ty) => {
        rpc!($server, $service, $method, $req, Unary)
    };
    ($server:ident, $service:literal, $method:literal, $req:ty, $shape:ident) => {
        Rpc {
            path: concat!("/tiercache.v1.", $service, "/", $method),
            server: Server::$server,
            shape: Shape::$shape,
            decodes: |b| <$req>::decode(b).is_ok(),
        }
    };
}

/// Every RPC, in selector order.
pub const RPCS: [Rpc; 20] = [
    rpc!(Cache, "CacheService", "Get", pb::GetRequest),
    rpc!(Cache, "CacheService", "GetMany", pb::GetManyRequest),
    rpc!(Cache, "CacheService", "Set", pb::SetRequest),
    rpc!(Cache, "CacheService", "SetMany", pb::SetManyRequest),
    rpc!(Cache, "CacheService", "Delete", pb::DeleteRequest),
    rpc!(Cache, "CacheService", "GetOrSet", pb::GetOrSetRequest),
    rpc!(
        Cache,
        "CacheService",
        "GetOrSetMany",
        pb::GetOrSetManyRequest
    ),
    rpc!(Cache, "CacheService", "Fill", pb::FillRequest),
    rpc!(Cache, "CacheService", "FillMany", pb::FillManyRequest),
    rpc!(
        Cache,
        "CacheService",
        "ReleaseLease",
        pb::ReleaseLeaseRequest
    ),
    rpc!(
        Cache,
        "CacheService",
        "InvalidateTags",
        pb::InvalidateTagsRequest
    ),
    rpc!(
        Cache,
        "CacheService",
        "FlushNamespace",
        pb::FlushNamespaceRequest
    ),
    rpc!(
        Cache,
        "CacheService",
        "Pipeline",
        pb::PipelineRequest,
        Pipeline
    ),
    rpc!(Cache, "CacheService", "Watch", pb::WatchRequest, Watch),
    rpc!(Lock, "LockService", "AcquireLock", pb::AcquireLockRequest),
    rpc!(Lock, "LockService", "RenewLock", pb::RenewLockRequest),
    rpc!(Lock, "LockService", "ReleaseLock", pb::ReleaseLockRequest),
    rpc!(
        Admin,
        "AdminService",
        "ListNamespaces",
        pb::ListNamespacesRequest
    ),
    rpc!(Admin, "AdminService", "GetStats", pb::GetStatsRequest),
    rpc!(Admin, "AdminService", "Inspect", pb::InspectRequest),
];

/// One call of a session.
struct Call<'a> {
    rpc: &'static Rpc,
    timeout_ms: u8,
    body: &'a [u8],
}

fn parse(mut data: &[u8]) -> Vec<Call<'_>> {
    let mut calls = Vec::new();
    while data.len() >= 4 && calls.len() < MAX_CALLS {
        let rpc = &RPCS[usize::from(data[0]) % RPCS.len()];
        let timeout_ms = data[1];
        let len = usize::from(u16::from_le_bytes([data[2], data[3]]));
        let rest = &data[4..];
        let (body, rest) = rest.split_at(len.min(rest.len()));
        calls.push(Call {
            rpc,
            timeout_ms,
            body,
        });
        data = rest;
    }
    calls
}

/// The messages a call sends: the body, or Pipeline's items.
fn messages<'a>(call: &Call<'a>) -> Vec<&'a [u8]> {
    if call.rpc.shape != Shape::Pipeline {
        return vec![call.body];
    }
    let mut items = Vec::new();
    let mut data = call.body;
    while data.len() >= 2 && items.len() < MAX_PIPELINE_ITEMS {
        let len = usize::from(u16::from_le_bytes([data[0], data[1]]));
        let (item, rest) = data[2..].split_at(len.min(data.len() - 2));
        items.push(item);
        data = rest;
    }
    items
}

/// gRPC length-prefixed messages, uncompressed.
fn frame(messages: &[&[u8]]) -> Bytes {
    let mut out = BytesMut::new();
    for m in messages {
        out.put_u8(0);
        out.put_u32(u32::try_from(m.len()).expect("small message"));
        out.put_slice(m);
    }
    out.freeze()
}

fn unframe(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while !data.is_empty() {
        assert!(data.len() >= 5, "truncated response frame");
        assert_eq!(data[0], 0, "compressed response frame");
        let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
        assert!(data.len() >= 5 + len, "truncated response message");
        out.push(&data[5..5 + len]);
        data = &data[5 + len..];
    }
    out
}

/// The services of one server.
struct Services {
    cache: CacheServiceServer<cache::CacheApi>,
    lock: LockServiceServer<lock::LockApi>,
    admin: AdminServiceServer<admin::AdminApi>,
}

impl Services {
    async fn new() -> Self {
        let config = config();
        let engine = tiercache_server::build_cache(config)
            .await
            .expect("a memory-only engine starts");
        Self {
            cache: CacheServiceServer::new(cache::CacheApi::new(
                engine.clone(),
                config.limits.clone(),
            )),
            lock: LockServiceServer::new(lock::LockApi::new(engine.clone())),
            admin: AdminServiceServer::new(admin::AdminApi::new(engine)),
        }
    }

    /// Makes one call and checks its answer; returns its status code (`None` for a Watch cut
    /// off before its status).
    async fn call(&mut self, call: &Call<'_>) -> Option<Code> {
        let rpc = call.rpc;
        let sent = messages(call);
        let mut req = http::Request::builder()
            .method("POST")
            .uri(format!("http://fuzz{}", rpc.path))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if call.timeout_ms > 0 {
            req = req.header("grpc-timeout", format!("{}m", call.timeout_ms));
        }
        let req = req.body(Full::new(frame(&sent))).expect("request");
        let resp = match rpc.server {
            Server::Cache => self.cache.call(req).await,
            Server::Lock => self.lock.call(req).await,
            Server::Admin => self.admin.call(req).await,
        };
        let Ok(resp) = resp;
        let (parts, mut body) = resp.into_parts();
        assert_eq!(parts.status, http::StatusCode::OK, "{}", rpc.path);

        let mut data = BytesMut::new();
        let mut trailers = None;
        loop {
            let wait = if rpc.shape == Shape::Watch {
                WATCH_READ
            } else {
                HANG
            };
            let frame = match tokio::time::timeout(wait, body.frame()).await {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_) if rpc.shape == Shape::Watch => break,
                Err(_) => panic!("{} gave no answer within {HANG:?}", rpc.path),
            };
            let frame = frame.unwrap_or_else(|s| panic!("{}: body error {s:?}", rpc.path));
            match frame.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        }

        let status = Status::from_header_map(&parts.headers)
            .or_else(|| trailers.as_ref().and_then(Status::from_header_map));
        let Some(status) = status else {
            assert_eq!(rpc.shape, Shape::Watch, "{}: no grpc-status", rpc.path);
            return None;
        };
        let malformed = rpc.shape == Shape::Unary && !(rpc.decodes)(call.body);
        if status.code() == Code::Ok {
            assert!(!malformed, "{}: a malformed request succeeded", rpc.path);
        } else {
            check_status(rpc.path, &status);
            if malformed {
                assert_eq!(status.code(), Code::InvalidArgument, "{}", rpc.path);
                let details = status.check_error_details().expect("details");
                let info = details.error_info().expect("error info");
                assert_eq!(info.reason, "MALFORMED_REQUEST", "{}", rpc.path);
            }
        }
        let replies = unframe(&data);
        if rpc.shape != Shape::Pipeline {
            return Some(status.code());
        }
        for reply in replies {
            let reply = pb::PipelineResponse::decode(reply).expect("a pipeline reply decodes");
            match reply.result {
                Some(pb::pipeline_response::Result::Error(e)) => {
                    let status = Status::with_details(Code::from_i32(e.code), e.message, e.details);
                    assert_ne!(status.code(), Code::Ok, "pipeline error with code OK");
                    check_status("Pipeline operation", &status);
                }
                Some(_) => {}
                None => panic!("a pipeline reply without a result"),
            }
        }
        Some(status.code())
    }
}

/// A proper error status of this server: a known code that is not INTERNAL or UNKNOWN, a
/// message, and details with the server's ErrorInfo.
fn check_status(what: &str, status: &Status) {
    assert!(
        !matches!(status.code(), Code::Internal | Code::Unknown),
        "{what}: {status:?}"
    );
    assert!(!status.message().is_empty(), "{what}: empty message");
    let details = status
        .check_error_details()
        .unwrap_or_else(|e| panic!("{what}: undecodable details {e:?} in {status:?}"));
    let info = details
        .error_info()
        .unwrap_or_else(|| panic!("{what}: no ErrorInfo in {status:?}"));
    assert_eq!(info.domain, tiercache_server::error::ERROR_DOMAIN, "{what}");
    assert!(!info.reason.is_empty(), "{what}: empty reason");
}

pub fn run(data: &[u8]) {
    session(data);
}

/// Runs the session `data` describes; returns each call's status code (`None`: a Watch cut off
/// while still open).
pub fn session(data: &[u8]) -> Vec<Option<Code>> {
    let calls = parse(data);
    if calls.is_empty() {
        return Vec::new();
    }
    let rt = super::paused_runtime();
    rt.block_on(async {
        let mut services = Services::new().await;
        let mut codes = Vec::new();
        for call in &calls {
            codes.push(services.call(call).await);
        }
        codes
    })
}

/// Encodes one call of a session.
pub fn encode_call(selector: usize, timeout_ms: u8, body: &[u8]) -> Vec<u8> {
    assert!(selector < RPCS.len());
    let len = u16::try_from(body.len()).expect("a seed body fits in 64 KiB");
    let mut out = vec![selector as u8, timeout_ms];
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(body);
    out
}

fn selector(method: &str) -> usize {
    RPCS.iter()
        .position(|r| r.path.rsplit('/').next() == Some(method))
        .unwrap_or_else(|| panic!("no rpc {method}"))
}

fn call(method: &str, msg: &impl Message) -> Vec<u8> {
    encode_call(selector(method), 0, &msg.encode_to_vec())
}

fn secs(s: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: s,
        nanos: 0,
    })
}

/// Valid sessions, one per RPC and a few that chain calls: the seed corpus of the target
/// (`(file name, input)`).
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let ns = |n: &str| n.to_string();
    let get = pb::GetRequest {
        namespace: ns("default"),
        key: "user:42".into(),
        ..Default::default()
    };
    let set = pb::SetRequest {
        namespace: ns("default"),
        key: "user:42".into(),
        value: Bytes::from_static(b"{\"name\":\"ada\"}"),
        ttl: secs(60),
        stale_ttl: secs(30),
        tags: vec!["user".into(), "team:7".into()],
        ..Default::default()
    };
    let del = pb::DeleteRequest {
        namespace: ns("default"),
        key: "user:42".into(),
        ..Default::default()
    };
    let get_or_set = pb::GetOrSetRequest {
        namespace: ns("users"),
        key: "k".into(),
        max_wait: secs(1),
        lease_ttl: secs(5),
        ..Default::default()
    };
    let fill = pb::FillRequest {
        namespace: ns("users"),
        key: "k".into(),
        lease_token: "token".into(),
        value: Bytes::from_static(b"v"),
        ttl: secs(10),
        tags: vec!["t".into()],
        ..Default::default()
    };
    let acquire = pb::AcquireLockRequest {
        namespace: ns("default"),
        name: "job".into(),
        ttl: secs(10),
        max_wait: secs(1),
    };
    let pipeline_item = |id: u64, op: pb::pipeline_request::Operation| {
        pb::PipelineRequest {
            id,
            operation: Some(op),
        }
        .encode_to_vec()
    };
    let mut pipeline_body = Vec::new();
    use pb::pipeline_request::Operation;
    for item in [
        pipeline_item(1, Operation::Set(set.clone())),
        pipeline_item(2, Operation::Get(get.clone())),
        pipeline_item(3, Operation::Delete(del.clone())),
        vec![0x08, 0x04, 0x12, 0x05, 0x0a, 0x03, 0xff],
    ] {
        pipeline_body.extend_from_slice(&(item.len() as u16).to_le_bytes());
        pipeline_body.extend_from_slice(&item);
    }

    let mut seeds: Vec<(String, Vec<u8>)> = vec![
        ("get".into(), call("Get", &get)),
        (
            "get-many".into(),
            call(
                "GetMany",
                &pb::GetManyRequest {
                    namespace: ns("default"),
                    keys: vec!["a".into(), "b".into()],
                    ..Default::default()
                },
            ),
        ),
        ("set".into(), call("Set", &set)),
        (
            "set-many".into(),
            call(
                "SetMany",
                &pb::SetManyRequest {
                    requests: vec![
                        set.clone(),
                        pb::SetRequest {
                            key: "b".into(),
                            ..set.clone()
                        },
                    ],
                },
            ),
        ),
        ("delete".into(), call("Delete", &del)),
        ("get-or-set".into(), call("GetOrSet", &get_or_set)),
        (
            "get-or-set-many".into(),
            call(
                "GetOrSetMany",
                &pb::GetOrSetManyRequest {
                    namespace: ns("users"),
                    keys: vec!["a".into(), "b".into()],
                    max_wait: secs(1),
                    ..Default::default()
                },
            ),
        ),
        ("fill".into(), call("Fill", &fill)),
        (
            "fill-many".into(),
            call(
                "FillMany",
                &pb::FillManyRequest {
                    requests: vec![fill.clone()],
                },
            ),
        ),
        (
            "release-lease".into(),
            call(
                "ReleaseLease",
                &pb::ReleaseLeaseRequest {
                    namespace: ns("users"),
                    key: "k".into(),
                    lease_token: "token".into(),
                },
            ),
        ),
        (
            "invalidate-tags".into(),
            call(
                "InvalidateTags",
                &pb::InvalidateTagsRequest {
                    namespace: ns("default"),
                    tags: vec!["user".into()],
                },
            ),
        ),
        (
            "flush-namespace".into(),
            call(
                "FlushNamespace",
                &pb::FlushNamespaceRequest {
                    namespace: ns("stale"),
                },
            ),
        ),
        (
            "pipeline".into(),
            encode_call(selector("Pipeline"), 0, &pipeline_body),
        ),
        (
            "watch".into(),
            call(
                "Watch",
                &pb::WatchRequest {
                    namespace: ns("default"),
                },
            ),
        ),
        ("acquire-lock".into(), call("AcquireLock", &acquire)),
        (
            "renew-lock".into(),
            call(
                "RenewLock",
                &pb::RenewLockRequest {
                    namespace: ns("default"),
                    name: "job".into(),
                    owner_token: "owner".into(),
                    ttl: secs(10),
                },
            ),
        ),
        (
            "release-lock".into(),
            call(
                "ReleaseLock",
                &pb::ReleaseLockRequest {
                    namespace: ns("default"),
                    name: "job".into(),
                    owner_token: "owner".into(),
                },
            ),
        ),
        (
            "list-namespaces".into(),
            call("ListNamespaces", &pb::ListNamespacesRequest {}),
        ),
        (
            "get-stats".into(),
            call(
                "GetStats",
                &pb::GetStatsRequest {
                    namespace: ns("default"),
                },
            ),
        ),
        (
            "inspect".into(),
            call(
                "Inspect",
                &pb::InspectRequest {
                    namespace: ns("default"),
                    key: "user:42".into(),
                },
            ),
        ),
    ];
    // Sessions: state carried from call to call.
    let session = |calls: &[Vec<u8>]| calls.concat();
    seeds.push((
        "session-set-get-inspect-invalidate".into(),
        session(&[
            call("Set", &set),
            call("Get", &get),
            call(
                "Inspect",
                &pb::InspectRequest {
                    namespace: ns("default"),
                    key: "user:42".into(),
                },
            ),
            call(
                "InvalidateTags",
                &pb::InvalidateTagsRequest {
                    namespace: ns("default"),
                    tags: vec!["team:7".into()],
                },
            ),
            call("Get", &get),
        ]),
    ));
    seeds.push((
        "session-lease-wait".into(),
        session(&[
            call("GetOrSet", &get_or_set),
            encode_call(selector("GetOrSet"), 50, &get_or_set.encode_to_vec()),
        ]),
    ));
    seeds.push((
        "session-lock-contended".into(),
        session(&[
            call("AcquireLock", &acquire),
            encode_call(selector("AcquireLock"), 20, &acquire.encode_to_vec()),
        ]),
    ));
    seeds.push((
        "session-dynamic-namespaces".into(),
        session(&["n1", "n2", "n3", "n4", "n5"].map(|n| {
            call(
                "Set",
                &pb::SetRequest {
                    namespace: n.into(),
                    ..set.clone()
                },
            )
        })),
    ));
    seeds.push((
        "malformed-set".into(),
        encode_call(
            selector("Set"),
            0,
            &[0x0a, 0x02, 0x68, 0x37, 0x12, 0x03, 0x62, 0xff, 0xfe],
        ),
    ));
    seeds
}
