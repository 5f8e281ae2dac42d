//! The client commands: each connects, makes one call, prints text or JSON and picks the exit
//! code (see `exit::Exit`).

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};
use tiercache_client::{
    Client, ClientBuilder, Condition, DeleteResult, Entry, GetOptions, GetResult, HealthStatus,
    NamespaceStats, SetOptions, SetResult, StorageMode,
};

use crate::args::{ConnArgs, DelArgs, GetArgs, HealthArgs, SetArgs, StatsArgs};
use crate::exit::{Exit, Failure};

async fn connect(conn: &ConnArgs) -> Result<Client, Failure> {
    ClientBuilder::new(conn.addr.clone())
        .connect_timeout(Some(conn.timeout))
        .request_timeout(Some(conn.timeout))
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", conn.addr))
        .map_err(Failure::server)
}

/// `tiercache get KEY`: exit 0 on a hit, 1 on a miss.
pub async fn get(args: GetArgs) -> Result<Exit, Failure> {
    let client = connect(&args.conn).await?;
    let opts = GetOptions {
        fresh_only: args.fresh_only,
        ..Default::default()
    };
    let result = client
        .namespace(&args.namespace)
        .get_with(&args.key, opts)
        .await?;
    let entry = match result {
        GetResult::Hit(e) => e,
        // Not asked for (no if_version_not), so treat it like the miss it cannot be.
        GetResult::Miss | GetResult::NotModified(_) => {
            if args.conn.json {
                print_json(&json!({
                    "namespace": args.namespace,
                    "key": args.key,
                    "outcome": "miss",
                }));
            } else {
                eprintln!("(miss)");
            }
            return Ok(Exit::Negative);
        }
    };
    if args.conn.json {
        let mut v = entry_json(&entry);
        v["namespace"] = json!(args.namespace);
        v["key"] = json!(args.key);
        v["outcome"] = json!("hit");
        print_json(&v);
    } else {
        if entry.absent {
            eprintln!("(negative entry)");
        } else if entry.stale {
            eprintln!("(stale)");
        }
        let mut out = std::io::stdout().lock();
        out.write_all(&entry.value)
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush())
            .context("cannot write to stdout")
            .map_err(Failure::server)?;
    }
    Ok(Exit::Ok)
}

/// `tiercache set KEY VALUE`: exit 0 when stored, 1 when the condition failed.
pub async fn set(args: SetArgs) -> Result<Exit, Failure> {
    let value = if args.value == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("cannot read the value from stdin")
            .map_err(Failure::usage)?;
        buf
    } else {
        args.value.into_bytes()
    };
    let condition = match (args.if_absent, args.if_version) {
        (true, _) => Some(Condition::IfAbsent),
        (false, Some(v)) => Some(Condition::IfVersion(v)),
        (false, None) => None,
    };
    let opts = SetOptions {
        ttl: args.ttl,
        stale_ttl: args.stale_ttl,
        tags: args.tags,
        condition,
    };
    let client = connect(&args.conn).await?;
    let result = client
        .namespace(&args.namespace)
        .set_with(&args.key, value, opts)
        .await?;
    let (exit, v, text) = match result {
        SetResult::Stored { version } => (
            Exit::Ok,
            json!({"outcome": "stored", "version": version}),
            format!("stored (version {version})"),
        ),
        SetResult::VersionMismatch { current } => (
            Exit::Negative,
            json!({"outcome": "version_mismatch", "current_version": current}),
            format!("not stored: version mismatch (current version {current})"),
        ),
        SetResult::Exists { current } => (
            Exit::Negative,
            json!({"outcome": "exists", "current_version": current}),
            format!("not stored: key exists (current version {current})"),
        ),
    };
    report(args.conn.json, v, &text);
    Ok(exit)
}

/// `tiercache del KEY`: exit 0 when deleted (or absent without a condition), 1 when the version
/// condition failed.
pub async fn del(args: DelArgs) -> Result<Exit, Failure> {
    let client = connect(&args.conn).await?;
    let ns = client.namespace(&args.namespace);
    let result = match args.if_version {
        Some(v) => ns.delete_if_version(&args.key, v).await?,
        None if ns.delete(&args.key).await? => DeleteResult::Deleted,
        None => DeleteResult::NotFound,
    };
    let (exit, v, text) = match result {
        DeleteResult::Deleted => (Exit::Ok, json!({"outcome": "deleted"}), "deleted".into()),
        // With --if-version, a missing key means the condition did not hold.
        DeleteResult::NotFound => (
            if args.if_version.is_some() {
                Exit::Negative
            } else {
                Exit::Ok
            },
            json!({"outcome": "not_found"}),
            "not found".into(),
        ),
        DeleteResult::VersionMismatch { current } => (
            Exit::Negative,
            json!({"outcome": "version_mismatch", "current_version": current}),
            format!("not deleted: version mismatch (current version {current})"),
        ),
    };
    report(args.conn.json, v, &text);
    Ok(exit)
}

