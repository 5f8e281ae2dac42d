//! Coherence after faults of Redis state and of the subscription: a reset of Redis state
//! (FLUSHALL, a restart without persistence, a lost `seq` key), a missed event, a silently dead
//! subscriber, and two deployments sharing one Redis. See docs/architecture.md, "Coherence
//! between replicas" and "After a fault: the staleness bound".

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use parking_lot::Mutex;
use tiercache_proto::v1 as pb;
use tiercache_server::config::Config;
use tiercache_testkit::rpc::{self, AdminClient, CacheClient};
use tiercache_testkit::{redis_config, req, wait_for, Fleet, RedisServer, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// The staleness bound stated in docs/architecture.md, plus slack for a loaded test machine.
const STALENESS_BOUND: Duration = Duration::from_millis(2500);
/// How long a recovery may take in these tests (reconnects back off up to 2 s).
const BOUND: Duration = Duration::from_secs(8);
const POLL: Duration = Duration::from_millis(10);

async fn get(c: &mut CacheClient, key: &str) -> Option<(String, pb::Tier)> {
    let entry = rpc::get(c, req::get(key)).await?;
    Some((rpc::text(&entry), entry.tier()))
}

async fn get_value(c: &CacheClient, key: &str) -> Option<String> {
    get(&mut c.clone(), key).await.map(|(v, _)| v)
}

async fn l1_clears(admin: &mut AdminClient) -> u64 {
    rpc::stats(admin, req::stats()).await.l1_clears
}

async fn redis_conn(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis")
}

/// Builds a history on `c`: writes, a flush (so every replica caches a flush mark well above 1)
/// and more writes, then caches `old` in the L1 of `reader`.
async fn history(c: &mut CacheClient, reader: &CacheClient) {
    for i in 0..5 {
        rpc::set(c, req::set("k", &format!("v{i}"))).await;
    }
    rpc::flush(c, req::flush()).await;
    for i in 0..10 {
        rpc::set(c, req::set(&format!("x{i}"), "x")).await;
    }
    rpc::set(c, req::set("old", "before")).await;
    wait_for(BOUND, POLL, || {
        let mut r = reader.clone();
        async move { get(&mut r, "old").await == Some(("before".into(), pb::Tier::L1)) }
    })
    .await
    .expect("the reader caches `old` in L1");
}

/// Writes `key` = `value` on `c`, retrying while the replica is still reconnecting.
async fn set_eventually(c: &CacheClient, key: &str, value: &str) {
    wait_for(BOUND, Duration::from_millis(50), || {
        let mut c = c.clone();
        let r = req::set(key, value);
        async move { c.set(r).await.is_ok() }
    })
    .await
    .unwrap_or_else(|e| panic!("set {key} succeeds again: {e}"));
}

/// After Redis lost its state: a write on A is served by every replica (as an L1 hit once read),
/// the entries Redis lost are no longer served, and GetOrSet answers HIT at once instead of
/// waiting out its bound.
async fn replicas_recover(ca: &CacheClient, cb: &CacheClient) {
    set_eventually(ca, "k", "new").await;
    for (name, c) in [("A", ca), ("B", cb)] {
        wait_for(BOUND, POLL, || async {
            get(&mut c.clone(), "k").await == Some(("new".into(), pb::Tier::L1))
        })
        .await
        .unwrap_or_else(|e| panic!("replica {name} serves the new write from L1: {e}"));
        assert_eq!(
            get_value(c, "old").await,
            None,
            "replica {name} serves an entry Redis lost"
        );
    }
    let started = Instant::now();
    let r = cb
        .clone()
        .get_or_set(pb::GetOrSetRequest {
            max_wait: req::duration(Duration::from_secs(3)),
            ..req::get_or_set("k")
        })
        .await
        .expect("GetOrSet answers")
        .into_inner();
    assert_eq!(r.outcome(), pb::GetOrSetOutcome::Hit, "{r:?}");
    assert_eq!(rpc::text(r.entry.as_ref().unwrap()), "new");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "GetOrSet waited {:?} for an entry Redis holds",
        started.elapsed()
    );
}

