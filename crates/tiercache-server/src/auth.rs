//! Authentication, authorization and rate limits (docs/security.md).
//!
//! # Components
//! - [`Auth`]: the credentials of `[auth]` (token hashes from the config, `TIERCACHE_AUTH_TOKENS`
//!   and `tokens_file`, client certificate names) mapped to [`Principal`]s.
//! - [`AuthLayer`]: the tower layer on the tonic server. Every request but health must carry a
//!   known credential (`authorization: Bearer <token>`, or a verified client certificate in the
//!   connection's [`PeerIdentity`]); its principal goes into the request's extensions as a
//!   [`Caller`]. Otherwise UNAUTHENTICATED, before any service runs.
//! - [`Guard`] and [`Access`]: what the services ask where they resolve a namespace: does the
//!   caller hold the right (PERMISSION_DENIED naming it), and is there room in the principal's
//!   and the namespace's token buckets (RESOURCE_EXHAUSTED with RetryInfo).
//!
//! With auth off (no `[auth]`) there is no layer and every caller holds every right; rate limits
//! of namespaces still apply.

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use opentelemetry::metrics::Counter;
use opentelemetry::KeyValue;
use parking_lot::{Mutex, RwLock};
use sha2::{Digest, Sha256};

use crate::config::{parse_token_line, AuthConfig, Config, ConfigError, RateLimit};
use crate::error::ApiError;
use crate::identity::PeerIdentity;

/// How often `tokens_file` is checked for changes.
pub const TOKENS_FILE_POLL: Duration = Duration::from_secs(1);

/// What a principal may do in a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Right {
    /// Get, GetMany, Watch, GetOrSet hits and waits, Pipeline gets.
    Read,
    /// Set, SetMany, Delete, GetOrSet leases, Fill, FillMany, ReleaseLease, Pipeline sets and
    /// deletes.
    Write,
    /// InvalidateTags, FlushNamespace.
    Invalidate,
    /// The LockService.
    Lock,
    /// GetStats, ListNamespaces, Inspect.
    Admin,
}

impl Right {
    /// Every right.
    pub const ALL: [Right; 5] = [
        Right::Read,
        Right::Write,
        Right::Invalidate,
        Right::Lock,
        Right::Admin,
    ];

    /// The name used in the config and in errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Right::Read => "read",
            Right::Write => "write",
            Right::Invalidate => "invalidate",
            Right::Lock => "lock",
            Right::Admin => "admin",
        }
    }

    /// Parses a right's name.
    pub fn parse(s: &str) -> Result<Right, String> {
        Right::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("unknown right {s:?}; rights are read, write, invalidate, lock, admin")
            })
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A namespace pattern of a grant: an exact name, `prefix*`, or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Any,
    Exact(String),
    Prefix(String),
}

impl Pattern {
    /// Parses a pattern; a namespace name must match `[a-z0-9][a-z0-9_.-]{0,63}`, a prefix
    /// likewise (before its `*`).
    pub fn parse(s: &str) -> Result<Pattern, String> {
        if s == "*" {
            return Ok(Pattern::Any);
        }
        let valid_prefix = |p: &str| {
            !p.is_empty()
                && p.len() <= 64
                && p.bytes().enumerate().all(|(i, b)| {
                    b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || (i > 0 && matches!(b, b'_' | b'.' | b'-'))
                })
        };
        match s.strip_suffix('*') {
            Some(prefix) if valid_prefix(prefix) => Ok(Pattern::Prefix(prefix.to_string())),
            None if tiercache_core::policy::is_valid_namespace(s) => {
                Ok(Pattern::Exact(s.to_string()))
            }
            _ => Err(format!(
                "{s:?} is not a namespace pattern: an exact namespace name, a prefix followed by \
                 `*`, or `*`"
            )),
        }
    }

    fn matches(&self, ns: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(n) => n == ns,
            Pattern::Prefix(p) => ns.starts_with(p.as_str()),
        }
    }
}

