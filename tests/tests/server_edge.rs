//! The server's edges against hostile or vanished clients, over real gRPC: undecodable messages,
//! shutdown with waiters and streams open, reply and message size limits, slow and vanished
//! Watch consumers, HTTP/2 keepalive, and FillMany's validation.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes};
use prost::Message;
use tiercache_proto::v1 as pb;
use tiercache_proto::v1::admin_service_client::AdminServiceClient;
use tiercache_proto::v1::cache_service_client::CacheServiceClient;
use tiercache_proto::v1::lock_service_client::LockServiceClient;
use tiercache_server::config::Config;
use tiercache_testkit::{redis_config, req, wait_for, RedisServer, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

/// A codec that sends bytes as they are and decodes replies as `D`.
struct RawCodec<D>(PhantomData<D>);

impl<D> Default for RawCodec<D> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

struct MessageDecoder<D>(PhantomData<D>);

impl<D: Message + Default> Decoder for MessageDecoder<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        D::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

impl<D: Message + Default + Send + 'static> Codec for RawCodec<D> {
    type Encode = Vec<u8>;
    type Decode = D;
    type Encoder = RawEncoder;
    type Decoder = MessageDecoder<D>;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> MessageDecoder<D> {
        MessageDecoder(PhantomData)
    }
}

/// Sends `body` as the request message of `path`.
async fn raw_unary<D: Message + Default + Send + 'static>(
    channel: Channel,
    path: &'static str,
    body: Vec<u8>,
) -> Result<D, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("channel ready");
    grpc.unary(
        Request::new(body),
        PathAndQuery::from_static(path),
        RawCodec::<D>::default(),
    )
    .await
    .map(|r| r.into_inner())
}

/// The Set of the issue: namespace `h7`, key `bad\xff\xfe\xc0key`, value `v`.
const BAD_SET: [u8; 18] = [
    0x0a, 0x02, 0x68, 0x37, 0x12, 0x09, 0x62, 0x61, 0x64, 0xff, 0xfe, 0xc0, 0x6b, 0x65, 0x79, 0x1a,
    0x01, 0x76,
];

fn assert_malformed(s: &Status, field: &str) {
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    let info = s.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "MALFORMED_REQUEST", "{s:?}");
    let br = s.get_details_bad_request().expect("BadRequest");
    assert_eq!(br.field_violations[0].field, field, "{s:?}");
    assert!(
        br.field_violations[0].description.contains("UTF-8"),
        "{s:?}"
    );
}

/// Replaces the last occurrence of `marker` in `bytes` with an invalid UTF-8 byte.
fn corrupt(mut bytes: Vec<u8>, marker: u8) -> Vec<u8> {
    let at = bytes.iter().rposition(|&b| b == marker).expect("marker");
    bytes[at] = 0xff;
    bytes
}

#[tokio::test]
async fn undecodable_utf8_key_is_invalid_argument_naming_the_field() {
    let server = TestServer::memory().await;
    let err = raw_unary::<pb::SetResponse>(
        server.channel(),
        "/tiercache.v1.CacheService/Set",
        BAD_SET.to_vec(),
    )
    .await
    .unwrap_err();
    assert_malformed(&err, "key");

    let many = pb::GetManyRequest {
        namespace: "default".into(),
        keys: vec!["a".into(), "bZ".into(), "c".into()],
        ..Default::default()
    };
    let err = raw_unary::<pb::GetManyResponse>(
        server.channel(),
        "/tiercache.v1.CacheService/GetMany",
        corrupt(many.encode_to_vec(), b'Z'),
    )
    .await
    .unwrap_err();
    assert_malformed(&err, "keys[1]");

    let lock = req::acquire_lock("lZck", Duration::from_secs(1), Duration::ZERO);
    let err = raw_unary::<pb::AcquireLockResponse>(
        server.channel(),
        "/tiercache.v1.LockService/AcquireLock",
        corrupt(lock.encode_to_vec(), b'Z'),
    )
    .await
    .unwrap_err();
    assert_malformed(&err, "name");

    // The server goes on answering.
    let mut c = CacheServiceClient::new(server.channel());
    tiercache_testkit::rpc::set(&mut c, req::set("k", "v")).await;
}

