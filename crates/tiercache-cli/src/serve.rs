//! `tiercache serve`: config from file, flags and environment; logging and traces; signals;
//! `run`. This is the one place that reads the `OTEL_*` environment.

use std::future::Future;
use std::io::IsTerminal;

use anyhow::Context;
use tiercache_server::config::{ConfigError, OtelEnv, RedisConfig, TlsConfig};
use tiercache_server::telemetry::{self, JsonWithTraceIds};
use tiercache_server::{Config, ServerError};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::args::{LogFormat, ServeArgs};
use crate::exit::{Exit, Failure};

/// The Redis password, when the config file sets neither `redis.password` nor
/// `redis.password_file` (a Kubernetes Secret as an environment variable).
pub const REDIS_PASSWORD_ENV: &str = "TIERCACHE_REDIS_PASSWORD";

/// Runs the server until SIGTERM or SIGINT, then returns after the graceful shutdown.
pub async fn serve(args: ServeArgs) -> Result<Exit, Failure> {
    let env = OtelEnv::from_lookup(|k| std::env::var(k).ok());
    let mut config = build_config(&args, &env).map_err(Failure::usage)?;
    add_auth_tokens(&mut config, std::env::var(AUTH_TOKENS_ENV).ok().as_deref())
        .map_err(Failure::usage)?;
    config.redis = config
        .redis
        .map(|r| r.with_password_env(std::env::var(REDIS_PASSWORD_ENV).ok()));
    let tracer = telemetry::tracer_provider(&config.telemetry)
        .context("cannot start tracing")
        .map_err(Failure::usage)?;
    init_logging(
        args.log_format,
        &tracer,
        config.telemetry.otlp_endpoint.is_some(),
    );
    // Register the handlers before binding, so a signal that arrives during start-up is not
    // lost (the default action would kill the process without a graceful shutdown).
    let shutdown = shutdown_signal()
        .context("cannot install signal handlers")
        .map_err(Failure::server)?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))
        .map_err(Failure::server)?;
    let addr = listener
        .local_addr()
        .context("cannot read the listen address")
        .map_err(Failure::server)?;
    let admin = tiercache_server::bind_admin(&config)
        .await
        .map_err(Failure::server)?;
    let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
    tracing::info!(
        %addr,
        admin = ?admin_addr,
        otlp = config.telemetry.otlp_endpoint.as_deref().unwrap_or("off"),
        redis = config.redis.is_some(),
        tls = config.tls.as_ref().map_or("off", |t| if t.client_ca_file.is_some() { "mtls" } else { "on" }),
        namespaces = config.namespaces.len(),
        "listening"
    );
    let result = tiercache_server::run_with_admin(listener, admin, config, shutdown).await;
    // Flush the last spans; blocking, so off the async workers.
    let _ = tokio::task::spawn_blocking(move || tracer.shutdown()).await;
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            Ok(Exit::Ok)
        }
        Err(e @ ServerError::Config(_)) => Err(Failure::usage(e)),
        Err(e) => Err(Failure::server(e)),
    }
}

/// The environment variable with token lines (`<principal> <sha256-hex>`, newline- or
/// `;`-separated), as from a Kubernetes Secret.
pub const AUTH_TOKENS_ENV: &str = "TIERCACHE_AUTH_TOKENS";

/// Adds the token lines of `TIERCACHE_AUTH_TOKENS` (`lines`) to `[auth]`; set without `[auth]`
/// it is an error (the tokens would grant nothing).
pub fn add_auth_tokens(config: &mut Config, lines: Option<&str>) -> Result<(), ConfigError> {
    let Some(lines) = lines.filter(|l| !l.trim().is_empty()) else {
        return Ok(());
    };
    match &mut config.auth {
        Some(auth) => auth.add_token_lines(AUTH_TOKENS_ENV, lines)?,
        None => {
            return Err(ConfigError::Invalid {
                field: AUTH_TOKENS_ENV.into(),
                message: "is set but the config has no [auth] with the principals it names".into(),
            })
        }
    }
    config.validate()
}