/// Someone who can call: a name, rights per namespace pattern, and an optional rate limit.
pub struct Principal {
    /// The name from the config (a label of metrics; never a secret).
    pub name: Arc<str>,
    grants: Vec<(Pattern, u8)>,
    limiter: Option<DefaultDirectRateLimiter>,
}

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Principal")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Principal {
    fn rights_on(&self, ns: &str) -> u8 {
        self.grants
            .iter()
            .filter(|(p, _)| p.matches(ns))
            .fold(0, |acc, (_, bits)| acc | bits)
    }

    /// Whether this principal holds `right` on namespace `ns`.
    pub fn has(&self, right: Right, ns: &str) -> bool {
        self.rights_on(ns) & right.bit() != 0
    }

    /// Whether this principal holds any right on namespace `ns`.
    pub fn has_any(&self, ns: &str) -> bool {
        self.rights_on(ns) != 0
    }
}

/// The authenticated caller of a request, put in its extensions by [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<Principal>);

fn quota(r: RateLimit) -> Quota {
    let one = NonZeroU32::MIN;
    Quota::per_second(NonZeroU32::new(r.per_second).unwrap_or(one))
        .allow_burst(NonZeroU32::new(r.burst()).unwrap_or(one))
}

/// Returns the SHA-256 of `token`.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Returns the SHA-256 of `token` as 64 lowercase hex digits (what the config holds).
pub fn token_hash_hex(token: &str) -> String {
    token_hash(token)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Returns a new token: `tc_` and 32 random bytes as 64 hex digits.
pub fn generate_token() -> String {
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("tc_{hex}")
}

/// Why a request was not authenticated (the `reason` label of the refusals metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `authorization` header and no client certificate.
    Missing,
    /// A credential that maps to no principal (or a malformed header).
    Unknown,
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Refusal::Missing => "missing_credential",
            Refusal::Unknown => "unknown_credential",
        }
    }
}

