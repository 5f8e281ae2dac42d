//! The client commands: each connects, makes one call, prints text or JSON and picks the exit
//! code (see `exit::Exit`).

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};
use tiercache_client::proto::duration;
use tiercache_client::proto::v1 as pb;
use tiercache_client::{
    Client, ClientBuilder, Condition, DeleteResult, Entry, Error as ClientError, GetOptions,
    GetOrSetOptions, GetResult, HealthStatus, NamespaceStats, SetOptions, SetResult, StorageMode,
    TlsConfig, WatchEventKind,
};

use crate::args::{
    ConnArgs, DelArgs, FlushArgs, GetArgs, GetOrSetArgs, HealthArgs, InspectArgs,
    InvalidateTagsArgs, LockArgs, SetArgs, StatsArgs, TlsArgs, TokenArgs, WatchArgs,
};
use crate::exit::{Exit, Failure};
use crate::out::{self, outln};

/// Connects with `--timeout` bounding each call; calls that wait on purpose (lock acquisition,
/// get-or-set waiting for another caller's fill) get their wait on top, from the SDK.
async fn connect(conn: &ConnArgs) -> Result<Client, Failure> {
    let mut builder = ClientBuilder::new(conn.addr.clone());
    if let Some(token) = conn
        .token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        builder = builder.bearer_token(token);
    }
    if let Some(tls) = tls_config(&conn.tls)? {
        builder = builder.tls(tls);
    }
    builder
        .connect_timeout(Some(conn.timeout))
        .request_timeout(Some(conn.timeout))
        // One call per process: a stream would only add a round trip.
        .pipeline(false)
        .connect()
        .await
        .map_err(|e| {
            let bad_config = matches!(e, ClientError::InvalidConfig(_));
            let e = anyhow::Error::new(e).context(format!("cannot connect to {}", conn.addr));
            if bad_config {
                Failure::usage(e)
            } else {
                Failure::server(e)
            }
        })
}