#[tokio::test]
async fn flushall_is_detected_and_replicas_serve_new_writes_again() {
    let fleet = Fleet::redis(2).await;
    let (mut ca, cb) = (fleet.cache(0), fleet.cache(1));
    history(&mut ca, &cb).await;

    let mut conn = redis_conn(fleet.redis_server()).await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    // FLUSHALL deleted `old`: B stops serving it within the bound, before any new write.
    let started = Instant::now();
    wait_for(STALENESS_BOUND, POLL, || {
        get_value(&cb, "old").map(|v| v.is_none())
    })
    .await
    .expect("B stops serving an entry FLUSHALL deleted within the bound");
    eprintln!("B noticed FLUSHALL after {:?}", started.elapsed());
    replicas_recover(&ca, &cb).await;
}

#[tokio::test]
async fn redis_restart_without_persistence_leaves_no_entry_hidden() {
    let mut fleet = Fleet::redis(2).await;
    let (mut ca, cb) = (fleet.cache(0), fleet.cache(1));
    history(&mut ca, &cb).await;

    fleet.redis.as_mut().unwrap().restart();
    replicas_recover(&ca, &cb).await;
}

#[tokio::test]
async fn lost_seq_key_restarts_the_sequence_above_every_old_mark() {
    let fleet = Fleet::redis(2).await;
    let (mut ca, cb) = (fleet.cache(0), fleet.cache(1));
    history(&mut ca, &cb).await;

    // As if `maxmemory-policy` evicted the sequence: the flush mark and the entries remain.
    let mut conn = redis_conn(fleet.redis_server()).await;
    let _: () = redis::cmd("DEL")
        .arg("tc:{default}:seq")
        .query_async(&mut conn)
        .await
        .unwrap();
    rpc::set(&mut ca, req::set("k", "new")).await;
    for (name, c) in [("A", &ca), ("B", &cb)] {
        wait_for(BOUND, POLL, || async {
            get(&mut c.clone(), "k").await == Some(("new".into(), pb::Tier::L1))
        })
        .await
        .unwrap_or_else(|e| panic!("replica {name} serves the new write from L1: {e}"));
    }
    // Entries written before are still there, and still visible: nothing was flushed.
    assert_eq!(get_value(&cb, "x0").await.as_deref(), Some("x"));
    let r = cb
        .clone()
        .get_or_set(pb::GetOrSetRequest {
            max_wait: req::duration(Duration::from_secs(3)),
            ..req::get_or_set("k")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outcome(), pb::GetOrSetOutcome::Hit, "{r:?}");
}

#[tokio::test]
async fn replica_that_missed_an_event_stops_serving_the_old_value_within_the_bound() {
    let fleet = Fleet::redis(2).await;
    let (mut ca, cb) = (fleet.cache(0), fleet.cache(1));
    rpc::set(&mut ca, req::set("k", "old")).await;
    wait_for(BOUND, POLL, || async {
        get(&mut cb.clone(), "k").await == Some(("old".into(), pb::Tier::L1))
    })
    .await
    .expect("B caches k in L1");

    // A delete whose event nobody hears: what a Delete script does, without its PUBLISH.
    let mut conn = redis_conn(fleet.redis_server()).await;
    let _: () = redis::pipe()
        .atomic()
        .del("tc:{default:k}:e")
        .ignore()
        .incr("tc:{default}:seq", 1)
        .ignore()
        .query_async(&mut conn)
        .await
        .unwrap();
    let started = Instant::now();
    wait_for(STALENESS_BOUND, POLL, || {
        get_value(&cb, "k").map(|v| v.is_none())
    })
    .await
    .expect("B stops serving a value deleted behind its back within the bound");
    eprintln!("B noticed the missed event after {:?}", started.elapsed());
}

/// A TCP proxy in front of Redis that can turn its subscriber connections (those that sent
/// `PSUBSCRIBE`) into black holes: bytes both ways are read and dropped, as on a half-open
/// connection after a NAT dropped it. Connections opened later pass.
struct Proxy {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<Arc<ConnState>>>>,
}

#[derive(Default)]
struct ConnState {
    subscriber: AtomicBool,
    dead: AtomicBool,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<Arc<ConnState>>>> = Arc::default();
        let list = conns.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let state = Arc::new(ConnState::default());
                list.lock().push(state.clone());
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, state.clone(), true));
                tokio::spawn(pump(sr, cw, state, false));
            }
        });
        Proxy { addr, conns }
    }

    fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Blackholes the subscriber connections open now; returns how many.
    fn blackhole_subscribers(&self) -> usize {
        let conns = self.conns.lock();
        let subs: Vec<_> = conns
            .iter()
            .filter(|c| c.subscriber.load(Ordering::Acquire))
            .collect();
        for c in &subs {
            c.dead.store(true, Ordering::Release);
        }
        subs.len()
    }

    /// How many subscriber connections were opened so far.
    fn subscribers(&self) -> usize {
        self.conns
            .lock()
            .iter()
            .filter(|c| c.subscriber.load(Ordering::Acquire))
            .count()
    }
}

