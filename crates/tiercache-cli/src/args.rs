//! The command line, as clap derive structs. Parsing only; the work is in `serve` and `commands`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// tiercache: a gRPC cache-as-a-service, and a client for it.
///
/// Exit codes: 0 success or hit; 1 miss (get), failed condition (set, del) or lock timeout
/// (lock); 2 usage or config error; 3 server or transport error, or the command run by
/// get-or-set or lock failed.
#[derive(Debug, Parser)]
#[command(name = "tiercache", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the server until SIGTERM or SIGINT.
    Serve(ServeArgs),
    /// Reads a key; prints its value followed by a newline.
    Get(GetArgs),
    /// Writes a key.
    Set(SetArgs),
    /// Deletes a key.
    #[command(alias = "delete")]
    Del(DelArgs),
    /// Reads a key; on a miss runs CMD (only when holding the lease) and fills the key with its
    /// stdout (one trailing newline removed). Prints the value.
    GetOrSet(GetOrSetArgs),
    /// Hides every entry carrying any of the tags.
    InvalidateTags(InvalidateTagsArgs),
    /// Hides every entry of a namespace.
    Flush(FlushArgs),
    /// Prints the server's counters.
    Stats(StatsArgs),
    /// Explains a key: which tiers hold it, whether it is visible and why, any lease on it.
    Inspect(InspectArgs),
    /// Prints a namespace's invalidation events until interrupted (or --count events).
    Watch(WatchArgs),
    /// Runs CMD while holding a distributed lock (renewed while CMD runs); prints the fencing
    /// token and passes it to CMD as TIERCACHE_FENCING_TOKEN.
    Lock(LockArgs),
    /// Checks that the server is serving.
    Health(HealthArgs),
    /// Generates a bearer token; prints it once, then the SHA-256 lines the server's config
    /// (`token_sha256`) or tokens file takes (docs/security.md).
    Token(TokenArgs),
    /// Measures tiercache side by side with direct Redis calls (docs/performance.md).
    #[cfg(feature = "bench")]
    Bench(BenchArgs),
    /// Measures tiercache side by side with direct Redis calls (docs/performance.md); not in
    /// this build: build with `--features bench`.
    #[cfg(not(feature = "bench"))]
    Bench(BenchUnavailableArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML config file; the built-in defaults (memory-only) when omitted.
    #[arg(long, env = "TIERCACHE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The gRPC listen address, overriding the config's `listen`.
    #[arg(long, env = "TIERCACHE_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// The Redis URL, overriding the config's `redis.url` (and turning on the L2 tier).
    #[arg(long, env = "TIERCACHE_REDIS_URL", value_name = "URL")]
    pub redis_url: Option<String>,
    /// The admin HTTP address serving `/metrics`, overriding `telemetry.admin_listen`.
    #[arg(long, env = "TIERCACHE_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// The TLS certificate chain (PEM), overriding `tls.cert_file`; with --tls-key-file it
    /// turns TLS on without a `[tls]` table.
    #[arg(
        long,
        env = "TIERCACHE_TLS_CERT_FILE",
        value_name = "FILE",
        requires = "tls_key_file"
    )]
    pub tls_cert_file: Option<PathBuf>,
    /// The TLS private key (PEM), overriding `tls.key_file`.
    #[arg(
        long,
        env = "TIERCACHE_TLS_KEY_FILE",
        value_name = "FILE",
        requires = "tls_cert_file"
    )]
    pub tls_key_file: Option<PathBuf>,
    /// Log line format; the level comes from RUST_LOG (default info). JSON lines carry the
    /// OpenTelemetry trace_id and span_id.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How to reach the server and how to print; shared by every client command.
#[derive(Debug, Args)]
pub struct ConnArgs {
    /// The server address.
    #[arg(long, env = "TIERCACHE_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// Bounds connecting and the call itself.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Prints one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// The bearer token sent with every call (`authorization: Bearer <token>`).
    #[arg(
        long,
        env = "TIERCACHE_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// TLS to the server; any of them (or an `https://` address) turns TLS on.
#[derive(Debug, Args)]
pub struct TlsArgs {
    /// PEM CA certificates to verify the server with, instead of the system roots.
    #[arg(long, env = "TIERCACHE_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate, for mutual TLS (with --tls-key).
    #[arg(
        long,
        env = "TIERCACHE_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(
        long,
        env = "TIERCACHE_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// The name to verify the server certificate against, instead of the address's host.
    #[arg(long, env = "TIERCACHE_TLS_SERVER_NAME", value_name = "NAME")]
    pub tls_server_name: Option<String>,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The principal the token is for (names it in the printed config lines).
    #[arg(long, default_value = "NAME")]
    pub principal: String,
    /// Prints one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    pub key: String,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Treats a stale entry as a miss.
    #[arg(long)]
    pub fresh_only: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Args)]