/// The credentials of `[auth]` and the principals they map to.
pub struct Auth {
    principals: HashMap<String, Arc<Principal>>,
    /// Token hashes from the config (and `TIERCACHE_AUTH_TOKENS`, merged in by the CLI).
    config_tokens: HashMap<[u8; 32], Arc<Principal>>,
    /// The config's tokens plus the current `tokens_file`'s; swapped whole on reload.
    tokens: RwLock<Arc<HashMap<[u8; 32], Arc<Principal>>>>,
    certs: HashMap<String, Arc<Principal>>,
    tokens_file: Option<PathBuf>,
    /// The text of `tokens_file` last loaded.
    file_text: Mutex<Option<String>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("principals", &self.principals.keys().collect::<Vec<_>>())
            .field("tokens_file", &self.tokens_file)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// Builds the principals of `config` and loads `tokens_file` (a line naming an unknown
    /// principal, or a file that cannot be read, fails here).
    pub fn new(config: &AuthConfig) -> Result<Auth, ConfigError> {
        let mut principals = HashMap::new();
        let mut config_tokens = HashMap::new();
        let mut certs = HashMap::new();
        for (name, p) in &config.principals {
            let mut grants = Vec::new();
            for (pattern, rights) in &p.rights {
                let field = || format!("auth.principals.{name}.rights.{pattern:?}");
                let pattern = Pattern::parse(pattern).map_err(|m| ConfigError::Invalid {
                    field: field(),
                    message: m,
                })?;
                let mut bits = 0;
                for r in rights {
                    bits |= Right::parse(r)
                        .map_err(|m| ConfigError::Invalid {
                            field: field(),
                            message: m,
                        })?
                        .bit();
                }
                grants.push((pattern, bits));
            }
            let principal = Arc::new(Principal {
                name: Arc::from(name.as_str()),
                grants,
                limiter: p.rate_limit.map(|r| RateLimiter::direct(quota(r))),
            });
            for h in &p.token_sha256 {
                let bytes = h.bytes().map_err(|m| ConfigError::Invalid {
                    field: format!("auth.principals.{name}.token_sha256"),
                    message: m,
                })?;
                config_tokens.insert(bytes, principal.clone());
            }
            for c in &p.client_cert_names {
                certs.insert(c.clone(), principal.clone());
            }
            principals.insert(name.clone(), principal);
        }
        let auth = Auth {
            tokens: RwLock::new(Arc::new(config_tokens.clone())),
            principals,
            config_tokens,
            certs,
            tokens_file: config.tokens_file.clone(),
            file_text: Mutex::new(None),
        };
        if let Some(path) = &auth.tokens_file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
                field: "auth.tokens_file".into(),
                message: format!("cannot read {}: {e}", path.display()),
            })?;
            auth.load_file(&text, true)?;
        }
        Ok(auth)
    }

    /// Replaces the file's tokens with those of `text`. `strict` (at start) fails on a bad
    /// line; on reload a bad line is skipped with a warning naming its number, never its hash.
    fn load_file(&self, text: &str, strict: bool) -> Result<(), ConfigError> {
        let mut tokens = self.config_tokens.clone();
        let mut count = 0usize;
        for (i, line) in text.lines().enumerate() {
            let field = || format!("auth.tokens_file line {}", i + 1);
            let parsed = parse_token_line(line)
                .map_err(|message| ConfigError::Invalid {
                    field: field(),
                    message,
                })
                .and_then(|parsed| match parsed {
                    None => Ok(None),
                    Some((name, hash)) => match self.principals.get(&name) {
                        Some(p) => Ok(Some((p.clone(), hash))),
                        None => Err(ConfigError::Invalid {
                            field: field(),
                            message: format!(
                                "principal {name:?} is not listed in [auth.principals]"
                            ),
                        }),
                    },
                });
            match parsed {
                Ok(None) => {}
                Ok(Some((p, hash))) => {
                    if let Ok(bytes) = crate::config::parse_sha256_hex(&hash) {
                        tokens.insert(bytes, p);
                        count += 1;
                    }
                }
                Err(e) if strict => return Err(e),
                Err(e) => tracing::warn!(error = %e, "skipping a line of auth.tokens_file"),
            }
        }
        *self.tokens.write() = Arc::new(tokens);
        *self.file_text.lock() = Some(text.to_string());
        tracing::info!(tokens = count, "loaded auth.tokens_file");
        Ok(())
    }

    /// Re-reads `tokens_file` and applies it if it changed. A file that cannot be read keeps
    /// the tokens loaded last.
    pub fn reload(&self) {
        let Some(path) = &self.tokens_file else {
            return;
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                if self.file_text.lock().as_deref() != Some(text.as_str()) {
                    let _ = self.load_file(&text, false);
                }
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot re-read auth.tokens_file; keeping its last tokens")
            }
        }
    }

    /// Whether a tokens file is watched.
    pub fn watches_file(&self) -> bool {
        self.tokens_file.is_some()
    }

    /// Returns the principal a request's credentials name: its bearer token, else the verified
    /// client certificate of its connection.
    pub fn authenticate(
        &self,
        headers: &http::HeaderMap,
        peer: Option<&PeerIdentity>,
    ) -> Result<Arc<Principal>, Refusal> {
        if let Some(value) = headers.get(http::header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| {
                    let (scheme, token) = v.trim().split_once(' ')?;
                    scheme
                        .eq_ignore_ascii_case("bearer")
                        .then_some(token.trim())
                })
                .filter(|t| !t.is_empty())
                .ok_or(Refusal::Unknown)?;
            // A lookup on the hash: what is compared is not the secret, so the comparison's
            // timing tells an attacker nothing about a valid token.
            let hash = token_hash(token);
            return self
                .tokens
                .read()
                .get(&hash)
                .cloned()
                .ok_or(Refusal::Unknown);
        }
        match peer {
            Some(peer) if !peer.cert_names.is_empty() => peer
                .cert_names
                .iter()
                .find_map(|n| self.certs.get(n).cloned())
                .ok_or(Refusal::Unknown),
            _ => Err(Refusal::Missing),
        }
    }

    /// The principal named `name`.
    pub fn principal(&self, name: &str) -> Option<Arc<Principal>> {
        self.principals.get(name).cloned()
    }
}

