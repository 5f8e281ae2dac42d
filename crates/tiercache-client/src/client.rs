//! The connection: [`Client`] and its [`ClientBuilder`], the per-call plumbing (metadata,
//! deadlines, retries), and the admin and health calls.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tiercache_proto::v1::{
    self, admin_service_client::AdminServiceClient, cache_service_client::CacheServiceClient,
    lock_service_client::LockServiceClient,
};
use tokio::time::Instant;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

use crate::error::{Error, Result};
use crate::pipeline::Pipeline;
use crate::retry::RetryPolicy;
use crate::transport::{self, Meta, Svc};
use crate::types::{HealthStatus, NamespaceInfo, Stats};

/// The default of [`ClientBuilder::request_timeout`]: a cache call that takes longer has
/// failed for the caller, and no call may hang forever on a server that stopped answering.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The default of [`ClientBuilder::max_receive_message_size`] and
/// [`ClientBuilder::max_send_message_size`]: 16 MiB, the server's default
/// `limits.max_message_bytes`, so a reply the server is willing to send is one this client
/// accepts (tonic's own receive default is 4 MiB).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 << 20;

/// A connection to a tiercache server.
///
/// Cloning is cheap and clones share everything: one HTTP/2 connection (a
/// `tonic::transport::Channel`, which multiplexes concurrent calls), one `Pipeline` stream, the
/// settings. Make one `Client` per server and clone it into tasks.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    channel: Channel,
    meta: Meta,
    sizes: MessageSizes,
    request_timeout: Option<Duration>,
    retry: RetryPolicy,
    /// `None` when the pipeline is turned off: reads and writes go as unary calls.
    pipeline: Option<Pipeline>,
}

/// Whether a call may be sent again after an `UNAVAILABLE` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Idempotent {
    /// Reads and health checks: retried under the [`RetryPolicy`].
    Yes,
    /// Writes, leases and locks: sent once.
    No,
}

impl Client {
    /// Connects to `addr` (`http://host:port`; a bare `host:port` means plain HTTP) with the
    /// [`ClientBuilder`] defaults.
    pub async fn connect(addr: impl Into<String>) -> Result<Self> {
        ClientBuilder::new(addr).connect().await
    }

    /// Returns a builder for a connection to `addr`.
    pub fn builder(addr: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(addr)
    }

    /// Wraps a channel the caller set up (for a custom connector, or tests), with the
    /// [`ClientBuilder`] defaults for everything else.
    pub fn from_channel(channel: Channel) -> Self {
        ClientBuilder::new("http://unused").build(channel)
    }

    /// Returns the underlying channel, for calling the generated clients directly.
    pub fn channel(&self) -> &Channel {
        &self.inner.channel
    }

    /// Returns the server's counters for `namespace`, or for every namespace when `None`.
    pub async fn stats(&self, namespace: Option<&str>) -> Result<Stats> {
        let req = v1::GetStatsRequest {
            namespace: namespace.unwrap_or_default().to_string(),
        };
        let resp = self
            .call(Idempotent::Yes, req, |mut c, r| async move {
                c.admin().get_stats(r).await
            })
            .await?;
        Ok(resp.into())
    }

    /// Returns the namespaces the server knows, with their effective policies.
    pub async fn list_namespaces(&self) -> Result<Vec<NamespaceInfo>> {
        let resp = self
            .call(
                Idempotent::Yes,
                v1::ListNamespacesRequest {},
                |mut c, r| async move { c.admin().list_namespaces(r).await },
            )
            .await?;
        Ok(resp.namespaces.into_iter().map(Into::into).collect())
    }

