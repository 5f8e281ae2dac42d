//! A TCP proxy between servers and Redis that injects network faults: delay, blackhole, reset.
//!
//! A [`Proxy`] listens on `127.0.0.1:<free port>` and forwards every connection it accepts to its
//! upstream (a Redis). Faults are rules over connections ([`Target`]) and directions
//! ([`Direction`]); each rule applies to the bytes forwarded after it is set, on connections
//! open now and those accepted later:
//!
//! - [`Proxy::delay`]: every chunk in that direction waits before it is forwarded (order kept).
//! - [`Proxy::blackhole`]: every chunk in that direction is read and dropped. The connection
//!   stays open on both sides and nobody is told, like a path that silently died (a NAT entry
//!   dropped, a VIP that failed over). Bytes were lost, so the stream can never be resumed: once
//!   [`Proxy::heal`] ends the fault such a connection stays **dead** (open, everything dropped
//!   both ways) until a peer closes it or [`Proxy::reset`] does. A client that never checks its
//!   connection (no PING with a timeout) keeps it forever, which is the point.
//! - [`Proxy::reset`]: closes the connections at once, on both sides (with `SO_LINGER` 0, so a
//!   reset rather than a polite close where the platform allows).
//! - [`Proxy::set_upstream`]: where new connections go (a failover behind a stable address);
//!   existing ones stay on the old upstream until reset.
//!
//! TCP keepalive cannot see these faults: each side talks TCP to the proxy's own sockets, which
//! stay healthy. Only application-level checks (a PING that must answer in time) detect them.
//!
//! **Which connection is the subscriber.** The proxy reads what the client sends: a connection
//! whose first 64 KiB carry a `SUBSCRIBE`, `PSUBSCRIBE` or `SSUBSCRIBE` command is a
//! [`ConnectionKind::PubSub`] connection from then on; every other one is
//! [`ConnectionKind::Commands`]. [`Target::PubSub`] therefore names tiercache's event
//! subscription, and [`Target::Commands`] its command connection(s).
//!
//! ```no_run
//! # async fn example() {
//! use tiercache_testkit::proxy::{Direction, Proxy, Target};
//! use tiercache_testkit::RedisServer;
//!
//! let redis = RedisServer::start();
//! let proxy = Proxy::start(redis.addr()).await;
//! // Point a server at proxy.url(), then: the subscription hears nothing any more.
//! proxy.blackhole(Target::PubSub, Direction::ToClient);
//! proxy.heal(); // the rule is gone; that subscription stays dead
//! # }
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How much of what a client sends first is searched for a subscribe command.
const SNIFF_BYTES: u64 = 64 * 1024;
/// Size of the read buffer of each direction.
const CHUNK: usize = 16 * 1024;
/// What identifies a subscribe command on the wire: the end of the bulk string naming it
/// (`$10\r\nPSUBSCRIBE\r\n`), case-insensitive; `SUBSCRIBE` and `SSUBSCRIBE` end the same way.
const SUBSCRIBE: &[u8] = b"SUBSCRIBE\r\n";

/// Which way bytes flow through a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the client (a tiercache server) to the upstream (Redis): commands, PINGs.
    ToUpstream,
    /// From the upstream to the client: replies and pub/sub messages.
    ToClient,
    /// Both ways.
    Both,
}

impl Direction {
    fn covers(self, flow: Direction) -> bool {
        self == Direction::Both || self == flow
    }
}

/// Which connections a fault applies to, including connections accepted after it was set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Every connection.
    All,
    /// Connections that subscribed (see the module docs): tiercache's event subscription.
    PubSub,
    /// Every connection that has not subscribed: the command connections.
    Commands,
    /// One connection, by the id [`Proxy::connections`] reports (ids count accepts from 1).
    Connection(u64),
}

/// What the proxy has seen a connection do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionKind {
    /// No subscribe command seen (yet).
    Commands,
    /// It sent a subscribe command.
    PubSub,
}

/// One open connection through the proxy, as [`Proxy::connections`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The connection's id: accepts are numbered from 1 in order.
    pub id: u64,
    /// What it was seen to do.
    pub kind: ConnectionKind,
    /// The upstream it was connected to when accepted.
    pub upstream: SocketAddr,
    /// Bytes forwarded from the client to the upstream.
    pub to_upstream: u64,
    /// Bytes forwarded from the upstream to the client.
    pub to_client: u64,
    /// Whether bytes were dropped on it by a blackhole (it is or will be dead).
    pub lost_bytes: bool,
    /// Whether it is dead: a blackhole dropped bytes and the fault was healed since.
    pub dead: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    Delay(Duration),
    Blackhole,
}

