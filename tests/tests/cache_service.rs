//! The CacheService over real gRPC: replicas sharing a real Redis (writes, deletes and tags seen
//! across replicas, a dropped subscription), bad input, conditional reads, the Pipeline stream.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use tiercache_proto::v1 as pb;
use tiercache_proto::v1::cache_service_client::CacheServiceClient;
use tiercache_server::config::Config;
use tiercache_testkit::rpc::{self, AdminClient, CacheClient};
use tiercache_testkit::{req, wait_for, Fleet, RedisServer, TestServer};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_types::StatusExt;

/// Returns the value and the tier that answered, or `None` on a miss.
async fn get(c: &mut CacheClient, key: &str) -> Option<(String, pb::Tier)> {
    let entry = rpc::get(c, req::get(key)).await?;
    Some((rpc::text(&entry), entry.tier()))
}

async fn set(c: &mut CacheClient, key: &str, value: &str) -> u64 {
    rpc::set(c, req::set(key, value)).await
}

const BOUND: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(5);

#[tokio::test]
async fn replicas_share_writes_and_drop_stale_l1_copies() {
    let fleet = Fleet::redis(2).await;
    let (mut ca, mut cb) = (fleet.cache(0), fleet.cache(1));

    set(&mut ca, "k", "v1").await;
    // B reads it from Redis, then from its own L1.
    assert_eq!(get(&mut cb, "k").await, Some(("v1".into(), pb::Tier::L2)));
    assert_eq!(get(&mut cb, "k").await, Some(("v1".into(), pb::Tier::L1)));

    // An overwrite on A stops B serving its L1 copy.
    set(&mut ca, "k", "v2").await;
    wait_for(BOUND, POLL, || {
        let mut cb = cb.clone();
        async move { get(&mut cb, "k").await.map(|v| v.0) == Some("v2".into()) }
    })
    .await
    .expect("B serves the overwrite");

    // So does a delete.
    assert_eq!(get(&mut cb, "k").await.unwrap().0, "v2");
    assert_eq!(
        rpc::delete(&mut ca, req::delete("k")).await,
        pb::DeleteOutcome::Deleted
    );
    wait_for(BOUND, POLL, || {
        let mut cb = cb.clone();
        async move { get(&mut cb, "k").await.is_none() }
    })
    .await
    .expect("B stops serving a deleted key");

    // Tag invalidation on A hides B's L1 copy.
    let tagged = pb::SetRequest {
        tags: req::tags(&["user:42"]),
        ..req::set("t", "tagged")
    };
    ca.set(tagged).await.unwrap();
    // B's first read comes from Redis and fills L1, unless the Set's own event reaches B while
    // it reads (then the fill is skipped, by design); a later read is served from L1.
    wait_for(BOUND, POLL, || {
        let mut cb = cb.clone();
        async move { get(&mut cb, "t").await.map(|v| v.1) == Some(pb::Tier::L1) }
    })
    .await
    .expect("B serves the tagged entry from L1");
    rpc::invalidate_tags(&mut ca, req::invalidate_tags(&["user:42"])).await;
    wait_for(BOUND, POLL, || {
        let mut cb = cb.clone();
        async move { get(&mut cb, "t").await.is_none() }
    })
    .await
    .expect("B hides the tagged entry");
}

async fn l1_clears(admin: &mut AdminClient) -> u64 {
    rpc::stats(admin, req::stats()).await.l1_clears
}

#[tokio::test]
async fn dropped_subscription_clears_l1_instead_of_serving_missed_writes() {
    let fleet = Fleet::redis(2).await;
    let (mut ca, mut cb) = (fleet.cache(0), fleet.cache(1));
    let mut admin_b = fleet.admin(1);

    set(&mut ca, "k", "old").await;
    get(&mut cb, "k").await.unwrap();
    assert_eq!(get(&mut cb, "k").await, Some(("old".into(), pb::Tier::L1)));
    let clears_before = l1_clears(&mut admin_b).await;

    // Kill every subscriber connection (both replicas' event subscriptions), then write on A
    // straight away: B may never see that event.
    let killed = fleet.redis_server().kill_pubsub_clients().await;
    assert!(
        killed >= 2,
        "both replicas were subscribed, killed {killed}"
    );
    set(&mut ca, "k", "new").await;

    wait_for(BOUND, POLL, || {
        let mut admin_b = admin_b.clone();
        async move { l1_clears(&mut admin_b).await > clears_before }
    })
    .await
    .expect("B clears its L1 when its subscription drops");
    // B never serves the value it may have missed the invalidation of.
    let (value, _) = get(&mut cb, "k").await.unwrap();
    assert_eq!(value, "new");
    // And once resubscribed, B's L1 works again and stays coherent.
    wait_for(BOUND, POLL, || {
        let mut cb = cb.clone();
        async move { get(&mut cb, "k").await == Some(("new".into(), pb::Tier::L1)) }
    })
    .await
    .expect("B refills its L1 after resubscribing");
    set(&mut ca, "k", "newer").await;
    wait_for(BOUND, POLL, || {
        let mut cb = cb.clone();
        async move { get(&mut cb, "k").await.map(|v| v.0) == Some("newer".into()) }
    })
    .await
    .expect("B follows writes after resubscribing");
}

