//! End-to-end tests of invalidation over real gRPC: InvalidateTags at scale on two replicas,
//! Watch (every event in order, gaps on loss) and Inspect (why an entry is or is not visible),
//! in memory-only mode and on a real Redis.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use tiercache_proto::v1 as pb;
use tiercache_proto::v1::admin_service_client::AdminServiceClient;
use tiercache_proto::v1::cache_service_client::CacheServiceClient;
use tiercache_testkit::req::{self, InNamespace};
use tiercache_testkit::rpc::{self, AdminClient as Admin, CacheClient as Client};
use tiercache_testkit::{wait_for, Fleet, RedisServer, TestServer};
use tonic::Code;
use tonic_types::StatusExt;

const BOUND: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(5);
/// Largest batch the default config accepts; used for reads.
const BATCH: usize = 1000;
/// Batch size for writes.
const WRITE_BATCH: usize = 250;

fn set_req(ns: &str, key: &str, value: &str, tags: &[&str]) -> pb::SetRequest {
    pb::SetRequest {
        tags: req::tags(tags),
        ..req::set(key, value).in_namespace(ns)
    }
}

async fn get(c: &mut Client, ns: &str, key: &str) -> Option<String> {
    rpc::get_text(c, req::get(key).in_namespace(ns)).await
}

async fn invalidate(c: &mut Client, ns: &str, tags: &[&str]) -> u64 {
    rpc::invalidate_tags(c, req::invalidate_tags(tags).in_namespace(ns)).await
}

async fn flush(c: &mut Client, ns: &str) -> u64 {
    rpc::flush(c, req::flush().in_namespace(ns)).await
}

// ---- InvalidateTags at scale ----

const SCALE_NS: &str = "scale";
const OTHER_NS: &str = "scale-other";
const TAGS: usize = 50;
const HIDDEN_TAG: &str = "t3";

/// The tag of entry `i`: every tenth entry is untagged, the others spread over 50 tags.
fn scale_tag(i: usize) -> Option<String> {
    (!i.is_multiple_of(10)).then(|| format!("t{}", i % TAGS))
}

fn scale_value(i: usize) -> String {
    format!("v{i}")
}

/// Writes `n` entries with SetMany in batches, two batches in flight. The server runs a batch's
/// writes concurrently on one Redis connection; a few hundred in flight keep Redis busy without
/// queueing any of them near the response timeout on a loaded machine.
async fn write_scale(c: &Client, ns: &str, n: usize) {
    let batches = (0..n).step_by(WRITE_BATCH).map(|start| {
        let mut c = c.clone();
        let requests = (start..(start + WRITE_BATCH).min(n))
            .map(|i| {
                let tag = scale_tag(i);
                let tags: Vec<&str> = tag.iter().map(String::as_str).collect();
                set_req(ns, &format!("k{i}"), &scale_value(i), &tags)
            })
            .collect();
        async move {
            let r = c
                .set_many(pb::SetManyRequest { requests })
                .await
                .unwrap()
                .into_inner();
            assert!(r
                .responses
                .iter()
                .all(|r| r.outcome() == pb::SetOutcome::Stored));
        }
    });
    futures::stream::iter(batches)
        .buffer_unordered(2)
        .collect::<Vec<()>>()
        .await;
}

/// Reads keys `k0..kn` with GetMany in batches; returns the indexes that hit, checking values.
async fn visible_scale(c: &Client, ns: &str, n: usize) -> Vec<usize> {
    let batches = (0..n).step_by(BATCH).map(|start| {
        let mut c = c.clone();
        async move {
            let idx: Vec<usize> = (start..(start + BATCH).min(n)).collect();
            let r = c
                .get_many(pb::GetManyRequest {
                    namespace: ns.into(),
                    keys: idx.iter().map(|i| format!("k{i}")).collect(),
                    fresh_only: false,
                })
                .await
                .unwrap()
                .into_inner();
            let mut hits = Vec::new();
            for (i, r) in idx.into_iter().zip(r.results) {
                if r.outcome() == pb::GetOutcome::Hit {
                    let value = r.entry.unwrap().value;
                    assert_eq!(value, Bytes::from(scale_value(i)), "value of k{i}");
                    hits.push(i);
                }
            }
            hits
        }
    });
    let mut hits: Vec<usize> = futures::stream::iter(batches)
        .buffer_unordered(4)
        .flat_map(futures::stream::iter)
        .collect()
        .await;
    hits.sort_unstable();
    hits
}