/// Returns the config: the file (or the defaults), with flag and environment overrides laid
/// over it, validated. `OTEL_*` variables (`env`) fill the telemetry fields the file left out.
pub fn build_config(args: &ServeArgs, env: &OtelEnv) -> Result<Config, ConfigError> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(url) = &args.redis_url {
        // Keep the file's timeouts when it has a [redis] table; only the URL changes.
        match &mut config.redis {
            Some(redis) => redis.url = url.clone(),
            None => config.redis = Some(RedisConfig::new(url.clone())),
        }
    }
    if let Some(admin) = args.admin_listen {
        config.telemetry.admin_listen = admin;
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert_file, &args.tls_key_file) {
        // Keep the file's client CA and reload interval; only the two paths change.
        match &mut config.tls {
            Some(tls) => (tls.cert_file, tls.key_file) = (cert.clone(), key.clone()),
            None => config.tls = Some(TlsConfig::new(cert, key)),
        }
    }
    config.telemetry = config.telemetry.with_env(env)?;
    config.validate()?;
    Ok(config)
}

/// Installs the tracing subscriber: logs on stderr (RUST_LOG filter, default `info`; text, or
/// JSON with trace ids) and spans to the tracer provider. The two have separate filters, so
/// RUST_LOG does not decide what is traced.
/// Installs what `tiercache serve` installs with no OTLP endpoint (text logs at `RUST_LOG` or
/// info, and the OpenTelemetry layer), so `tiercache bench --telemetry on` pays what a default
/// server pays per RPC.
#[cfg(feature = "bench")]
pub fn init_bench_telemetry() -> anyhow::Result<()> {
    let config = tiercache_server::config::TelemetryConfig::default();
    let tracer = telemetry::tracer_provider(&config).context("cannot start tracing")?;
    init_logging(LogFormat::Text, &tracer, false);
    // Installed for the whole process: the provider must outlive every span.
    std::mem::forget(tracer);
    Ok(())
}

/// The target of the per-RPC and wait spans.
const TELEMETRY_TARGET: &str = "tiercache_server::telemetry";

fn init_logging(
    format: LogFormat,
    tracer: &opentelemetry_sdk::trace::SdkTracerProvider,
    detailed: bool,
) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        // Text lines leave out the per-RPC spans (defined in tiercache_server::telemetry;
        // their fields are for traces and JSON logs): recording ten fields per RPC cost a
        // fifth of unary Get throughput (docs/performance.md). RUST_LOG naming that target
        // turns them back on.
        LogFormat::Text => {
            let filter = if std::env::var("RUST_LOG").is_ok_and(|v| v.contains(TELEMETRY_TARGET)) {
                filter
            } else {
                filter.add_directive(
                    format!("{TELEMETRY_TARGET}=warn")
                        .parse()
                        .expect("a valid directive"),
                )
            };
            logs.with_ansi(std::io::stderr().is_terminal())
                .with_filter(filter)
                .boxed()
        }
        LogFormat::Json => logs
            .json()
            .event_format(JsonWithTraceIds(tracing_subscriber::fmt::format().json()))
            .with_filter(filter)
            .boxed(),
    };
    // Without an OTLP endpoint every span is sampled out and only JSON log lines print trace
    // ids, so text logs gain nothing from the OpenTelemetry layer while every RPC pays for it
    // (about a fifth of unary Get throughput, docs/performance.md).
    let otel =
        (detailed || format == LogFormat::Json).then(|| telemetry::otel_layer(tracer, detailed));
    tracing_subscriber::registry().with(logs).with(otel).init();
}

