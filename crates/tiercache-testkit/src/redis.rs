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
    /// Set for a TLS-only server ([`RedisServer::start_secure`]).
    tls: Option<RedisTlsFiles>,
    /// Set for a server with a prefix-limited ACL user ([`RedisServer::start_secure`]).
    acl_user: Option<AclUser>,
}

/// What [`RedisServer::start_secure`] turns on.
#[derive(Debug, Clone, Default)]
pub struct RedisSecurity {
    /// Serve TLS only (`--port 0`, `--tls-port`), with certificates made for this server.
    pub tls: Option<TlsClientAuth>,
    /// An ACL user besides `default` (which keeps every right, for the test's own checks).
    pub acl_user: Option<AclUser>,
}

/// `--tls-auth-clients` of a TLS server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsClientAuth {
    /// A client may present a certificate signed by the test CA, or none.
    Optional,
    /// A client must present a certificate signed by the test CA.
    Required,
}

/// A Redis ACL user limited to the keys `~<prefix>:*` and the channels `&<prefix>:*`, allowed
/// exactly the commands tiercache documents ([`tiercache_core::store::redis::ACL_COMMANDS`]).
#[derive(Clone)]
pub struct AclUser {
    /// The user name (`redis.username`).
    pub name: String,
    /// Its password (`redis.password`).
    pub password: String,
    /// The key prefix it is limited to (`redis.key_prefix`).
    pub prefix: String,
}

impl std::fmt::Debug for AclUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AclUser")
            .field("name", &self.name)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl AclUser {
    /// The user `tiercache` with a fresh random password, limited to `prefix`.
    pub fn limited_to(prefix: &str) -> AclUser {
        let password: String = (0..24)
            .map(|_| char::from(b'a' + rand_byte() % 26))
            .collect();
        AclUser {
            name: "tiercache".into(),
            password,
            prefix: prefix.into(),
        }
    }

    /// The rules after `ACL SETUSER <name>`: `on >password resetkeys ~<prefix>:* resetchannels
    /// &<prefix>:*` and the commands.
    pub fn rules(&self) -> Vec<String> {
        let p = &self.prefix;
        let mut rules = vec![
            "on".to_string(),
            format!(">{}", self.password),
            "resetkeys".into(),
            format!("~{p}:*"),
            "resetchannels".into(),
            format!("&{p}:*"),
        ];
        rules.extend(
            tiercache_core::store::redis::ACL_COMMANDS
                .split_whitespace()
                .map(String::from),
        );
        rules
    }
}

/// A byte from the OS's randomness (tests only need passwords nobody guesses by accident).
fn rand_byte() -> u8 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish() as u8
}

/// Certificates made at start for a TLS [`RedisServer`] (PEM files in its directory): one test
/// CA signs the server's certificate (for `127.0.0.1` and `localhost`) and a client's.
#[derive(Debug, Clone)]
pub struct RedisTlsFiles {
    /// The CA certificate (for `redis.tls_ca_file`).
    pub ca_file: PathBuf,
    /// A client certificate the server accepts (for `redis.tls_cert_file`).
    pub cert_file: PathBuf,
    /// Its private key (for `redis.tls_key_file`).
    pub key_file: PathBuf,
    server_cert_file: PathBuf,
    server_key_file: PathBuf,
    auth: TlsClientAuth,
}

