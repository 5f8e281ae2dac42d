//! The Rust SDK for tiercache.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tiercache_client::Error> {
//! use std::time::Duration;
//! use tiercache_client::{Client, Condition, SetOptions, SetResult};
//!
//! let client = Client::connect("http://127.0.0.1:50051").await?;
//! let users = client.namespace("users");
//! users.set("user:42", "alice").await?;
//! if let Some(entry) = users.get("user:42").await? {
//!     println!("{:?} v{} from {:?}", entry.value, entry.version, entry.tier);
//! }
//! let opts = SetOptions {
//!     ttl: Some(Duration::from_secs(30)),
//!     tags: vec!["org:7".into()],
//!     condition: Some(Condition::IfAbsent),
//!     ..Default::default()
//! };
//! if let SetResult::Exists { current } = users.set_with("user:42", "bob", opts).await? {
//!     println!("already there at version {current}");
//! }
//! users.invalidate_tags(["org:7"]).await?;
//! # Ok(()) }
//! ```
//!
//! Expected outcomes (a miss, a failed condition) are values; [`Error`] is for calls that could
//! not do their job, with the server's `google.rpc` details already decoded.
//!
//! # Layout
//!
//! - `client`: [`Client`] (one shared HTTP/2 channel) and [`ClientBuilder`] (timeouts, TCP and
//!   keepalive settings); admin calls ([`Client::stats`], [`Client::list_namespaces`]) and
//!   [`Client::health`].
//! - `namespace`: [`Namespace`], the get/set/delete/invalidate calls of one namespace.
//! - `types`: [`Entry`], options and outcome enums, converted from the wire types.
//! - `error`: [`Error`], mapped from `tonic::Status`.
//! - `duration`: saturating conversions to and from `google.protobuf.Duration`.

mod client;
mod duration;
mod error;
mod namespace;
mod types;

pub use client::{Client, ClientBuilder};
pub use error::{Error, FieldViolation, Result};
pub use namespace::Namespace;
pub use types::{
    Condition, DeleteResult, Entry, GetOptions, GetResult, HealthStatus, NamespaceInfo,
    NamespacePolicy, NamespaceStats, SetOptions, SetResult, Stats, StorageMode, Tier,
};

/// The generated wire types and clients, for calls this SDK does not wrap yet.
pub use tiercache_proto as proto;
