//! The fault suite: Redis and network faults under a workload of Sets, Deletes, InvalidateTags,
//! Flushes and Gets over three replicas, checked against a model of the acknowledged operations.
//!
//! Each scenario runs the workload, injects one fault, heals it, and then asserts that within
//! the stated staleness bound ([`BOUND`], 2 s; docs/architecture.md) every replica serves exactly
//! what the model says, every replica agrees, and health is `SERVING` again (`""` and
//! `tiercache.redis`); it then writes again and checks again. The whole test process must see no
//! panic, and no call may fail with anything but `UNAVAILABLE`.
//!
//! **The model.** Each key may hold a set of allowed values. An acknowledged Set or Delete makes
//! it exactly that value; an acknowledged InvalidateTags hides every key with that tag (each key
//! carries one tag, `t<i % 4>`), an acknowledged FlushNamespace every key. An operation that failed
//! is *unknown*: either outcome is allowed for the keys it names until they are written again,
//! and once the replicas converge the model takes what they serve (they must agree). What Redis
//! itself loses is taken out of the model, and each scenario says what that is: nothing for
//! `DEBUG SLEEP`, a restart with AOF (`appendfsync always`), `CLIENT KILL`, a blackholed
//! subscription, connection resets and a promotion of a caught-up replica; everything for
//! `FLUSHALL` and a restart without persistence; every write after the replica stopped
//! replicating for a promotion of a lagging replica.
//!
//! Every server reaches Redis through its own [`Proxy`], which is how connections are reset,
//! blackholed and moved to a promoted replica. A failure names the phase, the replica, the key,
//! what the model allows and what was served, with the key's recent history; the seed of the
//! operation sequence is printed (`TIERCACHE_FAULTS_SEED` replays it).
//!
//! `TIERCACHE_FAULTS_ROUNDS` (default 1) repeats each fault that many times in one fleet;
//! `make faults` runs the long version.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use tiercache_server::config::{Config, RedisConfig};
use tiercache_testkit::proxy::{ConnectionKind, Direction, Target};
use tiercache_testkit::rpc::CacheClient;
use tiercache_testkit::{pb, req, wait_for, Fleet, FleetBuilder, Proxy, RedisServer};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Replicas in every fleet.
const REPLICAS: usize = 3;
/// Keys the workload touches.
const KEYS: usize = 24;
/// Tags: key `i` carries tag `t<i % TAGS>`.
const TAGS: usize = 4;
/// The staleness bound after a fault heals (docs/architecture.md).
const BOUND: Duration = Duration::from_secs(2);
/// Operations per workload phase.
const OPS: usize = 30;
/// Entries outlive any run of the suite, so expiry never changes what the model says.
const TTL: Duration = Duration::from_secs(3600);
/// How long convergence must hold once reached.
const HOLD: Duration = Duration::from_millis(300);
/// How long Redis stays down in the SIGKILL scenarios (calls go on meanwhile).
const OUTAGE: Duration = Duration::from_millis(1500);
/// How often convergence is polled.
const POLL: Duration = Duration::from_millis(20);

/// How many times each scenario injects its fault (`TIERCACHE_FAULTS_ROUNDS`, default 1).
fn rounds() -> usize {
    std::env::var("TIERCACHE_FAULTS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1)
}

fn key(i: usize) -> String {
    format!("k{i:02}")
}

fn tag(t: usize) -> String {
    format!("t{t}")
}

/// Panics anywhere in the process (server tasks included), counted by a hook installed once.
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
}

/// xorshift64*: a reproducible operation sequence without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn seed() -> u64 {
    std::env::var("TIERCACHE_FAULTS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        })
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Set(usize),
    Delete(usize),
    InvalidateTag(usize),
    Flush,
    Get(usize),
}

/// What each key may hold, and what happened to it (for failure messages).
#[derive(Debug, Clone)]
struct Model {
    /// Per key: the values it may hold (`None`: absent or hidden).
    allowed: Vec<Vec<Option<String>>>,
}

