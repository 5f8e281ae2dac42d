//! What a bench run measures against: a `redis-server` it spawns (or one it is given) and
//! tiercache servers started in-process through `tiercache_server::run`.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use tiercache_server::config::{PolicyConfig, RedisConfig};
use tiercache_server::Config;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

/// The namespace with L1 on.
pub const NS_L1: &str = "bench";
/// The namespace with `l1_enabled = false`: every read goes to Redis.
pub const NS_L2: &str = "bench-l2";

/// A `redis-server` child on a free port in a temporary directory; killed on drop.
pub struct RedisProcess {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisProcess {
    /// Spawns `redis-server` with no persistence and waits until it answers PING.
    pub async fn start() -> anyhow::Result<Self> {
        let port = free_port()?;
        let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot spawn redis-server (is it installed?)")?;
        let mut me = Self {
            child,
            port,
            _dir: dir,
        };
        let client = redis::Client::open(me.url())?;
        for _ in 0..200 {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                if redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
                {
                    return Ok(me);
                }
            }
            if let Ok(Some(status)) = me.child.try_wait() {
                bail!("redis-server exited at start: {status}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("redis-server on port {port} did not answer PING within 10s")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// The config of an in-process bench server: the two bench namespaces, no admin port.
pub fn server_config(redis_url: Option<&str>) -> Config {
    let mut config = Config {
        redis: redis_url.map(|u| RedisConfig::new(u.to_string())),
        ..Config::default()
    };
    config.telemetry.metrics = false;
    // L1 may keep entries for the whole run (the default l1_max_ttl of 60s would send the L1
    // scenarios of a long run to Redis).
    config.namespaces.insert(
        NS_L1.to_string(),
        PolicyConfig {
            l1_max_ttl: Some(Duration::from_secs(3600)),
            ..PolicyConfig::default()
        },
    );
    config.namespaces.insert(
        NS_L2.to_string(),
        PolicyConfig {
            l1_enabled: Some(false),
            ..PolicyConfig::default()
        },
    );
    config
}

/// A tiercache server running in this process; stopped on drop.
pub struct InProcessServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tiercache_server::ServerError>>>,
}

impl InProcessServer {
    /// Runs `tiercache_server::run` on `127.0.0.1:0` and waits until its health check answers.
    pub async fn start(mut config: Config) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        config.listen = addr;
        config.shutdown_grace = Duration::from_secs(1);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(tiercache_server::run(listener, config, async {
            let _ = stopped.await;
        }));
        let me = Self {
            addr,
            stop: Some(stop),
            task: Some(task),
        };
        let url = me.url();
        for _ in 0..200 {
            if let Ok(ch) = connect(&url).await {
                let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
                let req = tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                };
                if health.check(req).await.is_ok() {
                    return Ok(me);
                }
            }
            if me.task.as_ref().is_some_and(|t| t.is_finished()) {
                let mut me = me;
                let result = me.task.take().expect("checked above").await;
                bail!("the in-process server stopped at start: {result:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the in-process server on {addr} did not answer its health check within 10s")
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server and waits for `run` to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.context("server task")??;
        }
        Ok(())
    }
}

impl Drop for InProcessServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Opens one HTTP/2 connection to `url`, with the transport settings the bench wants from a
/// client: TCP_NODELAY and windows large enough that flow control never throttles.
pub async fn connect(url: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(url.to_string())?
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(1 << 20))
        .initial_connection_window_size(Some(8 << 20))
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot connect to {url}"))
}

/// Opens `n` connections to `url`.
pub async fn channels(url: &str, n: usize) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        out.push(connect(url).await?);
    }
    Ok(out)
}
