//! A `redis-server` process for one test, on a free port, killed on drop.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long a fresh `redis-server` may take to answer `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two `PING` attempts while it starts.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How many free ports to try when another process takes the chosen one first.
const PORT_ATTEMPTS: u32 = 5;
/// The message shown when the binary is missing.
const INSTALL_HINT: &str = "install it with `apt-get install -y redis-server`";

/// A running `redis-server` on `127.0.0.1`, started for one test.
///
/// The server persists nothing (`--save "" --appendonly no`, unless
/// [`RedisServer::start_with`] says otherwise), works in its own temporary
/// directory and logs to `redis.log` there. Dropping the guard kills the process and waits for
/// it; if the thread is panicking at that moment (a failed test), the log is printed to stderr
/// first so the failure shows what Redis saw.
///
/// Starting and stopping block the calling thread for a short, bounded time (until Redis answers
/// `PING`, at most about 10 s), which is fine inside a `#[tokio::test]`.
pub struct RedisServer {
    /// `None` between [`RedisServer::stop`] and [`RedisServer::restart`].
    child: Option<Child>,
    port: u16,
    /// Holds the log and any files Redis writes; removed on drop, after the process is gone.
    dir: TempDir,
    /// Arguments after the defaults, given to every start (see [`RedisServer::start_with`]).
    extra_args: Vec<String>,
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("running", &self.child.is_some())
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl RedisServer {
    /// Starts `redis-server` on a free port and returns once it answers `PING`.
    ///
    /// # Panics
    ///
    /// Panics if `redis-server` is not on `PATH` (the message says how to install it), or if it
    /// does not answer within about 10 s (the message holds its log).
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts `redis-server` like [`RedisServer::start`], with `extra_args` after the default
    /// arguments (a later option overrides an earlier one), on every start including
    /// [`RedisServer::restart`]. For example [`RedisServer::AOF`] persists every write, so a
    /// SIGKILL and restart lose nothing acknowledged; `["--replicaof", "127.0.0.1", "<port>"]`
    /// starts a replica.
    ///
    /// # Panics
    ///
    /// As [`RedisServer::start`].
    pub fn start_with(extra_args: &[&str]) -> Self {
        let extra_args: Vec<String> = extra_args.iter().map(|a| a.to_string()).collect();
        let dir = tempfile::Builder::new()
            .prefix("tiercache-redis-")
            .tempdir()
            .expect("cannot create a temporary directory for redis-server");
        let mut last_log = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            match spawn_and_wait(port, dir.path(), &extra_args) {
                Ok(child) => {
                    return Self {
                        child: Some(child),
                        port,
                        dir,
                        extra_args,
                    }
                }
                // Another process took the port between our probe and redis-server's bind.
                Err(StartError::PortTaken(log)) => last_log = log,
                Err(StartError::Failed(message)) => panic!("{message}"),
            }
        }
        panic!(
            "redis-server could not bind a free port in {PORT_ATTEMPTS} attempts; last log:\n{last_log}"
        );
    }

    /// Append-only persistence with an fsync per write: with [`RedisServer::start_with`], a
    /// SIGKILL ([`RedisServer::stop`]) and [`RedisServer::restart`] keep every acknowledged write.
    pub const AOF: &'static [&'static str] = &["--appendonly", "yes", "--appendfsync", "always"];

    /// Returns the port Redis listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Returns the socket address Redis listens on.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Returns the connection URL, `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Returns a client for this server (it connects lazily, on first use).
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("a redis:// URL with a port is valid")
    }

    /// Kills every client connection in pub/sub mode (`CLIENT KILL TYPE pubsub`), which is how
    /// tests drop the servers' invalidation subscriptions, and returns how many it killed.
    ///
    /// # Panics
    ///
    /// Panics if Redis cannot be reached.
    pub async fn kill_pubsub_clients(&self) -> i64 {
        let mut conn = self
            .client()
            .get_multiplexed_async_connection()
            .await
            .expect("cannot connect to redis-server");
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut conn)
            .await
            .expect("CLIENT KILL TYPE pubsub")
    }

    /// Makes Redis stop answering for `duration` (`DEBUG SLEEP` on a connection of its own) and
    /// returns once it no longer answers (a `PING` on a connection opened before the sleep gets
    /// no answer within 50 ms). The returned task ends when Redis answers again.
    ///
    /// # Panics
    ///
    /// Panics if Redis cannot be reached, or is not asleep within 5 s; the task panics if the
    /// `DEBUG SLEEP` fails.
    pub async fn debug_sleep(&self, duration: Duration) -> tokio::task::JoinHandle<()> {
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        let mut conn = self
            .client()
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .expect("cannot connect to redis-server");
        let probe_config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(Duration::from_millis(50)));
        let probe = self
            .client()
            .get_multiplexed_async_connection_with_config(&probe_config)
            .await
            .expect("cannot connect to redis-server");
        let task = tokio::spawn(async move {
            let () = redis::cmd("DEBUG")
                .arg("SLEEP")
                .arg(duration.as_secs_f64())
                .query_async(&mut conn)
                .await
                .expect("DEBUG SLEEP");
        });
        crate::wait_for(Duration::from_secs(5), Duration::from_millis(5), || {
            let mut probe = probe.clone();
            async move {
                redis::cmd("PING")
                    .query_async::<String>(&mut probe)
                    .await
                    .is_err()
            }
        })
        .await
        .expect("redis is asleep");
        task
    }

    /// Returns the server's log so far (empty if it wrote none yet).
    pub fn log(&self) -> String {
        std::fs::read_to_string(log_path(self.dir.path())).unwrap_or_default()
    }

    /// Returns whether the process is running (it was not stopped and has not exited).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills the process, like a crash, and waits for it to exit. The port stays reserved for
    /// [`RedisServer::restart`]; data is lost since nothing is persisted. Does nothing if it is
    /// already stopped.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_wait(&mut child);
        }
    }

    /// Starts Redis again on the same port (after [`RedisServer::stop`], or after it died) and
    /// returns once it answers `PING`. The new process starts empty, unless it was started with
    /// persistence ([`RedisServer::AOF`]): it then reloads its files from the same directory.
    ///
    /// # Panics
    ///
    /// Panics if it does not answer within about 10 s, for example because another process took
    /// the port meanwhile; the message holds its log.
    pub fn restart(&mut self) {
        self.stop();
        match spawn_and_wait(self.port, self.dir.path(), &self.extra_args) {
            Ok(child) => self.child = Some(child),
            Err(StartError::PortTaken(log)) => panic!(
                "redis-server could not restart: port {} is taken; log:\n{log}",
                self.port
            ),
            Err(StartError::Failed(message)) => panic!("{message}"),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- redis-server log (port {}) ---\n{}--- end of redis-server log ---",
                self.port,
                self.log()
            );
        }
        self.stop();
    }
}