impl Model {
    fn new() -> Self {
        Self {
            allowed: vec![vec![None]; KEYS],
        }
    }

    fn exact(&mut self, k: usize, v: Option<String>) {
        self.allowed[k] = vec![v];
    }

    fn maybe(&mut self, k: usize, v: Option<String>) {
        if !self.allowed[k].contains(&v) {
            self.allowed[k].push(v);
        }
    }

    /// Redis lost everything (FLUSHALL, a restart without persistence).
    fn lose_everything(&mut self) {
        for k in 0..KEYS {
            self.exact(k, None);
        }
    }
}

/// The fleet, its clients, the model and what the run saw.
struct Harness {
    fleet: Fleet,
    clients: Vec<CacheClient>,
    model: Model,
    rng: Rng,
    /// Makes every written value unique.
    counter: usize,
    /// Per key: the values ever sent for it (a Get may serve only these, or nothing).
    written: Vec<Vec<String>>,
    /// Per key: its recent operations, for failure messages.
    log: Vec<Vec<String>>,
    /// Failed calls by status code.
    failures: BTreeMap<String, usize>,
    /// Failures with a code other than UNAVAILABLE.
    unexpected: Vec<String>,
    /// How long each convergence took.
    converged: Vec<(String, Duration)>,
    ops: usize,
}

impl Harness {
    /// Three replicas, each through its own proxy, with the production Redis timeouts (1 s
    /// response, 1 s connect): a fault trips degraded mode as it would in production.
    async fn start() -> Self {
        Self::start_with_redis(&[]).await
    }

    /// As [`Harness::start`], with `redis_args` for the fleet's Redis.
    async fn start_with_redis(redis_args: &[&str]) -> Self {
        count_panics();
        let seed = seed();
        eprintln!(
            "TIERCACHE_FAULTS_SEED={seed} TIERCACHE_FAULTS_ROUNDS={}",
            rounds()
        );
        let config = Config {
            redis: Some(RedisConfig {
                connect_timeout: Duration::from_secs(1),
                response_timeout: Duration::from_secs(1),
                ..RedisConfig::new("redis://set-by-the-fleet")
            }),
            ..Config::default()
        };
        let fleet = FleetBuilder::redis(REPLICAS)
            .config(config)
            .through_proxies()
            .redis_args(redis_args)
            .start()
            .await;
        let clients = (0..REPLICAS).map(|i| fleet.cache(i)).collect();
        Self {
            fleet,
            clients,
            model: Model::new(),
            rng: Rng(seed),
            counter: 0,
            written: vec![Vec::new(); KEYS],
            log: vec![Vec::new(); KEYS],
            failures: BTreeMap::new(),
            unexpected: Vec::new(),
            converged: Vec::new(),
            ops: 0,
        }
    }

    fn redis(&mut self) -> &mut RedisServer {
        self.fleet.redis.as_mut().expect("a fleet on Redis")
    }

    fn note(&mut self, k: usize, what: String) {
        let log = &mut self.log[k];
        log.push(what);
        if log.len() > 8 {
            log.remove(0);
        }
    }

    fn random_op(&mut self) -> Op {
        let k = self.rng.below(KEYS);
        match self.rng.below(100) {
            0..=44 => Op::Set(k),
            45..=59 => Op::Delete(k),
            60..=66 => Op::InvalidateTag(k % TAGS),
            67..=68 => Op::Flush,
            _ => Op::Get(k),
        }
    }

    /// Runs `n` random operations, each on a random replica.
    async fn ops(&mut self, n: usize) {
        for _ in 0..n {
            let op = self.random_op();
            let r = self.rng.below(REPLICAS);
            self.op(r, op).await;
        }
    }

    /// Runs random operations for `d`, pausing a little between them.
    async fn ops_for(&mut self, d: Duration) {
        let until = Instant::now() + d;
        self.ops_while(usize::MAX, || Instant::now() < until).await;
    }

