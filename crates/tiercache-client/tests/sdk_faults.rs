//! The SDK when the fleet misbehaves: a replica that lags behind the one the near cache
//! watches, a server that never answers, lock renewals that fail or hang, replies larger than
//! tonic's 4 MiB default. Real servers and Redis (`tiercache_testkit`); where a test needs a
//! network path that stops delivering, a small TCP [`Gate`] sits in it.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tiercache_client::{
    Client, Error, GetOrSetOptions, NearCacheConfig, RetryPolicy, Tier, DEFAULT_REQUEST_TIMEOUT,
};
use tiercache_server::config::Config;
use tiercache_testkit::{redis_config, wait_for, RedisServer, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tonic::transport::Channel;

const BOUND: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(5);

/// A server config without the admin port (several servers run at once).
fn config(redis_url: Option<&str>) -> Config {
    let mut config = Config {
        redis: redis_url.map(redis_config),
        shutdown_grace: Duration::from_millis(200),
        ..Config::default()
    };
    config.telemetry.metrics = false;
    config
}

// ---- a TCP path that can stop delivering ----

/// A TCP proxy to `target` that can hold every byte in both directions: connections stay open
/// and nothing moves, like a network path that silently stops delivering (a blackholed
/// subscriber, a stalled peer). Released, it delivers what it held, in order.
struct Gate {
    addr: SocketAddr,
    held: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl Gate {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (held, rx) = watch::channel(false);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let rx = rx.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = (client.set_nodelay(true), server.set_nodelay(true));
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pump(cr, sw, rx.clone()), pump(sr, cw, rx));
                });
            }
        });
        Self { addr, held, accept }
    }

    fn hold(&self) {
        self.held.send_replace(true);
    }

    fn release(&self) {
        self.held.send_replace(false);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies `from` to `to`, waiting while the gate is held.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut held: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if held.wait_for(|h| !*h).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

// ---- a per-request balancer ----

/// A gRPC proxy in front of two replicas, standing for a per-request load balancer: `Watch`
/// streams go to one replica, every other `CacheService` call to the other.
#[derive(Clone)]
struct Split {
    watch: Channel,
    reads: Channel,
}

impl tower_service::Service<http::Request<tonic::body::Body>> for Split {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let mut to = if req.uri().path().ends_with("/Watch") {
            self.watch.clone()
        } else {
            self.reads.clone()
        };
        Box::pin(async move {
            let sent = async {
                std::future::poll_fn(|cx| to.poll_ready(cx)).await?;
                to.call(req).await
            };
            Ok(sent
                .await
                .unwrap_or_else(|e| tonic::Status::unavailable(e.to_string()).into_http()))
        })
    }
}

impl tonic::server::NamedService for Split {
    const NAME: &'static str = "tiercache.v1.CacheService";
}

impl Split {
    /// Serves the split on a free port and returns its URL.
    async fn start(watch: Channel, reads: Channel) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(Split { watch, reads })
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        format!("http://{addr}")
    }
}

// ---- near cache behind a balancer ----

#[tokio::test]
async fn near_cache_does_not_keep_a_value_from_a_replica_behind_its_watch_stream() {
    let redis = RedisServer::start();
    // Replica A serves the near cache's Watch stream; replica B, whose Redis traffic goes
    // through the gate, answers the reads.
    let a = TestServer::start(config(Some(&redis.url()))).await;
    let gate = Gate::start(redis.addr()).await;
    let b = TestServer::start(config(Some(&format!("redis://{}", gate.addr)))).await;
    let balancer = Split::start(a.channel(), b.channel()).await;

    let reader = Client::connect(balancer)
        .await
        .unwrap()
        .namespace("default")
        .with_near_cache(NearCacheConfig::default());
    wait_for(BOUND, POLL, || async {
        reader.near_cache_stats().unwrap().live
    })
    .await
    .expect("the near cache's watch stream starts");
    let writer = Client::connect(a.endpoint())
        .await
        .unwrap()
        .namespace("default");
    let on_b = Client::connect(b.endpoint())
        .await
        .unwrap()
        .namespace("default");

    let old = writer.set("k", "old").await.unwrap();
    wait_for(BOUND, POLL, || async {
        reader.get("k").await.unwrap();
        reader.near_cache_version("k") == Some(old)
    })
    .await
    .expect("the near cache keeps a value read through B");
    wait_for(BOUND, POLL, || async {
        on_b.get("k").await.unwrap().unwrap().tier == Tier::L1
    })
    .await
    .expect("B holds the value in L1");

    // B stops hearing from Redis; A applies the overwrite and the near cache drops the key.
    gate.hold();
    let new = writer.set("k", "new").await.unwrap();
    wait_for(BOUND, POLL, || async {
        reader.near_cache_version("k") != Some(old)
    })
    .await
    .expect("the watch stream drops the old value");

    // B lags: it still answers the old value. The caller gets what B said, as any read without
    // a near cache would, but the near cache must not keep it.
    let e = reader.get("k").await.unwrap().unwrap();
    assert_eq!(e.value, Bytes::from_static(b"old"), "B was meant to lag");
    assert_eq!(
        reader.near_cache_version("k"),
        None,
        "the near cache kept a value older than what its watch stream delivered"
    );
    assert!(reader.near_cache_stats().unwrap().lagging_replies >= 1);

    // B catches up: reads through it are kept again.
    gate.release();
    wait_for(BOUND, POLL, || async {
        reader.get("k").await.unwrap();
        reader.near_cache_version("k") == Some(new)
    })
    .await
    .expect("the near cache keeps B's answers once B caught up");
}