enum StartError {
    /// The port was taken; carries the log.
    PortTaken(String),
    /// Any other failure; carries the full panic message.
    Failed(String),
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("redis.log")
}

/// Returns a port that was free a moment ago (the OS picks it; the listener is dropped at once).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("cannot bind 127.0.0.1:0 to find a free port")
        .port()
}

fn spawn_and_wait(port: u16, dir: &Path, extra_args: &[String]) -> Result<Child, StartError> {
    let log = log_path(dir);
    // A restart appends to the same file; keep the log of earlier runs for the panic output.
    let mut child = Command::new("redis-server")
        .arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        // Fault tests stall Redis with `DEBUG SLEEP`, refused by default since Redis 7.
        .args(["--enable-debug-command", "local"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(&log)
        .args(extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                StartError::Failed(format!(
                    "redis-server is not on PATH: {INSTALL_HINT} (or run scripts/setup.sh)"
                ))
            } else {
                StartError::Failed(format!("cannot spawn redis-server: {e}"))
            }
        })?;

    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .expect("a redis:// URL with a port is valid");
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(mut stderr) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            }
            return Err(if text.contains("Address already in use") {
                StartError::PortTaken(text)
            } else {
                StartError::Failed(format!(
                    "redis-server exited during start ({status}); log:\n{text}"
                ))
            });
        }
        if ping(&client) {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            kill_and_wait(&mut child);
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(StartError::Failed(format!(
                "redis-server on port {port} did not answer PING within {START_TIMEOUT:?}; log:\n{text}"
            )));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

fn ping(client: &redis::Client) -> bool {
    let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(250)) else {
        return false;
    };
    redis::cmd("PING")
        .query::<String>(&mut conn)
        .is_ok_and(|reply| reply == "PONG")
}

fn kill_and_wait(child: &mut Child) {
    // `kill` fails only if the process already exited; `wait` reaps it either way.
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use std::net::TcpStream;

    use super::*;

    fn port_is_closed(port: u16) -> bool {
        TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_millis(500),
        )
        .is_err()
    }

    #[test]
    fn starts_answers_and_closes_its_port_on_drop() {
        let redis = RedisServer::start();
        assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port()));
        let mut conn = redis.client().get_connection().unwrap();
        redis::cmd("SET")
            .arg("greeting")
            .arg("hello")
            .query::<()>(&mut conn)
            .unwrap();
        let got: String = redis::cmd("GET").arg("greeting").query(&mut conn).unwrap();
        assert_eq!(got, "hello");
        assert!(
            redis.log().contains("Ready to accept connections"),
            "{}",
            redis.log()
        );

        let port = redis.port();
        drop(conn);
        drop(redis);
        assert!(port_is_closed(port), "port {port} still open after drop");
    }

    #[test]
    fn stop_and_restart_keep_the_port_and_lose_the_data() {
        let mut redis = RedisServer::start();
        let port = redis.port();
        let mut conn = redis.client().get_connection().unwrap();
        redis::cmd("SET")
            .arg("k")
            .arg("v")
            .query::<()>(&mut conn)
            .unwrap();

        redis.stop();
        assert!(!redis.is_running());
        assert!(port_is_closed(port));
        assert!(redis::cmd("PING").query::<String>(&mut conn).is_err());

        redis.restart();
        assert!(redis.is_running());
        assert_eq!(redis.port(), port);
        let mut conn = redis.client().get_connection().unwrap();
        let got: Option<String> = redis::cmd("GET").arg("k").query(&mut conn).unwrap();
        assert_eq!(got, None);
    }

    #[test]
    fn two_servers_get_different_ports() {
        let a = RedisServer::start();
        let b = RedisServer::start();
        assert_ne!(a.port(), b.port());
    }
}
