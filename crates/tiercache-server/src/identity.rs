//! What the transport knows about the peer of a connection, handed from the listener to the
//! authentication layer.
//!
//! The TLS acceptor (`tls`) attaches a [`PeerIdentity`] to every request of a connection: the
//! names (DNS and URI SANs) of the client certificate it verified, if any. The auth layer (`auth`)
//! maps those names to a principal. A plain TCP connection carries none.

use std::net::SocketAddr;

/// The peer of one connection, as the transport verified it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The peer's address.
    pub remote_addr: Option<SocketAddr>,
    /// The subject alternative names (DNS names, then URIs) of the client certificate verified
    /// under mutual TLS; empty without one.
    pub cert_names: Vec<String>,
}