/// The counters of refusals: `tiercache.auth.refusals{reason}` and
/// `tiercache.rate_limited{tiercache.limit, tiercache.namespace}`.
#[derive(Clone)]
pub struct SecurityCounters {
    pub auth_refusals: Counter<u64>,
    pub rate_limited: Counter<u64>,
}

/// The authorization and rate limits every service consults (one per server).
pub struct Guard {
    auth: Option<Arc<Auth>>,
    /// Listed namespaces with a rate limit (their own or `defaults.rate_limit`).
    listed: HashMap<String, DefaultDirectRateLimiter>,
    /// Every other namespace, one bucket each, when `defaults.rate_limit` is set.
    dynamic: Option<DefaultKeyedRateLimiter<String>>,
    /// Keyed buckets kept before old ones are dropped (namespaces are bounded by
    /// `limits.max_namespaces`; this bounds the store whatever happens).
    dynamic_cap: usize,
    counters: Option<SecurityCounters>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

impl Guard {
    /// Builds the guard of `config` over `auth` (`None` = auth off).
    pub fn new(config: &Config, auth: Option<Arc<Auth>>) -> Guard {
        let listed = config
            .namespaces
            .keys()
            .filter_map(|n| {
                config
                    .namespace_rate_limit(n)
                    .map(|r| (n.clone(), RateLimiter::direct(quota(r))))
            })
            .collect();
        Guard {
            auth,
            listed,
            dynamic: config
                .defaults
                .rate_limit
                .map(|r| RateLimiter::keyed(quota(r))),
            dynamic_cap: config.limits.max_namespaces.max(16) * 2,
            counters: None,
        }
    }

    /// A guard with auth off and no limits (every caller may do everything).
    pub fn open() -> Guard {
        Guard {
            auth: None,
            listed: HashMap::new(),
            dynamic: None,
            dynamic_cap: 0,
            counters: None,
        }
    }

    /// Counts refusals in `counters`, and creates their series at 0: every auth refusal reason,
    /// and a rate-limit series per limited listed namespace (and principal limit).
    pub fn with_counters(mut self, counters: SecurityCounters, namespaces: &[Arc<str>]) -> Self {
        if self.auth.is_some() {
            for r in [Refusal::Missing, Refusal::Unknown] {
                counters
                    .auth_refusals
                    .add(0, &[KeyValue::new("reason", r.as_str())]);
            }
            counters
                .auth_refusals
                .add(0, &[KeyValue::new("reason", "permission_denied")]);
        }
        let principal_limits = self
            .auth
            .as_ref()
            .is_some_and(|a| a.principals.values().any(|p| p.limiter.is_some()));
        for ns in namespaces {
            if self.listed.contains_key(&**ns) || self.dynamic.is_some() {
                counters.rate_limited.add(0, &limit_attrs("namespace", ns));
            }
            if principal_limits {
                counters.rate_limited.add(0, &limit_attrs("principal", ns));
            }
        }
        self.counters = Some(counters);
        self
    }

    /// Whether auth is on.
    pub fn auth_on(&self) -> bool {
        self.auth.is_some()
    }

    /// The authenticator, when auth is on.
    pub fn auth(&self) -> Option<&Arc<Auth>> {
        self.auth.as_ref()
    }

    fn count_refusal(&self, reason: &'static str) {
        if let Some(c) = &self.counters {
            c.auth_refusals.add(1, &[KeyValue::new("reason", reason)]);
        }
    }

    fn count_limited(&self, limit: &'static str, ns: &str) {
        if let Some(c) = &self.counters {
            c.rate_limited.add(1, &limit_attrs(limit, ns));
        }
    }
}

fn limit_attrs(limit: &'static str, ns: &str) -> [KeyValue; 2] {
    [
        KeyValue::new("tiercache.limit", limit),
        KeyValue::new("tiercache.namespace", ns.to_string()),
    ]
}

/// How long until a refused bucket has a token again (at least 1 ms).
fn retry_after(not_until: governor::NotUntil<<DefaultClock as Clock>::Instant>) -> Duration {
    not_until
        .wait_time_from(DefaultClock::default().now())
        .max(Duration::from_millis(1))
}

/// One call's view of the [`Guard`]: who calls, and which buckets it already paid (a call is
/// charged once per namespace however many items of a batch name it).
#[derive(Clone)]
pub struct Access {
    guard: Arc<Guard>,
    caller: Option<Arc<Principal>>,
    paid: Arc<Mutex<Paid>>,
}

#[derive(Default)]
struct Paid {
    principal: bool,
    namespaces: Vec<String>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("caller", &self.caller.as_ref().map(|p| &p.name))
            .finish_non_exhaustive()
    }
}

