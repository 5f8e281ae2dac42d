//! The shared tier: Redis.
//!
//! Every write is one Lua script, so the condition check, the version bump, lease revocation, the
//! namespace sequence and the event are one atomic step. Reads are one script too (value and
//! remaining lifetime read together), so a reader never pairs a value with another value's TTL.
//!
//! Scripts that touch both an entry and its namespace's sequence span two hash slots; that is fine
//! on a standalone Redis (the supported deployment today). See docs/architecture.md for the split
//! a Redis Cluster deployment needs.
//!
//! Every call runs in a `redis` tracing span (OpenTelemetry database client conventions) and is
//! reported to the [`RedisObserver`] the server installed, which turns it into metrics. The core
//! itself records nothing and knows no metrics library.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Value;
use tracing::Instrument;

pub use super::calls::{classify, error_type, RedisObserver, RedisOp, ERROR_TYPES};
use super::outcome::{LeaseGrant, StoreDelete, StoreFill, StoreSet, StoredEntry};
use super::scripts::Scripts;
use crate::codec::{self, EntryData};
use crate::error::CoreError;
use crate::keys::{KeySpace, NamespaceKeys};
use crate::types::WriteCondition;

/// How to reach Redis.
///
/// `Debug` shows no password: not the one in `password`, nor one in the URL's userinfo.
#[derive(Clone)]
pub struct RedisOptions {
    /// `redis://…` or `rediss://…` (TLS); it may carry `user:password@`.
    pub url: String,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// The prefix of every key and channel name (`redis.key_prefix`), assumed valid
    /// ([`crate::keys::validate_key_prefix`]).
    pub key_prefix: String,
    /// The ACL user (`AUTH <username> <password>`); overrides one in the URL.
    pub username: Option<String>,
    /// The password; overrides one in the URL.
    pub password: Option<Secret>,
    /// Certificates for a `rediss://` URL.
    pub tls: RedisTls,
}

impl Default for RedisOptions {
    /// A local Redis (`redis://127.0.0.1:6379`), the server's default timeouts and prefix, no
    /// credentials, system roots for TLS.
    fn default() -> Self {
        RedisOptions {
            url: "redis://127.0.0.1:6379".into(),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(1),
            key_prefix: crate::keys::DEFAULT_KEY_PREFIX.into(),
            username: None,
            password: None,
            tls: RedisTls::default(),
        }
    }
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field("url", &redact_url(&self.url))
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("key_prefix", &self.key_prefix)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("tls", &self.tls)
            .finish()
    }
}

/// A password: `Debug` prints `***`, so it cannot reach a log or an error by accident.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Secret {
        Secret(secret.into())
    }

    /// Returns the secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

/// Certificates of a `rediss://` connection, PEM bytes. Without a CA the system roots are trusted.
#[derive(Clone, Default)]
pub struct RedisTls {
    /// The CA certificates that sign the Redis server's certificate (`redis.tls_ca_file`).
    pub ca_pem: Option<Vec<u8>>,
    /// The client certificate chain and its private key (`redis.tls_cert_file`,
    /// `redis.tls_key_file`), for a Redis started with `tls-auth-clients yes`.
    pub client: Option<(Vec<u8>, Secret)>,
}

impl RedisTls {
    /// Whether any certificate is set (then the URL must be `rediss://`).
    pub fn is_set(&self) -> bool {
        self.ca_pem.is_some() || self.client.is_some()
    }
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTls")
            .field("ca", &self.ca_pem.as_ref().map(|_| "set"))
            .field("client_cert", &self.client.as_ref().map(|_| "set"))
            .finish()
    }
}

/// Returns `url` with the password of its userinfo replaced by `***` (`redis://user:***@host`),
/// for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    let userinfo = &rest[..at];
    let user = match userinfo.find(':') {
        Some(colon) => format!("{}:***", &userinfo[..colon]),
        None => userinfo.to_string(),
    };
    format!("{}{user}{}", &url[..scheme_end], &rest[at..])
}

