//! Several servers for one test: one memory-only server, or replicas sharing one Redis.

use std::time::Duration;

use tiercache_proto::v1::admin_service_client::AdminServiceClient;
use tiercache_proto::v1::cache_service_client::CacheServiceClient;
use tiercache_proto::v1::lock_service_client::LockServiceClient;
use tiercache_server::Config;
use tonic::transport::{Channel, Endpoint};

use crate::proxy::Proxy;
use crate::redis::RedisServer;
use crate::server::{redis_config, TestServer};

/// Servers started for one test, connected channels to them, and the Redis they share.
///
/// Either one memory-only server ([`Fleet::memory`]) or `n` replicas on one fresh
/// [`RedisServer`] with the test timeouts of [`redis_config`] ([`Fleet::redis`]). Every server
/// is a [`TestServer`], so each binds its own gRPC and admin ports and the fleets of tests that
/// run at once never clash. Dropping the fleet stops the servers, then Redis.
pub struct Fleet {
    /// The servers, in start order.
    pub servers: Vec<TestServer>,
    /// Connected channels, round-robin over the servers: channel `i` goes to server
    /// `i % servers.len()`. One per server unless [`FleetBuilder::channels`] asked for more.
    pub channels: Vec<Channel>,
    /// The Redis the replicas share; `None` for a memory-only fleet.
    pub redis: Option<RedisServer>,
    /// With [`FleetBuilder::through_proxies`], one [`Proxy`] per server (`proxies[i]` carries
    /// every Redis connection of `servers[i]`); otherwise empty.
    pub proxies: Vec<Proxy>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("servers", &self.servers)
            .field("channels", &self.channels.len())
            .field("redis", &self.redis)
            .field("proxies", &self.proxies)
            .finish()
    }
}

impl Fleet {
    /// Starts one memory-only server with `Config::default()`.
    pub async fn memory() -> Self {
        FleetBuilder::memory().start().await
    }

    /// Starts a fresh Redis and `replicas` servers on it, with otherwise default config.
    pub async fn redis(replicas: usize) -> Self {
        FleetBuilder::redis(replicas).start().await
    }

    /// Returns channel `i % channels.len()`.
    pub fn channel(&self, i: usize) -> Channel {
        self.channels[i % self.channels.len()].clone()
    }

    /// Returns a CacheService client on channel `i` (round-robin, so over the replicas).
    pub fn cache(&self, i: usize) -> CacheServiceClient<Channel> {
        CacheServiceClient::new(self.channel(i))
    }

    /// Returns an AdminService client on channel `i`.
    pub fn admin(&self, i: usize) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel(i))
    }

    /// Returns a LockService client on channel `i`.
    pub fn locks(&self, i: usize) -> LockServiceClient<Channel> {
        LockServiceClient::new(self.channel(i))
    }

    /// Returns the shared Redis.
    ///
    /// # Panics
    ///
    /// Panics for a memory-only fleet.
    pub fn redis_server(&self) -> &RedisServer {
        self.redis.as_ref().expect("a fleet on Redis")
    }

    /// Returns the proxy in front of server `i`.
    ///
    /// # Panics
    ///
    /// Panics unless the fleet was started [`FleetBuilder::through_proxies`].
    pub fn proxy(&self, i: usize) -> &Proxy {
        assert!(
            !self.proxies.is_empty(),
            "the fleet was not started through_proxies()"
        );
        &self.proxies[i]
    }
}

/// How to start a [`Fleet`]: memory-only or on Redis, the config, how many channels.
#[derive(Debug)]
pub struct FleetBuilder {
    /// `None` for memory-only; otherwise the number of replicas on one Redis.
    replicas: Option<usize>,
    config: Config,
    channels: Option<usize>,
    proxied: bool,
    redis_args: Vec<String>,
}

impl FleetBuilder {
    /// Returns a builder of one memory-only server.
    pub fn memory() -> Self {
        Self {
            replicas: None,
            config: Config::default(),
            channels: None,
            proxied: false,
            redis_args: Vec::new(),
        }
    }

    /// Returns a builder of `replicas` servers on one fresh Redis.
    ///
    /// # Panics
    ///
    /// Panics if `replicas` is 0.
    pub fn redis(replicas: usize) -> Self {
        assert!(replicas > 0, "a fleet needs at least one server");
        Self {
            replicas: Some(replicas),
            ..Self::memory()
        }
    }

    /// Sets every server's config. `listen` and the admin address are replaced by the ports each
    /// server binds. For a fleet on Redis, a `redis` section given here keeps its settings
    /// (timeouts…) and gets the fleet's URL; without one the servers use [`redis_config`]. A
    /// memory-only fleet clears it.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Asks for `n` channels round-robin over the servers instead of one per server: more
    /// connections for tests with many concurrent callers, even on one server.
    ///
    /// # Panics
    ///
    /// Panics if `n` is 0.
    pub fn channels(mut self, n: usize) -> Self {
        assert!(n > 0, "a fleet needs at least one channel");
        self.channels = Some(n);
        self
    }

    /// Puts a [`Proxy`] between each server and Redis (see [`Fleet::proxies`]), so a test can
    /// delay, blackhole or reset one server's Redis connections, or move them to another Redis.
    ///
    /// # Panics
    ///
    /// [`FleetBuilder::start`] panics if the fleet is memory-only.
    pub fn through_proxies(mut self) -> Self {
        self.proxied = true;
        self
    }

    /// Starts the fleet's Redis with `args` after the defaults, as [`RedisServer::start_with`]
    /// does (for example [`RedisServer::AOF`]).
    pub fn redis_args(mut self, args: &[&str]) -> Self {
        self.redis_args = args.iter().map(|a| a.to_string()).collect();
        self
    }

    /// Starts Redis (when asked) and the servers, each ready once it answers its health check,
    /// then connects the channels.
    ///
    /// # Panics
    ///
    /// Panics as [`RedisServer::start`] and [`TestServer::start`] do, or if a channel cannot
    /// connect.
    pub async fn start(self) -> Fleet {
        assert!(
            !self.proxied || self.replicas.is_some(),
            "a memory-only fleet has no Redis to proxy"
        );
        let redis_args: Vec<&str> = self.redis_args.iter().map(String::as_str).collect();
        let redis = self.replicas.map(|_| RedisServer::start_with(&redis_args));
        let mut servers = Vec::new();
        let mut proxies = Vec::new();
        for _ in 0..self.replicas.unwrap_or(1) {
            let url = match &redis {
                Some(r) if self.proxied => {
                    let proxy = Proxy::start(r.addr()).await;
                    let url = proxy.url();
                    proxies.push(proxy);
                    Some(url)
                }
                Some(r) => Some(r.url()),
                None => None,
            };
            let redis_section = url.map(|url| match &self.config.redis {
                Some(given) => tiercache_server::config::RedisConfig {
                    url,
                    ..given.clone()
                },
                None => redis_config(&url),
            });
            let config = Config {
                redis: redis_section,
                ..self.config.clone()
            };
            servers.push(TestServer::start(config).await);
        }
        let mut channels = Vec::new();
        for i in 0..self.channels.unwrap_or(servers.len()) {
            channels.push(connect(&servers[i % servers.len()]).await);
        }
        Fleet {
            servers,
            channels,
            redis,
            proxies,
        }
    }
}

/// Connects now, so connection set-up is never part of what a test measures, with Nagle off as
/// a latency-sensitive client would have it.
async fn connect(server: &TestServer) -> Channel {
    Endpoint::from_shared(server.endpoint())
        .expect("an http:// URL with a port is a valid endpoint")
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the server on {}: {e}", server.addr()))
}
