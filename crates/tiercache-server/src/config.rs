//! Typed server configuration: a TOML file, overridden by flags and environment in the CLI.
//!
//! Every struct rejects unknown fields, so a typo fails at start with a message naming the field.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use tiercache_core::policy::{is_valid_namespace, NamespacePolicy};

/// The whole server configuration. `Config::default()` is the embedded memory-only server on
/// `127.0.0.1:50051` with namespace `default` and dynamic namespaces on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The gRPC listen address.
    pub listen: SocketAddr,
    /// The shared L2 tier. `None` runs memory-only.
    pub redis: Option<RedisConfig>,
    /// Whether a request may name a namespace the config does not list; it then gets the
    /// `defaults` policy.
    pub dynamic_namespaces: bool,
    /// Policy fields applied to every namespace (listed or dynamic) before its own overrides.
    pub defaults: PolicyConfig,
    /// Listed namespaces and their policy overrides.
    pub namespaces: BTreeMap<String, PolicyConfig>,
    /// Request limits.
    pub limits: LimitsConfig,
    /// How long in-flight RPCs may run after SIGTERM before the server exits anyway.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            redis: None,
            dynamic_namespaces: true,
            defaults: PolicyConfig::default(),
            namespaces: BTreeMap::from([("default".to_string(), PolicyConfig::default())]),
            limits: LimitsConfig::default(),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Where and how to reach Redis.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` or `rediss://…`.
    pub url: String,
    /// Timeout for establishing a connection.
    #[serde(with = "humantime_serde", default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// Timeout for one Redis command; past it the call fails and counts toward degraded mode.
    #[serde(with = "humantime_serde", default = "default_response_timeout")]
    pub response_timeout: Duration,
}

impl RedisConfig {
    /// Returns a config for `url` with default timeouts.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            connect_timeout: default_connect_timeout(),
            response_timeout: default_response_timeout(),
        }
    }
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_response_timeout() -> Duration {
    Duration::from_secs(1)
}

/// Request limits enforced before any tier is touched.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// The most keys or items in one batch call (GetMany, SetMany, GetOrSetMany, FillMany).
    pub max_batch: usize,
    /// The most requests one Pipeline stream may have in flight before it stops reading.
    pub pipeline_max_in_flight: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_batch: 1000,
            pipeline_max_in_flight: 1024,
        }
    }
}

/// Policy overrides; every field left out keeps the value from `defaults` (or the built-in default).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    #[serde(default, with = "humantime_serde")]
    pub default_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub max_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub stale_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub negative_ttl: Option<Duration>,
    pub jitter: Option<f64>,
    pub l1_enabled: Option<bool>,
    pub l1_max_bytes: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    pub l1_max_ttl: Option<Duration>,
    pub max_value_bytes: Option<usize>,
    pub max_key_bytes: Option<usize>,
    pub max_tags: Option<usize>,
    pub max_tag_bytes: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub lease_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub max_wait: Option<Duration>,
}

impl PolicyConfig {
    /// Returns `base` with this config's fields laid over it.
    pub fn apply(&self, base: &NamespacePolicy) -> NamespacePolicy {
        let mut p = base.clone();
        macro_rules! over {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { p.$f = v; } )* };
        }
        over!(
            default_ttl,
            max_ttl,
            stale_ttl,
            negative_ttl,
            jitter,
            l1_enabled,
            l1_max_bytes,
            l1_max_ttl,
            max_value_bytes,
            max_key_bytes,
            max_tags,
            max_tag_bytes,
            lease_ttl,
            max_wait
        );
        p
    }
}

/// A configuration that cannot be used; the message names the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid config: {field}: {message}")]
    Invalid { field: String, message: String },
}

impl Config {
    /// Reads and checks a TOML config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Parses and checks TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "<inline>".into(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Returns the policy every dynamic namespace gets.
    pub fn default_policy(&self) -> NamespacePolicy {
        self.defaults.apply(&NamespacePolicy::default())
    }

    /// Returns the listed namespaces with their effective policies.
    pub fn namespace_policies(&self) -> Vec<(String, NamespacePolicy)> {
        let base = self.default_policy();
        self.namespaces
            .iter()
            .map(|(name, over)| (name.clone(), over.apply(&base)))
            .collect()
    }

    /// Checks every field, naming the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: String, message: String| ConfigError::Invalid { field, message };
        self.default_policy()
            .check()
            .map_err(|m| invalid("defaults".into(), m))?;
        for (name, policy) in self.namespace_policies() {
            if !is_valid_namespace(&name) {
                return Err(invalid(
                    format!("namespaces.{name}"),
                    "namespace names must match [a-z0-9][a-z0-9_.-]{0,63}".into(),
                ));
            }
            policy
                .check()
                .map_err(|m| invalid(format!("namespaces.{name}"), m))?;
        }
        if self.limits.max_batch == 0 {
            return Err(invalid(
                "limits.max_batch".into(),
                "must be at least 1".into(),
            ));
        }
        if self.limits.pipeline_max_in_flight == 0 {
            return Err(invalid(
                "limits.pipeline_max_in_flight".into(),
                "must be at least 1".into(),
            ));
        }
        if let Some(redis) = &self.redis {
            if !(redis.url.starts_with("redis://")
                || redis.url.starts_with("rediss://")
                || redis.url.starts_with("unix://"))
            {
                return Err(invalid(
                    "redis.url".into(),
                    "must start with redis://, rediss:// or unix://".into(),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_memory_only_with_default_namespace() {
        let c = Config::default();
        assert!(c.redis.is_none());
        assert!(c.dynamic_namespaces);
        assert_eq!(c.listen.to_string(), "127.0.0.1:50051");
        assert!(c.namespaces.contains_key("default"));
        c.validate().unwrap();
    }

    #[test]
    fn parses_full_file() {
        let c = Config::from_toml(
            r#"
            listen = "0.0.0.0:6000"
            dynamic_namespaces = false
            shutdown_grace = "3s"
            [redis]
            url = "redis://127.0.0.1:6379"
            response_timeout = "250ms"
            [defaults]
            default_ttl = "1m"
            stale_ttl = "30s"
            [namespaces.users]
            max_ttl = "1h"
            jitter = 0.1
            "#,
        )
        .unwrap();
        let p = &c.namespace_policies()[0];
        assert_eq!(p.0, "users");
        assert_eq!(p.1.default_ttl, Duration::from_secs(60));
        assert_eq!(p.1.stale_ttl, Duration::from_secs(30));
        assert_eq!(p.1.max_ttl, Duration::from_secs(3600));
        assert_eq!(
            c.redis.unwrap().response_timeout,
            Duration::from_millis(250)
        );
    }

    #[test]
    fn unknown_field_is_named() {
        let e = Config::from_toml("[defaults]\ndefault_tll = \"1s\"\n").unwrap_err();
        assert!(e.to_string().contains("default_tll"), "{e}");
        let e = Config::from_toml("listn = \"1.2.3.4:5\"\n").unwrap_err();
        assert!(e.to_string().contains("listn"), "{e}");
    }

    #[test]
    fn bad_values_name_the_field() {
        let e = Config::from_toml("[namespaces.Bad]\n").unwrap_err();
        assert!(e.to_string().contains("namespaces.Bad"), "{e}");
        let e = Config::from_toml("[namespaces.a]\njitter = 2.0\n").unwrap_err();
        assert!(e.to_string().contains("jitter"), "{e}");
        let e = Config::from_toml("[redis]\nurl = \"http://x\"\n").unwrap_err();
        assert!(e.to_string().contains("redis.url"), "{e}");
    }
}
