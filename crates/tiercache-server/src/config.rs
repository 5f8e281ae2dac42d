//! Typed server configuration: a TOML file, overridden by flags and environment in the CLI.
//!
//! Every struct rejects unknown fields, so a typo fails at start with a message naming the field.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tiercache_core::policy::{is_valid_namespace, NamespacePolicy};
use tiercache_core::store::redis::redact_url;
use tiercache_core::{RedisOptions, RedisTls, Secret};

/// The whole server configuration. `Config::default()` is the embedded memory-only server on
/// `127.0.0.1:50051` with namespace `default` and dynamic namespaces on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The gRPC listen address.
    pub listen: SocketAddr,
    /// The shared L2 tier. `None` runs memory-only.
    pub redis: Option<RedisConfig>,
    /// Whether a request may name a namespace the config does not list; it then gets the
    /// `defaults` policy.
    pub dynamic_namespaces: bool,
    /// Policy fields applied to every namespace (listed or dynamic) before its own overrides.
    pub defaults: PolicyConfig,
    /// Listed namespaces and their policy overrides.
    pub namespaces: BTreeMap<String, PolicyConfig>,
    /// Request limits.
    pub limits: LimitsConfig,
    /// The L1 tier every namespace shares.
    pub l1: L1Config,
    /// HTTP/2 and TCP settings of the gRPC listener.
    pub server: ServerConfig,
    /// How long in-flight RPCs may run after SIGTERM before the server exits anyway.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Traces, metrics and the admin HTTP port (docs/observability.md).
    pub telemetry: TelemetryConfig,
    /// Lets a non-loopback `listen` start without `[auth]` (then with a warning). Off by
    /// default: such a server refuses to start (docs/security.md, "Safe defaults").
    pub allow_insecure: bool,
    /// gRPC reflection; `None` = on for a loopback listen, off otherwise. With auth on it needs a
    /// valid credential like every other service but health.
    pub reflection: Option<bool>,
    /// Bearer tokens and client certificates mapped to principals with rights per namespace
    /// pattern. Present = auth on; absent = every caller has every right.
    pub auth: Option<AuthConfig>,
    /// TLS on the gRPC port; `None` serves plain HTTP/2.
    pub tls: Option<TlsConfig>,
}

/// A SHA-256 hash of a token, 64 hex digits. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct TokenHash(pub String);

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHash(<redacted>)")
    }
}

impl TokenHash {
    /// Returns the hash as 32 bytes, or why it is not 64 hex digits.
    pub fn bytes(&self) -> Result<[u8; 32], String> {
        parse_sha256_hex(&self.0)
    }
}

/// Parses 64 hex digits (either case) into 32 bytes.
pub fn parse_sha256_hex(hex: &str) -> Result<[u8; 32], String> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(
            "must be 64 hex digits (the SHA-256 of the token, see `tiercache token`)".into(),
        );
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// A token bucket: `per_second` tokens refill each second, up to `burst` (default
/// `per_second`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_second: u32,
    #[serde(default)]
    pub burst: Option<u32>,
}

impl RateLimit {
    /// The effective burst.
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.per_second)
    }

    fn check(&self, field: &str) -> Result<(), ConfigError> {
        if self.per_second == 0 || self.burst() == 0 {
            return Err(ConfigError::Invalid {
                field: field.into(),
                message: "per_second and burst must be at least 1".into(),
            });
        }
        Ok(())
    }
}

/// `[auth]`: who may call, with which rights on which namespaces (docs/security.md).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Lines `<principal> <sha256-hex>` (`#` comments), re-read when it changes, so tokens can
    /// be added and removed without a restart. Each principal must be listed in `principals`.
    pub tokens_file: Option<PathBuf>,
    /// The principals by name.
    pub principals: BTreeMap<String, PrincipalConfig>,
}

/// One principal: its credentials, rights and rate limit.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrincipalConfig {
    /// SHA-256 hashes (hex) of the bearer tokens that authenticate as this principal.
    pub token_sha256: Vec<TokenHash>,
    /// Under mutual TLS: a verified client certificate with one of these SANs is this principal.
    pub client_cert_names: Vec<String>,
    /// Requests per second of this principal over every namespace.
    pub rate_limit: Option<RateLimit>,
    /// Namespace pattern (exact name, `prefix*`, or `*`) → rights (`read`, `write`,
    /// `invalidate`, `lock`, `admin`).
    pub rights: BTreeMap<String, Vec<String>>,
}

impl AuthConfig {
    /// Adds token lines (`<principal> <sha256-hex>`, one a line or `;`-separated, `#` comments)
    /// from `source` (named in errors, like `TIERCACHE_AUTH_TOKENS`) to the principals'
    /// `token_sha256`. A line naming an unknown principal or a bad hash fails; the error never
    /// shows the hash.
    pub fn add_token_lines(&mut self, source: &str, text: &str) -> Result<(), ConfigError> {
        for (principal, hash) in parse_token_lines(source, text)? {
            match self.principals.get_mut(&principal) {
                Some(p) => p.token_sha256.push(TokenHash(hash)),
                None => {
                    return Err(ConfigError::Invalid {
                        field: source.into(),
                        message: format!(
                            "principal {principal:?} is not listed in [auth.principals]"
                        ),
                    })
                }
            }
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: String, message: String| ConfigError::Invalid { field, message };
        let mut hashes = std::collections::HashMap::new();
        let mut certs = std::collections::HashMap::new();
        for (name, p) in &self.principals {
            let at = |f: &str| format!("auth.principals.{name}.{f}");
            if !is_principal_name(name) {
                return Err(invalid(
                    format!("auth.principals.{name}"),
                    "principal names are 1 to 128 characters of [A-Za-z0-9_.@:-]".into(),
                ));
            }
            for (i, h) in p.token_sha256.iter().enumerate() {
                let bytes = h
                    .bytes()
                    .map_err(|m| invalid(format!("{}[{i}]", at("token_sha256")), m))?;
                if let Some(other) = hashes.insert(bytes, name) {
                    return Err(invalid(
                        format!("{}[{i}]", at("token_sha256")),
                        format!("the same token hash is also listed for principal {other:?}"),
                    ));
                }
            }
            for (i, c) in p.client_cert_names.iter().enumerate() {
                if c.is_empty() {
                    return Err(invalid(
                        format!("{}[{i}]", at("client_cert_names")),
                        "must not be empty".into(),
                    ));
                }
                if let Some(other) = certs.insert(c.as_str(), name) {
                    return Err(invalid(
                        format!("{}[{i}]", at("client_cert_names")),
                        format!("{c:?} is also a name of principal {other:?}"),
                    ));
                }
            }
            if let Some(r) = &p.rate_limit {
                r.check(&at("rate_limit"))?;
            }
            for (pattern, rights) in &p.rights {
                let field = format!("{}.{pattern:?}", at("rights"));
                crate::auth::Pattern::parse(pattern).map_err(|m| invalid(field.clone(), m))?;
                for r in rights {
                    crate::auth::Right::parse(r).map_err(|m| invalid(field.clone(), m))?;
                }
            }
        }
        if let Some(path) = &self.tokens_file {
            if path.as_os_str().is_empty() {
                return Err(invalid(
                    "auth.tokens_file".into(),
                    "must not be empty".into(),
                ));
            }
        }
        Ok(())
    }
}

/// Whether `name` can name a principal: 1 to 128 of `[A-Za-z0-9_.@:-]` (no spaces, so a
/// tokens-file line splits cleanly).
pub fn is_principal_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.@:-".contains(&b))
}