impl Access {
    /// The access of a call from `caller` (from the request's [`Caller`], if any).
    pub fn new(guard: &Arc<Guard>, caller: Option<&Caller>) -> Access {
        Access {
            guard: guard.clone(),
            caller: caller.map(|c| c.0.clone()),
            paid: Arc::default(),
        }
    }

    /// The access of a request: its [`Caller`] from the extensions.
    pub fn of<T>(guard: &Arc<Guard>, r: &tonic::Request<T>) -> Access {
        Access::new(guard, r.extensions().get::<Caller>())
    }

    /// A fresh access for the same caller (one per Pipeline operation).
    pub fn renewed(&self) -> Access {
        Access {
            guard: self.guard.clone(),
            caller: self.caller.clone(),
            paid: Arc::default(),
        }
    }

    /// Whether the caller holds `right` on `ns` (always, with auth off).
    pub fn allows(&self, right: Right, ns: &str) -> bool {
        match (&self.guard.auth, &self.caller) {
            (None, _) => true,
            (Some(_), Some(p)) => p.has(right, ns),
            (Some(_), None) => false,
        }
    }

    /// Whether the caller holds some right on `ns`.
    pub fn sees(&self, ns: &str) -> bool {
        match (&self.guard.auth, &self.caller) {
            (None, _) => true,
            (Some(_), Some(p)) => p.has_any(ns),
            (Some(_), None) => false,
        }
    }

    /// Fails unless the caller holds `right` on `ns`: UNAUTHENTICATED without a caller while
    /// auth is on (the layer lets none through; this is the second lock), PERMISSION_DENIED
    /// naming the right and the namespace otherwise.
    pub fn require(&self, right: Right, ns: &str) -> Result<(), ApiError> {
        if self.guard.auth.is_some() && self.caller.is_none() {
            self.guard.count_refusal(Refusal::Missing.as_str());
            return Err(ApiError::Unauthenticated);
        }
        if self.allows(right, ns) {
            return Ok(());
        }
        Err(self.denied(right, ns))
    }

    /// Counts and returns the PERMISSION_DENIED of a caller lacking `right` on `ns`.
    pub fn denied(&self, right: Right, ns: &str) -> ApiError {
        self.guard.count_refusal("permission_denied");
        ApiError::PermissionDenied {
            right: right.as_str(),
            namespace: ns.to_string(),
            principal: self
                .caller
                .as_ref()
                .map(|p| p.name.to_string())
                .unwrap_or_default(),
        }
    }

    /// Takes one token from the caller's bucket, once per call; `ns` labels the refusal.
    pub fn admit_principal(&self, ns: &str) -> Result<(), ApiError> {
        let Some(limiter) = self.caller.as_ref().and_then(|p| p.limiter.as_ref()) else {
            return Ok(());
        };
        if std::mem::replace(&mut self.paid.lock().principal, true) {
            return Ok(());
        }
        limiter.check().map_err(|nu| {
            self.guard.count_limited("principal", ns);
            ApiError::RateLimited {
                limit: "principal",
                subject: self
                    .caller
                    .as_ref()
                    .map(|p| p.name.to_string())
                    .unwrap_or_default(),
                retry_after: retry_after(nu),
            }
        })
    }

