//! The tiercache server in-process, on a port the OS picks.

use std::net::SocketAddr;
use std::time::Duration;

use tiercache_server::config::RedisConfig;
use tiercache_server::{Config, ServerError};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// How long a fresh server may take to answer its health check with `SERVING`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two health checks while it starts.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long [`TestServer::shutdown`] waits for `run` to return.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Returns the Redis config tests use for the Redis at `url`.
///
/// Its timeouts are 5 s rather than the production 2 s connect and 1 s response: a test suite on
/// two shared cores can stall a Redis reply past 1 s, which would trip degraded mode and fail
/// unrelated assertions. Tests of degraded mode set their own timeouts.
pub fn redis_config(url: &str) -> RedisConfig {
    RedisConfig {
        connect_timeout: Duration::from_secs(5),
        response_timeout: Duration::from_secs(5),
        ..RedisConfig::new(url)
    }
}

/// A tiercache server running in the test's tokio runtime on `127.0.0.1:<free port>`.
///
/// It runs the production entry point, `tiercache_server::run`, on a listener bound to port 0,
/// so tests exercise the same code as `tiercache serve`. When the config serves metrics
/// (`telemetry.metrics`, on by default) the admin port is bound to port 0 too; see
/// [`TestServer::admin_addr`]. Dropping the guard signals shutdown
/// without waiting; call [`TestServer::shutdown`] to wait for a clean exit and see its result.
pub struct TestServer {
    addr: SocketAddr,
    /// The admin HTTP address (`/metrics`), when the config serves one.
    admin_addr: Option<SocketAddr>,
    /// Completes the shutdown future passed to `run`; `None` once shutdown was signalled.
    shutdown: Option<oneshot::Sender<()>>,
    /// The task running `run`; `None` once [`TestServer::shutdown`] took it.
    handle: Option<JoinHandle<Result<(), ServerError>>>,
    /// How [`TestServer::channel`] and the start-up health check reach a TLS server.
    tls: Option<ClientTlsConfig>,
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("addr", &self.addr)
            .field("running", &self.handle.is_some())
            .finish()
    }
}

impl TestServer {
    /// Starts the server with `config` on a free port and returns once its health service
    /// answers `SERVING` for the whole server (service name `""`).
    ///
    /// `config.listen` and `config.telemetry.admin_listen` are replaced by the addresses actually
    /// bound.
    ///
    /// # Panics
    ///
    /// Panics if the port cannot be bound, if `run` returns during start (the message holds its
    /// error), or if the server is not `SERVING` within about 10 s.
    pub async fn start(config: Config) -> Self {
        Self::start_inner(config, None).await
    }

    /// Starts the server with `config` (whose `tls` is set) like [`start`](Self::start); the
    /// health check, [`channel`](Self::channel) and [`endpoint`](Self::endpoint) use TLS with
    /// `client` (for example [`TestPki::client_config`](crate::TestPki::client_config)).
    pub async fn start_tls(config: Config, client: ClientTlsConfig) -> Self {
        assert!(config.tls.is_some(), "start_tls needs config.tls");
        Self::start_inner(config, Some(client)).await
    }

    async fn start_inner(mut config: Config, tls: Option<ClientTlsConfig>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("cannot bind 127.0.0.1:0 for the test server");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        config.listen = addr;
        let admin = if config.telemetry.metrics {
            let admin = TcpListener::bind("127.0.0.1:0")
                .await
                .expect("cannot bind 127.0.0.1:0 for the admin port");
            config.telemetry.admin_listen = admin.local_addr().expect("a bound listener");
            Some(admin)
        } else {
            None
        };
        let admin_addr = config
            .telemetry
            .metrics
            .then_some(config.telemetry.admin_listen);
        let (tx, rx) = oneshot::channel::<()>();
        let shutdown = async move {
            // A dropped sender also means shutdown.
            let _ = rx.await;
        };
        let handle = tokio::spawn(tiercache_server::run_with_admin(
            listener, admin, config, shutdown,
        ));
        let mut server = Self {
            addr,
            admin_addr,
            shutdown: Some(tx),
            handle: Some(handle),
            tls,
        };
        server.wait_until_serving().await;
        server
    }

