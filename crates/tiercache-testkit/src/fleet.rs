//! Several servers for one test: one memory-only server, or replicas sharing one Redis.

use std::time::Duration;

use tiercache_proto::v1::admin_service_client::AdminServiceClient;
use tiercache_proto::v1::cache_service_client::CacheServiceClient;
use tiercache_proto::v1::lock_service_client::LockServiceClient;
use tiercache_server::Config;
use tonic::transport::{Channel, Endpoint};

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
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("servers", &self.servers)
            .field("channels", &self.channels.len())
            .field("redis", &self.redis)
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
}

/// How to start a [`Fleet`]: memory-only or on Redis, the config, how many channels.
#[derive(Debug)]
pub struct FleetBuilder {
    /// `None` for memory-only; otherwise the number of replicas on one Redis.
    replicas: Option<usize>,
    config: Config,
    channels: Option<usize>,
}

impl FleetBuilder {
    /// Returns a builder of one memory-only server.
    pub fn memory() -> Self {
        Self {
            replicas: None,
            config: Config::default(),
            channels: None,
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

    /// Sets every server's config. Its `redis` section is replaced by the fleet's Redis (or
    /// cleared for memory-only); `listen` and the admin address by the ports each server binds.
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

    /// Starts Redis (when asked) and the servers, each ready once it answers its health check,
    /// then connects the channels.
    ///
    /// # Panics
    ///
    /// Panics as [`RedisServer::start`] and [`TestServer::start`] do, or if a channel cannot
    /// connect.
    pub async fn start(self) -> Fleet {
        let redis = self.replicas.map(|_| RedisServer::start());
        let config = Config {
            redis: redis.as_ref().map(|r| redis_config(&r.url())),
            ..self.config
        };
        let mut servers = Vec::new();
        for _ in 0..self.replicas.unwrap_or(1) {
            servers.push(TestServer::start(config.clone()).await);
        }
        let mut channels = Vec::new();
        for i in 0..self.channels.unwrap_or(servers.len()) {
            channels.push(connect(&servers[i % servers.len()]).await);
        }
        Fleet {
            servers,
            channels,
            redis,
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
