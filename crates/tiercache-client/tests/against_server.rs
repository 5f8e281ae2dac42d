//! The SDK against an in-process server on port 0 (`tiercache_testkit::TestServer`).
//!
//! `health_*` and `connect_*` pass against the skeleton server; the cache calls need the
//! `CacheService` implementation.

use std::time::Duration;

use tiercache_client::{
    Client, ClientBuilder, Condition, DeleteResult, Error, GetOptions, GetResult, HealthStatus,
    SetOptions, SetResult,
};
use tiercache_testkit::TestServer;
use tokio::net::TcpListener;

#[tokio::test]
async fn health_reports_serving() {
    let server = TestServer::memory().await;
    let client = Client::connect(&server.endpoint()).await.unwrap();
    assert_eq!(client.health().await.unwrap(), HealthStatus::Serving);
}

#[tokio::test]
async fn connect_to_a_closed_port_fails_with_transport() {
    // Bind then drop to get a port nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = ClientBuilder::new(format!("127.0.0.1:{port}"))
        .connect_timeout(Some(Duration::from_secs(2)))
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Transport(_)), "{err:?}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn lazy_client_reports_unavailable() {
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = ClientBuilder::new(format!("127.0.0.1:{port}"))
        .connect_lazy()
        .unwrap();
    let err = client.health().await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
}

// Needs the CacheService implementation.
#[tokio::test]
async fn set_get_delete_round_trip() {
    let server = TestServer::memory().await;
    let client = Client::connect(&server.endpoint()).await.unwrap();
    let ns = client.namespace("default");

    assert_eq!(ns.get("sdk:missing").await.unwrap(), None);

    let v1 = ns.set("sdk:k", "hello").await.unwrap();
    let e = ns.get("sdk:k").await.unwrap().expect("hit after set");
    assert_eq!(&e.value[..], b"hello");
    assert_eq!(e.version, v1);
    assert!(!e.stale);

    // Conditional read: same version → not modified, without the value.
    let r = ns
        .get_with(
            "sdk:k",
            GetOptions {
                if_version_not: Some(v1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(matches!(r, GetResult::NotModified(ref e) if e.version == v1 && e.value.is_empty()));

    // Conditional writes.
    let r = ns
        .set_with(
            "sdk:k",
            "other",
            SetOptions {
                condition: Some(Condition::IfAbsent),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(r, SetResult::Exists { current: v1 });
    let r = ns
        .set_with(
            "sdk:k",
            "other",
            SetOptions {
                condition: Some(Condition::IfVersion(v1 + 100)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(r, SetResult::VersionMismatch { current: v1 });
    let r = ns
        .set_with(
            "sdk:k",
            "tagged",
            SetOptions {
                ttl: Some(Duration::from_secs(60)),
                tags: vec!["t:1".into()],
                condition: Some(Condition::IfVersion(v1)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let SetResult::Stored { version: v2 } = r else {
        panic!("unexpected {r:?}")
    };
    assert!(v2 > v1);

    let many = ns.get_many(["sdk:k", "sdk:missing"]).await.unwrap();
    assert_eq!(many.len(), 2);
    assert_eq!(&many[0].as_ref().unwrap().value[..], b"tagged");
    assert!(many[1].is_none());

    // Tag invalidation hides the entry.
    ns.invalidate_tags(["t:1"]).await.unwrap();
    assert_eq!(ns.get("sdk:k").await.unwrap(), None);

    let v3 = ns.set("sdk:k", "again").await.unwrap();
    assert_eq!(
        ns.delete_if_version("sdk:k", v3 + 1).await.unwrap(),
        DeleteResult::VersionMismatch { current: v3 }
    );
    assert!(ns.delete("sdk:k").await.unwrap());
    assert!(!ns.delete("sdk:k").await.unwrap());

    ns.set("sdk:f", "x").await.unwrap();
    ns.flush().await.unwrap();
    assert_eq!(ns.get("sdk:f").await.unwrap(), None);
}

// Needs the CacheService implementation (validation with BadRequest details).
#[tokio::test]
async fn empty_key_is_invalid_argument_naming_the_field() {
    let server = TestServer::memory().await;
    let client = Client::connect(&server.endpoint()).await.unwrap();
    let err = client.namespace("default").get("").await.unwrap_err();
    match err {
        Error::InvalidArgument {
            field_violations, ..
        } => assert!(
            field_violations.iter().any(|v| v.field == "key"),
            "{field_violations:?}"
        ),
        other => panic!("unexpected {other:?}"),
    }
}

// Needs the AdminService implementation.
#[tokio::test]
async fn stats_and_namespaces() {
    let server = TestServer::memory().await;
    let client = Client::connect(&server.endpoint()).await.unwrap();
    let names = client.list_namespaces().await.unwrap();
    assert!(names.iter().any(|n| n.name == "default"), "{names:?}");
    let stats = client.stats(Some("default")).await.unwrap();
    assert!(stats.namespaces.iter().all(|n| n.namespace == "default"));
}