    /// Runs random operations while `fault_lasts` (at most `max`), pausing a little between
    /// them.
    async fn ops_while(&mut self, max: usize, mut fault_lasts: impl FnMut() -> bool) {
        for _ in 0..max {
            if !fault_lasts() {
                return;
            }
            self.ops(1).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn failed(&mut self, r: usize, what: &str, status: &tonic::Status) {
        *self
            .failures
            .entry(format!("{:?}", status.code()))
            .or_default() += 1;
        if status.code() != Code::Unavailable {
            self.unexpected
                .push(format!("replica {r}: {what}: {status:?}"));
        }
    }

    async fn op(&mut self, r: usize, op: Op) {
        self.ops += 1;
        let mut c = self.clients[r].clone();
        match op {
            Op::Set(k) => {
                self.counter += 1;
                let v = format!("{}-v{}", key(k), self.counter);
                self.written[k].push(v.clone());
                let request = pb::SetRequest {
                    tags: vec![tag(k % TAGS)],
                    ttl: req::duration(TTL),
                    ..req::set(&key(k), &v)
                };
                match c.set(request).await {
                    Ok(response) => {
                        let outcome = response.into_inner().outcome();
                        assert_eq!(outcome, pb::SetOutcome::Stored, "replica {r}: Set {v}");
                        self.model.exact(k, Some(v.clone()));
                        self.note(k, format!("set {v} on {r}: ok"));
                    }
                    Err(s) => {
                        self.failed(r, &format!("Set {v}"), &s);
                        self.model.maybe(k, Some(v.clone()));
                        self.note(k, format!("set {v} on {r}: {:?}", s.code()));
                    }
                }
            }
            Op::Delete(k) => match c.delete(req::delete(&key(k))).await {
                Ok(_) => {
                    self.model.exact(k, None);
                    self.note(k, format!("delete on {r}: ok"));
                }
                Err(s) => {
                    self.failed(r, &format!("Delete {}", key(k)), &s);
                    self.model.maybe(k, None);
                    self.note(k, format!("delete on {r}: {:?}", s.code()));
                }
            },
            Op::InvalidateTag(t) => {
                let result = c.invalidate_tags(req::invalidate_tags(&[&tag(t)])).await;
                if let Err(s) = &result {
                    self.failed(r, &format!("InvalidateTags {}", tag(t)), s);
                }
                for k in (t..KEYS).step_by(TAGS) {
                    match &result {
                        Ok(_) => self.model.exact(k, None),
                        Err(_) => self.model.maybe(k, None),
                    }
                    let outcome = result
                        .as_ref()
                        .map_or_else(|s| format!("{:?}", s.code()), |_| "ok".into());
                    self.note(k, format!("invalidate {} on {r}: {outcome}", tag(t)));
                }
            }
            Op::Flush => {
                let result = c.flush_namespace(req::flush()).await;
                if let Err(s) = &result {
                    self.failed(r, "FlushNamespace", s);
                }
                for k in 0..KEYS {
                    match &result {
                        Ok(_) => self.model.exact(k, None),
                        Err(_) => self.model.maybe(k, None),
                    }
                    let outcome = result
                        .as_ref()
                        .map_or_else(|s| format!("{:?}", s.code()), |_| "ok".into());
                    self.note(k, format!("flush on {r}: {outcome}"));
                }
            }
            Op::Get(k) => match c.get(req::get(&key(k))).await {
                Ok(response) => {
                    let served = served(response.into_inner());
                    // Between faults a replica may lag by an event in flight, so only sanity is
                    // checked here: a value ever sent for this key, or nothing.
                    if let Some(v) = &served {
                        assert!(
                            self.written[k].contains(v),
                            "replica {r} served {v:?} for {}, a value never written to it",
                            key(k)
                        );
                    }
                }
                Err(s) => self.failed(r, &format!("Get {}", key(k)), &s),
            },
        }
    }

    /// What every replica serves for every key, or why it could not be read.
    async fn snapshot(&self) -> Vec<Result<Vec<Option<String>>, String>> {
        let mut out = Vec::new();
        for (r, c) in self.clients.iter().enumerate() {
            let mut c = c.clone();
            let request = pb::GetManyRequest {
                namespace: req::NAMESPACE.into(),
                keys: (0..KEYS).map(key).collect(),
                fresh_only: false,
            };
            out.push(match c.get_many(request).await {
                Ok(response) => Ok(response
                    .into_inner()
                    .results
                    .into_iter()
                    .map(served)
                    .collect()),
                Err(s) => Err(format!("replica {r}: GetMany failed: {s:?}")),
            });
        }
        out
    }

    /// Everything that differs from the model now: one line per problem.
    async fn mismatches(&self) -> (Vec<String>, Vec<Vec<Option<String>>>) {
        let mut problems = Vec::new();
        for r in 0..REPLICAS {
            for service in ["", "tiercache.redis"] {
                let status = health(&self.fleet, r, service).await;
                if status != "Serving" {
                    problems.push(format!("replica {r}: health {service:?} is {status}"));
                }
            }
        }
        let snapshot = self.snapshot().await;
        let mut served = Vec::new();
        for s in snapshot {
            match s {
                Ok(values) => served.push(values),
                Err(e) => problems.push(e),
            }
        }
        if served.len() < REPLICAS {
            return (problems, served);
        }
        for k in 0..KEYS {
            let allowed = &self.model.allowed[k];
            for (r, values) in served.iter().enumerate() {
                if !allowed.contains(&values[k]) {
                    problems.push(format!(
                        "replica {r}, key {}: served {:?}, the model allows {:?}; history: {:?}",
                        key(k),
                        values[k],
                        allowed,
                        self.log[k]
                    ));
                }
            }
            let first = &served[0][k];
            if served.iter().any(|v| &v[k] != first) {
                let all: Vec<_> = served.iter().map(|v| v[k].clone()).collect();
                problems.push(format!(
                    "key {}: replicas disagree, serving {all:?}; history: {:?}",
                    key(k),
                    self.log[k]
                ));
            }
        }
        (problems, served)
    }

    /// Asserts that within [`BOUND`] every replica serves what the model allows, all agree and
    /// all are healthy, and that this holds for [`HOLD`] (a replica that has not yet noticed the
    /// fault may look right for a moment); then the model takes what they serve (unknowns
    /// resolved).
    async fn converge(&mut self, phase: &str) {
        let started = Instant::now();
        let mut since: Option<Instant> = None;
        loop {
            let (problems, served) = self.mismatches().await;
            if problems.is_empty() {
                let first = *since.get_or_insert_with(Instant::now);
                if first.elapsed() >= HOLD {
                    for (k, value) in served[0].iter().enumerate() {
                        self.model.exact(k, value.clone());
                    }
                    let took = first - started;
                    eprintln!("{phase}: converged in {took:?}");
                    self.converged.push((phase.to_string(), took));
                    return;
                }
            } else {
                since = None;
                if started.elapsed() >= BOUND {
                    let shown = problems.len().min(20);
                    panic!(
                        "{phase}: not converged within {BOUND:?} (and held for {HOLD:?}); \
                         {} problem(s), first {shown}:\n  {}",
                        problems.len(),
                        problems[..shown].join("\n  ")
                    );
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Asserts what the whole run must not have shown: a panic, or a failure other than
    /// UNAVAILABLE; prints a summary.
    fn finish(self) {
        eprintln!(
            "{} operations; failures by code: {:?}; convergence: {:?}",
            self.ops, self.failures, self.converged
        );
        assert!(
            self.unexpected.is_empty(),
            "calls failed with something other than UNAVAILABLE:\n  {}",
            self.unexpected.join("\n  ")
        );
        assert_eq!(
            PANICS.load(Ordering::SeqCst),
            0,
            "a thread or task panicked during the run (see its message above)"
        );
    }
}

fn served(r: pb::GetResponse) -> Option<String> {
    match r.outcome() {
        pb::GetOutcome::Hit => r
            .entry
            .map(|e| String::from_utf8_lossy(&e.value).into_owned()),
        _ => None,
    }
}

async fn health(fleet: &Fleet, r: usize, service: &str) -> String {
    let request = HealthCheckRequest {
        service: service.into(),
    };
    match HealthClient::new(fleet.channel(r)).check(request).await {
        Ok(response) => match response.into_inner().status() {
            ServingStatus::Serving => "Serving".into(),
            other => format!("{other:?}"),
        },
        Err(s) => format!("unanswered ({:?})", s.code()),
    }
}

/// A connection straight to `redis`, with no response timeout (for DEBUG SLEEP and WAIT).
async fn direct(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    redis
        .client()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("cannot connect to redis-server")
}

/// Kills Redis like a crash (SIGKILL) and waits for it to exit.
fn sigkill(redis: &mut RedisServer) {
    tokio::task::block_in_place(|| redis.stop());
}

/// Starts Redis again on its port and waits until it answers PING.
fn restart(redis: &mut RedisServer) {
    tokio::task::block_in_place(|| redis.restart());
}

/// Runs the workload, the fault, and the checks after it, `rounds()` times. `fault` injects the
/// fault, runs operations during it, heals it and updates the model with what Redis lost.
macro_rules! rounds {
    ($h:ident, $fault:block) => {
        for round in 0..rounds() {
            $h.ops(OPS).await;
            $h.converge(&format!("round {round}: before the fault")).await;
            $fault
            $h.converge(&format!("round {round}: after the fault healed")).await;
            $h.ops(OPS).await;
            $h.converge(&format!("round {round}: after writes that followed the fault"))
                .await;
        }
    };
}

/// `DEBUG SLEEP` 2 s (past the 1 s response timeout): calls time out, replicas go degraded,
/// mutations are refused; Redis loses nothing, so after it wakes every acknowledged write is
/// served and the refused or timed-out ones are unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_sleep_then_every_replica_serves_the_acknowledged_writes() {
    let mut h = Harness::start().await;
    rounds!(h, {
        let sleeping = h.redis().debug_sleep(Duration::from_secs(2)).await;
        h.ops_while(400, || !sleeping.is_finished()).await;
        sleeping.await.unwrap();
    });
    h.finish();
}

/// SIGKILL, 1.5 s down with calls going on, restart with AOF (`appendfsync always`): Redis loses
/// nothing acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_with_aof_loses_no_acknowledged_write() {
    let mut h = Harness::start_with_redis(RedisServer::AOF).await;
    rounds!(h, {
        sigkill(h.redis());
        h.ops_for(OUTAGE).await;
        restart(h.redis());
    });
    h.finish();
}

/// SIGKILL, 1.5 s down with calls going on, restart without persistence: Redis comes back empty, so the model loses
/// everything; the replicas must serve the empty Redis (no old L1 copy) and the new writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_without_persistence_serves_the_empty_redis_and_new_writes() {
    let mut h = Harness::start().await;
    rounds!(h, {
        sigkill(h.redis());
        h.ops_for(OUTAGE).await;
        restart(h.redis());
        h.model.lose_everything();
    });
    h.finish();
}

/// `FLUSHALL`: Redis loses everything, including the namespace sequence, without any
/// connection dropping; the replicas must serve the empty Redis and then the new writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_then_every_replica_serves_the_emptied_redis_and_new_writes() {
    let mut h = Harness::start().await;
    rounds!(h, {
        let mut conn = direct(h.redis()).await;
        let () = redis::cmd("FLUSHALL")
            .query_async(&mut conn)
            .await
            .expect("FLUSHALL");
        h.model.lose_everything();
    });
    h.finish();
}

/// `CLIENT KILL TYPE pubsub`: every replica's subscription drops; Redis loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_kill_pubsub_then_every_replica_serves_the_model() {
    let mut h = Harness::start().await;
    rounds!(h, {
        let killed = h.redis().kill_pubsub_clients().await;
        assert!(killed >= REPLICAS as i64, "killed {killed} subscriptions");
        h.ops(OPS).await;
    });
    h.finish();
}

/// One replica's subscription silently dies (what Redis sends it is dropped; nobody is told,
/// as after a NAT or VIP drop) while writes go on through every replica. Redis loses nothing;
/// the replica must notice and serve the model within the bound after the path heals (its old
/// subscription stays dead: only a health check can tell).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_subscription_of_one_replica_is_noticed_and_it_serves_the_model() {
    let mut h = Harness::start().await;
    rounds!(h, {
        let proxy = h.fleet.proxy(1);
        let subscription = *proxy
            .live_connections(ConnectionKind::PubSub)
            .last()
            .expect("replica 1 has a subscription");
        proxy.blackhole(Target::Connection(subscription), Direction::ToClient);
        h.ops(OPS).await;
        h.fleet.proxy(1).heal();
    });
    h.finish();
}