#[derive(Debug, Clone, Copy)]
struct Rule {
    target: Target,
    direction: Direction,
    fault: Fault,
}

/// A TCP proxy on `127.0.0.1:<free port>` in front of one upstream; see the module docs.
///
/// It runs on the tokio runtime that started it. Dropping it stops accepting and closes every
/// connection through it.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.addr)
            .field("upstream", &self.upstream())
            .field("rules", &*lock(&self.shared.rules))
            .finish()
    }
}

struct Shared {
    upstream: Mutex<SocketAddr>,
    rules: Mutex<Vec<Rule>>,
    conns: Mutex<Vec<Arc<Conn>>>,
    next_id: AtomicU64,
}

struct Conn {
    id: u64,
    upstream: SocketAddr,
    pubsub: AtomicBool,
    lost_bytes: AtomicBool,
    dead: AtomicBool,
    to_upstream: AtomicU64,
    to_client: AtomicU64,
    /// The client bytes searched so far, and the tail kept to match across chunks.
    sniff: Mutex<(u64, Vec<u8>)>,
    /// `true`: close both sides now.
    close: watch::Sender<bool>,
}

impl Conn {
    fn kind(&self) -> ConnectionKind {
        if self.pubsub.load(Ordering::SeqCst) {
            ConnectionKind::PubSub
        } else {
            ConnectionKind::Commands
        }
    }

    fn matches(&self, target: Target) -> bool {
        match target {
            Target::All => true,
            Target::PubSub => self.kind() == ConnectionKind::PubSub,
            Target::Commands => self.kind() == ConnectionKind::Commands,
            Target::Connection(id) => self.id == id,
        }
    }

    fn info(&self) -> ConnectionInfo {
        ConnectionInfo {
            id: self.id,
            kind: self.kind(),
            upstream: self.upstream,
            to_upstream: self.to_upstream.load(Ordering::SeqCst),
            to_client: self.to_client.load(Ordering::SeqCst),
            lost_bytes: self.lost_bytes.load(Ordering::SeqCst),
            dead: self.dead.load(Ordering::SeqCst),
        }
    }

    /// Looks for a subscribe command in what the client sent.
    fn sniff(&self, chunk: &[u8]) {
        if self.pubsub.load(Ordering::SeqCst) {
            return;
        }
        let mut sniff = lock(&self.sniff);
        let (seen, tail) = &mut *sniff;
        if *seen >= SNIFF_BYTES {
            return;
        }
        *seen += chunk.len() as u64;
        let mut window = std::mem::take(tail);
        window.extend_from_slice(chunk);
        let found = window
            .windows(SUBSCRIBE.len())
            .any(|w| w.eq_ignore_ascii_case(SUBSCRIBE));
        if found {
            self.pubsub.store(true, Ordering::SeqCst);
        } else {
            let keep = window.len().saturating_sub(SUBSCRIBE.len());
            *tail = window.split_off(keep);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not turn every later call into a second panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Proxy {
    /// Starts a proxy to `upstream` on a free port of `127.0.0.1`.
    ///
    /// # Panics
    ///
    /// Panics if no port can be bound.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("cannot bind 127.0.0.1:0 for the proxy");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let shared = Arc::new(Shared {
            upstream: Mutex::new(upstream),
            rules: Mutex::new(Vec::new()),
            conns: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Self {
            addr,
            shared,
            accept,
        }
    }

    /// Returns the address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Returns the Redis URL of the proxy, `redis://127.0.0.1:<port>`, for a server's config.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Returns where new connections go.
    pub fn upstream(&self) -> SocketAddr {
        *lock(&self.shared.upstream)
    }

    /// Sends new connections to `upstream` from now on. Open connections stay where they are;
    /// [`Proxy::reset`] them to move every client over (as a failover behind a VIP does).
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *lock(&self.shared.upstream) = upstream;
    }

    /// Delays every chunk flowing in `direction` on the `target` connections by `delay`,
    /// replacing an earlier delay of the same target and direction.
    pub fn delay(&self, target: Target, direction: Direction, delay: Duration) {
        self.add_rule(Rule {
            target,
            direction,
            fault: Fault::Delay(delay),
        });
    }

    /// Drops every chunk flowing in `direction` on the `target` connections, silently: nobody
    /// is told, and a connection that lost bytes stays dead after [`Proxy::heal`].
    pub fn blackhole(&self, target: Target, direction: Direction) {
        self.add_rule(Rule {
            target,
            direction,
            fault: Fault::Blackhole,
        });
    }

    fn add_rule(&self, rule: Rule) {
        let mut rules = lock(&self.shared.rules);
        rules.retain(|r| {
            !(r.target == rule.target
                && r.direction == rule.direction
                && std::mem::discriminant(&r.fault) == std::mem::discriminant(&rule.fault))
        });
        rules.push(rule);
    }

    /// Ends every delay and blackhole. Connections that lost bytes to a blackhole become dead
    /// (see the module docs); every other connection flows normally again.
    pub fn heal(&self) {
        let mut rules = lock(&self.shared.rules);
        rules.clear();
        for c in lock(&self.shared.conns).iter() {
            if c.lost_bytes.load(Ordering::SeqCst) {
                c.dead.store(true, Ordering::SeqCst);
            }
        }
    }

    /// Closes the open `target` connections at once, on both sides, and returns how many.
    pub fn reset(&self, target: Target) -> usize {
        let conns = lock(&self.shared.conns);
        let mut n = 0;
        for c in conns.iter().filter(|c| c.matches(target)) {
            c.close.send_replace(true);
            n += 1;
        }
        n
    }

    /// Returns the open connections, oldest first.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        lock(&self.shared.conns).iter().map(|c| c.info()).collect()
    }