// ---- the default request timeout ----

/// Runs `f` and returns its output with how long it took.
async fn timed<T>(f: impl Future<Output = T>) -> (T, Duration) {
    let start = Instant::now();
    let out = f.await;
    (out, start.elapsed())
}

fn assert_deadline<T: std::fmt::Debug>(
    what: &str,
    (result, took): (Result<T, Error>, Duration),
    expected: Duration,
) {
    assert!(
        matches!(result, Err(Error::DeadlineExceeded { .. })),
        "{what}: {result:?}"
    );
    assert!(
        took >= expected - Duration::from_millis(50) && took < expected + Duration::from_secs(2),
        "{what} failed after {took:?}, expected about {expected:?}"
    );
}

#[tokio::test]
async fn calls_to_a_server_that_never_answers_fail_after_the_default_request_timeout() {
    // Accepts connections (the kernel does, into the backlog) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", silent.local_addr().unwrap());
    let piped = Client::builder(&addr).connect_lazy().unwrap();
    let unary = Client::builder(&addr)
        .pipeline(false)
        .retry_policy(RetryPolicy::none())
        .connect_lazy()
        .unwrap();
    let (p, u) = (piped.namespace("default"), unary.namespace("default"));
    let wait = Duration::from_secs(1);
    let waiting = GetOrSetOptions {
        max_wait: Some(wait),
        ..Default::default()
    };
    let calls = async {
        tokio::join!(
            timed(p.get("k")),
            timed(p.set("k", "v")),
            timed(u.get("k")),
            timed(unary.stats(None)),
            timed(p.watch()),
            // Calls that wait on the server get their wait on top of the timeout.
            timed(u.get_or_set("k", waiting, || async { Ok::<_, Error>(None) })),
            timed(u.lock_with("l", Duration::from_secs(10), wait)),
        )
    };
    let Ok((get, set, unary_get, stats, watch, get_or_set, lock)) =
        tokio::time::timeout(Duration::from_secs(15), calls).await
    else {
        panic!("calls to a silent server still pending after 15 s: no default request timeout");
    };
    let t = DEFAULT_REQUEST_TIMEOUT;
    assert_deadline("pipelined get", get, t);
    assert_deadline("pipelined set", set, t);
    assert_deadline("unary get", unary_get, t);
    assert_deadline("stats", stats, t);
    assert_deadline("watch", (watch.0.map(|_| ()), watch.1), t);
    assert_deadline("get_or_set", get_or_set, t + wait);
    assert_deadline("lock_with", (lock.0.map(|g| g.is_some()), lock.1), t + wait);
    drop(silent);
}

// ---- message size ----

#[tokio::test]
async fn replies_larger_than_4_mib_are_received_up_to_the_16_mib_default() {
    let server = TestServer::start(config(None)).await;
    let client = Client::connect(server.endpoint()).await.unwrap();
    let ns = client.namespace("default");
    let value = Bytes::from(vec![b'x'; 1_000_000]);
    let keys: Vec<String> = (0..6).map(|i| format!("big:{i}")).collect();
    for k in &keys {
        ns.set(k.clone(), value.clone()).await.unwrap();
    }
    // One reply of about 6 MB.
    let got = ns.get_many(keys.clone()).await.unwrap();
    assert!(got.iter().all(|e| e.as_ref().unwrap().value == value));

    // Configurable: a client that accepts less refuses the same reply.
    let small = Client::builder(server.endpoint())
        .max_receive_message_size(4 << 20)
        .connect()
        .await
        .unwrap();
    let err = small.namespace("default").get_many(keys).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    // And one that sends less fails a large request without it reaching the server.
    let result = Client::builder(server.endpoint())
        .max_send_message_size(500_000)
        .pipeline(false)
        .connect()
        .await
        .unwrap()
        .namespace("default")
        .set("big:x", value)
        .await;
    assert!(result.is_err(), "{result:?}");
    assert!(ns.get("big:x").await.unwrap().is_none());
}