impl RedisTlsFiles {
    /// Makes the CA, server and client certificates in `dir`.
    fn generate(dir: &Path, auth: TlsClientAuth) -> RedisTlsFiles {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair, KeyUsagePurpose,
        };
        let fail = |e: rcgen::Error| -> ! { panic!("cannot make test certificates: {e}") };
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| fail(e));
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "tiercache test redis ca");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().unwrap_or_else(|e| fail(e));
        let ca = CertifiedIssuer::self_signed(ca, ca_key).unwrap_or_else(|e| fail(e));
        let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
            let mut params = CertificateParams::new(names).unwrap_or_else(|e| fail(e));
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().unwrap_or_else(|e| fail(e));
            let cert = params.signed_by(&key, &ca).unwrap_or_else(|e| fail(e));
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) = leaf(
            vec!["tiercache.test".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("cannot write a test certificate");
            path
        };
        RedisTlsFiles {
            ca_file: write("ca.crt", &ca.pem()),
            cert_file: write("client.crt", &client_cert),
            key_file: write("client.key", &client_key),
            server_cert_file: write("redis.crt", &server_cert),
            server_key_file: write("redis.key", &server_key),
            auth,
        }
    }

    /// The `redis-server` arguments that serve TLS only, on `port`.
    fn args(&self, port: u16) -> Vec<String> {
        let path = |p: &PathBuf| p.display().to_string();
        let auth = match self.auth {
            TlsClientAuth::Optional => "optional",
            TlsClientAuth::Required => "yes",
        };
        vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            path(&self.server_cert_file),
            "--tls-key-file".into(),
            path(&self.server_key_file),
            "--tls-ca-cert-file".into(),
            path(&self.ca_file),
            "--tls-auth-clients".into(),
            auth.into(),
        ]
    }

    /// The store's TLS options: the CA, and the client certificate when `with_client_cert`.
    pub fn options(&self, with_client_cert: bool) -> tiercache_core::RedisTls {
        let read = |p: &PathBuf| std::fs::read(p).expect("cannot read a test certificate");
        tiercache_core::RedisTls {
            ca_pem: Some(read(&self.ca_file)),
            client: with_client_cert.then(|| {
                (
                    read(&self.cert_file),
                    tiercache_core::Secret::new(
                        String::from_utf8(read(&self.key_file)).expect("a PEM key is text"),
                    ),
                )
            }),
        }
    }

    /// A client of the `default` user over TLS, with the client certificate.
    fn client(&self, port: u16) -> redis::Client {
        let read = |p: &PathBuf| std::fs::read(p).expect("cannot read a test certificate");
        let _ = rustls::crypto::ring::default_provider().install_default();
        redis::Client::build_with_tls(
            format!("rediss://127.0.0.1:{port}"),
            redis::TlsCertificates {
                client_tls: Some(redis::ClientTlsConfig {
                    client_cert: read(&self.cert_file),
                    client_key: read(&self.key_file),
                }),
                root_cert: Some(read(&self.ca_file)),
            },
        )
        .expect("the test certificates make a TLS client")
    }
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
        Self::start_full(extra_args, RedisSecurity::default())
    }

    /// Starts `redis-server` like [`RedisServer::start`] with TLS and/or an ACL user. With TLS
    /// it serves only TLS ([`RedisServer::url`] is `rediss://`), with certificates made now
    /// ([`RedisServer::tls_files`]); the ACL user is created by `--user`, so it survives
    /// [`RedisServer::restart`].
    ///
    /// # Panics
    ///
    /// As [`RedisServer::start`].
    pub fn start_secure(security: RedisSecurity) -> Self {
        Self::start_full(&[], security)
    }

    fn start_full(extra_args: &[&str], security: RedisSecurity) -> Self {
        let mut extra_args: Vec<String> = extra_args.iter().map(|a| a.to_string()).collect();
        let dir = tempfile::Builder::new()
            .prefix("tiercache-redis-")
            .tempdir()
            .expect("cannot create a temporary directory for redis-server");
        let tls = security
            .tls
            .map(|auth| RedisTlsFiles::generate(dir.path(), auth));
        if let Some(user) = &security.acl_user {
            extra_args.push("--user".into());
            extra_args.push(user.name.clone());
            extra_args.extend(user.rules());
        }
        let mut last_log = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            match spawn_and_wait(port, dir.path(), &extra_args, tls.as_ref()) {
                Ok(child) => {
                    return Self {
                        child: Some(child),
                        port,
                        dir,
                        extra_args,
                        tls,
                        acl_user: security.acl_user,
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

    /// Returns the connection URL, `redis://127.0.0.1:<port>`, or `rediss://…` for a TLS
    /// server. It carries no credentials.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Returns the certificates of a TLS server.
    pub fn tls_files(&self) -> Option<&RedisTlsFiles> {
        self.tls.as_ref()
    }

    /// Returns the ACL user of a server started with one.
    pub fn acl_user(&self) -> Option<&AclUser> {
        self.acl_user.as_ref()
    }

    /// Returns the store options that reach this server: TLS with the test CA and client
    /// certificate for a TLS server, and the ACL user's name, password and prefix when it has
    /// one (else the prefix `tc`).
    pub fn options(&self) -> tiercache_core::RedisOptions {
        let mut options = tiercache_core::RedisOptions {
            url: self.url(),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(5),
            key_prefix: "tc".into(),
            ..tiercache_core::RedisOptions::default()
        };
        if let Some(tls) = &self.tls {
            options.tls = tls.options(true);
        }
        if let Some(user) = &self.acl_user {
            options.username = Some(user.name.clone());
            options.password = Some(tiercache_core::Secret::new(user.password.clone()));
            options.key_prefix = user.prefix.clone();
        }
        options
    }

    /// Returns a client for this server as the `default` user, which may do anything (it
    /// connects lazily, on first use); over TLS with the client certificate for a TLS server.
    pub fn client(&self) -> redis::Client {
        match &self.tls {
            Some(tls) => tls.client(self.port),
            None => redis::Client::open(self.url()).expect("a redis:// URL with a port is valid"),
        }
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
        match spawn_and_wait(
            self.port,
            self.dir.path(),
            &self.extra_args,
            self.tls.as_ref(),
        ) {
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

fn spawn_and_wait(
    port: u16,
    dir: &Path,
    extra_args: &[String],
    tls: Option<&RedisTlsFiles>,
) -> Result<Child, StartError> {
    let log = log_path(dir);
    let listen = match tls {
        Some(tls) => tls.args(port),
        None => vec!["--port".into(), port.to_string()],
    };
    // A restart appends to the same file; keep the log of earlier runs for the panic output.
    let mut child = Command::new("redis-server")
        .args(&listen)
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

    let client = match tls {
        Some(tls) => tls.client(port),
        None => redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .expect("a redis:// URL with a port is valid"),
    };
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
