//! `tiercache serve`: config from file, flags and environment; logging; signals; `run`.

use std::future::Future;
use std::io::IsTerminal;

use anyhow::Context;
use tiercache_server::config::{ConfigError, RedisConfig};
use tiercache_server::{Config, ServerError};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

use crate::args::{LogFormat, ServeArgs};
use crate::exit::{Exit, Failure};

/// Runs the server until SIGTERM or SIGINT, then returns after the graceful shutdown.
pub async fn serve(args: ServeArgs) -> Result<Exit, Failure> {
    init_logging(args.log_format);
    let config = build_config(&args).map_err(Failure::usage)?;
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
    tracing::info!(
        %addr,
        redis = config.redis.is_some(),
        namespaces = config.namespaces.len(),
        "listening"
    );
    match tiercache_server::run(listener, config, shutdown).await {
        Ok(()) => {
            tracing::info!("stopped");
            Ok(Exit::Ok)
        }
        Err(e @ ServerError::Config(_)) => Err(Failure::usage(e)),
        Err(e) => Err(Failure::server(e)),
    }
}

/// Returns the config: the file (or the defaults), with flag and environment overrides laid
/// over it, validated.
pub fn build_config(args: &ServeArgs) -> Result<Config, ConfigError> {
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
    config.validate()?;
    Ok(config)
}

/// Installs the tracing subscriber on stderr: RUST_LOG filter (default `info`), text or JSON.
fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
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
            log_format: LogFormat::Text,
        }
    }

    #[test]
    fn defaults_without_file_or_flags() {
        let c = build_config(&args()).unwrap();
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
        let c = build_config(&ServeArgs {
            config: Some(file.path().to_path_buf()),
            listen: Some("127.0.0.1:7001".parse().unwrap()),
            redis_url: Some("redis://b:2".into()),
            ..args()
        })
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
        let e = build_config(&ServeArgs {
            redis_url: Some("http://nope".into()),
            ..args()
        })
        .unwrap_err();
        assert!(e.to_string().contains("redis.url"), "{e}");
    }
}
