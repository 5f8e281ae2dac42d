//! Calls of the gRPC API that check the outcome a test expects and return what it goes on with.
//!
//! Each panics, naming what it got, on an error status or an outcome the test did not expect,
//! so a test reads as the sequence of calls it makes. Build the requests with [`crate::req`].

use tiercache_proto::v1 as pb;
use tiercache_proto::v1::admin_service_client::AdminServiceClient;
use tiercache_proto::v1::cache_service_client::CacheServiceClient;
use tonic::transport::Channel;

/// A CacheService client on a tonic channel.
pub type CacheClient = CacheServiceClient<Channel>;
/// An AdminService client on a tonic channel.
pub type AdminClient = AdminServiceClient<Channel>;

/// Returns the entry of a Get that hit, or `None` for a miss.
///
/// # Panics
///
/// Panics on any other outcome (`NOT_MODIFIED`).
#[track_caller]
pub fn hit_or_miss(response: pb::GetResponse) -> Option<pb::Entry> {
    match response.outcome() {
        pb::GetOutcome::Hit => Some(response.entry.expect("a hit carries its entry")),
        pb::GetOutcome::Miss => None,
        o => panic!("unexpected outcome {o:?}"),
    }
}

/// Returns the version a Set stored.
///
/// # Panics
///
/// Panics unless the outcome is `STORED`.
#[track_caller]
pub fn stored(response: pb::SetResponse) -> u64 {
    assert_eq!(response.outcome(), pb::SetOutcome::Stored);
    response.version
}

/// Returns an entry's value as text.
///
/// # Panics
///
/// Panics if the value is not UTF-8.
pub fn text(entry: &pb::Entry) -> String {
    String::from_utf8(entry.value.to_vec()).expect("a UTF-8 value")
}

/// Sends a Get; returns the entry on a hit, `None` on a miss (see [`hit_or_miss`]).
pub async fn get(c: &mut CacheClient, request: pb::GetRequest) -> Option<pb::Entry> {
    hit_or_miss(c.get(request).await.expect("Get").into_inner())
}

/// Sends a Get; returns the value as text on a hit, `None` on a miss.
pub async fn get_text(c: &mut CacheClient, request: pb::GetRequest) -> Option<String> {
    get(c, request).await.as_ref().map(text)
}

/// Sends a Set that must be stored; returns the new version.
pub async fn set(c: &mut CacheClient, request: pb::SetRequest) -> u64 {
    stored(c.set(request).await.expect("Set").into_inner())
}

/// Sends a Delete; returns its outcome.
pub async fn delete(c: &mut CacheClient, request: pb::DeleteRequest) -> pb::DeleteOutcome {
    c.delete(request)
        .await
        .expect("Delete")
        .into_inner()
        .outcome()
}

/// Sends an InvalidateTags; returns the sequence of its event.
pub async fn invalidate_tags(c: &mut CacheClient, request: pb::InvalidateTagsRequest) -> u64 {
    c.invalidate_tags(request)
        .await
        .expect("InvalidateTags")
        .into_inner()
        .sequence
}

/// Sends a FlushNamespace; returns the sequence of its event.
pub async fn flush(c: &mut CacheClient, request: pb::FlushNamespaceRequest) -> u64 {
    c.flush_namespace(request)
        .await
        .expect("FlushNamespace")
        .into_inner()
        .sequence
}

/// Gives a lease back and returns what the server answered.
pub async fn release_lease(
    c: &mut CacheClient,
    request: pb::ReleaseLeaseRequest,
) -> pb::ReleaseLeaseResponse {
    c.release_lease(request)
        .await
        .expect("ReleaseLease")
        .into_inner()
}

/// Returns the counters of the namespace a GetStats names (the first, when it names none).
pub async fn stats(admin: &mut AdminClient, request: pb::GetStatsRequest) -> pb::NamespaceStats {
    let mut r = admin
        .get_stats(request)
        .await
        .expect("GetStats")
        .into_inner();
    assert!(!r.namespaces.is_empty(), "GetStats answered no namespace");
    r.namespaces.swap_remove(0)
}

/// Sends an Inspect and returns its answer.
pub async fn inspect(admin: &mut AdminClient, request: pb::InspectRequest) -> pb::InspectResponse {
    admin.inspect(request).await.expect("Inspect").into_inner()
}