fn violation(status: &tonic::Status) -> String {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let br = status
        .get_details_bad_request()
        .expect("BadRequest detail present");
    assert_eq!(
        status.get_details_error_info().expect("ErrorInfo").reason,
        "INVALID_ARGUMENT"
    );
    br.field_violations[0].field.clone()
}

fn dur(seconds: i64, nanos: i32) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos })
}

#[tokio::test]
async fn bad_input_is_rejected_naming_the_field() {
    let server = TestServer::memory().await;
    let mut c = CacheServiceClient::new(server.channel());
    let big_value = Bytes::from(vec![0u8; 1024 * 1024 + 1]);
    let cases: Vec<(&str, pb::SetRequest)> = vec![
        ("key", req::set("", "v")),
        ("key", req::set(&"k".repeat(1025), "v")),
        ("key", req::set("a\nb", "v")),
        ("key", req::set("nul\0", "v")),
        (
            "namespace",
            pb::SetRequest {
                namespace: "Bad".into(),
                ..req::set("k", "v")
            },
        ),
        (
            "namespace",
            pb::SetRequest {
                namespace: "".into(),
                ..req::set("k", "v")
            },
        ),
        (
            "namespace",
            pb::SetRequest {
                namespace: "a:b".into(),
                ..req::set("k", "v")
            },
        ),
        (
            "namespace",
            pb::SetRequest {
                namespace: "x".repeat(65),
                ..req::set("k", "v")
            },
        ),
        (
            "value",
            pb::SetRequest {
                value: big_value,
                ..req::set("k", "v")
            },
        ),
        (
            "ttl",
            pb::SetRequest {
                ttl: dur(-1, 0),
                ..req::set("k", "v")
            },
        ),
        (
            "ttl",
            pb::SetRequest {
                ttl: dur(0, 0),
                ..req::set("k", "v")
            },
        ),
        (
            "ttl",
            pb::SetRequest {
                ttl: dur(i64::MAX, 999_999_999),
                ..req::set("k", "v")
            },
        ),
        (
            "stale_ttl",
            pb::SetRequest {
                stale_ttl: dur(0, -5),
                ..req::set("k", "v")
            },
        ),
        (
            "tags[0]",
            pb::SetRequest {
                tags: vec!["".into()],
                ..req::set("k", "v")
            },
        ),
        (
            "tags",
            pb::SetRequest {
                tags: (0..17).map(|i| format!("t{i}")).collect(),
                ..req::set("k", "v")
            },
        ),
    ];
    for (field, req) in cases {
        let err = c.set(req.clone()).await.expect_err(field);
        assert_eq!(violation(&err), field, "request {:?}", req.key);
    }
    // Batches.
    let err = c
        .get_many(pb::GetManyRequest {
            namespace: "default".into(),
            keys: (0..1001).map(|i| i.to_string()).collect(),
            fresh_only: false,
        })
        .await
        .unwrap_err();
    assert_eq!(violation(&err), "keys");
    let err = c
        .get_many(pb::GetManyRequest {
            namespace: "default".into(),
            keys: vec!["ok".into(), "".into()],
            fresh_only: false,
        })
        .await
        .unwrap_err();
    assert_eq!(violation(&err), "keys[1]");
    let err = c
        .set_many(pb::SetManyRequest {
            requests: vec![req::set("ok", "v"), req::set("", "v")],
        })
        .await
        .unwrap_err();
    assert_eq!(violation(&err), "requests[1].key");
    // A bad batch wrote nothing.
    assert_eq!(get(&mut c, "ok").await, None);
    let err = c
        .set_many(pb::SetManyRequest { requests: vec![] })
        .await
        .unwrap_err();
    assert_eq!(violation(&err), "requests");
    let err = c.get(req::get("")).await.unwrap_err();
    assert_eq!(violation(&err), "key");

    // The server keeps serving.
    set(&mut c, "still", "alive").await;
    assert_eq!(get(&mut c, "still").await.unwrap().0, "alive");
}