/// Two replicas on one Redis, `n` entries over 50 tags (both replicas hold them in L1), one
/// InvalidateTags; returns how long the InvalidateTags call took.
async fn invalidate_one_tag_of(n: usize) -> Duration {
    let fleet = Fleet::redis(2).await;
    let (ca, cb) = (fleet.cache(0), fleet.cache(1));

    let started = Instant::now();
    write_scale(&ca, SCALE_NS, n).await;
    let other_n = 100.min(n);
    write_scale(&ca, OTHER_NS, other_n).await;
    let written = started.elapsed();
    // A holds every entry in L1 since it wrote them; reading them all on B fills B's L1 too, so
    // the invalidation has to hide L1 copies on both replicas.
    let all: Vec<usize> = (0..n).collect();
    assert_eq!(visible_scale(&cb, SCALE_NS, n).await, all);

    let t = Instant::now();
    invalidate(&mut ca.clone(), SCALE_NS, &[HIDDEN_TAG]).await;
    let took = t.elapsed();

    // B applies the event asynchronously; a tagged key it holds in L1 disappears.
    let first_hidden = (0..n)
        .find(|&i| scale_tag(i).as_deref() == Some(HIDDEN_TAG))
        .unwrap();
    wait_for(BOUND, POLL, || {
        let mut cb = cb.clone();
        async move {
            get(&mut cb, SCALE_NS, &format!("k{first_hidden}"))
                .await
                .is_none()
        }
    })
    .await
    .expect("B hides the invalidated tag");

    let expected: Vec<usize> = (0..n)
        .filter(|&i| scale_tag(i).as_deref() != Some(HIDDEN_TAG))
        .collect();
    assert_eq!(
        expected.len(),
        n - n / TAGS,
        "exactly one tag's entries are hidden"
    );
    let checked = Instant::now();
    for (name, c) in [("A", &ca), ("B", &cb)] {
        let hits = visible_scale(c, SCALE_NS, n).await;
        assert_eq!(
            hits.len(),
            expected.len(),
            "visible entries on replica {name}"
        );
        assert_eq!(hits, expected, "visible entries on replica {name}");
        // The same tag in another namespace is untouched.
        let other: Vec<usize> = (0..other_n).collect();
        assert_eq!(visible_scale(c, OTHER_NS, other_n).await, other);
    }
    eprintln!(
        "invalidate_tags: {n} entries over {TAGS} tags: InvalidateTags took {took:?} \
         (writing took {written:?}, checking both replicas {:?})",
        checked.elapsed()
    );
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_tags_cost_does_not_grow_with_entries() {
    let small = invalidate_one_tag_of(100).await;
    let large = invalidate_one_tag_of(100_000).await;
    // No timing assertion (shared CI machines); the figures are printed for the record.
    eprintln!("invalidate_tags: 100 entries {small:?}, 100 000 entries {large:?}");
}

// ---- Watch ----

/// Checks the Watch contract on every message it is fed: after Started, each event's sequence
/// is the previous one plus 1; a gap names the last sequence delivered and where it resumes.
#[derive(Debug, Default)]
struct Consumer {
    last: Option<u64>,
    gaps: usize,
    /// Events other than Started and gaps, in order.
    events: Vec<(u64, pb::watch_response::Event)>,
}

impl Consumer {
    fn feed(&mut self, msg: pb::WatchResponse) {
        use pb::watch_response::Event as E;
        let event = msg.event.expect("event set");
        match (&event, self.last) {
            (E::Started(_), None) => {}
            (E::Started(_), Some(_)) => panic!("Started twice"),
            (_, None) => panic!("first message is not Started: {event:?}"),
            (E::Gap(g), Some(last)) => {
                assert_eq!(
                    g.last_sequence, last,
                    "gap names the last delivered sequence"
                );
                assert!(
                    msg.sequence >= last,
                    "a gap does not go back: {g:?} at {}",
                    msg.sequence
                );
                self.gaps += 1;
            }
            (_, Some(last)) => {
                assert_eq!(msg.sequence, last + 1, "consecutive sequences: {event:?}");
                self.events.push((msg.sequence, event));
            }
        }
        self.last = Some(msg.sequence);
    }
}

type WatchStream = tonic::Streaming<pb::WatchResponse>;

async fn watch(c: &mut Client, ns: &str) -> (WatchStream, Consumer, u64) {
    let mut stream = c
        .watch(pb::WatchRequest {
            namespace: ns.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut stream).await;
    let start = first.sequence;
    let mut consumer = Consumer::default();
    consumer.feed(first);
    (stream, consumer, start)
}

async fn next(stream: &mut WatchStream) -> pb::WatchResponse {
    tokio::time::timeout(BOUND, stream.next())
        .await
        .expect("a watch message within the bound")
        .expect("the stream goes on")
        .expect("no stream error")
}

/// What one op should appear as on the Watch stream.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    Key(String, bool),
    Tags(Vec<String>),
    Flush,
}

fn seen(e: &pb::watch_response::Event) -> Expect {
    use pb::watch_response::Event as E;
    match e {
        E::KeyChanged(k) => Expect::Key(k.key.clone(), k.version > 0),
        E::TagsInvalidated(t) => Expect::Tags(t.tags.clone()),
        E::NamespaceFlushed(_) => Expect::Flush,
        other => panic!("unexpected event {other:?}"),
    }
}

/// Issues a mix of Set, Delete, InvalidateTags and FlushNamespace; returns what each should
/// appear as.
async fn mixed_ops(c: &mut Client, ns: &str, n: usize) -> Vec<Expect> {
    let mut expect = Vec::new();
    for i in 0..n {
        let key = format!("w{}", i % 7);
        if i % 23 == 22 {
            flush(c, ns).await;
            expect.push(Expect::Flush);
        } else if i % 11 == 10 {
            let tags = vec![format!("g{}", i % 3), format!("h{}", i % 2)];
            let refs: Vec<&str> = tags.iter().map(String::as_str).collect();
            invalidate(c, ns, &refs).await;
            expect.push(Expect::Tags(tags));
        } else if i % 5 == 4 {
            c.delete(pb::DeleteRequest {
                namespace: ns.into(),
                key: key.clone(),
                if_version: None,
            })
            .await
            .unwrap();
            expect.push(Expect::Key(key, false));
        } else {
            let tag = format!("g{}", i % 3);
            rpc::set(c, set_req(ns, &key, &format!("v{i}"), &[&tag])).await;
            expect.push(Expect::Key(key, true));
        }
    }
    expect
}

async fn receive(stream: &mut WatchStream, consumer: &mut Consumer, n: usize) {
    while consumer.events.len() < n {
        consumer.feed(next(stream).await);
    }
}

#[tokio::test]
async fn watch_delivers_every_event_of_another_replica_in_order() {
    let fleet = Fleet::redis(2).await;
    let (mut ca, mut cb) = (fleet.cache(0), fleet.cache(1));
    for i in 0..3 {
        rpc::set(&mut ca, set_req("w", &format!("before{i}"), "x", &[])).await;
    }
    // B has never used the namespace: Started must still carry the real sequence.
    let (mut stream, mut consumer, start) = watch(&mut cb, "w").await;
    let mut conn = fleet
        .redis_server()
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let seq: u64 = redis::cmd("GET")
        .arg("tc:{w}:seq")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(start, 3);
    assert_eq!(start, seq);

    let expect = mixed_ops(&mut ca, "w", 200).await;
    receive(&mut stream, &mut consumer, expect.len()).await;
    let got: Vec<Expect> = consumer.events.iter().map(|(_, e)| seen(e)).collect();
    assert_eq!(got, expect);
    assert_eq!(consumer.gaps, 0);
    assert_eq!(
        consumer.events.last().unwrap().0,
        start + expect.len() as u64
    );
}

#[tokio::test]
async fn watch_delivers_every_event_in_order_memory() {
    let server = TestServer::memory().await;
    let mut c = CacheServiceClient::new(server.channel());
    for i in 0..5 {
        rpc::set(&mut c, set_req("w", &format!("before{i}"), "x", &[])).await;
    }
    let (mut stream, mut consumer, start) = watch(&mut c, "w").await;
    assert_eq!(start, 5, "Started carries the current sequence");
    let expect = mixed_ops(&mut c, "w", 200).await;
    receive(&mut stream, &mut consumer, expect.len()).await;
    let got: Vec<Expect> = consumer.events.iter().map(|(_, e)| seen(e)).collect();
    assert_eq!(got, expect);
    assert_eq!(consumer.gaps, 0);
}

#[tokio::test]
async fn watch_reports_a_dropped_subscription_as_a_gap_and_resumes() {
    let fleet = Fleet::redis(2).await;
    let (mut ca, mut cb) = (fleet.cache(0), fleet.cache(1));
    let (mut stream, mut consumer, _) = watch(&mut cb, "w").await;
    rpc::set(&mut ca, set_req("w", "k", "one", &[])).await;
    receive(&mut stream, &mut consumer, 1).await;

    let killed = fleet.redis_server().kill_pubsub_clients().await;
    assert!(
        killed >= 2,
        "both replicas were subscribed, killed {killed}"
    );
    // Writes B may miss while it resubscribes.
    rpc::set(&mut ca, set_req("w", "k", "two", &[])).await;
    invalidate(&mut ca, "w", &["t"]).await;

    while consumer.gaps == 0 {
        consumer.feed(next(&mut stream).await);
    }
    // Once B has resubscribed, events flow again, consecutive from where the gap resumed (the
    // consumer checks that on every message). Probe until a probe write comes through.
    let mut resumed = None;
    for probe in 0..100 {
        let key = format!("probe{probe}");
        rpc::set(&mut ca, set_req("w", &key, "x", &[])).await;
        while let Ok(Some(msg)) =
            tokio::time::timeout(Duration::from_millis(200), stream.next()).await
        {
            consumer.feed(msg.unwrap());
            if matches!(consumer.events.last(), Some((_, pb::watch_response::Event::KeyChanged(k))) if k.key == key)
            {
                resumed = Some(probe + 1);
                break;
            }
        }
        if resumed.is_some() {
            break;
        }
    }
    let probes = resumed.expect("events resume after the subscription comes back");
    eprintln!(
        "watch after CLIENT KILL: {} gap(s), resumed after {probes} probe write(s)",
        consumer.gaps
    );
}

// ---- Inspect ----

async fn inspect(admin: &mut Admin, ns: &str, key: &str) -> pb::InspectResponse {
    rpc::inspect(admin, req::inspect(key).in_namespace(ns)).await
}

fn view(r: &pb::InspectResponse, tier: pb::Tier) -> &pb::TierView {
    r.tiers
        .iter()
        .find(|t| t.tier() == tier)
        .unwrap_or_else(|| panic!("no {tier:?} view in {r:?}"))
}

/// The authoritative view: L2 in two-tier mode, L1 in memory-only mode.
fn truth(r: &pb::InspectResponse, two_tier: bool) -> &pb::TierView {
    view(r, if two_tier { pb::Tier::L2 } else { pb::Tier::L1 })
}

async fn stats(admin: &mut Admin, ns: &str) -> pb::NamespaceStats {
    rpc::stats(admin, req::stats().in_namespace(ns)).await
}

async fn inspect_explains_visibility(server: &TestServer, two_tier: bool) {
    let mut c = CacheServiceClient::new(server.channel());
    let mut admin = AdminServiceClient::new(server.channel());
    let ns = "insp";
    // Inspect never creates a namespace: a data-plane call does.
    assert!(rpc::get(&mut c, req::get("nothing").in_namespace(ns))
        .await
        .is_none());

    // Absent.
    let r = inspect(&mut admin, ns, "nothing").await;
    assert_eq!(truth(&r, two_tier).visibility(), pb::Visibility::Absent);
    assert!(!truth(&r, two_tier).present);
    assert!(
        r.explanation.contains("no entry is stored"),
        "{}",
        r.explanation
    );
    assert_eq!(r.tiers.len(), if two_tier { 2 } else { 1 });

    // Fresh, with its tags' marks.
    let v = rpc::set(&mut c, set_req(ns, "tagged", "x", &["a", "b"])).await;
    let r = inspect(&mut admin, ns, "tagged").await;
    let t = truth(&r, two_tier);
    assert_eq!(t.visibility(), pb::Visibility::Fresh, "{r:?}");
    let e = t.entry.as_ref().unwrap();
    assert_eq!(e.version, v);
    assert!(e.value.is_empty(), "Inspect does not return values");
    assert_eq!(e.born, r.sequence);
    assert_eq!(
        t.tag_marks,
        vec![
            pb::TagMark {
                tag: "a".into(),
                mark: 0
            },
            pb::TagMark {
                tag: "b".into(),
                mark: 0
            },
        ]
    );
    assert!(r.explanation.contains("fresh"), "{}", r.explanation);
    if two_tier {
        // The writer holds it in L1 too.
        assert_eq!(view(&r, pb::Tier::L1).visibility(), pb::Visibility::Fresh);
    }

    // Hidden by a tag.
    let born = e.born;
    let mark = invalidate(&mut c, ns, &["b"]).await;
    let r = inspect(&mut admin, ns, "tagged").await;
    assert_eq!(r.sequence, mark);
    let t = truth(&r, two_tier);
    assert_eq!(t.visibility(), pb::Visibility::HiddenByTag, "{r:?}");
    assert!(t.present);
    assert_eq!(
        t.tag_marks[1],
        pb::TagMark {
            tag: "b".into(),
            mark
        }
    );
    assert_eq!(t.tag_marks[0].mark, 0);
    let expected = format!(
        "version {v} (born at sequence {born}) is hidden: tag \"b\" was invalidated at sequence {mark}"
    );
    assert!(r.explanation.contains(&expected), "{}", r.explanation);
    assert_eq!(get(&mut c, ns, "tagged").await, None);
    // A Get that found it hidden does not make it look never written: the store (L2, or L1 in
    // memory-only mode) keeps the hidden entry until it expires, so Inspect still names the tag.
    let r = inspect(&mut admin, ns, "tagged").await;
    let t = truth(&r, two_tier);
    assert_eq!(t.visibility(), pb::Visibility::HiddenByTag, "{r:?}");
    assert_eq!(
        t.tag_marks[1],
        pb::TagMark {
            tag: "b".into(),
            mark
        }
    );
    assert!(r.explanation.contains(&expected), "{}", r.explanation);
    assert_eq!(get(&mut c, ns, "tagged").await, None);

    // Stale: a short fresh period, a long stale window.
    let mut req = set_req(ns, "stale", "x", &[]);
    req.ttl = Some(prost_types::Duration {
        seconds: 0,
        nanos: 50_000_000,
    });
    req.stale_ttl = Some(prost_types::Duration {
        seconds: 60,
        nanos: 0,
    });
    rpc::set(&mut c, req).await;
    wait_for(BOUND, POLL, || {
        let mut admin = admin.clone();
        async move {
            let r = inspect(&mut admin, ns, "stale").await;
            truth(&r, two_tier).visibility() == pb::Visibility::Stale
        }
    })
    .await
    .expect("the entry turns stale");
    let r = inspect(&mut admin, ns, "stale").await;
    let e = truth(&r, two_tier).entry.as_ref().unwrap();
    assert!(e.stale);
    assert!(r.explanation.contains("served stale"), "{}", r.explanation);

    // Read-only: inspecting changed no counter and filled nothing.
    let before = stats(&mut admin, ns).await;
    for key in ["nothing", "tagged", "stale"] {
        inspect(&mut admin, ns, key).await;
    }
    let after = stats(&mut admin, ns).await;
    assert_eq!(before, after);

    // Hidden by a flush. Memory-only mode drops the entries with the flush (L1 is the store),
    // so there the key is absent and the explanation names the flush.
    let flushed = flush(&mut c, ns).await;
    let r = inspect(&mut admin, ns, "stale").await;
    assert_eq!(r.flush_mark, flushed);
    let t = truth(&r, two_tier);
    if two_tier {
        assert_eq!(t.visibility(), pb::Visibility::HiddenByFlush, "{r:?}");
        assert!(
            r.explanation
                .contains(&format!("the namespace was flushed at sequence {flushed}")),
            "{}",
            r.explanation
        );
        assert!(!view(&r, pb::Tier::L1).present, "the flush emptied L1");
    } else {
        assert_eq!(t.visibility(), pb::Visibility::Absent, "{r:?}");
        assert!(
            r.explanation
                .contains(&format!("flush at sequence {flushed}")),
            "{}",
            r.explanation
        );
    }
}

#[tokio::test]
async fn inspect_explains_tag_flush_and_stale_memory() {
    inspect_explains_visibility(&TestServer::memory().await, false).await;
}

#[tokio::test]
async fn inspect_explains_tag_flush_and_stale_redis() {
    let redis = RedisServer::start();
    inspect_explains_visibility(&TestServer::with_redis(&redis.url()).await, true).await;
}

#[tokio::test]
async fn inspect_on_another_replica_reads_redis_without_filling_l1() {
    let fleet = Fleet::redis(2).await;
    let (mut ca, mut admin_b) = (fleet.cache(0), fleet.admin(1));
    let v = rpc::set(&mut ca, set_req("default", "k", "x", &["t"])).await;
    let r = inspect(&mut admin_b, "default", "k").await;
    assert!(!view(&r, pb::Tier::L1).present);
    let l2 = view(&r, pb::Tier::L2);
    assert_eq!(l2.visibility(), pb::Visibility::Fresh);
    assert_eq!(l2.entry.as_ref().unwrap().version, v);
    let s = stats(&mut admin_b, "default").await;
    assert_eq!((s.l1_entries, s.hits_l2, s.misses), (0, 0, 0));
    // A Get on B is still answered by L2 first.
    let r = fleet
        .cache(1)
        .get(req::get("k"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.entry.unwrap().tier(), pb::Tier::L2);
}

#[tokio::test]
async fn inspect_rejects_bad_input_naming_the_field() {
    let server = TestServer::memory().await;
    let mut admin = AdminServiceClient::new(server.channel());
    for (ns, key, field) in [
        ("Bad", "k", "namespace"),
        ("", "k", "namespace"),
        ("default", "", "key"),
    ] {
        let err = admin
            .inspect(req::inspect(key).in_namespace(ns))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let br = err.get_details_bad_request().expect("BadRequest detail");
        assert_eq!(br.field_violations[0].field, field);
    }
}