/// Parses token lines `<principal> <sha256-hex>` (newline- or `;`-separated, `#` comments,
/// blank lines skipped) into (principal, lowercase hash). `source` names the origin in errors;
/// an error names the line number, never the hash.
pub fn parse_token_lines(source: &str, text: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (i, line) in text.split(['\n', ';']).enumerate() {
        let parsed = parse_token_line(line).map_err(|message| ConfigError::Invalid {
            field: format!("{source} line {}", i + 1),
            message,
        })?;
        out.extend(parsed);
    }
    Ok(out)
}

/// Parses one token line: `None` for a blank or comment line. The error never shows the hash.
pub fn parse_token_line(line: &str) -> Result<Option<(String, String)>, String> {
    let line = line.split('#').next().unwrap_or("").trim();
    if line.is_empty() {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(principal), Some(hash), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err("must be `<principal> <sha256-hex>`".into());
    };
    if !is_principal_name(principal) {
        return Err("the principal name must be 1 to 128 of [A-Za-z0-9_.@:-]".into());
    }
    parse_sha256_hex(hash)?;
    Ok(Some((principal.to_string(), hash.to_ascii_lowercase())))
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            redis: None,
            dynamic_namespaces: true,
            defaults: PolicyConfig::default(),
            namespaces: BTreeMap::from([("default".to_string(), PolicyConfig::default())]),
            limits: LimitsConfig::default(),
            l1: L1Config::default(),
            server: ServerConfig::default(),
            shutdown_grace: Duration::from_secs(10),
            telemetry: TelemetryConfig::default(),
            allow_insecure: false,
            reflection: None,
            auth: None,
            tls: None,
        }
    }
}

/// TLS on the gRPC port (rustls). The files are read at start (a bad one stops the server,
/// naming the field) and checked every `reload_interval`: a changed, valid set is served to new
/// connections while open ones keep theirs; a set that fails to load keeps the old one serving.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// The PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM CA certificates; set = mutual TLS: every client must present a certificate one of
    /// them signed.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// How often the files are checked for changes.
    #[serde(with = "humantime_serde", default = "default_tls_reload_interval")]
    pub reload_interval: Duration,
}

impl TlsConfig {
    /// Returns a config for these files with the default reload interval and no client CA.
    pub fn new(cert_file: impl Into<PathBuf>, key_file: impl Into<PathBuf>) -> Self {
        Self {
            cert_file: cert_file.into(),
            key_file: key_file.into(),
            client_ca_file: None,
            reload_interval: default_tls_reload_interval(),
        }
    }
}

fn default_tls_reload_interval() -> Duration {
    Duration::from_secs(10)
}

/// Where and how to reach Redis.
///
/// `Debug` shows no password: not `password`, nor one in the URL.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` or `rediss://…` (TLS).
    pub url: String,
    /// Timeout for establishing a connection.
    #[serde(with = "humantime_serde", default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// Timeout for one Redis command; past it the call fails and counts toward degraded mode.
    #[serde(with = "humantime_serde", default = "default_response_timeout")]
    pub response_timeout: Duration,
    /// The prefix of every Redis key and pub/sub channel name, so several deployments can share
    /// one Redis (channel names also carry the database number, since pub/sub ignores it).
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// The Redis ACL user (else the URL's, else `default`).
    #[serde(default)]
    pub username: Option<String>,
    /// The password. Prefer `password_file` or `TIERCACHE_REDIS_PASSWORD` (read by
    /// `tiercache serve` when neither is set here) to keep it out of the config file.
    #[serde(default)]
    pub password: Option<Secret>,
    /// A file holding the password (one line; a trailing newline is ignored), read at start.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// PEM CA certificates that sign the Redis server's certificate (`rediss://` only); without
    /// it the system roots are trusted.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate chain, for a Redis with `tls-auth-clients yes` (with `tls_key_file`).
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("key_prefix", &self.key_prefix)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("password_file", &self.password_file)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .finish()
    }
}