// ---- lock guards ----

/// A memory-only server in its own runtime on its own thread: killing it drops every task and
/// connection of the server, like a crashed process.
struct IsolatedServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl IsolatedServer {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                tiercache_server::run(listener, config(None), async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
            });
        });
        Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn kill(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap();
    }
}

impl Drop for IsolatedServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[tokio::test]
async fn lock_guard_is_not_held_once_a_renewal_fails_because_the_server_is_gone() {
    let server = IsolatedServer::start();
    let ns = Client::builder(format!("http://{}", server.addr))
        .retry_policy(RetryPolicy::none())
        .connect()
        .await
        .unwrap()
        .namespace("default");
    let ttl = Duration::from_secs(3);
    let start = Instant::now();
    let guard = ns.lock("job", ttl).await.unwrap().expect("a free lock");
    assert!(guard.is_held());
    server.kill();
    // The first renewal (after ttl / 3) fails: not held from then on, well before the TTL.
    wait_for(ttl * 5 / 6 - start.elapsed(), POLL, || async {
        !guard.is_held()
    })
    .await
    .expect("is_held() false once a renewal failed");
    assert!(start.elapsed() < ttl);
}

#[tokio::test]
async fn lock_guard_is_not_held_once_its_ttl_passes_while_renewals_hang() {
    let server = TestServer::start(config(None)).await;
    let gate = Gate::start(server.addr()).await;
    let ns = Client::connect(format!("http://{}", gate.addr))
        .await
        .unwrap()
        .namespace("default");
    let ttl = Duration::from_secs(1);
    let start = Instant::now();
    let guard = ns.lock("job", ttl).await.unwrap().expect("a free lock");
    // Renewals are sent and never answered (the request timeout is longer than the TTL).
    gate.hold();
    wait_for(ttl * 3, POLL, || async { !guard.is_held() })
        .await
        .expect("is_held() false once the ttl passed without a renewal");
    assert!(
        start.elapsed() >= ttl - Duration::from_millis(100),
        "not held after {:?}, before the ttl passed",
        start.elapsed()
    );
    gate.release();
}

#[tokio::test]
async fn lock_guard_is_not_held_once_the_lock_is_deleted_in_redis() {
    let redis = RedisServer::start();
    let server = TestServer::start(config(Some(&redis.url()))).await;
    let ns = Client::connect(server.endpoint())
        .await
        .unwrap()
        .namespace("default");
    let guard = ns
        .lock("job", Duration::from_millis(900))
        .await
        .unwrap()
        .expect("a free lock");
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*default:job*:lock")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let _: () = redis::cmd("DEL")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    wait_for(BOUND, POLL, || async { !guard.is_held() })
        .await
        .expect("is_held() false once a renewal found the lock gone");
}

// ---- what the server puts in read replies ----

#[tokio::test]
async fn read_replies_carry_the_sequence_the_replica_applied_before_the_lookup() {
    use tiercache_testkit::{pb, req};
    let server = TestServer::start(config(None)).await;
    let mut c = pb::cache_service_client::CacheServiceClient::new(server.channel());
    c.set(req::set("k", "v")).await.unwrap();
    let seq = c
        .flush_namespace(req::flush())
        .await
        .unwrap()
        .into_inner()
        .sequence;
    c.set(req::set("k", "v")).await.unwrap();
    let applied = seq + 1;
    let get = c.get(req::get("k")).await.unwrap().into_inner();
    assert_eq!(
        (get.outcome(), get.applied_sequence),
        (pb::GetOutcome::Hit, applied)
    );
    let many = c
        .get_many(pb::GetManyRequest {
            namespace: "default".into(),
            keys: vec!["k".into(), "absent".into()],
            fresh_only: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(many.results.iter().all(|r| r.applied_sequence == applied));
    let gos = c
        .get_or_set(req::get_or_set("k"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (gos.outcome(), gos.applied_sequence),
        (pb::GetOrSetOutcome::Hit, applied)
    );
}