/// Builds the one client every connection of the store comes from (the data connection, the
/// subscriber, script loads, health checks), so all use the same TLS and credentials.
fn build_client(options: &RedisOptions) -> Result<redis::Client, CoreError> {
    use redis::IntoConnectionInfo;
    // Parse errors name the URL's shape only; never echo it (it may hold a password).
    let bad_url = |e: redis::RedisError| {
        CoreError::Unavailable(format!(
            "bad redis url {} (redis.url): {}",
            redact_url(&options.url),
            e.category()
        ))
    };
    let info = options
        .url
        .as_str()
        .into_connection_info()
        .map_err(bad_url)?;
    let mut settings = info.redis_settings().clone();
    if let Some(user) = &options.username {
        settings = settings.set_username(user);
    }
    if let Some(password) = &options.password {
        settings = settings.set_password(password.expose());
    }
    let tls = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
    if options.tls.is_set() && !tls {
        return Err(CoreError::Unavailable(
            "redis.tls_ca_file, tls_cert_file and tls_key_file need a rediss:// redis.url".into(),
        ));
    }
    let info = with_keepalive(info).set_redis_settings(settings);
    if !tls {
        return redis::Client::open(info).map_err(bad_url);
    }
    // rustls needs one process-wide crypto provider; ring is the one built. Installing fails
    // harmlessly when another part of the process (gRPC TLS) installed it first.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs = redis::TlsCertificates {
        client_tls: options
            .tls
            .client
            .as_ref()
            .map(|(cert, key)| redis::ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.expose().as_bytes().to_vec(),
            }),
        root_cert: options.tls.ca_pem.clone(),
    };
    redis::Client::build_with_tls(info, certs).map_err(|e| {
        CoreError::Unavailable(format!(
            "bad redis tls certificates (redis.tls_ca_file, tls_cert_file, tls_key_file): {e}"
        ))
    })
}

/// Returns the error of a failed first connection: a refused login or TLS handshake names the
/// settings to fix.
fn connect_error(e: redis::RedisError, tls: bool) -> CoreError {
    let text = e.to_string();
    if text.contains("NOPERM") {
        return CoreError::Unavailable(format!(
            "the redis ACL user (redis.username) may not run a command tiercache needs: {text} \
             (docs/security.md lists them)"
        ));
    }
    if e.kind() == redis::ErrorKind::AuthenticationFailed
        || text.contains("WRONGPASS")
        || text.contains("NOAUTH")
    {
        let code = e.code().unwrap_or("WRONGPASS");
        return CoreError::Unavailable(format!(
            "redis refused the login ({code}): check redis.username and redis.password \
             (or redis.password_file, TIERCACHE_REDIS_PASSWORD, the url's user:password@)"
        ));
    }
    if tls && (e.is_io_error() || e.is_connection_dropped()) {
        return CoreError::Unavailable(format!(
            "tls connection to redis failed: {text} (check redis.tls_ca_file; a redis with \
             tls-auth-clients yes needs redis.tls_cert_file and redis.tls_key_file)"
        ));
    }
    classify(e)
}

/// The commands tiercache sends, as Redis ACL rules (docs/security.md): connection set-up
/// (`AUTH`, `HELLO`, `SELECT`), the data connection (`EVALSHA`, `SCRIPT LOAD` after Redis lost its
/// scripts, `MGET`, `GET`/`PTTL` for a lease, `PING`, and `CONFIG GET` for the eviction-policy
/// check, which may be refused), the subscriber (`PSUBSCRIBE`, `PUNSUBSCRIBE`, `PING`) and what
/// the scripts run (`GET`, `SET`, `DEL`, `INCR`, `PTTL`, `PEXPIRE`, `STRLEN`, `TIME`, `PUBLISH`).
/// With `~<prefix>:*` and `&<prefix>:*` it is all an ACL user needs. (redis-rs also sends
/// `CLIENT SETINFO` on Redis 7.2+ and ignores a refusal.)
pub const ACL_COMMANDS: &str = "-@all +auth +hello +select +ping +evalsha +script|load +mget \
     +get +set +del +incr +pttl +pexpire +strlen +time +publish +psubscribe +punsubscribe \
     +config|get";

/// Every Lua script of the store, by name, with the SHA1 `EVALSHA` names it by (for tests that
/// watch Redis run them).
pub fn script_hashes() -> Vec<(&'static str, String)> {
    Scripts::new()
        .all()
        .iter()
        .map(|(name, script)| (*name, script.get_hash().to_string()))
        .collect()
}

/// TCP keepalive on every Redis connection: first probe after 10 s idle, then every 5 s, dead
/// after 3 unanswered (about 25 s). The subscriber is also pinged every
/// `SUBSCRIBER_PING_INTERVAL` (`bus.rs`); keepalive catches a half-open connection that
/// nothing writes to, which a ping-less idle connection would never notice.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_RETRIES: u32 = 3;

/// Returns `info` with TCP keepalive on (see [`KEEPALIVE_IDLE`]).
fn with_keepalive(info: redis::ConnectionInfo) -> redis::ConnectionInfo {
    use redis::io::tcp::socket2::TcpKeepalive;
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    let tcp = info.tcp_settings().clone().set_keepalive(keepalive);
    info.set_tcp_settings(tcp)
}

/// How many times a script is called again declaring the tags the stored entry turned out to
/// have ([`RedisStore::invoke_tagged`]); only a key rewritten with other tags between each pair
/// of calls exhausts it.
const TAG_ATTEMPTS: usize = 4;