fn pipeline_request(id: u64, op: pb::pipeline_request::Operation) -> Vec<u8> {
    pb::PipelineRequest {
        id,
        operation: Some(op),
    }
    .encode_to_vec()
}

#[tokio::test]
async fn malformed_pipeline_message_is_answered_by_id_and_the_stream_goes_on() {
    use pb::pipeline_request::Operation as Op;
    use pb::pipeline_response::Result as R;
    let server = TestServer::memory().await;
    let good_set = pipeline_request(1, Op::Set(req::set("k", "v")));
    let bad_set = corrupt(pipeline_request(2, Op::Set(req::set("kZ", "v"))), b'Z');
    let good_get = pipeline_request(3, Op::Get(req::get("k")));
    // Two requests sent apart, so the good Get cannot overtake the Set it reads.
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let mut grpc = tonic::client::Grpc::new(server.channel());
    grpc.ready().await.unwrap();
    let mut replies = grpc
        .streaming(
            Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
            PathAndQuery::from_static("/tiercache.v1.CacheService/Pipeline"),
            RawCodec::<pb::PipelineResponse>::default(),
        )
        .await
        .expect("the stream opens")
        .into_inner();
    tx.send(good_set).await.unwrap();
    let first = replies.next().await.unwrap().unwrap();
    assert!(matches!(first.result, Some(R::Set(_))), "{first:?}");
    tx.send(bad_set).await.unwrap();
    tx.send(good_get).await.unwrap();
    drop(tx);
    let mut rest = Vec::new();
    while let Some(r) = replies.next().await {
        rest.push(r.expect("the stream goes on"));
    }
    rest.sort_by_key(|r| r.id);
    assert_eq!(rest.len(), 2, "{rest:?}");
    let Some(R::Error(e)) = &rest[0].result else {
        panic!("id 2 gets an error answer: {rest:?}");
    };
    assert_eq!(rest[0].id, 2);
    let status = Status::with_details(Code::from(e.code), e.message.clone(), e.details.clone());
    assert_malformed(&status, "set.key");
    let Some(R::Get(g)) = &rest[1].result else {
        panic!("id 3 is answered: {rest:?}");
    };
    assert_eq!(rest[1].id, 3);
    assert_eq!(g.entry.as_ref().unwrap().value, Bytes::from("v"));
}

fn draining(s: &Status) -> bool {
    s.code() == Code::Unavailable
        && s.get_details_error_info()
            .is_some_and(|i| i.reason == "DRAINING")
        && s.get_details_retry_info().is_some()
}

