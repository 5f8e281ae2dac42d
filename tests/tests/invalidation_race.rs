//! No stale set, ever: a value whose computation began (lease grant) before an invalidation is
//! never visible after it, even when its tags are only known at Fill time. 1000 rounds across two
//! replicas of: lease granted → InvalidateTags (or FlushNamespace) on the other replica, racing
//! the Fill of a value carrying the tag.

use std::time::Duration;

use bytes::Bytes;
use tiercache_proto::v1 as pb;
use tiercache_proto::v1::cache_service_client::CacheServiceClient;
use tiercache_testkit::{wait_for, RedisServer, TestServer};
use tonic::transport::Channel;

type Client = CacheServiceClient<Channel>;

const ROUNDS: usize = 1000;

#[derive(Clone, Copy, Debug)]
enum Invalidation {
    Tag,
    Flush,
}

async fn visible(c: &mut Client, ns: &str, key: &str) -> Option<u64> {
    let r = c
        .get(pb::GetRequest {
            namespace: ns.into(),
            key: key.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    (r.outcome() == pb::GetOutcome::Hit).then(|| r.entry.unwrap().born)
}

async fn race(a: Client, b: Client, ns: &str, how: Invalidation) {
    let (mut stored, mut revoked) = (0, 0);
    for round in 0..ROUNDS {
        let key = format!("k{round}");
        let mut filler = a.clone();
        let lease = filler
            .get_or_set(pb::GetOrSetRequest {
                namespace: ns.into(),
                key: key.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(lease.outcome(), pb::GetOrSetOutcome::Lease, "round {round}");
        let token = lease.lease.unwrap().token;
        let mut inv = b.clone();
        let ns_owned = ns.to_string();
        let invalidation = tokio::spawn(async move {
            match how {
                Invalidation::Tag => {
                    inv.invalidate_tags(pb::InvalidateTagsRequest {
                        namespace: ns_owned,
                        tags: vec!["t".into()],
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .sequence
                }
                Invalidation::Flush => {
                    inv.flush_namespace(pb::FlushNamespaceRequest {
                        namespace: ns_owned,
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .sequence
                }
            }
        });
        let fill = filler
            .fill(pb::FillRequest {
                namespace: ns.into(),
                key: key.clone(),
                lease_token: token,
                value: Bytes::from_static(b"computed before the invalidation"),
                tags: vec!["t".into()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mark = invalidation.await.unwrap();
        match fill.outcome() {
            pb::FillOutcome::Stored => stored += 1,
            pb::FillOutcome::LeaseRevoked => revoked += 1,
            o => panic!("round {round}: unexpected fill outcome {o:?}"),
        }
        // The invalidating replica never shows it.
        let mut b = b.clone();
        if let Some(born) = visible(&mut b, ns, &key).await {
            panic!("round {round}: {how:?} at {mark} but B serves an entry born at {born}");
        }
        // The filling replica stops showing it as soon as the invalidation event arrives.
        let mut a = a.clone();
        wait_for(Duration::from_secs(2), Duration::from_millis(1), || {
            let mut a = a.clone();
            let key = key.clone();
            async move { visible(&mut a, ns, &key).await.is_none() }
        })
        .await
        .unwrap_or_else(|e| panic!("round {round}: A still serves the stale set: {e}"));
        assert_eq!(visible(&mut a, ns, &key).await, None);
    }
    eprintln!(
        "{how:?} race in {ns}: {ROUNDS} rounds, {stored} fills stored then hidden, \
         {revoked} fills refused as revoked, 0 stale sets visible"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_set_across_two_replicas() {
    let redis = RedisServer::start();
    let (a, b) = (
        TestServer::with_redis(&redis.url()).await,
        TestServer::with_redis(&redis.url()).await,
    );
    let (ca, cb) = (
        CacheServiceClient::new(a.channel()),
        CacheServiceClient::new(b.channel()),
    );
    race(ca.clone(), cb.clone(), "race-tags", Invalidation::Tag).await;
    race(ca, cb, "race-flush", Invalidation::Flush).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_set_memory_only() {
    let server = TestServer::memory().await;
    let c = CacheServiceClient::new(server.channel());
    race(c.clone(), c.clone(), "race-tags", Invalidation::Tag).await;
    race(c.clone(), c, "race-flush", Invalidation::Flush).await;
}