/// The tags a script asked to have declared (`{'tags', {tag…}}`), or `None` for any other reply.
/// No other reply is a two-item array whose second item is an array.
fn undeclared_tags(reply: &Value) -> Option<Vec<String>> {
    let Value::Array(items) = reply else {
        return None;
    };
    let [Value::BulkString(marker), tags] = items.as_slice() else {
        return None;
    };
    if marker.as_slice() != b"tags" {
        return None;
    }
    match tags {
        Value::Array(tags) => Some(
            tags.iter()
                .map(|t| match t {
                    Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                    _ => String::new(),
                })
                .collect(),
        ),
        Value::Nil => Some(Vec::new()),
        _ => None,
    }
}

/// The Redis tier: a multiplexed, auto-reconnecting connection and the scripts.
pub struct RedisStore {
    client: redis::Client,
    key_space: KeySpace,
    conn: ConnectionManager,
    scripts: Scripts,
    options: RedisOptions,
    observer: OnceLock<Arc<dyn RedisObserver>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &redact_url(&self.options.url))
            .finish()
    }
}

fn int(v: &Value) -> Result<u64, CoreError> {
    match v {
        Value::Int(i) => Ok(u64::try_from(*i).unwrap_or(0)),
        other => Err(CoreError::unexpected_reply(other)),
    }
}

fn ints_signed(v: Value) -> Result<Vec<i64>, CoreError> {
    match v {
        Value::Array(items) => items
            .iter()
            .map(|v| match v {
                Value::Int(i) => Ok(*i),
                other => Err(CoreError::unexpected_reply(other)),
            })
            .collect(),
        other => Err(CoreError::unexpected_reply(other)),
    }
}

fn ints(v: Value) -> Result<Vec<u64>, CoreError> {
    match v {
        Value::Array(items) => items.iter().map(int).collect(),
        other => Err(CoreError::unexpected_reply(other)),
    }
}

impl RedisStore {
    /// Connects to Redis; fails if it does not answer within the connect timeout.
    pub async fn connect(options: RedisOptions) -> Result<RedisStore, CoreError> {
        let client = build_client(&options)?;
        let tls = matches!(
            client.get_connection_info().addr(),
            redis::ConnectionAddr::TcpTls { .. }
        );
        let key_space = KeySpace::new(
            &options.key_prefix,
            client.get_connection_info().redis_settings().db(),
        );
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.response_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = tokio::time::timeout(
            options.connect_timeout,
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        .map_err(|_| CoreError::Unavailable("timed out connecting to redis".into()))?
        .map_err(|e| connect_error(e, tls))?;
        // The manager connects without a command; a missing password shows only as NOAUTH on
        // the first one, which should fail here, naming the setting, not later on the data path.
        let mut probe = conn.clone();
        let _: String = tokio::time::timeout(
            options.connect_timeout,
            redis::cmd("PING").query_async(&mut probe),
        )
        .await
        .map_err(|_| CoreError::Unavailable("timed out connecting to redis".into()))?
        .map_err(|e| connect_error(e, tls))?;
        Ok(RedisStore {
            client,
            key_space,
            conn,
            scripts: Scripts::new(),
            options,
            observer: OnceLock::new(),
        })
    }

    /// Installs the observer every later call reports to; only the first one is kept.
    pub fn set_observer(&self, observer: Arc<dyn RedisObserver>) {
        let _ = self.observer.set(observer);
    }

    /// Runs one Redis call in its span and reports it to the observer.
    async fn call<T>(
        &self,
        op: RedisOp,
        f: impl Future<Output = Result<T, CoreError>>,
    ) -> Result<T, CoreError> {
        let span = tracing::info_span!(
            "redis",
            otel.name = op.name,
            otel.kind = "client",
            db.system.name = "redis",
            db.operation.name = op.command,
            tiercache.redis.operation = op.name,
            error.type = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let start = Instant::now();
        let r = f.instrument(span.clone()).await;
        if let Err(e) = &r {
            span.record("error.type", error_type(e));
            span.record("otel.status_code", "ERROR");
        }
        if let Some(o) = self.observer.get() {
            o.record(op, start.elapsed(), r.as_ref().err());
        }
        r
    }

    /// Runs a script invocation on the shared connection, in its span, reported to the observer.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        op: RedisOp,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<T, CoreError> {
        let mut conn = self.conn.clone();
        self.call(op, async { Ok(inv.invoke_async(&mut conn).await?) })
            .await
    }

    /// Runs a script whose visibility check reads the tag marks of a stored entry, declaring
    /// the mark keys of `tags` (the caller's guess of that entry's tags); `build` makes the
    /// invocation for a list of tags. When the script answers that the entry has other tags
    /// (`{'tags', {…}}`, having changed nothing), calls again declaring those, a bounded number
    /// of times (the entry could change between calls).
    async fn invoke_tagged<'a>(
        &'a self,
        op: RedisOp,
        mut tags: Vec<String>,
        build: impl Fn(&[String]) -> redis::ScriptInvocation<'a>,
    ) -> Result<Value, CoreError> {
        for _ in 0..TAG_ATTEMPTS {
            let reply: Value = self.invoke(op, &build(&tags)).await?;
            match undeclared_tags(&reply) {
                Some(actual) => tags = actual,
                None => return Ok(reply),
            }
        }
        Err(CoreError::Redis(crate::error::RedisReplyError {
            class: crate::error::RedisErrorClass::Transient,
            code: "TAGS_CHANGED".into(),
            message: format!(
                "the entry's tags changed on each of {TAG_ATTEMPTS} attempts of {}",
                op.name
            ),
        }))
    }