/// Every Redis connection of every replica is reset at once (a network blip): Redis loses
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_resets_then_every_replica_serves_the_model() {
    let mut h = Harness::start().await;
    rounds!(h, {
        for p in &h.fleet.proxies {
            p.reset(Target::All);
        }
        h.ops(OPS / 2).await;
    });
    h.finish();
}

/// Starts a replica of `primary` whose replication link runs through a proxy (to cut it), and
/// waits until it has synced.
async fn replica_of(primary: &RedisServer) -> (RedisServer, Proxy) {
    let link = Proxy::start(primary.addr()).await;
    let port = link.addr().port().to_string();
    let replica = tokio::task::block_in_place(|| {
        RedisServer::start_with(&["--replicaof", "127.0.0.1", &port])
    });
    let conn = direct(&replica).await;
    wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
        let mut conn = conn.clone();
        async move {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            info.contains("master_link_status:up")
        }
    })
    .await
    .expect("the replica syncs with its primary");
    (replica, link)
}

/// Waits until the replica has acknowledged every write the primary took (`WAIT 1`).
async fn replicated(primary: &RedisServer) {
    let mut conn = direct(primary).await;
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query_async(&mut conn)
        .await
        .expect("WAIT");
    assert_eq!(acked, 1, "the replica acknowledged every write");
}