    /// Asks the standard gRPC health service whether the server as a whole is serving.
    pub async fn health(&self) -> Result<HealthStatus> {
        let req = HealthCheckRequest {
            service: String::new(),
        };
        let resp = self
            .call(Idempotent::Yes, req, |c, r| async move {
                HealthClient::with_interceptor(c.channel.clone(), c.meta.clone())
                    .max_decoding_message_size(c.sizes.receive)
                    .max_encoding_message_size(c.sizes.send)
                    .check(r)
                    .await
            })
            .await?;
        Ok(match ServingStatus::try_from(resp.status) {
            Ok(ServingStatus::Serving) => HealthStatus::Serving,
            Ok(ServingStatus::NotServing) => HealthStatus::NotServing,
            _ => HealthStatus::Unknown,
        })
    }

    pub(crate) fn cache(&self) -> CacheServiceClient<Svc> {
        self.calls().cache()
    }

    /// Opens a Watch stream, waiting at most the request timeout for the server to answer (a
    /// deadline on the stream itself would end it).
    pub(crate) async fn open_watch(
        &self,
        req: v1::WatchRequest,
    ) -> Result<tonic::Streaming<v1::WatchResponse>> {
        let mut cache = self.cache();
        let open = cache.watch(req);
        let resp = match self.inner.request_timeout {
            Some(t) => tokio::time::timeout(t, open)
                .await
                .map_err(|_| Error::deadline("opening the watch stream timed out"))?,
            None => open.await,
        }?;
        Ok(resp.into_inner())
    }

    pub(crate) fn pipeline(&self) -> Option<&Pipeline> {
        self.inner.pipeline.as_ref()
    }

    pub(crate) fn request_timeout(&self) -> Option<Duration> {
        self.inner.request_timeout
    }

    /// Makes one unary call: each attempt gets the time left of the request timeout as its
    /// deadline (sent as `grpc-timeout` and enforced here); idempotent calls are retried on
    /// `UNAVAILABLE` under the retry policy, within the same overall deadline.
    pub(crate) async fn call<Req, Resp, F, Fut>(
        &self,
        idempotent: Idempotent,
        req: Req,
        f: F,
    ) -> Result<Resp>
    where
        Req: Clone,
        F: FnMut(Calls, Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<Resp>, Status>>,
    {
        self.call_waiting(idempotent, None, req, f).await
    }

    /// Like [`call`](Self::call) for a call that may wait up to `wait` on the server (a
    /// GetOrSet waiting for another caller's fill, a lock waiting for its holder): the deadline
    /// is the request timeout plus `wait`, so the wait is never cut short by the timeout meant
    /// for the call's own work. The server still ends the wait at `wait`.
    pub(crate) async fn call_waiting<Req, Resp, F, Fut>(
        &self,
        idempotent: Idempotent,
        wait: Option<Duration>,
        req: Req,
        mut f: F,
    ) -> Result<Resp>
    where
        Req: Clone,
        F: FnMut(Calls, Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<Resp>, Status>>,
    {
        let deadline = self
            .inner
            .request_timeout
            .map(|t| Instant::now() + t.saturating_add(wait.unwrap_or_default()));
        self.with_retries(idempotent, deadline, |remaining| {
            let mut r = Request::new(req.clone());
            if let Some(t) = remaining {
                r.set_timeout(t);
            }
            let fut = f(self.calls(), r);
            async move {
                fut.await
                    .map(tonic::Response::into_inner)
                    .map_err(Error::from)
            }
        })
        .await
    }

    /// Runs `attempt` (given the time left) until it succeeds, fails for good, or the policy or
    /// the deadline says stop.
    pub(crate) async fn with_retries<T, F, Fut>(
        &self,
        idempotent: Idempotent,
        deadline: Option<Instant>,
        mut attempt: F,
    ) -> Result<T>
    where
        F: FnMut(Option<Duration>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let policy = &self.inner.retry;
        let mut n = 0u32;
        loop {
            n += 1;
            let remaining = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(r) if !r.is_zero() => Some(r),
                    _ => return Err(Error::deadline("request timeout elapsed")),
                },
                None => None,
            };
            let result = match remaining {
                Some(r) => match tokio::time::timeout(r, attempt(remaining)).await {
                    Ok(res) => res,
                    Err(_) => Err(Error::deadline("request timeout elapsed")),
                },
                None => attempt(None).await,
            };
            let err = match result {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let retryable = matches!(err, Error::Unavailable { .. } | Error::Transport(_));
            if idempotent == Idempotent::No || !retryable || n >= policy.max_attempts {
                return Err(err);
            }
            let pause = policy.backoff(n).max(err.retry_after().unwrap_or_default());
            if let Some(d) = deadline {
                if Instant::now() + pause >= d {
                    return Err(err);
                }
            }
            tracing::debug!(attempt = n, ?pause, error = %err, "retrying tiercache call");
            tokio::time::sleep(pause).await;
        }
    }

    fn calls(&self) -> Calls {
        Calls {
            channel: self.inner.channel.clone(),
            meta: self.inner.meta.clone(),
            sizes: self.inner.sizes,
        }
    }
}

/// What one attempt of a unary call needs: the channel, the metadata interceptor and the
/// message size limits.
pub(crate) struct Calls {
    channel: Channel,
    meta: Meta,
    sizes: MessageSizes,
}

impl Calls {
    pub(crate) fn cache(&mut self) -> CacheServiceClient<Svc> {
        self.sizes.cache(CacheServiceClient::with_interceptor(
            self.channel.clone(),
            self.meta.clone(),
        ))
    }

