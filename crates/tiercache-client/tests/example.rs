//! Runs `examples/cache_aside.rs` against a test server so the example keeps working.

#[path = "../examples/cache_aside.rs"]
mod cache_aside;

use tiercache_testkit::TestServer;

#[tokio::test]
async fn cache_aside_example_queries_the_database_once_per_key() {
    let server = TestServer::memory().await;
    let queries = cache_aside::demo(&server.endpoint()).await.unwrap();
    // One query for the 50 concurrent lookups, one for the missing user (then cached as absent).
    assert_eq!(queries, 2);
}