    /// Runs a command on the shared connection, in its span, reported to the observer.
    async fn query<T: redis::FromRedisValue>(
        &self,
        op: RedisOp,
        cmd: &redis::Cmd,
    ) -> Result<T, CoreError> {
        let mut conn = self.conn.clone();
        self.call(op, async { Ok(cmd.query_async(&mut conn).await?) })
            .await
    }

    /// The client, for the subscription connection.
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// The connection options.
    pub fn options(&self) -> &RedisOptions {
        &self.options
    }

    /// The deployment's key and channel names.
    pub fn key_space(&self) -> &KeySpace {
        &self.key_space
    }

    /// Reads entries with their remaining lifetime, in key order; refuses
    /// ([`CoreError::ReplyTooLarge`]) when their stored size exceeds `max_bytes`, before reading
    /// any value.
    pub async fn read(
        &self,
        keys: &NamespaceKeys,
        user_keys: &[&str],
        max_bytes: Option<u64>,
    ) -> Result<Vec<Option<StoredEntry>>, CoreError> {
        let mut inv = self.scripts.read.prepare_invoke();
        for k in user_keys {
            inv.key(keys.entry(k));
        }
        // 0 means no limit to the script; a limit of 0 bytes still refuses any entry.
        inv.arg(max_bytes.map_or(0, |b| b.max(1)));
        let reply: Value = self.invoke(RedisOp::READ, &inv).await?;
        let items = match reply {
            Value::Array(items) => items,
            Value::Int(_) => {
                return Err(CoreError::ReplyTooLarge {
                    limit: max_bytes.unwrap_or(0),
                })
            }
            other => return Err(CoreError::unexpected_reply(other)),
        };
        let mut out = Vec::with_capacity(user_keys.len());
        let mut it = items.into_iter();
        for k in user_keys {
            let (blob, pttl) = (it.next(), it.next());
            match (blob, pttl) {
                (Some(Value::BulkString(b)), Some(Value::Int(ms))) => {
                    let data = codec::decode(Bytes::from(b)).map_err(|e| CoreError::Corrupt {
                        key: (*k).to_string(),
                        reason: e.to_string(),
                    })?;
                    // A key without expiry (-1) was not written by us; treat it as long-lived.
                    let remaining = if ms < 0 {
                        Duration::from_secs(u32::MAX as u64)
                    } else {
                        Duration::from_millis(ms as u64)
                    };
                    out.push(Some(StoredEntry { data, remaining }));
                }
                _ => out.push(None),
            }
        }
        Ok(out)
    }

    /// Writes an entry whose version and born sequence the script assigns. `tags` are the new
    /// entry's tags: a condition checks the stored entry's visibility, and its tags are most
    /// often the same.
    #[allow(clippy::too_many_arguments)]
    pub async fn set(
        &self,
        keys: &NamespaceKeys,
        key: &str,
        blob: Bytes,
        tags: &[String],
        lifetime: Duration,
        condition: WriteCondition,
    ) -> Result<StoreSet, CoreError> {
        let (cond, expected) = match condition {
            WriteCondition::None => ("", String::new()),
            WriteCondition::IfAbsent => ("absent", String::new()),
            WriteCondition::IfVersion(v) => ("version", v.to_string()),
        };
        // Without a condition the script reads no tag mark.
        let guess = if cond.is_empty() {
            Vec::new()
        } else {
            tags.to_vec()
        };
        let px = lifetime.as_millis().max(1) as u64;
        let entry = keys.entry(key);
        let lease = keys.lease(key);
        let life = keys.lifetime();
        let script = &self.scripts.set;
        let reply = self
            .invoke_tagged(RedisOp::SET, guess, |tags| {
                let mut inv = script.prepare_invoke();
                inv.key(&entry)
                    .key(&lease)
                    .key(&keys.seq)
                    .key(&keys.run)
                    .key(&keys.flush)
                    .key(&life);
                for t in tags {
                    inv.key(keys.tag(t));
                }
                inv.arg(&keys.meta_prefix)
                    .arg(&keys.channel)
                    .arg(blob.as_ref())
                    .arg(px)
                    .arg(cond)
                    .arg(&expected)
                    .arg(key);
                inv
            })
            .await?;
        let r = ints(reply)?;
        Ok(match r.as_slice() {
            [0, version, sequence] => StoreSet::Stored {
                version: *version,
                sequence: *sequence,
            },
            [1, current] => StoreSet::VersionMismatch { current: *current },
            [2, current] => StoreSet::Exists { current: *current },
            other => return Err(CoreError::unexpected_reply(("set", other))),
        })
    }