/// The primary dies (SIGKILL), the replica is promoted (`REPLICAOF NO ONE`) and every server's
/// proxy is pointed at it, its connections reset (a failover behind a stable address). With
/// `lagging`, the replication link was cut after the last `WAIT` and more writes were
/// acknowledged by the primary alone: Redis lost exactly those, so the model goes back to what
/// it was at the `WAIT`.
async fn promotion(lagging: bool) {
    let mut h = Harness::start().await;
    for round in 0..rounds() {
        let (replica, link) = replica_of(h.fleet.redis_server()).await;
        h.ops(OPS).await;
        h.converge(&format!("round {round}: before the fault"))
            .await;
        replicated(h.fleet.redis_server()).await;
        let kept = h.model.clone();
        if lagging {
            link.blackhole(Target::All, Direction::Both);
            h.ops(OPS).await;
        }
        sigkill(h.redis());
        let mut conn = direct(&replica).await;
        let () = redis::cmd("REPLICAOF")
            .arg("NO")
            .arg("ONE")
            .query_async(&mut conn)
            .await
            .expect("REPLICAOF NO ONE");
        for p in &h.fleet.proxies {
            p.set_upstream(replica.addr());
            p.reset(Target::All);
        }
        // The promoted replica is the fleet's Redis from now on; the old primary is gone.
        h.fleet.redis = Some(replica);
        drop(link);
        if lagging {
            h.model = kept;
        }
        h.converge(&format!("round {round}: after the promotion"))
            .await;
        h.ops(OPS).await;
        h.converge(&format!(
            "round {round}: after writes that followed the promotion"
        ))
        .await;
    }
    h.finish();
}

/// A promotion of a replica that had every write: Redis loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_of_a_caught_up_replica_loses_nothing() {
    promotion(false).await;
}

/// A promotion of a replica that missed the last writes: the sequence goes backwards; every
/// replica must serve what the new primary kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_of_a_lagging_replica_serves_what_it_kept() {
    promotion(true).await;
}