async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, state: Arc<ConnState>, up: bool) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if up
            && buf[..n]
                .windows(10)
                .any(|w| w.eq_ignore_ascii_case(b"PSUBSCRIBE"))
        {
            state.subscriber.store(true, Ordering::Release);
        }
        if state.dead.load(Ordering::Acquire) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn silently_dead_subscriber_is_noticed_and_replaced_within_the_bound() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(redis.addr()).await;
    let direct = Config {
        redis: Some(redis_config(&redis.url())),
        ..Config::default()
    };
    let proxied = Config {
        redis: Some(redis_config(&proxy.url())),
        ..Config::default()
    };
    let a = TestServer::start(direct).await;
    let b = TestServer::start(proxied).await;
    let mut ca = CacheClient::new(a.channel());
    let cb = CacheClient::new(b.channel());

    rpc::set(&mut ca, req::set("k", "old")).await;
    wait_for(BOUND, POLL, || async {
        get(&mut cb.clone(), "k").await == Some(("old".into(), pb::Tier::L1))
    })
    .await
    .expect("B caches k in L1");

    assert_eq!(proxy.blackhole_subscribers(), 1, "B has one subscriber");
    let started = Instant::now();
    // B hears nothing from now on, and nothing tells it so: no FIN, no RST.
    rpc::set(&mut ca, req::set("k", "new")).await;
    wait_for(STALENESS_BOUND, POLL, || {
        get_value(&cb, "k").map(|v| v.as_deref() == Some("new"))
    })
    .await
    .expect("B stops serving the value it missed the invalidation of within the bound");
    wait_for(Duration::from_secs(4), POLL, || async {
        proxy.subscribers() >= 2
    })
    .await
    .expect("B notices the dead subscription (ping) and subscribes again");
    eprintln!("B resubscribed after {:?}", started.elapsed());
    // And, subscribed again, B follows writes through L1.
    rpc::set(&mut ca, req::set("k", "newer")).await;
    wait_for(BOUND, POLL, || async {
        get(&mut cb.clone(), "k").await == Some(("newer".into(), pb::Tier::L1))
    })
    .await
    .expect("B serves later writes from L1 again");
}

/// Starts a server on `url` with `key_prefix` (`None`: the default).
async fn server_on(url: &str, key_prefix: Option<&str>) -> TestServer {
    let mut redis = redis_config(url);
    if let Some(p) = key_prefix {
        redis.key_prefix = p.to_string();
    }
    TestServer::start(Config {
        redis: Some(redis),
        ..Config::default()
    })
    .await
}