    /// Deletes an entry and revokes its lease.
    pub async fn delete(
        &self,
        keys: &NamespaceKeys,
        key: &str,
        if_version: Option<u64>,
    ) -> Result<StoreDelete, CoreError> {
        let entry = keys.entry(key);
        let lease = keys.lease(key);
        let expected = if_version.map(|v| v.to_string()).unwrap_or_default();
        let script = &self.scripts.delete;
        let reply = self
            .invoke_tagged(RedisOp::DELETE, Vec::new(), |tags| {
                let mut inv = script.prepare_invoke();
                inv.key(&entry)
                    .key(&lease)
                    .key(&keys.seq)
                    .key(&keys.run)
                    .key(&keys.flush);
                for t in tags {
                    inv.key(keys.tag(t));
                }
                inv.arg(&keys.meta_prefix)
                    .arg(&keys.channel)
                    .arg(&expected)
                    .arg(key);
                inv
            })
            .await?;
        let r = ints(reply)?;
        Ok(match r.as_slice() {
            [0, _, sequence] => StoreDelete::Deleted {
                sequence: *sequence,
            },
            [1, current] => StoreDelete::VersionMismatch { current: *current },
            [2, _, sequence] => StoreDelete::NotFound {
                sequence: *sequence,
            },
            other => return Err(CoreError::unexpected_reply(("delete", other))),
        })
    }

    /// Reads the namespace sequence and flush mark.
    pub async fn namespace_marks(&self, keys: &NamespaceKeys) -> Result<(u64, u64), CoreError> {
        let mut cmd = redis::cmd("MGET");
        cmd.arg(&keys.seq).arg(&keys.flush);
        let (seq, flush): (Option<u64>, Option<u64>) =
            self.query(RedisOp::NAMESPACE_MARKS, &cmd).await?;
        Ok((seq.unwrap_or(0), flush.unwrap_or(0)))
    }

    /// Reads what a replica syncs a namespace from: its sequence, flush mark and run id (0 for
    /// a namespace without a sequence yet), in one round trip.
    pub async fn namespace_sync(&self, keys: &NamespaceKeys) -> Result<(u64, u64, u64), CoreError> {
        let mut cmd = redis::cmd("MGET");
        cmd.arg(&keys.seq).arg(&keys.flush).arg(&keys.run);
        let (seq, flush, run): (Option<u64>, Option<u64>, Option<u64>) =
            self.query(RedisOp::NAMESPACE_MARKS, &cmd).await?;
        Ok((seq.unwrap_or(0), flush.unwrap_or(0), run.unwrap_or(0)))
    }

    /// Reads the sequence and run id of each namespace, in order, in one round trip (the
    /// periodic check of the bus).
    pub async fn sequences(
        &self,
        namespaces: &[&NamespaceKeys],
    ) -> Result<Vec<(u64, u64)>, CoreError> {
        if namespaces.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("MGET");
        for k in namespaces {
            cmd.arg(&k.seq).arg(&k.run);
        }
        let values: Vec<Option<u64>> = self.query(RedisOp::SEQUENCE_CHECK, &cmd).await?;
        Ok(values
            .chunks(2)
            .map(|c| (c[0].unwrap_or(0), c.get(1).copied().flatten().unwrap_or(0)))
            .collect())
    }

    /// Reads Redis's `maxmemory-policy`; `None` when `CONFIG GET` is refused (managed Redis
    /// services often rename or disable it).
    pub async fn maxmemory_policy(&self) -> Option<String> {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("GET").arg("maxmemory-policy");
        let mut conn = self.conn.clone();
        let reply: Vec<String> = cmd.query_async(&mut conn).await.ok()?;
        reply.get(1).cloned()
    }

    /// Reads the invalidation marks of tags (0 for a tag never invalidated).
    pub async fn tag_marks(
        &self,
        keys: &NamespaceKeys,
        tags: &[&str],
    ) -> Result<Vec<u64>, CoreError> {
        if tags.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("MGET");
        for t in tags {
            cmd.arg(keys.tag(t));
        }
        let marks: Vec<Option<u64>> = self.query(RedisOp::TAG_MARKS, &cmd).await?;
        Ok(marks.into_iter().map(|m| m.unwrap_or(0)).collect())
    }