/// Reads the TLS files named by the flags; `None` when no TLS flag is set.
fn tls_config(args: &TlsArgs) -> Result<Option<TlsConfig>, Failure> {
    let read = |flag: &str, path: &std::path::Path| {
        std::fs::read(path)
            .with_context(|| format!("{flag}: cannot read {}", path.display()))
            .map_err(Failure::usage)
    };
    if args.tls_ca.is_none() && args.tls_cert.is_none() && args.tls_server_name.is_none() {
        return Ok(None);
    }
    let ca_certificate_pem = match &args.tls_ca {
        Some(p) => Some(read("--tls-ca", p)?),
        None => None,
    };
    let client_identity_pem = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some((read("--tls-cert", c)?, read("--tls-key", k)?)),
        _ => None,
    };
    Ok(Some(TlsConfig {
        ca_certificate_pem,
        client_identity_pem,
        domain_name: args.tls_server_name.clone(),
    }))
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
                }))?;
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
        print_json(&v)?;
    } else {
        if entry.absent {
            eprintln!("(negative entry)");
        } else if entry.stale {
            eprintln!("(stale)");
        }
        write_value(&entry.value)?;
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
    report(args.conn.json, v, &text)?;
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
    report(args.conn.json, v, &text)?;
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
        }))?;
    } else {
        outln!("mode: {mode}")?;
        outln!("degraded: {}", stats.degraded)?;
        for ns in &stats.namespaces {
            outln!("namespace {}", ns.namespace)?;
            for (name, n) in counters(ns) {
                outln!("  {name:<16} {n}")?;
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
    report(args.conn.json, json!({"status": name}), name)?;
    Ok(exit)
}

/// `tiercache token [--principal NAME]`: a new random token, printed once (the first line of
/// the text output is the token alone), with the lines that put its hash in the server config.
pub fn token(args: TokenArgs) -> Result<Exit, Failure> {
    if !tiercache_server::config::is_principal_name(&args.principal) {
        return Err(Failure::usage(anyhow::anyhow!(
            "--principal: principal names are 1 to 128 characters of [A-Za-z0-9_.@:-]"
        )));
    }
    let token = tiercache_server::auth::generate_token();
    let hash = tiercache_server::auth::token_hash_hex(&token);
    let principal = &args.principal;
    let config_line = format!("token_sha256 = [\"{hash}\"]");
    let file_line = format!("{principal} {hash}");
    let text = format!(
        "{token}\n\
         # The token above is shown only this once: give it to the client (--token or\n\
         # TIERCACHE_TOKEN). The server keeps only its SHA-256:\n\
         # in the config, under [auth.principals.{principal}]:\n\
         {config_line}\n\
         # or as a line of auth.tokens_file or TIERCACHE_AUTH_TOKENS:\n\
         {file_line}"
    );
    report(
        args.json,
        json!({
            "token": token,
            "principal": principal,
            "token_sha256": hash,
            "config_line": config_line,
            "tokens_file_line": file_line,
        }),
        &text,
    )?;
    Ok(Exit::Ok)
}

/// `tiercache get-or-set KEY -- CMD…`: exit 0 with the value (cached or computed), 1 for a
/// negative entry, 3 when CMD fails (its lease is released, nothing is cached).
pub async fn get_or_set(args: GetOrSetArgs) -> Result<Exit, Failure> {
    let client = connect(&args.conn).await?;
    let opts = GetOrSetOptions {
        ttl: args.ttl,
        stale_ttl: args.stale_ttl,
        tags: args.tags,
        max_wait: args.max_wait,
        ..Default::default()
    };
    let computed = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&computed);
    let command = args.command;
    let value = client
        .namespace(&args.namespace)
        .get_or_set(&args.key, opts, move || async move {
            flag.store(true, Ordering::SeqCst);
            run_for_stdout(&command).await.map(Some)
        })
        .await
        .map_err(failure_of)?;
    let source = if computed.load(Ordering::SeqCst) {
        "computed"
    } else {
        "cached"
    };
    let Some(value) = value else {
        if args.conn.json {
            print_json(&json!({"key": args.key, "outcome": "absent", "source": source}))?;
        } else {
            eprintln!("(negative entry)");
        }
        return Ok(Exit::Negative);
    };
    if args.conn.json {
        let mut v = json!({"key": args.key, "outcome": "hit", "source": source});
        put_value(&mut v, &value);
        print_json(&v)?;
    } else {
        write_value(&value)?;
    }
    Ok(Exit::Ok)
}

/// Runs `command` with stdin closed and stderr passed through; returns its stdout without one
/// trailing newline, or an error when it cannot start or exits non-zero.
async fn run_for_stdout(command: &[String]) -> anyhow::Result<bytes::Bytes> {
    let (prog, rest) = command.split_first().context("no command given after --")?;
    let out = tokio::process::Command::new(prog)
        .args(rest)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .with_context(|| format!("cannot run {prog}"))?;
    if !out.status.success() {
        anyhow::bail!("{prog} failed ({}); nothing was cached", out.status);
    }
    let mut v = out.stdout;
    if v.last() == Some(&b'\n') {
        v.pop();
    }
    Ok(v.into())
}

/// Maps an error from a command-running closure: SDK errors keep their exit code.
fn failure_of(e: anyhow::Error) -> Failure {
    match e.downcast::<ClientError>() {
        Ok(client) => Failure::from(client),
        Err(other) => Failure::server(other),
    }
}

/// `tiercache invalidate-tags TAG…`: prints the sequence the invalidation took.
pub async fn invalidate_tags(args: InvalidateTagsArgs) -> Result<Exit, Failure> {
    let client = connect(&args.conn).await?;
    let seq = client
        .namespace(&args.namespace)
        .invalidate_tags(args.tags.clone())
        .await?;
    report(
        args.conn.json,
        json!({"outcome": "invalidated", "tags": args.tags, "sequence": seq}),
        &format!("invalidated (sequence {seq})"),
    )?;
    Ok(Exit::Ok)
}

/// `tiercache flush`: prints the sequence the flush took.
pub async fn flush(args: FlushArgs) -> Result<Exit, Failure> {
    let client = connect(&args.conn).await?;
    let seq = client.namespace(&args.namespace).flush().await?;
    report(
        args.conn.json,
        json!({"outcome": "flushed", "namespace": args.namespace, "sequence": seq}),
        &format!("flushed {} (sequence {seq})", args.namespace),
    )?;
    Ok(Exit::Ok)
}

/// `tiercache inspect KEY`: the server's explanation of the key.
pub async fn inspect(args: InspectArgs) -> Result<Exit, Failure> {
    let client = connect(&args.conn).await?;
    let r = client.namespace(&args.namespace).inspect(&args.key).await?;
    let tiers: Vec<Value> = r
        .tiers
        .iter()
        .map(|t| {
            let mut v = json!({
                "tier": tier_name(t.tier),
                "present": t.present,
                "visibility": visibility_name(t.visibility),
                "tag_marks": t.tag_marks.iter().map(|m| json!({"tag": m.tag, "mark": m.mark})).collect::<Vec<_>>(),
            });
            if let Some(e) = &t.entry {
                let e = Entry::from(e.clone());
                v["entry"] = entry_json(&e);
            }
            v
        })
        .collect();
    if args.conn.json {
        print_json(&json!({
            "namespace": args.namespace,
            "key": args.key,
            "tiers": tiers,
            "sequence": r.sequence,
            "flush_mark": r.flush_mark,
            "lease_held": r.lease_held,
            "lease_remaining_ms": r.lease_remaining.map(|d| millis(duration::from_proto_saturating(&d))).unwrap_or(0),
            "lease_born": r.lease_born,
            "explanation": r.explanation,
        }))?;
    } else {
        outln!("{}", r.explanation)?;
        outln!("sequence {} flush mark {}", r.sequence, r.flush_mark)?;
        for (t, view) in tiers.iter().zip(&r.tiers) {
            // The entry's tags with their current marks: the one above its born hid it.
            let marks: Vec<String> = view
                .tag_marks
                .iter()
                .map(|m| format!("{}@{}", m.tag, m.mark))
                .collect();
            outln!(
                "  {:<6} present={} visibility={} version={}{}",
                t["tier"].as_str().unwrap_or("?"),
                t["present"],
                t["visibility"].as_str().unwrap_or("?"),
                t.get("entry")
                    .map(|e| e["version"].clone())
                    .unwrap_or(json!(null)),
                if marks.is_empty() {
                    String::new()
                } else {
                    format!(" tag_marks={}", marks.join(","))
                },
            )?;
        }
        if r.lease_held {
            outln!("lease held (born at {})", r.lease_born)?;
        }
    }
    Ok(Exit::Ok)
}

/// `tiercache watch`: prints events, one per line, until interrupted or `--count` events.
pub async fn watch(args: WatchArgs) -> Result<Exit, Failure> {
    let client = connect(&args.conn).await?;
    let mut stream = client.namespace(&args.namespace).watch().await?;
    let mut seen = 0u64;
    loop {
        if args.count.is_some_and(|n| seen >= n) {
            return Ok(Exit::Ok);
        }
        let event = tokio::select! {
            e = stream.next() => e?,
            _ = tokio::signal::ctrl_c() => return Ok(Exit::Ok),
        };
        let Some(event) = event else {
            return Err(Failure::server(anyhow::anyhow!(
                "the server ended the watch stream"
            )));
        };
        let (kind, mut v, text) = match &event.kind {
            WatchEventKind::Started => ("started", json!({}), String::new()),
            WatchEventKind::KeyChanged { key, version } => (
                "key_changed",
                json!({"key": key, "version": version}),
                format!(" {key} version {version}"),
            ),
            WatchEventKind::TagsInvalidated { tags } => (
                "tags_invalidated",
                json!({"tags": tags}),
                format!(" {}", tags.join(" ")),
            ),
            WatchEventKind::Flushed => ("namespace_flushed", json!({}), String::new()),
            WatchEventKind::Gap { last_sequence } => (
                "gap",
                json!({"last_sequence": last_sequence}),
                format!(" after {last_sequence}"),
            ),
        };
        if args.conn.json {
            v["sequence"] = json!(event.sequence);
            v["event"] = json!(kind);
            print_json(&v)?;
        } else {
            outln!("{} {kind}{text}", event.sequence)?;
        }
        // Each line is flushed as it comes; a reader that went away ends the watch.
        if out::closed() {
            return Ok(Exit::Ok);
        }
        if event.kind != WatchEventKind::Started {
            seen += 1;
        }
    }
}

/// `tiercache lock NAME -- CMD…`: exit 0 when CMD succeeded under the lock, 1 when the lock
/// could not be taken within `--wait`, 3 when CMD failed.
pub async fn lock(args: LockArgs) -> Result<Exit, Failure> {
    let client = connect(&args.conn).await?;
    let ns = client.namespace(&args.namespace);
    let Some(guard) = ns.lock_with(&args.name, args.ttl, args.wait).await? else {
        report(
            args.conn.json,
            json!({"lock": args.name, "outcome": "timeout"}),
            &format!("lock {} not acquired within {:?}", args.name, args.wait),
        )?;
        return Ok(Exit::Negative);
    };
    let token = guard.fencing_token();
    report(
        args.conn.json,
        json!({"lock": args.name, "outcome": "acquired", "fencing_token": token}),
        &format!("fencing token {token}"),
    )?;
    let (prog, rest) = args
        .command
        .split_first()
        .context("no command given after --")
        .map_err(Failure::usage)?;
    let status = tokio::process::Command::new(prog)
        .args(rest)
        .env("TIERCACHE_FENCING_TOKEN", token.to_string())
        .status()
        .await;
    let held = guard.is_held();
    let released = guard.release().await;
    let status = status
        .with_context(|| format!("cannot run {prog}"))
        .map_err(Failure::server)?;
    if !status.success() {
        return Err(Failure::server(anyhow::anyhow!("{prog} failed ({status})")));
    }
    if !held {
        return Err(Failure::server(anyhow::anyhow!(
            "the lock was lost while {prog} ran (a renewal failed or found it held by another owner, or its ttl passed without one)"
        )));
    }
    released?;
    Ok(Exit::Ok)
}

fn tier_name(t: i32) -> &'static str {
    match pb::Tier::try_from(t) {
        Ok(pb::Tier::L1) => "l1",
        Ok(pb::Tier::L2) => "l2",
        _ => "unknown",
    }
}

fn visibility_name(v: i32) -> &'static str {
    match pb::Visibility::try_from(v) {
        Ok(pb::Visibility::Fresh) => "fresh",
        Ok(pb::Visibility::Stale) => "stale",
        Ok(pb::Visibility::Absent) => "absent",
        Ok(pb::Visibility::HiddenByFlush) => "hidden_by_flush",
        Ok(pb::Visibility::HiddenByTag) => "hidden_by_tag",
        _ => "unknown",
    }
}

fn write_value(value: &[u8]) -> Result<(), Failure> {
    out::write(|out| out.write_all(value).and_then(|()| out.write_all(b"\n")))
}

fn put_value(v: &mut Value, value: &[u8]) {
    match std::str::from_utf8(value) {
        Ok(s) => v["value"] = json!(s),
        Err(_) => v["value_hex"] = json!(hex(value)),
    }
}

fn report(as_json: bool, v: Value, text: &str) -> Result<(), Failure> {
    if as_json {
        print_json(&v)
    } else {
        outln!("{text}")
    }
}

fn print_json(v: &Value) -> Result<(), Failure> {
    outln!("{v}")
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
    put_value(&mut v, &e.value);
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