pub struct SetArgs {
    pub key: String,
    /// The value; `-` reads it from stdin.
    pub value: String,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Fresh period, e.g. `30s` or `5m`; the namespace default when omitted.
    #[arg(long, value_parser = parse_duration)]
    pub ttl: Option<Duration>,
    /// Stale window after the fresh period; the namespace default when omitted.
    #[arg(long, value_parser = parse_duration)]
    pub stale_ttl: Option<Duration>,
    /// A tag for invalidation; repeat for more.
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Writes only if the key holds no visible entry.
    #[arg(long, conflicts_with = "if_version")]
    pub if_absent: bool,
    /// Writes only if the current version is V.
    #[arg(long, value_name = "V")]
    pub if_version: Option<u64>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Args)]
pub struct DelArgs {
    pub key: String,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Deletes only if the current version is V.
    #[arg(long, value_name = "V")]
    pub if_version: Option<u64>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Args)]
pub struct GetOrSetArgs {
    pub key: String,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Fresh period of a filled value; the namespace default when omitted.
    #[arg(long, value_parser = parse_duration)]
    pub ttl: Option<Duration>,
    /// Stale window of a filled value; the namespace default when omitted.
    #[arg(long, value_parser = parse_duration)]
    pub stale_ttl: Option<Duration>,
    /// A tag of a filled value; repeat for more.
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// How long to wait for another caller's fill; the namespace default when omitted.
    #[arg(long, value_parser = parse_duration)]
    pub max_wait: Option<Duration>,
    /// The command that computes the value, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Args)]
pub struct InvalidateTagsArgs {
    #[arg(required = true, value_name = "TAG")]
    pub tags: Vec<String>,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Args)]
pub struct FlushArgs {
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    pub key: String,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Stops after N events (the initial `started` event not counted).
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Args)]
pub struct LockArgs {
    pub name: String,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Lock TTL; renewed every third of it while CMD runs.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub ttl: Duration,
    /// How long to wait while another owner holds the lock.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub wait: Duration,
    /// The command to run while holding the lock, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Only this namespace; all when omitted.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[cfg(feature = "bench")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// `tiercache bench`: every scenario in one run, with ratios to the health check and to direct
/// Redis GETs measured in that same run.
#[cfg(feature = "bench")]
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// A running server to measure instead of one started in-process. It must serve the
    /// namespaces `bench` and `bench-l2` (the latter with `l1_enabled = false`).
    #[arg(long, value_name = "URL")]
    pub addr: Option<String>,
    /// A Redis to use instead of a `redis-server` spawned on a free port.
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,
    /// Requests in flight at any time.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// HTTP/2 (and Redis) connections the requests are spread over.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Distinct keys read by the read scenarios.
    #[arg(long, default_value_t = 10_000)]
    pub keys: usize,
    /// Measured time per scenario.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Unmeasured time before each scenario.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Only these scenarios (comma-separated names; `list` prints them). All when omitted.
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub scenarios: Vec<String>,
    /// Callers per cold key in the stampede scenario.
    #[arg(long, default_value_t = 1000)]
    pub stampede_callers: usize,
    /// In-process servers (replicas) on one Redis in the stampede scenario.
    #[arg(long, default_value_t = 3)]
    pub stampede_replicas: usize,
    /// Cold keys in the stampede scenario.
    #[arg(long, default_value_t = 3)]
    pub stampede_keys: usize,
    /// How long the stampede's origin takes to compute a value.
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    pub stampede_fill: Duration,
    /// Entries written in the memory scenario.
    #[arg(long, default_value_t = 1_000_000)]
    pub memory_entries: usize,
    /// The tracing subscriber of `tiercache serve` (logs and OpenTelemetry layer) in this
    /// process, or none.
    #[arg(long, value_enum, default_value_t = Switch::On)]
    pub telemetry: Switch,
    /// Prints one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// `tiercache bench` in a build without the `bench` feature: takes any arguments, so the answer
/// is always the message saying how to build it rather than a complaint about a flag.
#[cfg(not(feature = "bench"))]
#[derive(Debug, Clone, Args)]
pub struct BenchUnavailableArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub args: Vec<String>,
}

fn parse_duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn set_parses_durations_tags_and_condition() {
        let cli = Cli::try_parse_from([
            "tiercache",
            "set",
            "k",
            "v",
            "--ttl",
            "30s",
            "--stale-ttl",
            "1m",
            "--tag",
            "a",
            "--tag",
            "b",
            "--if-version",
            "7",
        ])
        .unwrap();
        let Command::Set(a) = cli.command else {
            panic!()
        };
        assert_eq!(a.ttl, Some(Duration::from_secs(30)));
        assert_eq!(a.stale_ttl, Some(Duration::from_secs(60)));
        assert_eq!(a.tags, ["a", "b"]);
        assert_eq!(a.if_version, Some(7));
        assert_eq!(a.namespace, "default");
    }

    #[test]
    fn if_absent_conflicts_with_if_version() {
        let err = Cli::try_parse_from([
            "tiercache",
            "set",
            "k",
            "v",
            "--if-absent",
            "--if-version",
            "1",
        ])
        .unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}