/// `x` and `y` are two deployments on one Redis: `y` caches its own `k`, `x` writes, deletes,
/// invalidates and flushes; `y` must neither see `x`'s data nor react to `x`'s events.
async fn deployments_stay_apart(x: &TestServer, y: &TestServer, k: &str) {
    let mut cx = CacheClient::new(x.channel());
    let mut cy = CacheClient::new(y.channel());
    let mut admin_y = rpc::AdminClient::new(y.channel());

    rpc::set(&mut cy, req::set(k, "y")).await;
    assert_eq!(get(&mut cy, k).await.unwrap().0, "y");
    assert_eq!(get(&mut cy, k).await, Some(("y".into(), pb::Tier::L1)));
    let clears = l1_clears(&mut admin_y).await;

    assert_eq!(get(&mut cx, k).await, None, "x sees y's entry");
    for i in 0..20 {
        rpc::set(&mut cx, req::set(k, &format!("x{i}"))).await;
    }
    rpc::delete(&mut cx, req::delete(k)).await;
    rpc::invalidate_tags(&mut cx, req::invalidate_tags(&["t"])).await;
    rpc::flush(&mut cx, req::flush()).await;
    // y would have applied (or found a gap in) x's events by now if it heard them: give its
    // subscriber the time one more of x's events takes to reach x itself.
    rpc::set(&mut cx, req::set(&format!("sync-{k}"), "1")).await;
    wait_for(BOUND, POLL, || async {
        get(&mut cx.clone(), &format!("sync-{k}"))
            .await
            .map(|v| v.1)
            == Some(pb::Tier::L1)
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    assert_eq!(get(&mut cy, k).await, Some(("y".into(), pb::Tier::L1)));
    assert_eq!(
        get(&mut cy, &format!("sync-{k}")).await,
        None,
        "y sees x's entry"
    );
    assert_eq!(
        l1_clears(&mut admin_y).await,
        clears,
        "y cleared its L1 because of x's events"
    );
}

#[tokio::test]
async fn deployments_on_two_databases_of_one_redis_never_see_each_other() {
    let redis = RedisServer::start();
    let x = server_on(&format!("{}/0", redis.url()), None).await;
    let y = server_on(&format!("{}/1", redis.url()), None).await;
    deployments_stay_apart(&x, &y, "k1").await;
    deployments_stay_apart(&y, &x, "k2").await;
}

#[tokio::test]
async fn deployments_with_two_prefixes_on_one_database_never_see_each_other() {
    let redis = RedisServer::start();
    let x = server_on(&redis.url(), Some("app1")).await;
    let y = server_on(&redis.url(), Some("app2")).await;
    deployments_stay_apart(&x, &y, "k1").await;
    deployments_stay_apart(&y, &x, "k2").await;
    // Every key either wrote carries its prefix.
    let mut conn = redis_conn(&redis).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    for k in &keys {
        assert!(
            k.starts_with("app1:{") || k.starts_with("app2:{"),
            "{k} is outside both prefixes"
        );
    }
}

/// Two engines A and B on `redis`, their `default` namespaces, and `k` = `v` written by A.
async fn two_engines_with_k(
    redis: &RedisServer,
) -> (
    tiercache_core::Cache,
    tiercache_core::Cache,
    Arc<tiercache_core::Namespace>,
    Arc<tiercache_core::Namespace>,
) {
    let a = engine(redis).await;
    let b = engine(redis).await;
    let (na, nb) = (
        a.namespace("default").unwrap(),
        b.namespace("default").unwrap(),
    );
    a.set(
        &na,
        "k",
        tiercache_core::WriteArgs {
            value: "v".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    (a, b, na, nb)
}

/// The engine over a fresh Redis, with the `default` namespace.
async fn engine(redis: &RedisServer) -> tiercache_core::Cache {
    tiercache_core::Cache::two_tier(
        tiercache_core::CacheConfig {
            namespaces: vec![("default".into(), tiercache_core::NamespacePolicy::default())],
            dynamic_namespaces: true,
            default_policy: tiercache_core::NamespacePolicy::default(),
            ..tiercache_core::CacheConfig::default()
        },
        tiercache_core::RedisOptions {
            url: redis.url(),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(5),
            key_prefix: "tc".into(),
            ..tiercache_core::RedisOptions::default()
        },
    )
    .await
    .expect("two-tier engine starts")
}

#[tokio::test]
async fn flush_arriving_between_a_sync_read_and_its_lock_is_not_lost() {
    use tiercache_core::{Lookup, ReadOptions};

    let redis = RedisServer::start();
    let (a, b, na, nb) = two_engines_with_k(&redis).await;

    // A raw subscriber of the namespace's events, to know when the flush was published.
    let mut ps = redis.client().get_async_pubsub().await.unwrap();
    ps.subscribe("tc:0:{default}:events").await.unwrap();
    let mut published = ps.into_on_message();

    // B's first read of the namespace stops between reading its sequence and taking its lock.
    let (mut reached, resume) = b.pause_sync_for_tests();
    let reader = {
        let (b, nb) = (b.clone(), nb.clone());
        tokio::spawn(async move { b.get(&nb, "k", ReadOptions::default()).await })
    };
    tokio::time::timeout(BOUND, reached.recv())
        .await
        .expect("B's sync read reaches the pause point");
    // Meanwhile A flushes: B's subscriber receives the event inside that window.
    a.flush(&na).await.unwrap();
    tokio::time::timeout(BOUND, futures::StreamExt::next(&mut published))
        .await
        .expect("the flush event is published");
    // Give B's subscriber (same Redis, same host) time to receive it as ours did.
    tokio::time::sleep(Duration::from_millis(200)).await;
    resume.add_permits(1);

    let got = tokio::time::timeout(BOUND, reader)
        .await
        .expect("B's read completes")
        .unwrap()
        .unwrap();
    assert!(
        matches!(got, Lookup::Miss),
        "B serves an entry flushed before its read: {got:?}"
    );
    let again = tokio::time::timeout(BOUND, b.get(&nb, "k", ReadOptions::default()))
        .await
        .expect("B's second read completes")
        .unwrap();
    assert!(matches!(again, Lookup::Miss), "{again:?}");
}

/// A sync read sent before the namespace was cleared (here by a gap) must not complete after the
/// clear with its old sequence and flush mark: it would take a later read's event buffer and make
/// the replica trust marks from before a flush. Found by `invalidation_race` under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_read_sent_before_a_gap_does_not_restore_old_marks() {
    use tiercache_core::{Lookup, ReadOptions};

    let redis = RedisServer::start();
    let (a, b, na, nb) = two_engines_with_k(&redis).await;

    // R1: B's first sync read of the namespace stops after Redis answered (flush mark 0).
    let (mut reached1, resume1) = b.pause_sync_for_tests();
    let r1 = {
        let (b, nb) = (b.clone(), nb.clone());
        tokio::spawn(async move { b.get(&nb, "k", ReadOptions::default()).await })
    };
    tokio::time::timeout(BOUND, reached1.recv())
        .await
        .expect("R1 reaches the pause point");
    // R2 syncs B meanwhile, then A flushes and B applies the flush.
    let hit = b.get(&nb, "k", ReadOptions::default()).await.unwrap();
    assert!(matches!(hit, Lookup::Hit(_)), "{hit:?}");
    a.flush(&na).await.unwrap();
    wait_for(BOUND, POLL, || {
        let (b, nb) = (b.clone(), nb.clone());
        async move {
            matches!(
                b.get(&nb, "k", ReadOptions::default()).await,
                Ok(Lookup::Miss)
            )
        }
    })
    .await
    .expect("B applies the flush");
    // A gap clears B's namespace: an event far ahead of the sequence, in the current run.
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let run: String = redis::cmd("GET")
        .arg("tc:{default}:run")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: i64 = redis::cmd("PUBLISH")
        .arg("tc:0:{default}:events")
        .arg(format!("{run}\n1000000\nF"))
        .query_async(&mut conn)
        .await
        .unwrap();
    wait_for(BOUND, POLL, || {
        let nb = nb.clone();
        async move { nb.last_sequence() == 0 }
    })
    .await
    .expect("B clears the namespace on the gap");
    // R3 starts a new sync and stops after its read; then R1 resumes, with its answer from
    // before the flush.
    let (mut reached3, resume3) = b.pause_sync_for_tests();
    let r3 = {
        let (b, nb) = (b.clone(), nb.clone());
        tokio::spawn(async move { b.get(&nb, "k", ReadOptions::default()).await })
    };
    tokio::time::timeout(BOUND, reached3.recv())
        .await
        .expect("R3 reaches the pause point");
    resume1.add_permits(1);
    let got1 = tokio::time::timeout(BOUND, r1)
        .await
        .expect("R1 completes")
        .unwrap()
        .unwrap();
    assert!(
        matches!(got1, Lookup::Miss),
        "a sync read from before the flush served the flushed entry: {got1:?}"
    );
    resume3.add_permits(1);
    let got3 = tokio::time::timeout(BOUND, r3)
        .await
        .expect("R3 completes")
        .unwrap()
        .unwrap();
    assert!(matches!(got3, Lookup::Miss), "{got3:?}");
    let again = b.get(&nb, "k", ReadOptions::default()).await.unwrap();
    assert!(matches!(again, Lookup::Miss), "{again:?}");
}

/// Log lines written by the test process's subscriber.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn server_warns_at_start_when_redis_may_evict_any_key() {
    let logs = Logs::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .try_init()
        .expect("this test process has no other subscriber");
    let redis = RedisServer::start();
    let mut conn = redis_conn(&redis).await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("allkeys-lru")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _server = server_on(&redis.url(), None).await;
    let text = String::from_utf8_lossy(&logs.0.lock()).into_owned();
    let warning = text
        .lines()
        .find(|l| l.contains("WARN") && l.contains("maxmemory-policy"))
        .unwrap_or_else(|| panic!("no maxmemory-policy warning in:\n{text}"));
    assert!(warning.contains("allkeys-lru"), "{warning}");
    assert!(warning.contains("noeviction"), "{warning}");
}