    /// Takes one token from the caller's bucket and one from namespace `ns`'s, each once per
    /// call. Call it once the namespace exists (its name then is a bounded label).
    pub fn admit(&self, ns: &str) -> Result<(), ApiError> {
        self.admit_principal(ns)?;
        if self.guard.listed.is_empty() && self.guard.dynamic.is_none() {
            return Ok(());
        }
        {
            let mut paid = self.paid.lock();
            if paid.namespaces.iter().any(|n| n == ns) {
                return Ok(());
            }
            paid.namespaces.push(ns.to_string());
        }
        let checked = match self.guard.listed.get(ns) {
            Some(l) => l.check(),
            None => match &self.guard.dynamic {
                Some(keyed) => {
                    if keyed.len() > self.guard.dynamic_cap {
                        keyed.retain_recent();
                    }
                    keyed.check_key(&ns.to_string())
                }
                None => Ok(()),
            },
        };
        checked.map_err(|nu| {
            self.guard.count_limited("namespace", ns);
            ApiError::RateLimited {
                limit: "namespace",
                subject: ns.to_string(),
                retry_after: retry_after(nu),
            }
        })
    }
}

/// Authenticates every request but health's; see the module docs.
#[derive(Clone)]
pub struct AuthLayer {
    guard: Arc<Guard>,
}

impl AuthLayer {
    /// A layer over `guard`; a pass-through while auth is off.
    pub fn new(guard: Arc<Guard>) -> Self {
        Self { guard }
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            guard: self.guard.clone(),
        }
    }
}

/// The service [`AuthLayer`] wraps around the tonic router.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    guard: Arc<Guard>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Whether `path` is open to everyone: the health service.
fn is_open(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
}

impl<S, ReqBody> tower_service::Service<http::Request<ReqBody>> for AuthService<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        if let Some(auth) = self
            .guard
            .auth
            .as_ref()
            .filter(|_| !is_open(req.uri().path()))
        {
            match auth.authenticate(req.headers(), req.extensions().get::<PeerIdentity>()) {
                Ok(principal) => {
                    req.extensions_mut().insert(Caller(principal));
                }
                Err(refusal) => {
                    self.guard.count_refusal(refusal.as_str());
                    // Neither the token nor its hash is logged.
                    tracing::debug!(reason = refusal.as_str(), "unauthenticated request");
                    let status: tonic::Status = ApiError::Unauthenticated.into();
                    let response = status.into_http::<tonic::body::Body>();
                    return Box::pin(async move { Ok(response) });
                }
            }
        }
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(inner.call(req))
    }
}