    pub(crate) fn locks(&mut self) -> LockServiceClient<Svc> {
        LockServiceClient::with_interceptor(self.channel.clone(), self.meta.clone())
            .max_decoding_message_size(self.sizes.receive)
            .max_encoding_message_size(self.sizes.send)
    }

    pub(crate) fn admin(&mut self) -> AdminServiceClient<Svc> {
        AdminServiceClient::with_interceptor(self.channel.clone(), self.meta.clone())
            .max_decoding_message_size(self.sizes.receive)
            .max_encoding_message_size(self.sizes.send)
    }
}

/// The largest messages this client accepts and sends; see
/// [`ClientBuilder::max_receive_message_size`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct MessageSizes {
    pub(crate) receive: usize,
    pub(crate) send: usize,
}

impl MessageSizes {
    /// Applies the limits to a `CacheService` client (the unary calls, Watch and Pipeline).
    pub(crate) fn cache(self, c: CacheServiceClient<Svc>) -> CacheServiceClient<Svc> {
        c.max_decoding_message_size(self.receive)
            .max_encoding_message_size(self.send)
    }
}

/// TLS settings for the connection to the server (rustls).
///
/// With TLS set, a bare `host:port` address means `https://`; an `http://` address is refused
/// rather than sent in plaintext. An `https://` address without TLS settings verifies the
/// server against the system roots.
#[derive(Clone, Default)]
pub struct TlsConfig {
    /// PEM CA bundle to verify the server with; the system roots when `None`.
    pub ca_certificate_pem: Option<Vec<u8>>,
    /// PEM client certificate and key, for mutual TLS.
    pub client_identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    /// The name to verify the server certificate against; the host of the address when `None`.
    pub domain_name: Option<String>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("ca_certificate_pem", &self.ca_certificate_pem.is_some())
            .field("client_identity_pem", &self.client_identity_pem.is_some())
            .field("domain_name", &self.domain_name)
            .finish()
    }
}

impl TlsConfig {
    /// Checks the PEM and returns tonic's config for it.
    fn client_config(&self) -> Result<ClientTlsConfig> {
        use rustls_pki_types::pem::PemObject as _;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let certs = |what: &str, pem: &[u8]| -> Result<()> {
            let n = CertificateDer::pem_slice_iter(pem)
                .try_fold(0, |n, c| c.map(|_| n + 1))
                .map_err(|e| Error::InvalidConfig(format!("tls {what}: bad PEM: {e}")))?;
            if n == 0 {
                return Err(Error::InvalidConfig(format!(
                    "tls {what}: no PEM CERTIFICATE block"
                )));
            }
            Ok(())
        };
        let mut config = ClientTlsConfig::new();
        config = match &self.ca_certificate_pem {
            Some(ca) => {
                certs("ca certificate", ca)?;
                config.ca_certificate(Certificate::from_pem(ca))
            }
            None => config.with_native_roots(),
        };
        if let Some((cert, key)) = &self.client_identity_pem {
            certs("client certificate", cert)?;
            // The PEM error never quotes the input, so no key material reaches the message.
            PrivateKeyDer::from_pem_slice(key).map_err(|e| {
                Error::InvalidConfig(format!(
                    "tls client key: no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"
                ))
            })?;
            config = config.identity(Identity::from_pem(cert, key));
        }
        if let Some(name) = &self.domain_name {
            config = config.domain_name(name.clone());
        }
        Ok(config)
    }
}