#[tokio::test]
async fn shutdown_answers_every_waiter_and_stream_with_draining_at_once() {
    let server = TestServer::start(Config {
        shutdown_grace: Duration::from_secs(10),
        ..Config::default()
    })
    .await;
    let mut c = CacheServiceClient::new(server.channel());
    // The holder takes the lease for a minute and never fills: 50 callers wait up to 25 s.
    let lease = c
        .get_or_set(pb::GetOrSetRequest {
            lease_ttl: req::duration(Duration::from_secs(60)),
            ..req::get_or_set("k")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(lease.outcome(), pb::GetOrSetOutcome::Lease);
    // A lock waiter and a Watch stream too.
    let mut locks = LockServiceClient::new(server.channel());
    let held = locks
        .acquire_lock(req::acquire_lock(
            "l",
            Duration::from_secs(60),
            Duration::ZERO,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(held.outcome(), pb::AcquireLockOutcome::Acquired);
    let lock_waiter = tokio::spawn({
        let mut locks = locks.clone();
        async move {
            locks
                .acquire_lock(req::acquire_lock(
                    "l",
                    Duration::from_secs(60),
                    Duration::from_secs(25),
                ))
                .await
        }
    });
    let mut waiters = Vec::new();
    for _ in 0..50 {
        let mut c = c.clone();
        waiters.push(tokio::spawn(async move {
            let r = c
                .get_or_set(pb::GetOrSetRequest {
                    max_wait: req::duration(Duration::from_secs(25)),
                    ..req::get_or_set("k")
                })
                .await;
            (r, Instant::now())
        }));
    }
    let mut watch = c
        .watch(pb::WatchRequest {
            namespace: "default".into(),
        })
        .await
        .unwrap()
        .into_inner();
    watch.next().await.unwrap().unwrap();
    // And a Pipeline whose client keeps its side open.
    let (pipe_tx, pipe_rx) = tokio::sync::mpsc::channel(4);
    let mut pipe = c
        .pipeline(tokio_stream::wrappers::ReceiverStream::new(pipe_rx))
        .await
        .unwrap()
        .into_inner();
    pipe_tx
        .send(pb::PipelineRequest {
            id: 7,
            operation: Some(pb::pipeline_request::Operation::Get(req::get("p"))),
        })
        .await
        .unwrap();
    assert_eq!(pipe.next().await.unwrap().unwrap().id, 7);
    let admin = AdminServiceClient::new(server.channel());
    wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
        let mut admin = admin.clone();
        async move {
            tiercache_testkit::rpc::stats(&mut admin, req::stats())
                .await
                .lease_waits
                == 50
        }
    })
    .await
    .expect("every waiter waits");

    let start = Instant::now();
    let stopped = tokio::spawn(server.shutdown());
    for w in waiters {
        let (r, at) = w.await.unwrap();
        let err = r.expect_err("a waiter is not answered with a value");
        assert!(draining(&err), "{err:?}");
        assert!(
            at - start < Duration::from_secs(2),
            "answered after {:?}",
            at - start
        );
    }
    let err = lock_waiter
        .await
        .unwrap()
        .expect_err("the lock waiter is released");
    assert!(draining(&err), "{err:?}");
    let end = watch.next().await.expect("the watch ends with a status");
    assert!(draining(end.as_ref().unwrap_err()), "{end:?}");
    let end = pipe.next().await.expect("the pipeline ends with a status");
    assert!(draining(end.as_ref().unwrap_err()), "{end:?}");
    drop(pipe_tx);
    stopped.await.unwrap().unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "the server exits promptly, not after its grace: {:?}",
        start.elapsed()
    );
}

/// Scrapes `/metrics` and returns the value of `name` whose `tiercache_kind` label is `kind`.
async fn metric(addr: SocketAddr, name: &str, kind: &str) -> Option<f64> {
    let scrape = tiercache_testkit::scrape_metrics(addr, None).await.ok()?;
    let label = format!("tiercache_kind=\"{kind}\"");
    scrape
        .body
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .find(|l| l.contains(&label))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

async fn net_output_bytes(redis: &RedisServer) -> u64 {
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("total_net_output_bytes:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn reply_too_large(s: &Status, field: &str) {
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    let info = s.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "REPLY_TOO_LARGE", "{s:?}");
    assert_eq!(info.metadata["field"], field, "{s:?}");
    let br = s.get_details_bad_request().expect("BadRequest");
    assert_eq!(br.field_violations[0].field, field, "{s:?}");
}

#[tokio::test]
async fn batch_reply_over_the_limit_is_refused_before_redis_builds_it() {
    // The default limit, 8 MiB, and 48 values of 200 KiB.
    let redis = RedisServer::start();
    let config = Config {
        redis: Some(redis_config(&redis.url())),
        ..Config::default()
    };
    let server = TestServer::start(config.clone()).await;
    let mut c = CacheServiceClient::new(server.channel());
    let value = "x".repeat(200 * 1024);
    let keys: Vec<String> = (0..48).map(|i| format!("big{i}")).collect();
    for k in &keys {
        tiercache_testkit::rpc::set(&mut c, req::set(k, &value)).await;
    }
    // A second server on the same Redis has nothing in L1: every value would come from Redis.
    let cold = TestServer::start(config).await;
    // Clients accept what the server may send (16 MiB); the reply limit is the server's.
    let mut cold = CacheServiceClient::new(cold.channel()).max_decoding_message_size(16 << 20);
    let before = net_output_bytes(&redis).await;
    let err = cold
        .get_many(pb::GetManyRequest {
            namespace: "default".into(),
            keys: keys.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    reply_too_large(&err, "keys");
    let sent = net_output_bytes(&redis).await - before;
    assert!(
        sent < 256 * 1024,
        "redis sent {sent} bytes for a refused batch"
    );
    // GetOrSetMany too, and the lease it took for a missing key is given back.
    let mut with_miss = vec!["absent".to_string()];
    with_miss.extend(keys.iter().cloned());
    let err = cold
        .get_or_set_many(pb::GetOrSetManyRequest {
            namespace: "default".into(),
            keys: with_miss,
            ..Default::default()
        })
        .await
        .unwrap_err();
    reply_too_large(&err, "keys");
    let after = cold
        .get_or_set(pb::GetOrSetRequest {
            max_wait: req::duration(Duration::from_millis(100)),
            ..req::get_or_set("absent")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.outcome(), pb::GetOrSetOutcome::Lease, "{after:?}");
    // And from L1 (the writer's own copies).
    let err = c
        .get_many(pb::GetManyRequest {
            namespace: "default".into(),
            keys: keys.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    reply_too_large(&err, "keys");
    // Within the limit it is served.
    let ok = cold
        .get_many(pb::GetManyRequest {
            namespace: "default".into(),
            keys: keys[..30].to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ok.results.iter().all(|r| r.entry.is_some()));
}

#[tokio::test]
async fn message_size_limit_is_16_mib_both_ways() {
    let server = TestServer::memory().await;
    let mut c = CacheServiceClient::new(server.channel())
        .max_encoding_message_size(64 * 1024 * 1024)
        .max_decoding_message_size(64 * 1024 * 1024);
    // 6 MiB is decoded and checked: the value is too large for the namespace, and says so.
    let err = c
        .set(req::set("k", &"x".repeat(6 * 1024 * 1024)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(
        err.get_details_bad_request().unwrap().field_violations[0].field,
        "value"
    );
    // Past 16 MiB the message is not decoded at all.
    let err = c
        .set(req::set("k", &"x".repeat(17 * 1024 * 1024)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(
        err.get_details_error_info().unwrap().reason,
        "MESSAGE_TOO_LARGE"
    );
    assert!(err.message().contains("too large"), "{err:?}");
    tiercache_testkit::rpc::set(&mut c, req::set("k", "small")).await;
}

#[tokio::test]
async fn slow_watch_consumer_gets_an_overflow_status_and_its_stream_ends() {
    let config = Config::from_toml("[limits]\nwatch_buffer = 8\n").unwrap();
    let server = TestServer::start(config).await;
    let admin = server.admin_addr().unwrap();
    let mut c = CacheServiceClient::new(server.channel());
    let mut watch = c
        .watch(pb::WatchRequest {
            namespace: "default".into(),
        })
        .await
        .unwrap()
        .into_inner();
    watch.next().await.unwrap().unwrap();
    assert_eq!(metric(admin, "tiercache_streams", "watch").await, Some(1.0));
    // Events far beyond what HTTP/2 windows and the buffer hold, never read meanwhile: tag
    // invalidations of 1000 tags of 100 bytes are 100 KB each.
    let tags: Vec<String> = (0..1000).map(|i| format!("{i:0>100}")).collect();
    let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
    let invalidated = tokio::time::timeout(Duration::from_secs(15), async {
        for _ in 0..200 {
            c.invalidate_tags(req::invalidate_tags(&tags))
                .await
                .unwrap();
            if metric(admin, "tiercache_streams", "watch").await == Some(0.0) {
                return;
            }
        }
    })
    .await;
    assert!(invalidated.is_ok());
    wait_for(
        Duration::from_secs(5),
        Duration::from_millis(20),
        || async move { metric(admin, "tiercache_streams", "watch").await == Some(0.0) },
    )
    .await
    .expect("the overflowing stream's task ended");
    let mut last = None;
    while let Some(m) = watch.next().await {
        last = Some(m);
    }
    let err = last.unwrap().expect_err("the stream ends with a status");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(
        err.get_details_error_info().unwrap().reason,
        "WATCH_OVERFLOW"
    );
}

/// A TCP proxy to `to` that can be frozen: it stops moving bytes either way but keeps both
/// connections open, like a client behind a NAT that dropped its mapping.
async fn freezable_proxy(to: SocketAddr) -> (SocketAddr, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let frozen = Arc::new(AtomicBool::new(false));
    let f = frozen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(to).await.unwrap();
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            for (mut r, mut w) in [(cr, sw), (sr, cw)] {
                let f = f.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match r.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if f.load(Ordering::SeqCst) {
                            // Hold the connection open and move nothing, ever.
                            std::future::pending::<()>().await;
                        }
                        if w.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    // Keep both halves alive until the test ends.
                    std::future::pending::<()>().await;
                });
            }
        }
    });
    (addr, frozen)
}

type Waiter = tokio::task::JoinHandle<Result<tonic::Response<pb::GetOrSetResponse>, tonic::Status>>;

/// Over `channel`: takes the lease on `k`, starts a GetOrSet waiter on it and opens a Watch, and
/// waits until the server's gauges show both.
async fn open_waiter_and_watch(
    channel: tonic::transport::Channel,
    admin: SocketAddr,
) -> (
    CacheServiceClient<tonic::transport::Channel>,
    Waiter,
    tonic::Streaming<pb::WatchResponse>,
) {
    let mut c = CacheServiceClient::new(channel);
    let lease = c
        .get_or_set(req::get_or_set("k"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(lease.outcome(), pb::GetOrSetOutcome::Lease);
    let waiter = tokio::spawn({
        let mut c = c.clone();
        async move {
            c.get_or_set(pb::GetOrSetRequest {
                max_wait: req::duration(Duration::from_secs(60)),
                ..req::get_or_set("k")
            })
            .await
        }
    });
    let mut watch = c
        .watch(pb::WatchRequest {
            namespace: "default".into(),
        })
        .await
        .unwrap()
        .into_inner();
    watch.next().await.unwrap().unwrap();
    waiter_and_watch_open(admin, 1.0)
        .await
        .expect("the waiter and the watch are open");
    (c, waiter, watch)
}

/// Waits until the server's gauges show `n` lease waiters and `n` Watch streams.
async fn waiter_and_watch_open(
    admin: SocketAddr,
    n: f64,
) -> Result<(), tiercache_testkit::WaitTimeout> {
    wait_for(
        Duration::from_secs(5),
        Duration::from_millis(20),
        || async move {
            metric(admin, "tiercache_waiters", "lease").await == Some(n)
                && metric(admin, "tiercache_streams", "watch").await == Some(n)
        },
    )
    .await
}

#[tokio::test]
async fn vanished_client_is_found_by_keepalive_and_its_watch_and_waiters_end() {
    let config = Config::from_toml(
        "[server]\nhttp2_keepalive_interval = \"300ms\"\nhttp2_keepalive_timeout = \"300ms\"\n",
    )
    .unwrap();
    let server = TestServer::start(config).await;
    let admin = server.admin_addr().unwrap();
    let (proxy, frozen) = freezable_proxy(server.addr()).await;
    let channel = Endpoint::from_shared(format!("http://{proxy}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (_c, waiter, _watch) = open_waiter_and_watch(channel, admin).await;
    frozen.store(true, Ordering::SeqCst);
    waiter_and_watch_open(admin, 0.0)
        .await
        .expect("the server closes the silent connection and ends its RPCs");
    waiter.abort();
}

#[tokio::test]
async fn fill_many_with_a_bad_item_stores_nothing_and_consumes_no_lease() {
    let server = TestServer::memory().await;
    let mut c = CacheServiceClient::new(server.channel());
    let mut tokens = Vec::new();
    for i in 0..5 {
        let r = c
            .get_or_set(req::get_or_set(&format!("f{i}")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.outcome(), pb::GetOrSetOutcome::Lease);
        tokens.push(r.lease.unwrap().token);
    }
    let mut items: Vec<pb::FillRequest> = (0..5)
        .map(|i| req::fill(&format!("f{i}"), &tokens[i], "v"))
        .collect();
    items[3].key = String::new();
    let err = c
        .fill_many(pb::FillManyRequest {
            requests: items.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(
        err.get_details_bad_request().unwrap().field_violations[0].field,
        "requests[3].key"
    );
    for i in 0..5 {
        assert!(
            tiercache_testkit::rpc::get(&mut c, req::get(&format!("f{i}")))
                .await
                .is_none(),
            "f{i} was stored by a refused batch"
        );
    }
    // Every lease is still good.
    items[3].key = "f3".into();
    let ok = c
        .fill_many(pb::FillManyRequest { requests: items })
        .await
        .unwrap()
        .into_inner();
    assert!(ok
        .responses
        .iter()
        .all(|r| r.outcome() == pb::FillOutcome::Stored));
}

#[tokio::test]
async fn closed_client_connection_ends_its_watch_and_waiters() {
    let server = TestServer::memory().await;
    let admin = server.admin_addr().unwrap();
    let channel = Endpoint::from_shared(server.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (c, waiter, watch) = open_waiter_and_watch(channel, admin).await;
    // Every clone of the channel goes: the connection closes.
    waiter.abort();
    let _ = waiter.await;
    drop((c, watch));
    waiter_and_watch_open(admin, 0.0)
        .await
        .expect("the server ends the RPCs of a closed connection");
}

// ---- Reflection ----

/// Asks one version of gRPC reflection, over real gRPC, for the service list and for the file
/// that defines `tiercache.v1.CacheService`; returns the services listed and the services that
/// file defines (`package.Service`). One function per version: each has its own generated types.
macro_rules! ask_reflection {
    ($name:ident, $($pb:ident)::+) => {
        async fn $name(server: &TestServer) -> (Vec<String>, Vec<String>) {
            use $($pb)::+ as r;
            use r::server_reflection_request::MessageRequest;
            use r::server_reflection_response::MessageResponse;
            let ask = |m| r::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(m),
            };
            let requests = vec![
                ask(MessageRequest::ListServices(String::new())),
                ask(MessageRequest::FileContainingSymbol(
                    "tiercache.v1.CacheService".into(),
                )),
            ];
            let mut replies = r::server_reflection_client::ServerReflectionClient::new(
                server.channel(),
            )
            .server_reflection_info(tokio_stream::iter(requests))
            .await
            .expect("ServerReflectionInfo")
            .into_inner();
            let listed = match replies.message().await.expect("a reply").expect("a reply") {
                r::ServerReflectionResponse {
                    message_response: Some(MessageResponse::ListServicesResponse(l)),
                    ..
                } => l.service.into_iter().map(|s| s.name).collect(),
                other => panic!("expected the service list, got {other:?}"),
            };
            let defined = match replies.message().await.expect("a reply").expect("a reply") {
                r::ServerReflectionResponse {
                    message_response: Some(MessageResponse::FileDescriptorResponse(f)),
                    ..
                } => f
                    .file_descriptor_proto
                    .iter()
                    .flat_map(|raw| {
                        let file = prost_types::FileDescriptorProto::decode(raw.as_slice())
                            .expect("a FileDescriptorProto");
                        let package = file.package().to_string();
                        file.service
                            .into_iter()
                            .map(move |s| format!("{package}.{}", s.name()))
                    })
                    .collect(),
                other => panic!("expected file descriptors, got {other:?}"),
            };
            (listed, defined)
        }
    };
}

ask_reflection!(ask_reflection_v1, tonic_reflection::pb::v1);
ask_reflection!(ask_reflection_v1alpha, tonic_reflection::pb::v1alpha);

/// Both reflection versions are served: clients that speak only v1alpha (grpcio-reflection's
/// stock client, older grpcurl, grpcui, Evans) list and describe the services as v1 clients do.
#[tokio::test]
async fn reflection_v1_and_v1alpha_list_and_describe_the_services() {
    let server = TestServer::memory().await;
    for (version, (listed, defined)) in [
        ("v1", ask_reflection_v1(&server).await),
        ("v1alpha", ask_reflection_v1alpha(&server).await),
    ] {
        for service in [
            "tiercache.v1.CacheService",
            "tiercache.v1.LockService",
            "tiercache.v1.AdminService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ] {
            assert!(
                listed.iter().any(|s| s == service),
                "{version}: {service} not listed in {listed:?}"
            );
        }
        assert!(
            defined.iter().any(|s| s == "tiercache.v1.CacheService"),
            "{version}: the file of tiercache.v1.CacheService defines {defined:?}"
        );
    }
}