    /// Returns the ids of the open connections of `kind` that are not dead, oldest first.
    pub fn live_connections(&self, kind: ConnectionKind) -> Vec<u64> {
        self.connections()
            .into_iter()
            .filter(|c| c.kind == kind && !c.dead)
            .map(|c| c.id)
            .collect()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.reset(Target::All);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of descriptors or similar: try again shortly rather than spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let upstream = *lock(&shared.upstream);
        let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(serve(shared.clone(), client, upstream, id));
    }
}

/// Connects the client to the upstream and forwards both ways until both directions end or the
/// connection is reset. An upstream that refuses closes the client at once, like a refusal.
async fn serve(shared: Arc<Shared>, client: TcpStream, upstream_addr: SocketAddr, id: u64) {
    let Ok(upstream) = TcpStream::connect(upstream_addr).await else {
        return;
    };
    for s in [&client, &upstream] {
        let _ = s.set_nodelay(true);
        // Closing a socket with SO_LINGER 0 sends a reset: what `reset` promises.
        #[allow(deprecated)]
        let _ = s.set_linger(Some(Duration::ZERO));
    }
    let (close, _) = watch::channel(false);
    let conn = Arc::new(Conn {
        id,
        upstream: upstream_addr,
        pubsub: AtomicBool::new(false),
        lost_bytes: AtomicBool::new(false),
        dead: AtomicBool::new(false),
        to_upstream: AtomicU64::new(0),
        to_client: AtomicU64::new(0),
        sniff: Mutex::new((0, Vec::new())),
        close,
    });
    lock(&shared.conns).push(conn.clone());
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let up = pump(
        shared.clone(),
        conn.clone(),
        Direction::ToUpstream,
        client_read,
        upstream_write,
    );
    let down = pump(
        shared.clone(),
        conn.clone(),
        Direction::ToClient,
        upstream_read,
        client_write,
    );
    tokio::join!(up, down);
    lock(&shared.conns).retain(|c| c.id != id);
}

