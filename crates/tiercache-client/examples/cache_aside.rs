//! Cache-aside in front of a slow "database", with fleet-wide stampede protection.
//!
//! ```sh
//! tiercache serve &                                   # a server on 127.0.0.1:50051
//! cargo run -p tiercache-client --example cache_aside  # or TIERCACHE_ADDR=http://host:port
//! ```
//!
//! 50 concurrent requests for the same cold user run the query once; the rest of the requests
//! are cache hits. `tests/example.rs` runs [`demo`] against a test server so this stays working.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tiercache_client::{Client, GetOrSetOptions, Namespace};

/// A row of the pretend database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: u64,
    pub name: String,
}

/// A database whose queries are slow and counted.
#[derive(Debug, Default)]
pub struct SlowDatabase {
    pub queries: AtomicU64,
}

impl SlowDatabase {
    /// `SELECT id, name FROM users WHERE id = $1`, taking 100 ms. User 0 does not exist.
    pub async fn find_user(&self, id: u64) -> Result<Option<User>, std::io::Error> {
        self.queries.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok((id != 0).then(|| User {
            id,
            name: format!("user-{id}"),
        }))
    }
}

/// Our service's error type: it absorbs cache errors and database errors alike.
#[derive(Debug)]
pub enum AppError {
    Cache(tiercache_client::Error),
    Db(std::io::Error),
}

impl From<tiercache_client::Error> for AppError {
    fn from(e: tiercache_client::Error) -> Self {
        AppError::Cache(e)
    }
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppError::Cache(e) => write!(f, "cache: {e}"),
            AppError::Db(e) => write!(f, "database: {e}"),
        }
    }
}

/// Reads a user through the cache: the query runs only for the caller holding the lease.
pub async fn get_user(
    users: &Namespace,
    db: Arc<SlowDatabase>,
    id: u64,
) -> Result<Option<User>, AppError> {
    let opts = GetOrSetOptions {
        ttl: Some(Duration::from_secs(60)),
        tags: vec![format!("user:{id}")],
        ..Default::default()
    };
    users
        .get_or_set_json(format!("user:{id}"), opts, move || async move {
            db.find_user(id).await.map_err(AppError::Db)
        })
        .await
}

/// Runs 50 concurrent lookups of one cold user and one of a missing user; returns how many
/// queries reached the database.
pub async fn demo(addr: &str) -> Result<u64, AppError> {
    let client = Client::connect(addr).await?;
    let users = client.namespace("default");
    let db = Arc::new(SlowDatabase::default());
    let id = 1 + u64::from(std::process::id()) % 1_000_000;
    users.invalidate_tags([format!("user:{id}")]).await?;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (users, db) = (users.clone(), Arc::clone(&db));
        tasks.push(tokio::spawn(async move { get_user(&users, db, id).await }));
    }
    for t in tasks {
        let user = t.await.expect("task")?;
        assert_eq!(user.map(|u| u.id), Some(id));
    }
    // A user that does not exist is cached as absent: the second lookup skips the database.
    assert_eq!(get_user(&users, Arc::clone(&db), 0).await?, None);
    assert_eq!(get_user(&users, Arc::clone(&db), 0).await?, None);
    Ok(db.queries.load(Ordering::SeqCst))
}

#[allow(dead_code)] // `tests/example.rs` includes this file for `demo` only.
#[tokio::main]
async fn main() -> Result<(), AppError> {
    let addr =
        std::env::var("TIERCACHE_ADDR").unwrap_or_else(|_| "http://127.0.0.1:50051".to_string());
    let queries = demo(&addr).await?;
    println!(
        "51 user lookups (50 concurrent, 1 cold key; 2 for a missing user) ran {queries} queries"
    );
    Ok(())
}