    /// Takes a new sequence and marks every tag with it; returns the sequence. Each mark lives
    /// `mark_ttl`, or longer if an entry of the namespace was ever written with a longer
    /// lifetime (plus `lease_allowance`), whichever replica wrote it.
    pub async fn invalidate_tags(
        &self,
        keys: &NamespaceKeys,
        tags: &[String],
        mark_ttl: Duration,
        lease_allowance: Duration,
    ) -> Result<u64, CoreError> {
        let mut inv = self.scripts.invalidate_tags.prepare_invoke();
        inv.key(&keys.seq).key(&keys.run);
        for t in tags {
            inv.key(keys.tag(t));
        }
        inv.key(keys.lifetime());
        inv.arg(&keys.channel)
            .arg(mark_ttl.as_millis().max(1) as u64);
        for t in tags {
            inv.arg(t);
        }
        inv.arg(lease_allowance.as_millis() as u64);
        let seq: u64 = self.invoke(RedisOp::INVALIDATE_TAGS, &inv).await?;
        Ok(seq)
    }

    /// Takes a new sequence and sets the namespace flush mark to it; returns the sequence.
    pub async fn flush(&self, keys: &NamespaceKeys) -> Result<u64, CoreError> {
        let mut inv = self.scripts.flush.prepare_invoke();
        inv.key(&keys.seq)
            .key(&keys.flush)
            .key(&keys.run)
            .arg(&keys.channel);
        let seq: u64 = self.invoke(RedisOp::FLUSH, &inv).await?;
        Ok(seq)
    }