/// `tiercache stats`: the server's storage mode and per-namespace counters.
pub async fn stats(args: StatsArgs) -> Result<Exit, Failure> {
    let client = connect(&args.conn).await?;
    let stats = client.stats(args.namespace.as_deref()).await?;
    let mode = match stats.mode {
        StorageMode::Memory => "memory",
        StorageMode::TwoTier => "two_tier",
        StorageMode::Unknown => "unknown",
    };
    if args.conn.json {
        let namespaces: Vec<Value> = stats
            .namespaces
            .iter()
            .map(|ns| {
                let mut v = serde_json::Map::new();
                v.insert("namespace".into(), json!(ns.namespace));
                for (name, n) in counters(ns) {
                    v.insert(name.into(), json!(n));
                }
                Value::Object(v)
            })
            .collect();
        print_json(&json!({
            "mode": mode,
            "degraded": stats.degraded,
            "namespaces": namespaces,
        }));
    } else {
        println!("mode: {mode}");
        println!("degraded: {}", stats.degraded);
        for ns in &stats.namespaces {
            println!("namespace {}", ns.namespace);
            for (name, n) in counters(ns) {
                println!("  {name:<16} {n}");
            }
        }
    }
    Ok(Exit::Ok)
}

/// `tiercache health`: exit 0 when serving, 3 otherwise.
pub async fn health(args: HealthArgs) -> Result<Exit, Failure> {
    let client = connect(&args.conn).await?;
    let status = client.health().await?;
    let (exit, name) = match status {
        HealthStatus::Serving => (Exit::Ok, "serving"),
        HealthStatus::NotServing => (Exit::Failure, "not_serving"),
        HealthStatus::Unknown => (Exit::Failure, "unknown"),
    };
    report(args.conn.json, json!({"status": name}), name);
    Ok(exit)
}

fn report(as_json: bool, v: Value, text: &str) {
    if as_json {
        print_json(&v);
    } else {
        println!("{text}");
    }
}

fn print_json(v: &Value) {
    println!("{v}");
}

/// Returns the entry's metadata and value as JSON: `value` when it is UTF-8, else `value_hex`.
fn entry_json(e: &Entry) -> Value {
    let mut v = json!({
        "version": e.version,
        "tags": e.tags,
        "fresh_remaining_ms": millis(e.fresh_remaining),
        "stale_remaining_ms": millis(e.stale_remaining),
        "stale": e.stale,
        "tier": e.tier.as_str(),
        "absent": e.absent,
        "born": e.born,
    });
    match std::str::from_utf8(&e.value) {
        Ok(s) => v["value"] = json!(s),
        Err(_) => v["value_hex"] = json!(hex(&e.value)),
    }
    v
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn counters(s: &NamespaceStats) -> [(&'static str, u64); 17] {
    [
        ("hits_l1", s.hits_l1),
        ("hits_l2", s.hits_l2),
        ("stale_hits_l1", s.stale_hits_l1),
        ("stale_hits_l2", s.stale_hits_l2),
        ("misses", s.misses),
        ("sets", s.sets),
        ("deletes", s.deletes),
        ("fills", s.fills),
        ("leases_granted", s.leases_granted),
        ("lease_waits", s.lease_waits),
        ("coalesced", s.coalesced),
        ("invalidations", s.invalidations),
        ("l1_evictions", s.l1_evictions),
        ("l1_entries", s.l1_entries),
        ("l1_bytes", s.l1_bytes),
        ("l1_budget_bytes", s.l1_budget_bytes),
        ("l1_clears", s.l1_clears),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use tiercache_client::Tier;

    fn entry(value: &'static [u8]) -> Entry {
        Entry {
            value: bytes::Bytes::from_static(value),
            version: 3,
            tags: vec!["t".into()],
            fresh_remaining: Duration::from_millis(1500),
            stale_remaining: Duration::MAX,
            stale: false,
            tier: Tier::L1,
            absent: false,
            born: 9,
        }
    }

    #[test]
    fn entry_json_has_text_values_inline() {
        let v = entry_json(&entry(b"hello"));
        assert_eq!(v["value"], "hello");
        assert_eq!(v["version"], 3);
        assert_eq!(v["tier"], "l1");
        assert_eq!(v["fresh_remaining_ms"], 1500);
        assert_eq!(v["stale_remaining_ms"], u64::MAX);
        assert!(v.get("value_hex").is_none());
    }

    #[test]
    fn entry_json_hex_encodes_binary_values() {
        let v = entry_json(&entry(b"\xff\x00a"));
        assert_eq!(v["value_hex"], "ff0061");
        assert!(v.get("value").is_none());
    }
}