/// Settings for a [`Client`] connection.
///
/// Defaults: connect timeout 5 s, request timeout 5 s ([`DEFAULT_REQUEST_TIMEOUT`]; waits add
/// their `max_wait`), messages up to 16 MiB each way ([`DEFAULT_MAX_MESSAGE_SIZE`]),
/// [`RetryPolicy::default`] for reads, the `Pipeline` stream on, no concurrency limit,
/// `TCP_NODELAY` on (cache calls are small and latency-bound, so Nagle's delay only hurts), no
/// HTTP/2 keepalive pings, no TLS, no token.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    addr: String,
    connect_timeout: Option<Duration>,
    request_timeout: Option<Duration>,
    sizes: MessageSizes,
    retry: RetryPolicy,
    pipeline: bool,
    concurrency_limit: Option<usize>,
    tcp_nodelay: bool,
    keepalive_interval: Option<Duration>,
    keepalive_timeout: Option<Duration>,
    keepalive_while_idle: bool,
    tls: Option<TlsConfig>,
    bearer_token: Option<String>,
}

impl ClientBuilder {
    /// Returns a builder with the defaults for `addr`.
    pub fn new(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            connect_timeout: Some(Duration::from_secs(5)),
            request_timeout: Some(DEFAULT_REQUEST_TIMEOUT),
            sizes: MessageSizes {
                receive: DEFAULT_MAX_MESSAGE_SIZE,
                send: DEFAULT_MAX_MESSAGE_SIZE,
            },
            retry: RetryPolicy::default(),
            pipeline: true,
            concurrency_limit: None,
            tcp_nodelay: true,
            keepalive_interval: None,
            keepalive_timeout: None,
            keepalive_while_idle: false,
            tls: None,
            bearer_token: None,
        }
    }

    /// Bounds how long setting up the TCP connection may take; `None` waits as long as the OS.
    pub fn connect_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Bounds every call, retries included (default [`DEFAULT_REQUEST_TIMEOUT`], 5 s; `None`
    /// for no bound); each attempt sends the time left to the server (`grpc-timeout`). A call
    /// past it fails with [`Error::DeadlineExceeded`].
    ///
    /// Calls that wait on the server get their wait on top: `get_or_set` and
    /// `get_or_set_many` are bounded by the timeout plus
    /// [`GetOrSetOptions::max_wait`](crate::GetOrSetOptions::max_wait) (5 s, the server's
    /// default, when unset), `lock` and `lock_with` by the timeout plus their `max_wait`.
    /// Streams (`watch`, the pipeline stream itself) are bounded only while they open; each
    /// pipelined request is bounded.
    pub fn request_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets the largest reply message this client decodes (default
    /// [`DEFAULT_MAX_MESSAGE_SIZE`], 16 MiB, the server's default `limits.max_message_bytes`).
    /// A larger reply fails the call with `OUT_OF_RANGE` ([`Error::Other`]). Keep it at least
    /// the server's limit, or a batch the server built fails here after the work was done.
    pub fn max_receive_message_size(mut self, bytes: usize) -> Self {
        self.sizes.receive = bytes;
        self
    }

    /// Sets the largest request message this client sends (default
    /// [`DEFAULT_MAX_MESSAGE_SIZE`], 16 MiB); a larger request fails (tonic resets the stream
    /// while encoding it: [`Error::Other`] with `INTERNAL`) without reaching the server.
    pub fn max_send_message_size(mut self, bytes: usize) -> Self {
        self.sizes.send = bytes;
        self
    }

    /// Sets how reads (`get`, `get_many`, admin reads, health) are retried on `UNAVAILABLE`.
    /// Writes, leases and locks are never retried. [`RetryPolicy::none`] turns retries off.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Sends `get`, `set` and `delete` over one multiplexed `Pipeline` stream (default on) rather
    /// than as unary calls.
    pub fn pipeline(mut self, enabled: bool) -> Self {
        self.pipeline = enabled;
        self
    }

    /// Bounds how many calls may be in flight on the connection at once; further calls wait.
    /// The pipeline stream counts as one call while it opens.
    pub fn concurrency_limit(mut self, limit: usize) -> Self {
        self.concurrency_limit = Some(limit);
        self
    }

    /// Sets `TCP_NODELAY` (default on).
    pub fn tcp_nodelay(mut self, enabled: bool) -> Self {
        self.tcp_nodelay = enabled;
        self
    }

    /// Sends an HTTP/2 PING every `interval` to detect dead connections (and keep NAT and load
    /// balancer state alive); the connection is closed when no answer comes within `timeout`
    /// (20 s when `None`). With `while_idle`, pings are sent even when no call is in flight.
    pub fn http2_keepalive(
        mut self,
        interval: Duration,
        timeout: Option<Duration>,
        while_idle: bool,
    ) -> Self {
        self.keepalive_interval = Some(interval);
        self.keepalive_timeout = timeout;
        self.keepalive_while_idle = while_idle;
        self
    }

    /// Sets TLS for the connection: a CA to trust instead of the system roots, a client
    /// certificate for mutual TLS, the name to verify. See [`TlsConfig`]; PEM that does not
    /// parse fails with [`Error::InvalidConfig`] naming the setting.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sends `authorization: Bearer <token>` with every call and stream. (The server maps tokens
    /// to principals once the security work lands; today it ignores the header.)
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.bearer_token = Some(token.into());
        self
    }

    /// Connects now, failing with [`Error::Transport`] when the server cannot be reached.
    pub async fn connect(self) -> Result<Client> {
        let channel = self.endpoint()?.connect().await?;
        Ok(self.build(channel))
    }

    /// Returns a client that connects on first use (and reconnects after failures); calls fail
    /// with [`Error::Unavailable`] while the server cannot be reached.
    pub fn connect_lazy(self) -> Result<Client> {
        let channel = self.endpoint()?.connect_lazy();
        Ok(self.build(channel))
    }

    fn build(self, channel: Channel) -> Client {
        let meta = Meta::new(self.bearer_token.as_deref());
        let pipeline = self
            .pipeline
            .then(|| Pipeline::new(channel.clone(), meta.clone(), self.sizes));
        Client {
            inner: Arc::new(Inner {
                channel,
                meta,
                sizes: self.sizes,
                request_timeout: self.request_timeout,
                retry: self.retry,
                pipeline,
            }),
        }
    }

    fn endpoint(&self) -> Result<Endpoint> {
        if let Some(t) = &self.bearer_token {
            if transport::authorization(t).is_err() {
                return Err(Error::InvalidConfig(
                    "bearer token must be visible ascii".into(),
                ));
            }
        }
        let addr = if self.addr.contains("://") {
            self.addr.clone()
        } else if self.tls.is_some() {
            format!("https://{}", self.addr)
        } else {
            format!("http://{}", self.addr)
        };
        let https = addr.starts_with("https://");
        if self.tls.is_some() && !https {
            return Err(Error::InvalidConfig(format!(
                "tls is set but the address {addr} is not https://"
            )));
        }
        let mut ep = Endpoint::from_shared(addr).map_err(Error::Transport)?;
        if https {
            let tls = match &self.tls {
                Some(t) => t.client_config()?,
                None => ClientTlsConfig::new().with_native_roots(),
            };
            ep = ep.tls_config(tls).map_err(Error::Transport)?;
        }
        ep = ep.tcp_nodelay(self.tcp_nodelay);
        if let Some(t) = self.connect_timeout {
            ep = ep.connect_timeout(t);
        }
        if let Some(n) = self.concurrency_limit {
            ep = ep.concurrency_limit(n);
        }
        if let Some(interval) = self.keepalive_interval {
            ep = ep
                .http2_keep_alive_interval(interval)
                .keep_alive_while_idle(self.keepalive_while_idle);
            if let Some(t) = self.keepalive_timeout {
                ep = ep.keep_alive_timeout(t);
            }
        }
        Ok(ep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor as _;

    #[test]
    fn bare_host_port_means_http() {
        let ep = ClientBuilder::new("127.0.0.1:50051").endpoint().unwrap();
        assert_eq!(ep.uri().to_string(), "http://127.0.0.1:50051/");
        let ep = ClientBuilder::new("http://localhost:1").endpoint().unwrap();
        assert_eq!(ep.uri().to_string(), "http://localhost:1/");
    }

    #[test]
    fn builder_settings_reach_the_endpoint() {
        let ep = ClientBuilder::new("http://localhost:1")
            .connect_timeout(Some(Duration::from_millis(300)))
            .tcp_nodelay(false)
            .endpoint()
            .unwrap();
        assert_eq!(ep.get_connect_timeout(), Some(Duration::from_millis(300)));
        assert!(!ep.get_tcp_nodelay());
    }

    #[test]
    fn bad_address_is_a_transport_error() {
        let err = ClientBuilder::new("http://bad host:1")
            .endpoint()
            .unwrap_err();
        assert!(matches!(err, Error::Transport(_)), "{err:?}");
    }

    #[test]
    fn tls_means_https_and_never_falls_back_to_plaintext() {
        let ep = ClientBuilder::new("localhost:1")
            .tls(TlsConfig::default())
            .endpoint()
            .unwrap();
        assert_eq!(ep.uri().scheme_str(), Some("https"));
        ClientBuilder::new("https://localhost:1")
            .endpoint()
            .unwrap();
        let err = ClientBuilder::new("http://localhost:1")
            .tls(TlsConfig::default())
            .endpoint()
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidConfig(m) if m.contains("not https://")),
            "{err:?}"
        );
    }

    #[test]
    fn bad_tls_pem_is_named() {
        let tls = |ca: Option<&[u8]>, id: Option<(&[u8], &[u8])>| TlsConfig {
            ca_certificate_pem: ca.map(<[u8]>::to_vec),
            client_identity_pem: id.map(|(c, k)| (c.to_vec(), k.to_vec())),
            domain_name: None,
        };
        let cert = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        for (config, named) in [
            (tls(Some(b"not pem"), None), "tls ca certificate"),
            (tls(None, Some((b"", b"k"))), "tls client certificate"),
            (tls(None, Some((cert, b"s3cret-key"))), "tls client key"),
        ] {
            let err = ClientBuilder::new("https://localhost:1")
                .tls(config)
                .endpoint()
                .unwrap_err();
            let m = err.to_string();
            assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
            assert!(m.contains(named), "{m}");
            assert!(!m.contains("s3cret"), "{m}");
        }
    }

    #[tokio::test]
    async fn bearer_token_is_sent_as_authorization_metadata() {
        let mut meta = ClientBuilder::new("http://localhost:1")
            .bearer_token("s3cret")
            .build(Endpoint::from_static("http://localhost:1").connect_lazy())
            .inner
            .meta
            .clone();
        let req = meta.call(Request::new(())).unwrap();
        assert_eq!(
            req.metadata().get("authorization").unwrap(),
            "Bearer s3cret"
        );
        assert!(!format!("{meta:?}").contains("s3cret"));
        let err = ClientBuilder::new("http://localhost:1")
            .bearer_token("new\nline")
            .endpoint()
            .unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(_)));
    }
}