impl RedisConfig {
    /// Returns a config for `url` with default timeouts.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            connect_timeout: default_connect_timeout(),
            response_timeout: default_response_timeout(),
            key_prefix: default_key_prefix(),
            username: None,
            password: None,
            password_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }

    /// Fills the password from `TIERCACHE_REDIS_PASSWORD` (`env`, read by the CLI) when the file
    /// sets neither `password` nor `password_file`; the file wins otherwise.
    pub fn with_password_env(mut self, env: Option<String>) -> Self {
        if self.password.is_none() && self.password_file.is_none() {
            if let Some(password) = env.filter(|p| !p.is_empty()) {
                self.password = Some(Secret::new(password));
            }
        }
        self
    }

    /// Returns the store's connection options, reading the password and certificate files; a
    /// file that cannot be read is an error naming its field.
    pub fn options(&self) -> Result<RedisOptions, ConfigError> {
        let password = match (&self.password, &self.password_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(path)) => {
                let text = read_file("redis.password_file", path)?;
                let text = String::from_utf8(text).map_err(|_| {
                    invalid_field(
                        "redis.password_file".into(),
                        format!("{} is not UTF-8 text", path.display()),
                    )
                })?;
                let password = text.trim_end_matches(['\n', '\r']);
                if password.is_empty() {
                    return Err(invalid_field(
                        "redis.password_file".into(),
                        format!("{} is empty", path.display()),
                    ));
                }
                Some(Secret::new(password))
            }
            (None, None) => None,
        };
        // Without a password redis-rs sends no AUTH: the connection would silently be the
        // `default` user's.
        if self.username.is_some() && password.is_none() && !url_has_password(&self.url) {
            return Err(invalid_field(
                "redis.password".into(),
                "redis.username is set but no password: set redis.password, \
                 redis.password_file or TIERCACHE_REDIS_PASSWORD"
                    .into(),
            ));
        }
        let ca_pem = self
            .tls_ca_file
            .as_ref()
            .map(|p| read_file("redis.tls_ca_file", p))
            .transpose()?;
        let client = match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => {
                let cert = read_file("redis.tls_cert_file", cert)?;
                let key = read_file("redis.tls_key_file", key)?;
                let key = String::from_utf8(key).map_err(|_| {
                    invalid_field("redis.tls_key_file".into(), "is not PEM text".into())
                })?;
                Some((cert, Secret::new(key)))
            }
            _ => None,
        };
        Ok(RedisOptions {
            url: self.url.clone(),
            connect_timeout: self.connect_timeout,
            response_timeout: self.response_timeout,
            key_prefix: self.key_prefix.clone(),
            username: self.username.clone(),
            password,
            tls: RedisTls { ca_pem, client },
        })
    }

    /// Checks the fields against each other (files are read later, by [`RedisConfig::options`]).
    fn validate(&self) -> Result<(), ConfigError> {
        let url = &self.url;
        if !(url.starts_with("redis://")
            || url.starts_with("rediss://")
            || url.starts_with("unix://"))
        {
            return Err(invalid_field(
                "redis.url".into(),
                "must start with redis://, rediss:// or unix://".into(),
            ));
        }
        if let Err(why) = tiercache_core::keys::validate_key_prefix(&self.key_prefix) {
            return Err(invalid_field("redis.key_prefix".into(), why));
        }
        if self.password.is_some() && self.password_file.is_some() {
            return Err(invalid_field(
                "redis.password_file".into(),
                "set redis.password or redis.password_file, not both".into(),
            ));
        }
        if (self.password.is_some() || self.password_file.is_some()) && url_has_password(url) {
            return Err(invalid_field(
                "redis.password".into(),
                "redis.url carries a password too; keep one of them".into(),
            ));
        }
        let tls_files = [
            ("redis.tls_ca_file", &self.tls_ca_file),
            ("redis.tls_cert_file", &self.tls_cert_file),
            ("redis.tls_key_file", &self.tls_key_file),
        ];
        for (field, file) in tls_files {
            if file.is_some() && !url.starts_with("rediss://") {
                return Err(invalid_field(
                    field.into(),
                    "needs a rediss:// redis.url (TLS)".into(),
                ));
            }
        }
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(_), None) => Err(invalid_field(
                "redis.tls_key_file".into(),
                "must be set with redis.tls_cert_file".into(),
            )),
            (None, Some(_)) => Err(invalid_field(
                "redis.tls_cert_file".into(),
                "must be set with redis.tls_key_file".into(),
            )),
            _ => Ok(()),
        }
    }
}

/// Whether a URL's userinfo holds a password (`scheme://user:password@…`).
fn url_has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

/// Reads a file a config field names; an error names the field.
fn read_file(field: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path)
        .map_err(|e| invalid_field(field.into(), format!("cannot read {}: {e}", path.display())))
}

/// A [`ConfigError::Invalid`] naming `field`.
fn invalid_field(field: String, message: String) -> ConfigError {
    ConfigError::Invalid { field, message }
}

fn default_key_prefix() -> String {
    tiercache_core::keys::DEFAULT_KEY_PREFIX.to_string()
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_response_timeout() -> Duration {
    Duration::from_secs(1)
}

/// Traces, metrics and the admin HTTP port.
///
/// The OpenTelemetry fields left out of the file take the standard `OTEL_*` variables (see
/// [`OtelEnv`], read by the CLI and passed in with [`TelemetryConfig::with_env`]); a field set in
/// the file wins over its variable.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Whether the admin HTTP port serves Prometheus text on `/metrics`. `false` turns the admin
    /// port off; metrics still go out by OTLP when an endpoint is set.
    pub metrics: bool,
    /// The admin HTTP address (`/metrics`).
    pub admin_listen: SocketAddr,
    /// The OTLP/gRPC collector, like `http://127.0.0.1:4317` (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    /// Without one nothing is exported by OTLP.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of every span and metric (`OTEL_SERVICE_NAME`; default `tiercache`).
    pub service_name: Option<String>,
    /// Extra resource attributes (`OTEL_RESOURCE_ATTRIBUTES`, `k=v,k2=v2`); the file's keys win.
    pub resource_attributes: BTreeMap<String, String>,
    /// `always_on`, `always_off`, `traceidratio`, `parentbased_always_on`,
    /// `parentbased_always_off` or `parentbased_traceidratio` (`OTEL_TRACES_SAMPLER`; default
    /// `parentbased_always_on`).
    pub traces_sampler: Option<String>,
    /// The ratio for the `traceidratio` samplers, 0.0..=1.0 (`OTEL_TRACES_SAMPLER_ARG`; default
    /// 1.0).
    pub traces_sampler_arg: Option<f64>,
    /// How often metrics are pushed by OTLP (`OTEL_METRIC_EXPORT_INTERVAL` in ms; default 60s).
    #[serde(default, with = "humantime_serde")]
    pub metrics_export_interval: Option<Duration>,
    /// SHA-256 (hex) of the bearer token `/metrics` then requires (`Authorization: Bearer
    /// <token>`); unset = open (the admin port binds loopback by default).
    pub admin_token_sha256: Option<TokenHash>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            metrics: true,
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            otlp_endpoint: None,
            service_name: None,
            resource_attributes: BTreeMap::new(),
            traces_sampler: None,
            traces_sampler_arg: None,
            metrics_export_interval: None,
            admin_token_sha256: None,
        }
    }
}