/// Returns a future that completes on the first SIGTERM or SIGINT.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down");
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn args() -> ServeArgs {
        ServeArgs {
            config: None,
            listen: None,
            redis_url: None,
            admin_listen: None,
            tls_cert_file: None,
            tls_key_file: None,
            log_format: LogFormat::Text,
        }
    }

    #[test]
    fn tls_flags_set_or_override_the_files() {
        let flags = ServeArgs {
            tls_cert_file: Some("/f/tls.crt".into()),
            tls_key_file: Some("/f/tls.key".into()),
            ..args()
        };
        let c = build_config(&flags, &OtelEnv::default()).unwrap();
        assert_eq!(c.tls, Some(TlsConfig::new("/f/tls.crt", "/f/tls.key")));
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(
            &mut file,
            b"[tls]\ncert_file = \"a\"\nkey_file = \"b\"\nclient_ca_file = \"ca\"\n",
        )
        .unwrap();
        let c = build_config(
            &ServeArgs {
                config: Some(file.path().to_path_buf()),
                ..flags
            },
            &OtelEnv::default(),
        )
        .unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.cert_file, std::path::Path::new("/f/tls.crt"));
        assert_eq!(tls.client_ca_file, Some("ca".into()));
    }

    #[test]
    fn defaults_without_file_or_flags() {
        let c = build_config(&args(), &OtelEnv::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:50051");
        assert!(c.redis.is_none());
    }

    #[test]
    fn flags_override_the_file() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "listen = \"127.0.0.1:7000\"\n[redis]\nurl = \"redis://a:1\"\nresponse_timeout = \"250ms\""
        )
        .unwrap();
        let c = build_config(
            &ServeArgs {
                config: Some(file.path().to_path_buf()),
                listen: Some("127.0.0.1:7001".parse().unwrap()),
                redis_url: Some("redis://b:2".into()),
                ..args()
            },
            &OtelEnv::default(),
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:7001");
        let redis = c.redis.unwrap();
        assert_eq!(redis.url, "redis://b:2");
        assert_eq!(
            redis.response_timeout,
            std::time::Duration::from_millis(250)
        );
    }

    #[test]
    fn bad_redis_url_names_the_field() {
        let e = build_config(
            &ServeArgs {
                redis_url: Some("http://nope".into()),
                ..args()
            },
            &OtelEnv::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("redis.url"), "{e}");
    }

    #[test]
    fn otel_environment_reaches_the_config() {
        let env = OtelEnv::from_lookup(|k| match k {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://127.0.0.1:4317".into()),
            "OTEL_SERVICE_NAME" => Some("cache-eu".into()),
            _ => None,
        });
        let c = build_config(
            &ServeArgs {
                admin_listen: Some("127.0.0.1:0".parse().unwrap()),
                ..args()
            },
            &env,
        )
        .unwrap();
        assert_eq!(
            c.telemetry.otlp_endpoint.as_deref(),
            Some("http://127.0.0.1:4317")
        );
        assert_eq!(c.telemetry.service_name(), "cache-eu");
        assert_eq!(c.telemetry.admin_listen.to_string(), "127.0.0.1:0");
    }

    #[test]
    fn auth_tokens_from_the_environment_join_their_principal() {
        let hash = tiercache_server::auth::token_hash_hex("tc_env");
        let mut c = Config::from_toml(
            "[auth.principals.app.rights]\n\"app*\" = [\"read\"]\n[auth.principals.ops]\n",
        )
        .unwrap();
        add_auth_tokens(
            &mut c,
            Some(&format!(
                "# from the secret\napp {hash};ops {}",
                "0".repeat(64)
            )),
        )
        .unwrap();
        let auth = c.auth.as_ref().unwrap();
        assert_eq!(auth.principals["app"].token_sha256.len(), 1);
        assert_eq!(auth.principals["ops"].token_sha256.len(), 1);
        // An unknown principal or a bad hash names the variable, never the hash.
        let e = add_auth_tokens(&mut c, Some(&format!("nobody {hash}"))).unwrap_err();
        assert!(e.to_string().contains(AUTH_TOKENS_ENV), "{e}");
        assert!(!e.to_string().contains(&hash), "{e}");
        let e = add_auth_tokens(&mut c, Some("app nothex")).unwrap_err();
        assert!(e.to_string().contains(AUTH_TOKENS_ENV), "{e}");
        // Without [auth] the tokens would grant nothing.
        let e = add_auth_tokens(&mut Config::default(), Some(&format!("app {hash}"))).unwrap_err();
        assert!(e.to_string().contains(AUTH_TOKENS_ENV), "{e}");
        add_auth_tokens(&mut Config::default(), Some("  ")).unwrap();
    }
}
