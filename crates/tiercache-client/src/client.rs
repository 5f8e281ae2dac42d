//! The connection: [`Client`] and its [`ClientBuilder`], and the admin and health calls.

use std::time::Duration;

use tiercache_proto::v1::{self, admin_service_client::AdminServiceClient};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

use crate::{Error, HealthStatus, Namespace, NamespaceInfo, Result, Stats};

/// A connection to a tiercache server.
///
/// Cloning is cheap: clones share one HTTP/2 connection (a `tonic::transport::Channel`), which
/// multiplexes concurrent calls, so make one `Client` per server and clone it into tasks.
#[derive(Debug, Clone)]
pub struct Client {
    channel: Channel,
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

    /// Wraps a channel the caller set up (for TLS, a custom connector, or tests).
    pub fn from_channel(channel: Channel) -> Self {
        Self { channel }
    }

    /// Returns the underlying channel, for calling the generated clients directly.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Returns a handle on namespace `name`. No call is made; an unknown namespace shows up as
    /// [`Error::NotFound`] on first use.
    pub fn namespace(&self, name: impl Into<String>) -> Namespace {
        Namespace::new(self.clone(), name.into())
    }

    /// Returns the server's counters for `namespace`, or for every namespace when `None`.
    pub async fn stats(&self, namespace: Option<&str>) -> Result<Stats> {
        let req = v1::GetStatsRequest {
            namespace: namespace.unwrap_or_default().to_string(),
        };
        let resp = self.admin().get_stats(req).await?.into_inner();
        Ok(resp.into())
    }

    /// Returns the namespaces the server knows, with their effective policies.
    pub async fn list_namespaces(&self) -> Result<Vec<NamespaceInfo>> {
        let resp = self
            .admin()
            .list_namespaces(v1::ListNamespacesRequest {})
            .await?
            .into_inner();
        Ok(resp.namespaces.into_iter().map(Into::into).collect())
    }

    /// Asks the standard gRPC health service whether the server as a whole is serving.
    pub async fn health(&self) -> Result<HealthStatus> {
        let req = HealthCheckRequest {
            service: String::new(),
        };
        let resp = HealthClient::new(self.channel.clone())
            .check(req)
            .await?
            .into_inner();
        Ok(match ServingStatus::try_from(resp.status) {
            Ok(ServingStatus::Serving) => HealthStatus::Serving,
            Ok(ServingStatus::NotServing) => HealthStatus::NotServing,
            _ => HealthStatus::Unknown,
        })
    }

    pub(crate) fn cache(&self) -> v1::cache_service_client::CacheServiceClient<Channel> {
        v1::cache_service_client::CacheServiceClient::new(self.channel.clone())
    }

    fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel.clone())
    }
}

/// Settings for a [`Client`] connection.
///
/// Defaults: connect timeout 5 s, no request timeout, `TCP_NODELAY` on (cache calls are small
/// and latency-bound, so Nagle's delay only hurts), no HTTP/2 keepalive pings.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    addr: String,
    connect_timeout: Option<Duration>,
    request_timeout: Option<Duration>,
    tcp_nodelay: bool,
    keepalive_interval: Option<Duration>,
    keepalive_timeout: Option<Duration>,
    keepalive_while_idle: bool,
}

impl ClientBuilder {
    /// Returns a builder with the defaults for `addr`.
    pub fn new(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            connect_timeout: Some(Duration::from_secs(5)),
            request_timeout: None,
            tcp_nodelay: true,
            keepalive_interval: None,
            keepalive_timeout: None,
            keepalive_while_idle: false,
        }
    }

    /// Bounds how long setting up the TCP connection may take; `None` waits as long as the OS.
    pub fn connect_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Bounds every call; the deadline is also sent to the server (`grpc-timeout`). A call past it
    /// fails with [`Error::DeadlineExceeded`].
    pub fn request_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.request_timeout = timeout;
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

    /// Connects now, failing with [`Error::Transport`] when the server cannot be reached.
    pub async fn connect(self) -> Result<Client> {
        let channel = self.endpoint()?.connect().await?;
        Ok(Client::from_channel(channel))
    }

    /// Returns a client that connects on first use (and reconnects after failures); calls fail
    /// with [`Error::Unavailable`] while the server cannot be reached.
    pub fn connect_lazy(self) -> Result<Client> {
        Ok(Client::from_channel(self.endpoint()?.connect_lazy()))
    }

    fn endpoint(&self) -> Result<Endpoint> {
        let addr = if self.addr.contains("://") {
            self.addr.clone()
        } else {
            format!("http://{}", self.addr)
        };
        let mut ep = Endpoint::from_shared(addr).map_err(Error::Transport)?;
        ep = ep.tcp_nodelay(self.tcp_nodelay);
        if let Some(t) = self.connect_timeout {
            ep = ep.connect_timeout(t);
        }
        if let Some(t) = self.request_timeout {
            ep = ep.timeout(t);
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
}