#[tokio::test]
async fn unknown_namespace_is_not_found_without_dynamic_namespaces() {
    let config = Config {
        dynamic_namespaces: false,
        ..Config::default()
    };
    let server = TestServer::start(config).await;
    let mut c = CacheServiceClient::new(server.channel());
    let err = c
        .get(pb::GetRequest {
            namespace: "nope".into(),
            ..req::get("k")
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(
        err.get_details_error_info().unwrap().reason,
        "NAMESPACE_NOT_FOUND"
    );
    set(&mut c, "k", "v").await;
}

#[tokio::test]
async fn get_if_version_not_answers_not_modified_without_the_value() {
    let server = TestServer::memory().await;
    let mut c = CacheServiceClient::new(server.channel());
    let v = set(&mut c, "etag", "body").await;
    let r = c
        .get(pb::GetRequest {
            if_version_not: Some(v),
            ..req::get("etag")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outcome(), pb::GetOutcome::NotModified);
    let e = r.entry.unwrap();
    assert!(e.value.is_empty());
    assert_eq!(e.version, v);
    let r = c
        .get(pb::GetRequest {
            if_version_not: Some(v - 1),
            ..req::get("etag")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outcome(), pb::GetOutcome::Hit);
    assert_eq!(r.entry.unwrap().value, Bytes::from("body"));
}

/// Sends 10k mixed requests on one stream; returns how many replies overtook an earlier id.
async fn pipeline_10k(server: &TestServer) -> usize {
    let mut c = CacheServiceClient::new(server.channel());
    const N: u64 = 10_000;
    let requests = (0..N).map(|id| {
        let key = format!("p{}", id % 500);
        let operation = match id % 4 {
            0 => pb::pipeline_request::Operation::Set(req::set(&key, &format!("v{id}"))),
            3 if id % 400 == 3 => pb::pipeline_request::Operation::Get(req::get("")),
            _ => pb::pipeline_request::Operation::Get(req::get(&key)),
        };
        pb::PipelineRequest {
            id,
            operation: Some(operation),
        }
    });
    let mut responses = c
        .pipeline(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut seen = HashSet::new();
    let mut out_of_order = 0;
    let mut last = None;
    while let Some(r) = responses.next().await {
        let r = r.unwrap();
        use pb::pipeline_response::Result as R;
        match (r.id % 4, r.result.expect("result set")) {
            (0, R::Set(s)) => assert_eq!(s.outcome(), pb::SetOutcome::Stored),
            (3, R::Error(e)) if r.id % 400 == 3 => {
                assert_eq!(e.code, Code::InvalidArgument as i32);
                let status =
                    tonic::Status::with_details(Code::InvalidArgument, e.message, e.details);
                assert_eq!(violation(&status), "key");
            }
            (_, R::Get(_)) => {}
            (m, other) => panic!("id {} (mod {m}) got {other:?}", r.id),
        }
        if last.is_some_and(|l| r.id < l) {
            out_of_order += 1;
        }
        last = Some(r.id);
        assert!(seen.insert(r.id), "duplicate reply for id {}", r.id);
    }
    assert_eq!(seen.len() as u64, N, "every request answered exactly once");
    eprintln!("pipeline: {N} replies, {out_of_order} arrived out of order");
    out_of_order
}

#[tokio::test]
async fn pipeline_answers_10k_requests_by_id_memory() {
    pipeline_10k(&TestServer::memory().await).await;
}

#[tokio::test]
async fn pipeline_answers_10k_requests_by_id_redis() {
    let redis = RedisServer::start();
    let reordered = pipeline_10k(&TestServer::with_redis(&redis.url()).await).await;
    // Redis round trips finish in any order; the stream must not serialize them.
    assert!(reordered > 0, "replies were answered strictly in order");
}

#[tokio::test]
async fn graceful_shutdown_completes() {
    let redis = RedisServer::start();
    let server = TestServer::with_redis(&redis.url()).await;
    let mut c = CacheServiceClient::new(server.channel());
    set(&mut c, "k", "v").await;
    server.shutdown().await.expect("clean shutdown");
}