/// Forwards one direction. Returns when the source ends (then half-closes the destination), or
/// when the connection is reset.
async fn pump(
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    flow: Direction,
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
) {
    let mut close = conn.close.subscribe();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = tokio::select! {
            _ = close.wait_for(|c| *c) => return,
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
        };
        let chunk = &buf[..n];
        if flow == Direction::ToUpstream {
            conn.sniff(chunk);
        }
        if conn.dead.load(Ordering::SeqCst) {
            continue;
        }
        let fault = {
            let rules = lock(&shared.rules);
            // A blackhole wins over a delay; among delays, the longest.
            let mut fault = None;
            for r in rules
                .iter()
                .filter(|r| r.direction.covers(flow) && conn.matches(r.target))
            {
                fault = match (fault, r.fault) {
                    (Some(Fault::Blackhole), _) | (_, Fault::Blackhole) => Some(Fault::Blackhole),
                    (Some(Fault::Delay(a)), Fault::Delay(b)) => Some(Fault::Delay(a.max(b))),
                    (None, f) => Some(f),
                };
            }
            fault
        };
        match fault {
            Some(Fault::Blackhole) => {
                conn.lost_bytes.store(true, Ordering::SeqCst);
                continue;
            }
            Some(Fault::Delay(d)) => {
                tokio::select! {
                    _ = close.wait_for(|c| *c) => return,
                    () = tokio::time::sleep(d) => {}
                }
            }
            None => {}
        }
        let written = tokio::select! {
            _ = close.wait_for(|c| *c) => return,
            r = to.write_all(chunk) => r,
        };
        if written.is_err() {
            break;
        }
        let counter = match flow {
            Direction::ToUpstream => &conn.to_upstream,
            _ => &conn.to_client,
        };
        counter.fetch_add(n as u64, Ordering::SeqCst);
    }
    // The source ended. A dead connection stays open toward its client (nobody is told)
    // until the client closes it or it is reset; when the client closes, so does the upstream.
    // A live one is half-closed so the peer sees the end, as a direct connection would.
    if conn.dead.load(Ordering::SeqCst) {
        if flow == Direction::ToClient {
            let _ = close.wait_for(|c| *c).await;
        } else {
            conn.close.send_replace(true);
        }
    } else {
        let _ = to.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::RedisServer;

    /// A raw RESP client, so the tests see exactly the bytes the proxy forwards.
    struct Raw(TcpStream);

    impl Raw {
        async fn connect(addr: SocketAddr) -> Self {
            Self(TcpStream::connect(addr).await.unwrap())
        }

        async fn send(&mut self, args: &[&str]) {
            let mut out = format!("*{}\r\n", args.len());
            for a in args {
                out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
            }
            self.0.write_all(out.as_bytes()).await.unwrap();
        }

        /// What arrives within `wait`: `None` for nothing, `Some(empty)` for the end.
        async fn read(&mut self, wait: Duration) -> Option<String> {
            let mut buf = vec![0u8; 4096];
            match tokio::time::timeout(wait, self.0.read(&mut buf)).await {
                Err(_) => None,
                Ok(Ok(n)) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Ok(Err(_)) => Some(String::new()),
            }
        }
    }

    const ANSWER: Duration = Duration::from_secs(5);
    const SILENCE: Duration = Duration::from_millis(300);

    async fn publish(redis: &RedisServer, channel: &str, message: &str) {
        let mut conn = redis
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let _: i64 = redis::cmd("PUBLISH")
            .arg(channel)
            .arg(message)
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    async fn subscribe(proxy: &Proxy) -> Raw {
        let mut sub = Raw::connect(proxy.addr()).await;
        sub.send(&["PSUBSCRIBE", "ev*"]).await;
        let reply = sub.read(ANSWER).await.unwrap();
        assert!(reply.contains("psubscribe"), "{reply:?}");
        sub
    }

    #[tokio::test]
    async fn forwards_both_ways_and_tells_the_subscription_apart() {
        let redis = RedisServer::start();
        let proxy = Proxy::start(redis.addr()).await;
        let mut commands = Raw::connect(proxy.addr()).await;
        commands.send(&["PING"]).await;
        assert_eq!(commands.read(ANSWER).await.as_deref(), Some("+PONG\r\n"));
        let mut sub = subscribe(&proxy).await;

        let conns = proxy.connections();
        let kinds: Vec<_> = conns.iter().map(|c| (c.id, c.kind)).collect();
        assert_eq!(
            kinds,
            [(1, ConnectionKind::Commands), (2, ConnectionKind::PubSub)]
        );
        assert_eq!(proxy.live_connections(ConnectionKind::PubSub), [2]);
        assert!(conns[0].to_upstream > 0 && conns[0].to_client > 0);

        publish(&redis, "ev1", "hello").await;
        assert!(sub.read(ANSWER).await.unwrap().contains("hello"));
    }

    #[tokio::test]
    async fn a_blackholed_subscription_hears_nothing_and_stays_dead_after_heal() {
        let redis = RedisServer::start();
        let proxy = Proxy::start(redis.addr()).await;
        let mut commands = Raw::connect(proxy.addr()).await;
        let mut sub = subscribe(&proxy).await;

        proxy.blackhole(Target::PubSub, Direction::ToClient);
        publish(&redis, "ev1", "lost").await;
        assert_eq!(
            sub.read(SILENCE).await,
            None,
            "nothing arrives, not even an end"
        );
        commands.send(&["PING"]).await;
        assert_eq!(commands.read(ANSWER).await.as_deref(), Some("+PONG\r\n"));

        proxy.heal();
        publish(&redis, "ev1", "after").await;
        assert_eq!(sub.read(SILENCE).await, None, "the subscription stays dead");
        let dead: Vec<_> = proxy.connections().into_iter().filter(|c| c.dead).collect();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].kind, ConnectionKind::PubSub);
        assert!(proxy.live_connections(ConnectionKind::PubSub).is_empty());

        // A new subscription after the heal works.
        let mut fresh = subscribe(&proxy).await;
        publish(&redis, "ev1", "again").await;
        assert!(fresh.read(ANSWER).await.unwrap().contains("again"));
        // Resetting the dead one ends it for its client.
        assert_eq!(proxy.reset(Target::Connection(dead[0].id)), 1);
        assert_eq!(sub.read(ANSWER).await.as_deref(), Some(""));
    }

    #[tokio::test]
    async fn a_blackhole_toward_upstream_drops_commands_of_that_target_only() {
        let redis = RedisServer::start();
        let proxy = Proxy::start(redis.addr()).await;
        let mut commands = Raw::connect(proxy.addr()).await;
        commands.send(&["PING"]).await;
        commands.read(ANSWER).await.unwrap();
        let mut sub = subscribe(&proxy).await;

        proxy.blackhole(Target::Commands, Direction::ToUpstream);
        commands.send(&["PING"]).await;
        assert_eq!(commands.read(SILENCE).await, None);
        publish(&redis, "ev1", "still").await;
        assert!(sub.read(ANSWER).await.unwrap().contains("still"));
        // A connection accepted during the fault is covered too.
        let mut late = Raw::connect(proxy.addr()).await;
        late.send(&["PING"]).await;
        assert_eq!(late.read(SILENCE).await, None);
    }

    #[tokio::test]
    async fn delay_holds_each_chunk_and_heal_ends_it() {
        let redis = RedisServer::start();
        let proxy = Proxy::start(redis.addr()).await;
        let mut c = Raw::connect(proxy.addr()).await;
        proxy.delay(Target::All, Direction::ToClient, Duration::from_millis(200));
        let started = Instant::now();
        c.send(&["PING"]).await;
        assert_eq!(c.read(ANSWER).await.as_deref(), Some("+PONG\r\n"));
        assert!(started.elapsed() >= Duration::from_millis(200));
        proxy.heal();
        c.send(&["PING"]).await;
        assert_eq!(c.read(ANSWER).await.as_deref(), Some("+PONG\r\n"));
        assert!(!proxy.connections()[0].dead, "a delay loses nothing");
    }

    #[tokio::test]
    async fn reset_closes_clients_and_new_connections_go_to_the_new_upstream() {
        let first = RedisServer::start();
        let second = RedisServer::start();
        let proxy = Proxy::start(first.addr()).await;
        let mut c = Raw::connect(proxy.addr()).await;
        c.send(&["SET", "where", "first"]).await;
        assert_eq!(c.read(ANSWER).await.as_deref(), Some("+OK\r\n"));

        proxy.set_upstream(second.addr());
        assert_eq!(proxy.upstream(), second.addr());
        assert_eq!(proxy.reset(Target::All), 1);
        assert_eq!(
            c.read(ANSWER).await.as_deref(),
            Some(""),
            "the client sees the end"
        );

        let mut c = Raw::connect(proxy.addr()).await;
        c.send(&["GET", "where"]).await;
        assert_eq!(c.read(ANSWER).await.as_deref(), Some("$-1\r\n"));
        assert_eq!(proxy.connections().last().unwrap().upstream, second.addr());
    }

    #[tokio::test]
    async fn an_upstream_that_is_down_closes_the_client() {
        let mut redis = RedisServer::start();
        let proxy = Proxy::start(redis.addr()).await;
        redis.stop();
        let mut c = Raw::connect(proxy.addr()).await;
        c.send(&["PING"]).await;
        assert_eq!(c.read(ANSWER).await.as_deref(), Some(""));
    }
}