    /// Asks for the lease on a key; `token` holds it if granted.
    pub async fn acquire_lease(
        &self,
        keys: &NamespaceKeys,
        key: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<LeaseGrant, CoreError> {
        let entry = keys.entry(key);
        let lease = keys.lease(key);
        let ttl = ttl.as_millis().max(1) as u64;
        let script = &self.scripts.acquire_lease;
        let reply = self
            .invoke_tagged(RedisOp::ACQUIRE_LEASE, Vec::new(), |tags| {
                let mut inv = script.prepare_invoke();
                inv.key(&entry).key(&lease).key(&keys.seq).key(&keys.flush);
                for t in tags {
                    inv.key(keys.tag(t));
                }
                inv.arg(&keys.meta_prefix).arg(token).arg(ttl);
                inv
            })
            .await?;
        let r = ints_signed(reply)?;
        Ok(match r.as_slice() {
            [0, born] => LeaseGrant::Granted {
                born: u64::try_from(*born).unwrap_or(0),
            },
            [1] => LeaseGrant::FreshEntryExists,
            [2, pttl] => LeaseGrant::Held {
                remaining: Duration::from_millis(u64::try_from(*pttl).unwrap_or(0)),
            },
            other => return Err(CoreError::unexpected_reply(("lease", other))),
        })
    }

    /// Stores a value computed under a lease; `tags` are the value's tags (in `blob`).
    #[allow(clippy::too_many_arguments)]
    pub async fn fill(
        &self,
        keys: &NamespaceKeys,
        key: &str,
        token: &str,
        blob: Bytes,
        tags: &[String],
        lifetime: Duration,
    ) -> Result<StoreFill, CoreError> {
        let entry = keys.entry(key);
        let lease = keys.lease(key);
        let life = keys.lifetime();
        let px = lifetime.as_millis().max(1) as u64;
        let script = &self.scripts.fill;
        let reply = self
            .invoke_tagged(RedisOp::FILL, tags.to_vec(), |tags| {
                let mut inv = script.prepare_invoke();
                inv.key(&entry)
                    .key(&lease)
                    .key(&keys.seq)
                    .key(&keys.run)
                    .key(&keys.flush)
                    .key(&life);
                for t in tags {
                    inv.key(keys.tag(t));
                }
                inv.arg(&keys.meta_prefix)
                    .arg(&keys.channel)
                    .arg(token)
                    .arg(blob.as_ref())
                    .arg(px)
                    .arg(key);
                inv
            })
            .await?;
        let r = ints(reply)?;
        Ok(match r.as_slice() {
            [0, version, sequence, born] => StoreFill::Stored {
                version: *version,
                sequence: *sequence,
                born: *born,
            },
            [1] => StoreFill::Revoked,
            [2] => StoreFill::Expired,
            other => return Err(CoreError::unexpected_reply(("fill", other))),
        })
    }

    /// Gives a lease back; returns whether `token` held it.
    pub async fn release_lease(
        &self,
        keys: &NamespaceKeys,
        key: &str,
        token: &str,
    ) -> Result<bool, CoreError> {
        let mut inv = self.scripts.release_lease.prepare_invoke();
        inv.key(keys.lease(key))
            .arg(token)
            .arg(&keys.lease_channel)
            .arg(key);
        let released: i64 = self.invoke(RedisOp::RELEASE_LEASE, &inv).await?;
        Ok(released == 1)
    }

    /// Reads the lease on a key: `(token, born, remaining)`; the token is empty for a tombstone.
    pub async fn lease_info(
        &self,
        keys: &NamespaceKeys,
        key: &str,
    ) -> Result<Option<(String, u64, Duration)>, CoreError> {
        let mut conn = self.conn.clone();
        let (value, pttl): (Option<String>, i64) = self
            .call(RedisOp::LEASE_INFO, async {
                Ok(redis::pipe()
                    .get(keys.lease(key))
                    .pttl(keys.lease(key))
                    .query_async(&mut conn)
                    .await?)
            })
            .await?;
        Ok(value.and_then(|v| {
            let mut parts = v.splitn(3, '|');
            let token = parts.next()?.to_string();
            let born = parts.next()?.parse().ok()?;
            Some((token, born, Duration::from_millis(pttl.max(0) as u64)))
        }))
    }

    /// Tries to take a lock once: `Ok(Ok(fence))` acquired, `Ok(Err(remaining))` held.
    pub async fn acquire_lock(
        &self,
        keys: &NamespaceKeys,
        name: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<Result<u64, Duration>, CoreError> {
        let mut inv = self.scripts.acquire_lock.prepare_invoke();
        inv.key(keys.lock(name))
            .key(keys.fence(name))
            .arg(token)
            .arg(ttl.as_millis().max(1) as u64);
        let reply: Value = self.invoke(RedisOp::ACQUIRE_LOCK, &inv).await?;
        let r = ints_signed(reply)?;
        Ok(match r.as_slice() {
            [1, fence] => Ok(u64::try_from(*fence).unwrap_or(0)),
            [0, pttl] => Err(Duration::from_millis(u64::try_from(*pttl).unwrap_or(0))),
            other => return Err(CoreError::unexpected_reply(("lock", other))),
        })
    }

    /// Extends a lock held by `token`; returns whether it was held.
    pub async fn renew_lock(
        &self,
        keys: &NamespaceKeys,
        name: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, CoreError> {
        let mut inv = self.scripts.renew_lock.prepare_invoke();
        inv.key(keys.lock(name))
            .arg(token)
            .arg(ttl.as_millis().max(1) as u64);
        let renewed: i64 = self.invoke(RedisOp::RENEW_LOCK, &inv).await?;
        Ok(renewed == 1)
    }

    /// Frees a lock held by `token`; returns whether it was held.
    pub async fn release_lock(
        &self,
        keys: &NamespaceKeys,
        name: &str,
        token: &str,
    ) -> Result<bool, CoreError> {
        let mut inv = self.scripts.release_lock.prepare_invoke();
        inv.key(keys.lock(name))
            .arg(token)
            .arg(&keys.lock_channel)
            .arg(name);
        let released: i64 = self.invoke(RedisOp::RELEASE_LOCK, &inv).await?;
        Ok(released == 1)
    }

    /// Sends PING; used by health checks.
    pub async fn ping(&self) -> Result<(), CoreError> {
        let _: String = self.query(RedisOp::PING, &redis::cmd("PING")).await?;
        Ok(())
    }

    /// The background health check (`crate::degraded`): a `PING` on the data connection,
    /// reported as its own operation so it can be told apart from the probe and the data path.
    pub async fn health_check(&self) -> Result<(), CoreError> {
        let _: String = self
            .query(RedisOp::HEALTH_CHECK, &redis::cmd("PING"))
            .await?;
        Ok(())
    }
}

/// One atomic read of Redis for Inspect.
#[derive(Debug)]
pub struct InspectSnapshot {
    /// The entry and its remaining lifetime, visible or not.
    pub entry: Option<(EntryData, Duration)>,
    pub sequence: u64,
    pub flush: u64,
    /// The marks of the entry's tags, in its tag order.
    pub entry_marks: Vec<u64>,
    /// The marks of `extra_tags`, in their order.
    pub extra_marks: Vec<u64>,
}

impl RedisStore {
    /// Reads, in one atomic step, the entry of `key` with its remaining lifetime, the namespace
    /// sequence and flush mark, the marks of the entry's tags and those of `extra_tags`.
    pub async fn inspect(
        &self,
        keys: &NamespaceKeys,
        key: &str,
        extra_tags: &[String],
    ) -> Result<InspectSnapshot, CoreError> {
        let entry = keys.entry(key);
        // The L1 copy's tags are the best guess of the stored entry's.
        let script = &self.scripts.inspect;
        let reply = self
            .invoke_tagged(RedisOp::INSPECT, extra_tags.to_vec(), |tags| {
                let mut inv = script.prepare_invoke();
                inv.key(&entry).key(&keys.seq).key(&keys.flush);
                for t in tags.iter().chain(extra_tags) {
                    inv.key(keys.tag(t));
                }
                inv.arg(&keys.meta_prefix).arg(tags.len());
                inv
            })
            .await?;
        let bad = |what: &str| CoreError::unexpected_reply(("inspect", what));
        let Value::Array(items) = reply else {
            return Err(bad("not an array"));
        };
        let [blob, pttl, seq, flush, marks, extra]: [Value; 6] =
            items.try_into().map_err(|_| bad("wrong length"))?;
        let entry = match (blob, pttl) {
            (Value::BulkString(b), Value::Int(ms)) => {
                let data = codec::decode(Bytes::from(b)).map_err(|e| CoreError::Corrupt {
                    key: key.to_string(),
                    reason: e.to_string(),
                })?;
                // No expiry (-1) means the key was not written by us; treat it as long-lived.
                let remaining = u64::try_from(ms)
                    .map(Duration::from_millis)
                    .unwrap_or(Duration::from_secs(u32::MAX as u64));
                Some((data, remaining))
            }
            _ => None,
        };
        let ints = |v: &Value| match v {
            Value::Array(a) => a.iter().map(int).collect::<Result<Vec<_>, _>>(),
            // Redis turns an empty Lua table into an empty array, but be lenient.
            Value::Nil => Ok(Vec::new()),
            _ => Err(bad("not an array of integers")),
        };
        Ok(InspectSnapshot {
            entry,
            sequence: int(&seq)?,
            flush: int(&flush)?,
            entry_marks: ints(&marks)?,
            extra_marks: ints(&extra)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_connection_has_tcp_keepalive_and_keeps_the_database() {
        let options = RedisOptions {
            url: "redis://127.0.0.1:1/3".into(),
            ..RedisOptions::default()
        };
        let client = build_client(&options).unwrap();
        let info = client.get_connection_info();
        assert!(info.tcp_settings().keepalive().is_some());
        assert_eq!(info.redis_settings().db(), 3);
    }

    #[test]
    fn urls_lose_their_password_in_logs() {
        assert_eq!(redact_url("redis://h:6379/0"), "redis://h:6379/0");
        assert_eq!(
            redact_url("rediss://u:p%40ss@h:6380/0"),
            "rediss://u:***@h:6380/0"
        );
        assert_eq!(redact_url("redis://:pw@h"), "redis://:***@h");
        assert_eq!(redact_url("redis://user@h"), "redis://user@h");
        assert_eq!(redact_url("redis://u:a@b@h/1"), "redis://u:***@h/1");
        assert_eq!(redact_url("redis://h/0?x=a@b"), "redis://h/0?x=a@b");
    }

    #[test]
    fn options_debug_shows_no_secret() {
        let options = RedisOptions {
            url: "rediss://app:in-url@h:6380".into(),
            username: Some("app".into()),
            password: Some(Secret::new("in-field")),
            tls: RedisTls {
                ca_pem: Some(b"ca".to_vec()),
                client: Some((b"cert".to_vec(), Secret::new("PRIVATE KEY"))),
            },
            ..RedisOptions::default()
        };
        let debug = format!("{options:?}");
        for secret in ["in-url", "in-field", "PRIVATE KEY"] {
            assert!(!debug.contains(secret), "{debug}");
        }
        assert!(debug.contains("app"), "{debug}");
    }

    #[test]
    fn a_bad_url_error_does_not_echo_it() {
        let options = RedisOptions {
            url: "redis://u:hunter2@h:notaport".into(),
            ..RedisOptions::default()
        };
        let e = build_client(&options).unwrap_err().to_string();
        assert!(!e.contains("hunter2") && e.contains("redis.url"), "{e}");
    }

    #[test]
    fn tls_files_need_a_tls_url() {
        let options = RedisOptions {
            tls: RedisTls {
                ca_pem: Some(b"x".to_vec()),
                client: None,
            },
            ..RedisOptions::default()
        };
        let e = build_client(&options).unwrap_err().to_string();
        assert!(e.contains("rediss://"), "{e}");
    }

    #[test]
    fn the_tags_reply_is_told_apart_from_every_other() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let reply = Value::Array(vec![bulk("tags"), Value::Array(vec![bulk("a"), bulk("b")])]);
        assert_eq!(undeclared_tags(&reply), Some(vec!["a".into(), "b".into()]));
        let none = Value::Array(vec![bulk("tags"), Value::Array(vec![])]);
        assert_eq!(undeclared_tags(&none), Some(vec![]));
        assert_eq!(
            undeclared_tags(&Value::Array(vec![Value::Int(0), Value::Int(1)])),
            None
        );
        let inspect = Value::Array(vec![bulk("tags"), Value::Int(5), Value::Int(0)]);
        assert_eq!(undeclared_tags(&inspect), None);
    }
}