/// The sampler names `traces_sampler` accepts.
pub const SAMPLERS: [&str; 6] = [
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
];

/// The standard OpenTelemetry environment variables the server understands, read once by the
/// caller (the CLI) and passed in, so nothing deeper reads the environment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OtelEnv {
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub exporter_otlp_endpoint: Option<String>,
    /// `OTEL_SERVICE_NAME`.
    pub service_name: Option<String>,
    /// `OTEL_RESOURCE_ATTRIBUTES`, unparsed.
    pub resource_attributes: Option<String>,
    /// `OTEL_TRACES_SAMPLER`.
    pub traces_sampler: Option<String>,
    /// `OTEL_TRACES_SAMPLER_ARG`, unparsed.
    pub traces_sampler_arg: Option<String>,
    /// `OTEL_METRIC_EXPORT_INTERVAL` (milliseconds), unparsed.
    pub metric_export_interval: Option<String>,
}

impl OtelEnv {
    /// Reads the variables through `get` (for example `|k| std::env::var(k).ok()`); empty
    /// values count as unset.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        Self {
            exporter_otlp_endpoint: get("OTEL_EXPORTER_OTLP_ENDPOINT"),
            service_name: get("OTEL_SERVICE_NAME"),
            resource_attributes: get("OTEL_RESOURCE_ATTRIBUTES"),
            traces_sampler: get("OTEL_TRACES_SAMPLER"),
            traces_sampler_arg: get("OTEL_TRACES_SAMPLER_ARG"),
            metric_export_interval: get("OTEL_METRIC_EXPORT_INTERVAL"),
        }
    }
}

impl TelemetryConfig {
    /// Returns this config with the fields the file left out taken from `env`. A variable that
    /// cannot be parsed fails with its name.
    pub fn with_env(mut self, env: &OtelEnv) -> Result<Self, ConfigError> {
        let invalid = |field: &str, message: String| ConfigError::Invalid {
            field: field.into(),
            message,
        };
        if self.otlp_endpoint.is_none() {
            self.otlp_endpoint = env.exporter_otlp_endpoint.clone();
        }
        if self.service_name.is_none() {
            self.service_name = env.service_name.clone();
        }
        if let Some(attrs) = &env.resource_attributes {
            for pair in attrs.split(',').filter(|p| !p.trim().is_empty()) {
                let (k, v) = pair.split_once('=').ok_or_else(|| {
                    invalid(
                        "OTEL_RESOURCE_ATTRIBUTES",
                        format!("{pair:?} is not key=value"),
                    )
                })?;
                self.resource_attributes
                    .entry(k.trim().to_string())
                    .or_insert_with(|| v.trim().to_string());
            }
        }
        if self.traces_sampler.is_none() {
            self.traces_sampler = env.traces_sampler.clone();
        }
        if self.traces_sampler_arg.is_none() {
            if let Some(arg) = &env.traces_sampler_arg {
                self.traces_sampler_arg = Some(arg.trim().parse().map_err(|_| {
                    invalid(
                        "OTEL_TRACES_SAMPLER_ARG",
                        format!("{arg:?} is not a number"),
                    )
                })?);
            }
        }
        if self.metrics_export_interval.is_none() {
            if let Some(ms) = &env.metric_export_interval {
                let ms: u64 = ms.trim().parse().map_err(|_| {
                    invalid(
                        "OTEL_METRIC_EXPORT_INTERVAL",
                        format!("{ms:?} is not a number of milliseconds"),
                    )
                })?;
                self.metrics_export_interval = Some(Duration::from_millis(ms));
            }
        }
        Ok(self)
    }

    /// The effective `service.name`.
    pub fn service_name(&self) -> &str {
        self.service_name.as_deref().unwrap_or("tiercache")
    }

    /// The effective sampler name.
    pub fn traces_sampler(&self) -> &str {
        self.traces_sampler
            .as_deref()
            .unwrap_or("parentbased_always_on")
    }

    /// The effective sampler ratio.
    pub fn traces_sampler_arg(&self) -> f64 {
        self.traces_sampler_arg.unwrap_or(1.0)
    }

    /// The effective OTLP metrics push interval.
    pub fn metrics_export_interval(&self) -> Duration {
        self.metrics_export_interval
            .unwrap_or(Duration::from_secs(60))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, message: String| ConfigError::Invalid {
            field: format!("telemetry.{field}"),
            message,
        };
        if !SAMPLERS.contains(&self.traces_sampler()) {
            return Err(invalid(
                "traces_sampler",
                format!(
                    "{:?} is not one of {}",
                    self.traces_sampler(),
                    SAMPLERS.join(", ")
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.traces_sampler_arg()) {
            return Err(invalid(
                "traces_sampler_arg",
                "must be between 0.0 and 1.0".into(),
            ));
        }
        if let Some(e) = &self.otlp_endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(invalid(
                    "otlp_endpoint",
                    "must start with http:// or https://".into(),
                ));
            }
        }
        if self.metrics_export_interval().is_zero() {
            return Err(invalid(
                "metrics_export_interval",
                "must be more than 0s".into(),
            ));
        }
        if self.service_name().is_empty() {
            return Err(invalid("service_name", "must not be empty".into()));
        }
        if let Some(h) = &self.admin_token_sha256 {
            h.bytes().map_err(|m| invalid("admin_token_sha256", m))?;
        }
        Ok(())
    }
}

/// Request limits enforced before any tier is touched.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// The most keys or items in one batch call (GetMany, SetMany, GetOrSetMany, FillMany).
    pub max_batch: usize,
    /// The most requests one Pipeline stream may have in flight before it stops reading.
    pub pipeline_max_in_flight: usize,
    /// The most namespaces created on first use (dynamic namespaces); past it a request naming
    /// a new one gets RESOURCE_EXHAUSTED (`TOO_MANY_NAMESPACES`). Listed namespaces do not count.
    pub max_namespaces: usize,
    /// The most value bytes one reply may carry: a GetMany or GetOrSetMany, or one Pipeline
    /// answer. Past it the call is refused (`RESOURCE_EXHAUSTED`, `REPLY_TOO_LARGE`) before
    /// Redis returns the values.
    pub max_reply_bytes: u64,
    /// The largest gRPC message the server decodes or encodes, on every service. Clients
    /// should accept messages this large (the Rust SDK's default matches).
    pub max_message_bytes: usize,
    /// How many events a Watch stream may have queued for a slow consumer; past it the stream
    /// ends with `RESOURCE_EXHAUSTED` (`WATCH_OVERFLOW`) instead of buffering more.
    pub watch_buffer: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_batch: 1000,
            pipeline_max_in_flight: 1024,
            max_reply_bytes: 8 * 1024 * 1024,
            max_message_bytes: 16 * 1024 * 1024,
            watch_buffer: 1024,
            max_namespaces: tiercache_core::engine::DEFAULT_MAX_NAMESPACES,
        }
    }
}

