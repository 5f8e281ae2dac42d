//! No stale set, ever: a value whose computation began (lease grant) before an invalidation is
//! never visible after it, even when its tags are only known at Fill time. 1000 rounds across two
//! replicas of: lease granted → InvalidateTags (or FlushNamespace) on the other replica, racing
//! the Fill of a value carrying the tag.

use std::time::Duration;

use tiercache_proto::v1 as pb;
use tiercache_testkit::req::{self, InNamespace};
use tiercache_testkit::rpc::{self, CacheClient as Client};
use tiercache_testkit::{wait_for, Fleet};

const ROUNDS: usize = 1000;

#[derive(Clone, Copy, Debug)]
enum Invalidation {
    Tag,
    Flush,
}

async fn visible(c: &mut Client, ns: &str, key: &str) -> Option<u64> {
    rpc::get(c, req::get(key).in_namespace(ns))
        .await
        .map(|e| e.born)
}

async fn race(a: Client, b: Client, ns: &str, how: Invalidation) {
    let (mut stored, mut revoked) = (0, 0);
    for round in 0..ROUNDS {
        let key = format!("k{round}");
        let mut filler = a.clone();
        let lease = filler
            .get_or_set(req::get_or_set(&key).in_namespace(ns))
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
                    let request = req::invalidate_tags(&["t"]).in_namespace(&ns_owned);
                    rpc::invalidate_tags(&mut inv, request).await
                }
                Invalidation::Flush => {
                    rpc::flush(&mut inv, req::flush().in_namespace(&ns_owned)).await
                }
            }
        });
        let fill = filler
            .fill(pb::FillRequest {
                tags: req::tags(&["t"]),
                ..req::fill(&key, &token, "computed before the invalidation").in_namespace(ns)
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
        let a = a.clone();
        wait_for(Duration::from_secs(2), Duration::from_millis(1), || {
            let mut a = a.clone();
            let key = key.clone();
            async move { visible(&mut a, ns, &key).await.is_none() }
        })
        .await
        .unwrap_or_else(|e| panic!("round {round}: A still serves the stale set: {e}"));
        let mut again = a.clone();
        let reply = again
            .get(req::get(&key).in_namespace(ns))
            .await
            .unwrap()
            .into_inner();
        assert!(
            reply.entry.is_none(),
            "round {round}: after {how:?} at {mark}, A hid the stale set, then served it again: {reply:?}"
        );
    }
    eprintln!(
        "{how:?} race in {ns}: {ROUNDS} rounds, {stored} fills stored then hidden, \
         {revoked} fills refused as revoked, 0 stale sets visible"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_set_across_two_replicas() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("tiercache_core=info")
        .with_test_writer()
        .try_init();
    let fleet = Fleet::redis(2).await;
    let (ca, cb) = (fleet.cache(0), fleet.cache(1));
    race(ca.clone(), cb.clone(), "race-tags", Invalidation::Tag).await;
    race(ca, cb, "race-flush", Invalidation::Flush).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_set_memory_only() {
    let fleet = Fleet::memory().await;
    let c = fleet.cache(0);
    race(c.clone(), c.clone(), "race-tags", Invalidation::Tag).await;
    race(c.clone(), c, "race-flush", Invalidation::Flush).await;
}
