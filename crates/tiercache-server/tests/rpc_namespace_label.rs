//! Every service resolves namespaces the same way, so every RPC that names a namespace carries
//! it as the `tiercache_namespace` label of `rpc.server.call.duration` (lock RPCs once did not).

use std::net::SocketAddr;
use std::time::Duration;

use tiercache_proto::v1 as pb;
use tiercache_proto::v1::admin_service_client::AdminServiceClient;
use tiercache_proto::v1::lock_service_client::LockServiceClient;
use tiercache_testkit::TestServer;

const CALLS: &str = "rpc_server_call_duration_seconds_count";

/// Returns the body of `GET /metrics`.
async fn scrape(addr: SocketAddr) -> String {
    tiercache_testkit::scrape_metrics(addr, None)
        .await
        .unwrap()
        .body
}

/// Returns the call-count lines of `method` (`pkg.Service/Method`).
fn call_lines<'a>(text: &'a str, method: &str) -> Vec<&'a str> {
    let needle = format!("rpc_method=\"{method}\"");
    text.lines()
        .filter(|l| l.starts_with(CALLS) && l.contains(&needle))
        .collect()
}

#[tokio::test]
async fn lock_and_admin_rpc_metrics_carry_the_namespace() {
    let server = TestServer::memory().await;
    let admin_addr = server.admin_addr().expect("metrics are on by default");
    let mut locks = LockServiceClient::new(server.channel());
    let ttl = Some(tiercache_proto::duration::to_proto(Duration::from_secs(10)));
    let got = locks
        .acquire_lock(pb::AcquireLockRequest {
            namespace: "jobs".into(),
            name: "nightly".into(),
            ttl,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.outcome, pb::AcquireLockOutcome::Acquired as i32);
    locks
        .renew_lock(pb::RenewLockRequest {
            namespace: "jobs".into(),
            name: "nightly".into(),
            owner_token: got.owner_token.clone(),
            ttl,
        })
        .await
        .unwrap();
    locks
        .release_lock(pb::ReleaseLockRequest {
            namespace: "jobs".into(),
            name: "nightly".into(),
            owner_token: got.owner_token,
        })
        .await
        .unwrap();
    AdminServiceClient::new(server.channel())
        .inspect(pb::InspectRequest {
            namespace: "jobs".into(),
            key: "k".into(),
        })
        .await
        .unwrap();

    let methods = [
        "tiercache.v1.LockService/AcquireLock",
        "tiercache.v1.LockService/RenewLock",
        "tiercache.v1.LockService/ReleaseLock",
        "tiercache.v1.AdminService/Inspect",
    ];
    // An RPC is counted when the server finishes its response body, which may be just after the
    // client has the answer.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = scrape(admin_addr).await;
        let counted = methods.iter().all(|m| !call_lines(&text, m).is_empty());
        if counted || tokio::time::Instant::now() >= deadline {
            assert!(counted, "not every call was counted:\n{text}");
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for method in methods {
        for line in call_lines(&text, method) {
            assert!(
                line.contains("tiercache_namespace=\"jobs\""),
                "{method} counted without its namespace: {line}"
            );
        }
    }

    server.shutdown().await.unwrap();
}