/// The L1 tier: one in-process cache that every namespace shares.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct L1Config {
    /// The server-wide L1 budget in bytes (keys, values and per-entry bookkeeping), shared by
    /// every namespace; past it the least useful entries are evicted.
    pub max_bytes: u64,
}

impl Default for L1Config {
    fn default() -> Self {
        Self {
            max_bytes: tiercache_core::l1::DEFAULT_L1_MAX_BYTES,
        }
    }
}

/// HTTP/2 and TCP settings of the gRPC listener: they bound what one connection may hold and
/// find clients that vanished without closing their connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The most concurrent streams (RPCs) one HTTP/2 connection may open.
    pub http2_max_concurrent_streams: u32,
    /// How often the server pings an HTTP/2 connection; `0s` turns pings off.
    #[serde(with = "humantime_serde")]
    pub http2_keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection, and every RPC on it, is closed.
    #[serde(with = "humantime_serde")]
    pub http2_keepalive_timeout: Duration,
    /// TCP keepalive idle time of accepted connections; `0s` turns it off.
    #[serde(with = "humantime_serde")]
    pub tcp_keepalive: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            http2_max_concurrent_streams: 1024,
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(10),
            tcp_keepalive: Duration::from_secs(60),
        }
    }
}

/// `None` for a zero duration (the setting is off).
pub(crate) fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

/// Policy overrides; every field left out keeps the value from `defaults` (or the built-in default).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    #[serde(default, with = "humantime_serde")]
    pub default_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub max_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub stale_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub negative_ttl: Option<Duration>,
    pub jitter: Option<f64>,
    pub l1_enabled: Option<bool>,
    pub l1_max_bytes: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    pub l1_max_ttl: Option<Duration>,
    pub max_value_bytes: Option<usize>,
    pub max_key_bytes: Option<usize>,
    pub max_tags: Option<usize>,
    pub max_tag_bytes: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub lease_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub max_wait: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub lease_ttl_max: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub lock_ttl_max: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub max_wait_max: Option<Duration>,
    /// Requests per second on the namespace, all principals together (not an engine policy:
    /// the server enforces it; see [`Config::namespace_rate_limit`]).
    pub rate_limit: Option<RateLimit>,
}

impl PolicyConfig {
    /// Returns `base` with this config's fields laid over it.
    pub fn apply(&self, base: &NamespacePolicy) -> NamespacePolicy {
        let mut p = base.clone();
        macro_rules! over {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { p.$f = v; } )* };
        }
        over!(
            default_ttl,
            max_ttl,
            stale_ttl,
            negative_ttl,
            jitter,
            l1_enabled,
            l1_max_bytes,
            l1_max_ttl,
            max_value_bytes,
            max_key_bytes,
            max_tags,
            max_tag_bytes,
            lease_ttl,
            max_wait,
            lease_ttl_max,
            lock_ttl_max,
            max_wait_max
        );
        p
    }
}

/// A configuration that cannot be used; the message names the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid config: {field}: {message}")]
    Invalid { field: String, message: String },
}

impl Config {
    /// Reads and checks a TOML config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Parses and checks TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "<inline>".into(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Returns the policy every dynamic namespace gets.
    pub fn default_policy(&self) -> NamespacePolicy {
        self.defaults.apply(&NamespacePolicy::default())
    }

    /// Returns the listed namespaces with their effective policies.
    pub fn namespace_policies(&self) -> Vec<(String, NamespacePolicy)> {
        let base = self.default_policy();
        self.namespaces
            .iter()
            .map(|(name, over)| (name.clone(), over.apply(&base)))
            .collect()
    }