/// Re-reads `auth.tokens_file` every [`TOKENS_FILE_POLL`] until the task is aborted.
pub fn spawn_tokens_file_watch(auth: Arc<Auth>) -> Option<tokio::task::JoinHandle<()>> {
    if !auth.watches_file() {
        return None;
    }
    Some(tokio::spawn(async move {
        loop {
            tokio::time::sleep(TOKENS_FILE_POLL).await;
            let auth = auth.clone();
            let _ = tokio::task::spawn_blocking(move || auth.reload()).await;
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(toml: &str) -> Auth {
        let c = Config::from_toml(toml).unwrap();
        Auth::new(c.auth.as_ref().unwrap()).unwrap()
    }

    const CONFIG: &str = r#"
        [auth.principals.checkout]
        token_sha256 = ["TOKEN_HASH"]
        client_cert_names = ["checkout.prod.svc"]
        [auth.principals.checkout.rights]
        "checkout*" = ["read", "write"]
        "shared" = ["admin"]
    "#;

    fn config() -> String {
        CONFIG.replace("TOKEN_HASH", &token_hash_hex("tc_secret"))
    }

    #[test]
    fn bearer_token_maps_to_its_principal() {
        let a = auth(&config());
        let mut h = http::HeaderMap::new();
        h.insert("authorization", "Bearer tc_secret".parse().unwrap());
        let p = a.authenticate(&h, None).unwrap();
        assert_eq!(&*p.name, "checkout");
        assert!(p.has(Right::Write, "checkout-eu"));
        assert!(!p.has(Right::Write, "shared"));
        assert!(p.has(Right::Admin, "shared"));
        assert!(!p.has_any("other"));
        h.insert("authorization", "Bearer tc_wrong".parse().unwrap());
        assert_eq!(a.authenticate(&h, None).unwrap_err(), Refusal::Unknown);
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(a.authenticate(&h, None).unwrap_err(), Refusal::Unknown);
        assert_eq!(
            a.authenticate(&http::HeaderMap::new(), None).unwrap_err(),
            Refusal::Missing
        );
    }

    #[test]
    fn client_certificate_names_map_to_their_principal() {
        let a = auth(&config());
        let peer = PeerIdentity {
            remote_addr: None,
            cert_names: vec!["other.svc".into(), "checkout.prod.svc".into()],
        };
        let p = a
            .authenticate(&http::HeaderMap::new(), Some(&peer))
            .unwrap();
        assert_eq!(&*p.name, "checkout");
        let stranger = PeerIdentity {
            remote_addr: None,
            cert_names: vec!["stranger.svc".into()],
        };
        assert_eq!(
            a.authenticate(&http::HeaderMap::new(), Some(&stranger))
                .unwrap_err(),
            Refusal::Unknown
        );
        assert_eq!(
            a.authenticate(&http::HeaderMap::new(), Some(&PeerIdentity::default()))
                .unwrap_err(),
            Refusal::Missing
        );
    }

    #[test]
    fn patterns() {
        assert_eq!(Pattern::parse("*").unwrap(), Pattern::Any);
        assert_eq!(
            Pattern::parse("a*").unwrap(),
            Pattern::Prefix("a".to_string())
        );
        assert!(Pattern::parse("a*").unwrap().matches("abc"));
        assert!(!Pattern::parse("a*").unwrap().matches("b"));
        assert!(Pattern::parse("abc").unwrap().matches("abc"));
        assert!(!Pattern::parse("abc").unwrap().matches("abcd"));
        for bad in ["", "A*", "a**", "*a", "a b", "-x*"] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn generated_tokens_are_random_and_hash_to_64_hex_digits() {
        let (a, b) = (generate_token(), generate_token());
        assert_ne!(a, b);
        assert!(a.starts_with("tc_") && a.len() == 67, "{a}");
        let h = token_hash_hex(&a);
        assert_eq!(h.len(), 64);
        assert_eq!(crate::config::parse_sha256_hex(&h).unwrap(), token_hash(&a));
    }

    /// The inner service of the layer tests: answers OK with the caller's name in a header.
    #[derive(Clone)]
    struct Echo;

    impl tower_service::Service<http::Request<()>> for Echo {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<()>) -> Self::Future {
            let mut r = http::Response::new(tonic::body::Body::empty());
            if let Some(c) = req.extensions().get::<Caller>() {
                r.headers_mut()
                    .insert("x-caller", c.0.name.parse().unwrap());
            }
            std::future::ready(Ok(r))
        }
    }

    /// The layer takes the principal from the connection's `PeerIdentity` (as the TLS acceptor
    /// attaches it) and refuses a request without credentials, except health.
    #[tokio::test]
    async fn layer_maps_the_peer_identity_and_refuses_the_rest() {
        use tower_layer::Layer as _;
        use tower_service::Service as _;
        let config = Config::from_toml(&config()).unwrap();
        let auth = Arc::new(Auth::new(config.auth.as_ref().unwrap()).unwrap());
        let guard = Arc::new(Guard::new(&config, Some(auth)));
        let mut svc = AuthLayer::new(guard).layer(Echo);
        let request = |path: &str, peer: Option<PeerIdentity>| {
            let mut r = http::Request::builder().uri(path).body(()).unwrap();
            if let Some(p) = peer {
                r.extensions_mut().insert(p);
            }
            r
        };
        let peer = PeerIdentity {
            remote_addr: None,
            cert_names: vec!["checkout.prod.svc".into()],
        };
        let r = svc
            .call(request("/tiercache.v1.CacheService/Get", Some(peer)))
            .await
            .unwrap();
        assert_eq!(r.headers()["x-caller"], "checkout");
        let r = svc
            .call(request("/tiercache.v1.CacheService/Get", None))
            .await
            .unwrap();
        assert_eq!(r.headers()["grpc-status"], "16", "UNAUTHENTICATED");
        let r = svc
            .call(request("/grpc.health.v1.Health/Check", None))
            .await
            .unwrap();
        assert!(r.headers().get("grpc-status").is_none(), "health is open");
    }
}