    /// Starts a memory-only server: `Config::default()` (namespace `default`, dynamic
    /// namespaces on, no Redis).
    pub async fn memory() -> Self {
        Self::start(Config::default()).await
    }

    /// Starts a server whose L2 tier is the Redis at `url` (for example
    /// [`RedisServer::url`](crate::RedisServer::url)), with otherwise default config and the
    /// test timeouts of [`redis_config`].
    pub async fn with_redis(url: &str) -> Self {
        Self::start(Config {
            redis: Some(redis_config(url)),
            ..Config::default()
        })
        .await
    }

    /// Returns the address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Returns the admin HTTP address serving `/metrics`, or `None` when the config turned
    /// metrics off.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Returns the URL clients connect to, `http://127.0.0.1:<port>`, or
    /// `https://localhost:<port>` for a TLS server (the name its test certificate carries).
    pub fn endpoint(&self) -> String {
        match self.tls {
            None => format!("http://{}", self.addr),
            Some(_) => format!("https://localhost:{}", self.addr.port()),
        }
    }

    /// Returns a channel to the server (over TLS for a TLS server). It connects lazily, on the
    /// first call, and must be created inside a tokio runtime.
    pub fn channel(&self) -> Channel {
        self.endpoint_config()
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy()
    }

    fn endpoint_config(&self) -> Endpoint {
        let ep = Endpoint::from_shared(self.endpoint())
            .expect("an http(s):// URL with a port is a valid endpoint");
        match &self.tls {
            None => ep,
            Some(tls) => ep
                .tls_config(tls.clone())
                .expect("a tls config tonic accepts"),
        }
    }

    /// Signals shutdown, waits for `run` to return and returns its result.
    ///
    /// # Panics
    ///
    /// Panics if the server task panicked, if `run` does not return within 30 s, or if called
    /// twice.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let handle = self.handle.take().expect("shutdown is called once");
        match tokio::time::timeout(SHUTDOWN_TIMEOUT, handle).await {
            Ok(Ok(result)) => result,
            Ok(Err(join_error)) => match join_error.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(e) => panic!("server task was cancelled: {e}"),
            },
            Err(_) => panic!(
                "server on {} did not stop within {SHUTDOWN_TIMEOUT:?} after shutdown",
                self.addr
            ),
        }
    }

    async fn wait_until_serving(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last;
        loop {
            if self.handle.as_ref().is_some_and(|h| h.is_finished()) {
                let handle = self.handle.take().expect("checked above");
                match handle.await {
                    Ok(Ok(())) => panic!("server on {} stopped during start", self.addr),
                    Ok(Err(e)) => panic!("server on {} failed to start: {e}", self.addr),
                    Err(e) => panic!("server on {} panicked during start: {e}", self.addr),
                }
            }
            match self.check_health().await {
                Ok(ServingStatus::Serving) => return,
                Ok(status) => last = format!("health status {status:?}"),
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                panic!(
                    "server on {} not SERVING within {READY_TIMEOUT:?}; last: {last}",
                    self.addr
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    async fn check_health(&self) -> Result<ServingStatus, String> {
        let channel = self
            .endpoint_config()
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_millis(500))
            .connect()
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map_err(|e| format!("health check: {e}"))?;
        Ok(response.into_inner().status())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // Signal only: Drop cannot await. The task ends on its own, or with the runtime.
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_server_is_serving_and_shuts_down_cleanly() {
        let server = TestServer::memory().await;
        assert_eq!(server.endpoint(), format!("http://{}", server.addr()));
        let response = HealthClient::new(server.channel())
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.status(), ServingStatus::Serving);

        let addr = server.addr();
        server.shutdown().await.unwrap();
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "{addr} still accepts connections after shutdown"
        );
    }

    #[tokio::test]
    async fn servers_get_different_ports() {
        let a = TestServer::memory().await;
        let b = TestServer::memory().await;
        assert_ne!(a.addr(), b.addr());
    }
}