    /// Checks every field, naming the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: String, message: String| ConfigError::Invalid { field, message };
        self.default_policy()
            .check()
            .map_err(|m| invalid("defaults".into(), m))?;
        for (name, policy) in self.namespace_policies() {
            if !is_valid_namespace(&name) {
                return Err(invalid(
                    format!("namespaces.{name}"),
                    "namespace names must match [a-z0-9][a-z0-9_.-]{0,63}".into(),
                ));
            }
            policy
                .check()
                .map_err(|m| invalid(format!("namespaces.{name}"), m))?;
        }
        if self.limits.max_batch == 0 {
            return Err(invalid(
                "limits.max_batch".into(),
                "must be at least 1".into(),
            ));
        }
        if self.limits.max_namespaces > 100_000 {
            return Err(invalid(
                "limits.max_namespaces".into(),
                "must be at most 100000".into(),
            ));
        }
        if self.l1.max_bytes < 64 * 1024 {
            return Err(invalid(
                "l1.max_bytes".into(),
                "must be at least 65536".into(),
            ));
        }
        if self.limits.pipeline_max_in_flight == 0 {
            return Err(invalid(
                "limits.pipeline_max_in_flight".into(),
                "must be at least 1".into(),
            ));
        }
        if self.limits.max_message_bytes < 64 * 1024 {
            return Err(invalid(
                "limits.max_message_bytes".into(),
                "must be at least 65536".into(),
            ));
        }
        if self.limits.max_reply_bytes == 0
            || self.limits.max_reply_bytes >= self.limits.max_message_bytes as u64
        {
            return Err(invalid(
                "limits.max_reply_bytes".into(),
                "must be at least 1 and less than limits.max_message_bytes".into(),
            ));
        }
        // A value must fit in one message with its key, tags and framing.
        let room = self.limits.max_message_bytes.saturating_sub(64 * 1024);
        for (name, policy) in std::iter::once(("defaults".to_string(), self.default_policy()))
            .chain(self.namespace_policies())
        {
            if policy.max_value_bytes > room {
                return Err(invalid(
                    if name == "defaults" { name } else { format!("namespaces.{name}") },
                    format!(
                        "max_value_bytes must leave 64 KiB of limits.max_message_bytes for the rest of a message (at most {room})"
                    ),
                ));
            }
        }
        if self.limits.watch_buffer == 0 {
            return Err(invalid(
                "limits.watch_buffer".into(),
                "must be at least 1".into(),
            ));
        }
        if self.server.http2_max_concurrent_streams == 0 {
            return Err(invalid(
                "server.http2_max_concurrent_streams".into(),
                "must be at least 1".into(),
            ));
        }
        if !self.server.http2_keepalive_interval.is_zero()
            && self.server.http2_keepalive_timeout.is_zero()
        {
            return Err(invalid(
                "server.http2_keepalive_timeout".into(),
                "must be more than 0s while keepalive pings are on".into(),
            ));
        }
        if let Some(redis) = &self.redis {
            redis.validate()?;
        }
        if self
            .tls
            .as_ref()
            .is_some_and(|t| t.reload_interval.is_zero())
        {
            return Err(invalid(
                "tls.reload_interval".into(),
                "must be more than 0s".into(),
            ));
        }
        self.telemetry.validate()?;
        if let Some(r) = &self.defaults.rate_limit {
            r.check("defaults.rate_limit")?;
        }
        for (name, p) in &self.namespaces {
            if let Some(r) = &p.rate_limit {
                r.check(&format!("namespaces.{name}.rate_limit"))?;
            }
        }
        if let Some(auth) = &self.auth {
            auth.validate()?;
        }
        Ok(())
    }

    /// The rate limit of namespace `name`: its own, else `defaults.rate_limit`.
    pub fn namespace_rate_limit(&self, name: &str) -> Option<RateLimit> {
        self.namespaces
            .get(name)
            .and_then(|p| p.rate_limit)
            .or(self.defaults.rate_limit)
    }

    /// Whether gRPC reflection is served on a listener bound to `listen`.
    pub fn reflection_on(&self, listen: SocketAddr) -> bool {
        self.reflection.unwrap_or(listen.ip().is_loopback())
    }

    /// Refuses a listener bound to a non-loopback address without `[auth]`, unless
    /// `allow_insecure` is set (then the caller warns).
    pub fn check_exposure(&self, listen: SocketAddr) -> Result<(), ConfigError> {
        if listen.ip().is_loopback() || self.auth.is_some() || self.allow_insecure {
            return Ok(());
        }
        Err(ConfigError::Invalid {
            field: "auth".into(),
            message: format!(
                "listen {listen} is not a loopback address and no [auth] is configured: anyone who \
                 reaches the port could read, overwrite and flush every namespace; configure \
                 [auth] (docs/security.md), or set allow_insecure = true to serve without it"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_memory_only_with_default_namespace() {
        let c = Config::default();
        assert!(c.redis.is_none());
        assert!(c.dynamic_namespaces);
        assert_eq!(c.listen.to_string(), "127.0.0.1:50051");
        assert!(c.namespaces.contains_key("default"));
        c.validate().unwrap();
    }

    #[test]
    fn parses_full_file() {
        let c = Config::from_toml(
            r#"
            listen = "0.0.0.0:6000"
            dynamic_namespaces = false
            shutdown_grace = "3s"
            [redis]
            url = "redis://127.0.0.1:6379"
            response_timeout = "250ms"
            [defaults]
            default_ttl = "1m"
            stale_ttl = "30s"
            [namespaces.users]
            max_ttl = "1h"
            jitter = 0.1
            "#,
        )
        .unwrap();
        let p = &c.namespace_policies()[0];
        assert_eq!(p.0, "users");
        assert_eq!(p.1.default_ttl, Duration::from_secs(60));
        assert_eq!(p.1.stale_ttl, Duration::from_secs(30));
        assert_eq!(p.1.max_ttl, Duration::from_secs(3600));
        assert_eq!(
            c.redis.unwrap().response_timeout,
            Duration::from_millis(250)
        );
    }

    #[test]
    fn tls_section_parses_with_defaults() {
        let c = Config::from_toml("[tls]\ncert_file = \"/t/tls.crt\"\nkey_file = \"/t/tls.key\"\n")
            .unwrap();
        assert_eq!(c.tls, Some(TlsConfig::new("/t/tls.crt", "/t/tls.key")));
        assert_eq!(c.tls.unwrap().reload_interval, Duration::from_secs(10));
        let c = Config::from_toml(
            "[tls]\ncert_file = \"a\"\nkey_file = \"b\"\nclient_ca_file = \"c\"\nreload_interval = \"250ms\"\n",
        )
        .unwrap();
        let t = c.tls.unwrap();
        assert_eq!(t.client_ca_file, Some(PathBuf::from("c")));
        assert_eq!(t.reload_interval, Duration::from_millis(250));
        let e = Config::from_toml(
            "[tls]\ncert_file = \"a\"\nkey_file = \"b\"\nreload_interval = \"0s\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("tls.reload_interval"), "{e}");
        let e = Config::from_toml("[tls]\ncert_file = \"a\"\nkey_fil = \"b\"\n").unwrap_err();
        assert!(e.to_string().contains("key_fil"), "{e}");
    }

    #[test]
    fn unknown_field_is_named() {
        let e = Config::from_toml("[defaults]\ndefault_tll = \"1s\"\n").unwrap_err();
        assert!(e.to_string().contains("default_tll"), "{e}");
        let e = Config::from_toml("listn = \"1.2.3.4:5\"\n").unwrap_err();
        assert!(e.to_string().contains("listn"), "{e}");
    }

    #[test]
    fn telemetry_file_wins_over_environment() {
        let c = Config::from_toml(
            r#"
            [telemetry]
            service_name = "from-file"
            resource_attributes = { "deployment.environment.name" = "prod" }
            "#,
        )
        .unwrap();
        let env = OtelEnv::from_lookup(|k| {
            match k {
                "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://collector:4317"),
                "OTEL_SERVICE_NAME" => Some("from-env"),
                "OTEL_RESOURCE_ATTRIBUTES" => Some("deployment.environment.name=dev,team=a"),
                "OTEL_TRACES_SAMPLER" => Some("parentbased_traceidratio"),
                "OTEL_TRACES_SAMPLER_ARG" => Some("0.25"),
                "OTEL_METRIC_EXPORT_INTERVAL" => Some("5000"),
                _ => None,
            }
            .map(String::from)
        });
        let t = c.telemetry.with_env(&env).unwrap();
        assert_eq!(t.otlp_endpoint.as_deref(), Some("http://collector:4317"));
        assert_eq!(t.service_name(), "from-file");
        assert_eq!(t.resource_attributes["deployment.environment.name"], "prod");
        assert_eq!(t.resource_attributes["team"], "a");
        assert_eq!(t.traces_sampler(), "parentbased_traceidratio");
        assert_eq!(t.traces_sampler_arg(), 0.25);
        assert_eq!(t.metrics_export_interval(), Duration::from_secs(5));
        assert!(t.metrics, "/metrics is on by default");
    }

    #[test]
    fn bad_telemetry_names_the_field() {
        let e = Config::from_toml("[telemetry]\ntraces_sampler = \"sometimes\"\n").unwrap_err();
        assert!(e.to_string().contains("telemetry.traces_sampler"), "{e}");
        let e = Config::from_toml("[telemetry]\nmetric = true\n").unwrap_err();
        assert!(e.to_string().contains("metric"), "{e}");
        let env = OtelEnv {
            traces_sampler_arg: Some("half".into()),
            ..OtelEnv::default()
        };
        let e = TelemetryConfig::default().with_env(&env).unwrap_err();
        assert!(e.to_string().contains("OTEL_TRACES_SAMPLER_ARG"), "{e}");
    }

    #[test]
    fn server_limits_have_safe_defaults_and_are_checked() {
        let c = Config::default();
        assert_eq!(c.limits.max_reply_bytes, 8 * 1024 * 1024);
        assert_eq!(c.limits.max_message_bytes, 16 * 1024 * 1024);
        assert_eq!(c.server.http2_max_concurrent_streams, 1024);
        assert_eq!(c.server.http2_keepalive_interval, Duration::from_secs(30));
        assert_eq!(c.server.http2_keepalive_timeout, Duration::from_secs(10));
        assert_eq!(c.server.tcp_keepalive, Duration::from_secs(60));
        let e = Config::from_toml("[limits]\nmax_reply_bytes = 16777216\n").unwrap_err();
        assert!(e.to_string().contains("limits.max_reply_bytes"), "{e}");
        let e =
            Config::from_toml("[limits]\nmax_message_bytes = 1048576\nmax_reply_bytes = 1000\n")
                .unwrap_err();
        assert!(e.to_string().contains("defaults"), "{e}");
        let e = Config::from_toml("[server]\nhttp2_max_concurrent_streams = 0\n").unwrap_err();
        assert!(
            e.to_string()
                .contains("server.http2_max_concurrent_streams"),
            "{e}"
        );
        let c = Config::from_toml(
            "[server]\nhttp2_keepalive_interval = \"0s\"\ntcp_keepalive = \"0s\"\n",
        )
        .unwrap();
        assert_eq!(nonzero(c.server.tcp_keepalive), None);
    }

    #[test]
    fn bad_values_name_the_field() {
        let e = Config::from_toml("[namespaces.Bad]\n").unwrap_err();
        assert!(e.to_string().contains("namespaces.Bad"), "{e}");
        let e = Config::from_toml("[namespaces.a]\njitter = 2.0\n").unwrap_err();
        assert!(e.to_string().contains("jitter"), "{e}");
        let e = Config::from_toml("[redis]\nurl = \"http://x\"\n").unwrap_err();
        assert!(e.to_string().contains("redis.url"), "{e}");
        for bad in ["", "a{b}", "tc*"] {
            let toml = format!("[redis]\nurl = \"redis://x\"\nkey_prefix = \"{bad}\"\n");
            let e = Config::from_toml(&toml).unwrap_err();
            assert!(e.to_string().contains("redis.key_prefix"), "{e}");
        }
        let c = Config::from_toml("[redis]\nurl = \"redis://x\"\nkey_prefix = \"app1\"\n").unwrap();
        assert_eq!(c.redis.unwrap().key_prefix, "app1");
    }

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn auth_parses_as_agreed() {
        let c = Config::from_toml(&format!(
            r#"
            listen = "0.0.0.0:50051"
            allow_insecure = false
            reflection = true
            [auth]
            tokens_file = "/etc/tiercache/tokens/tokens"
            [auth.principals.checkout]
            token_sha256 = ["{HASH}"]
            client_cert_names = ["checkout.prod.svc"]
            rate_limit = {{ per_second = 1000, burst = 2000 }}
            [auth.principals.checkout.rights]
            "checkout*" = ["read", "write", "invalidate", "lock"]
            "shared" = ["read", "admin"]
            [defaults]
            rate_limit = {{ per_second = 5000, burst = 10000 }}
            [namespaces.checkout]
            rate_limit = {{ per_second = 100, burst = 200 }}
            [telemetry]
            admin_listen = "127.0.0.1:9464"
            admin_token_sha256 = "{HASH}"
            "#
        ))
        .unwrap();
        let auth = c.auth.as_ref().unwrap();
        let p = &auth.principals["checkout"];
        assert_eq!(p.rate_limit.unwrap().burst(), 2000);
        assert_eq!(p.rights["shared"], ["read", "admin"]);
        assert_eq!(c.namespace_rate_limit("checkout").unwrap().per_second, 100);
        assert_eq!(c.namespace_rate_limit("other").unwrap().per_second, 5000);
        assert_eq!(c.reflection, Some(true));
        // Hashes never show in Debug output.
        let debug = format!("{c:?}");
        assert!(!debug.contains(HASH), "{debug}");
        assert!(debug.contains("redacted"), "{debug}");
    }

    #[test]
    fn bad_auth_names_the_field() {
        let cases = [
            (
                "[auth.principals.a]\ntoken_sha256 = [\"abc\"]\n",
                "auth.principals.a.token_sha256[0]",
            ),
            (
                "[auth.principals.a.rights]\n\"x\" = [\"reed\"]\n",
                "auth.principals.a.rights.\"x\"",
            ),
            (
                "[auth.principals.a.rights]\n\"X*\" = [\"read\"]\n",
                "auth.principals.a.rights.\"X*\"",
            ),
            (
                "[auth.principals.a.rights]\n\"a*b\" = [\"read\"]\n",
                "auth.principals.a.rights.\"a*b\"",
            ),
            ("[auth.principals.a]\ntokens = []\n", "tokens"),
            ("[auth]\ntoken_file = \"x\"\n", "token_file"),
            ("[auth.principals.\"a b\"]\n", "auth.principals.a b"),
            (
                "[auth.principals.a]\nrate_limit = { per_second = 0 }\n",
                "auth.principals.a.rate_limit",
            ),
            (
                "[defaults]\nrate_limit = { per_second = 0 }\n",
                "defaults.rate_limit",
            ),
            (
                "[namespaces.n]\nrate_limit = { per_second = 1, burst = 0 }\n",
                "namespaces.n.rate_limit",
            ),
            (
                "[telemetry]\nadmin_token_sha256 = \"zz\"\n",
                "telemetry.admin_token_sha256",
            ),
        ];
        for (toml, field) in cases {
            let e = Config::from_toml(toml).unwrap_err();
            assert!(e.to_string().contains(field), "{toml}: {e}");
        }
        // The same hash for two principals is ambiguous.
        let e = Config::from_toml(&format!(
            "[auth.principals.a]\ntoken_sha256 = [\"{HASH}\"]\n[auth.principals.b]\ntoken_sha256 = [\"{HASH}\"]\n"
        ))
        .unwrap_err();
        assert!(
            e.to_string().contains("auth.principals.b.token_sha256[0]"),
            "{e}"
        );
        assert!(!e.to_string().contains(HASH), "{e}");
    }

    #[test]
    fn non_loopback_listen_needs_auth_or_allow_insecure() {
        let open: SocketAddr = "0.0.0.0:50051".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:50051".parse().unwrap();
        let c = Config::default();
        let e = c.check_exposure(open).unwrap_err().to_string();
        assert!(e.contains("auth") && e.contains("allow_insecure"), "{e}");
        c.check_exposure(local).unwrap();
        let c = Config::from_toml("allow_insecure = true\n").unwrap();
        c.check_exposure(open).unwrap();
        let c = Config::from_toml("[auth]\n").unwrap();
        c.check_exposure(open).unwrap();
        // Reflection follows the listen address unless set.
        assert!(Config::default().reflection_on(local));
        assert!(!Config::default().reflection_on(open));
        assert!(Config::from_toml("reflection = true\n")
            .unwrap()
            .reflection_on(open));
    }

    #[test]
    fn token_lines_parse_and_errors_hide_the_hash() {
        let lines = parse_token_lines(
            "f",
            &format!("# c\n\napp {HASH} # x\n;ops {}", HASH.to_uppercase()),
        )
        .unwrap();
        assert_eq!(
            lines,
            [
                ("app".to_string(), HASH.to_string()),
                ("ops".to_string(), HASH.to_string())
            ]
        );
        let e = parse_token_lines("f", &format!("app {HASH} extra")).unwrap_err();
        assert!(
            e.to_string().contains("f line 1") && !e.to_string().contains(HASH),
            "{e}"
        );
    }

    #[test]
    fn redis_credentials_and_tls_settings_are_checked_together() {
        let err = |toml: &str| Config::from_toml(toml).unwrap_err().to_string();
        let e = err("[redis]\nurl = \"redis://x\"\npassword = \"a\"\npassword_file = \"/p\"\n");
        assert!(e.contains("redis.password_file"), "{e}");
        let e = err("[redis]\nurl = \"redis://u:pw@x\"\npassword = \"a\"\n");
        assert!(e.contains("redis.password") && !e.contains("pw@"), "{e}");
        let e = err("[redis]\nurl = \"redis://x\"\ntls_ca_file = \"/ca\"\n");
        assert!(
            e.contains("redis.tls_ca_file") && e.contains("rediss://"),
            "{e}"
        );
        let e = err("[redis]\nurl = \"rediss://x\"\ntls_cert_file = \"/c\"\n");
        assert!(e.contains("redis.tls_key_file"), "{e}");
        let e = err("[redis]\nurl = \"rediss://x\"\ntls_key_file = \"/k\"\n");
        assert!(e.contains("redis.tls_cert_file"), "{e}");
        let c = Config::from_toml(
            "[redis]\nurl = \"rediss://x:6380/0\"\nusername = \"tiercache\"\n\
             password_file = \"/p\"\ntls_ca_file = \"/ca\"\ntls_cert_file = \"/c\"\n\
             tls_key_file = \"/k\"\n",
        )
        .unwrap();
        let r = c.redis.unwrap();
        assert_eq!(r.username.as_deref(), Some("tiercache"));
        assert_eq!(r.password_file.as_deref(), Some(Path::new("/p")));
    }

    #[test]
    fn the_password_environment_variable_fills_only_an_unset_password() {
        let env = Some("from-env".to_string());
        let r = RedisConfig::new("redis://x").with_password_env(env.clone());
        assert_eq!(r.password.as_ref().map(Secret::expose), Some("from-env"));
        let r = RedisConfig {
            password: Some(Secret::new("from-file")),
            ..RedisConfig::new("redis://x")
        }
        .with_password_env(env.clone());
        assert_eq!(r.password.as_ref().map(Secret::expose), Some("from-file"));
        let r = RedisConfig {
            password_file: Some("/p".into()),
            ..RedisConfig::new("redis://x")
        }
        .with_password_env(env);
        assert!(r.password.is_none());
    }

    #[test]
    fn redis_debug_shows_no_password() {
        let c =
            Config::from_toml("[redis]\nurl = \"redis://app:url-pw@x:6379/0\"\n[namespaces.a]\n")
                .unwrap();
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("url-pw") && debug.contains("redis://app:***@x:6379/0"),
            "{debug}"
        );
        let c = Config::from_toml("[redis]\nurl = \"redis://x\"\npassword = \"cfg-pw\"\n").unwrap();
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("cfg-pw") && debug.contains("***"),
            "{debug}"
        );
    }
}
