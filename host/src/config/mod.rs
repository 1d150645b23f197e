//! Configuration: one TOML file, parsed into raw serde structs, then
//! validated into a typed [`Config`]. Every refusal names the key, the value
//! and what is allowed.
//!
//! Environment variables override secrets: `TANDEM_ADMIN_TOKEN`,
//! `TANDEM_INGEST_TOKEN`, `TANDEM_PAIR_SECRET`.
//!
//! `config` is a leaf: the types other modules need from it (the pair role,
//! the failback mode, the daily sync time) are defined here.
//!
//! - `raw`: the file as written (serde, unknown keys refused);
//! - `units`: durations, sizes, times, zones, secrets;
//! - `failover`: `[failover]`; `sinks`: `[[sinks]]`;
//! - `example`: what `tandem config example` prints.

mod cluster;
mod example;
mod failover;
mod raw;
mod sinks;
mod units;

pub use cluster::{ClusterConfig, DEFAULT_GROUP};
pub use example::{CLUSTER_EXAMPLE, EXAMPLE};
pub use failover::{Failback, FailoverConfig, PairRole};
pub use sinks::{
    ChannelMatcher, EmailSink, SinkConfig, SinkKind, SmtpTls, WebhookFormat, WebhookSink,
};
pub use units::{MIN_SHARED_SECRET, new_secret, parse_duration, parse_size, parse_time, zone};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use raw::RawConfig;
use units::{count, duration, secret, size};

/// Why a config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}` = {value}: {allowed}")]
    Invalid {
        key: String,
        value: String,
        allowed: String,
    },
}

fn invalid(key: &str, value: impl std::fmt::Display, allowed: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        value: value.to_string(),
        allowed: allowed.into(),
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub node: NodeConfig,
    pub admin: AdminConfig,
    pub rules: RulesConfig,
    pub role: Role,
    /// Present for a primary or secondary.
    pub failover: Option<FailoverConfig>,
    /// Present for a cluster member (never beside `failover`).
    pub cluster: Option<ClusterConfig>,
    pub sinks: Vec<SinkConfig>,
}

/// `[node]`.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub data_dir: PathBuf,
    /// `[node] timezone`, or the system's.
    pub timezone: jiff::tz::TimeZone,
    /// How long event log rows and pending signals are kept.
    pub retention: Duration,
}

/// `[admin]`.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub token: Option<String>,
    pub ingest_token: Option<String>,
    /// How long a client may take to send a request's headers.
    pub header_timeout: Duration,
    /// How long a whole request (headers and body) may take to arrive.
    pub request_timeout: Duration,
    /// How long an idle keep-alive connection is kept.
    pub idle_timeout: Duration,
    /// Admin connections served at once; more wait in the kernel's queue.
    pub max_connections: u32,
}

/// `[rules]`.
#[derive(Debug, Clone)]
pub struct RulesConfig {
    pub dir: Option<PathBuf>,
    pub deadline: Duration,
    pub memory_limit: usize,
    pub memory_budget: usize,
    /// Rule runs one ingested signal may cause, its raises included.
    pub max_runs_per_signal: u32,
    /// Guest log lines per rule per second (a burst of twice that).
    pub log_lines_per_second: u32,
}

/// This node's role in a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Standalone,
    Primary,
    Secondary,
    /// A member of a cluster on etcd (`[cluster]`).
    Cluster,
}

impl Role {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Standalone => "standalone",
            Role::Primary => "primary",
            Role::Secondary => "secondary",
            Role::Cluster => "cluster",
        }
    }
}

impl Config {
    /// Read and validate a config file. Relative paths in it are taken
    /// relative to the working directory, as an operator types them.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parse and validate config text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("config"),
            message: e.to_string(),
        })?;
        Self::validate(raw)
    }

    fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
        let name = raw.node.name.unwrap_or_else(|| "tandem".to_owned());
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(invalid(
                "node.name",
                format!("{name:?}"),
                "letters, digits, `-`, `_` and `.`",
            ));
        }
        let timezone = zone(raw.node.timezone.as_deref()).map_err(|e| {
            invalid(
                "node.timezone",
                format!("{:?}", raw.node.timezone.as_deref().unwrap_or("")),
                e,
            )
        })?;
        let node = NodeConfig {
            data_dir: PathBuf::from(raw.node.data_dir.unwrap_or_else(|| "./data".to_owned())),
            timezone,
            retention: duration(
                "node.retention",
                raw.node.retention.as_deref(),
                Duration::from_secs(30 * 86_400),
                Duration::from_secs(60),
                Duration::from_secs(3650 * 86_400),
            )?,
            name,
        };
        let listen_text = raw
            .admin
            .listen
            .unwrap_or_else(|| "127.0.0.1:8080".to_owned());
        let listen = listen_text.parse().map_err(|_| {
            invalid(
                "admin.listen",
                format!("{listen_text:?}"),
                "an address such as \"127.0.0.1:8080\" (port 0 picks a free port)",
            )
        })?;
        let admin = AdminConfig {
            listen,
            token: secret("admin.token", "TANDEM_ADMIN_TOKEN", raw.admin.token)?,
            ingest_token: secret(
                "admin.ingest_token",
                "TANDEM_INGEST_TOKEN",
                raw.admin.ingest_token,
            )?,
            header_timeout: duration(
                "admin.header_timeout",
                raw.admin.header_timeout.as_deref(),
                Duration::from_secs(10),
                Duration::from_millis(100),
                Duration::from_secs(300),
            )?,
            request_timeout: duration(
                "admin.request_timeout",
                raw.admin.request_timeout.as_deref(),
                Duration::from_secs(120),
                Duration::from_secs(1),
                Duration::from_secs(3600),
            )?,
            idle_timeout: duration(
                "admin.idle_timeout",
                raw.admin.idle_timeout.as_deref(),
                Duration::from_secs(60),
                Duration::from_secs(1),
                Duration::from_secs(3600),
            )?,
            max_connections: count(
                "admin.max_connections",
                raw.admin.max_connections,
                256,
                4..=65_536,
            )?,
        };
        if let (Some(t), Some(i)) = (&admin.token, &admin.ingest_token)
            && t == i
        {
            return Err(invalid(
                "admin.ingest_token",
                "(the admin token)",
                "a token other than admin.token: a device holding it could then do anything",
            ));
        }
        let rules = RulesConfig {
            dir: raw.rules.dir.map(PathBuf::from),
            deadline: duration(
                "rules.deadline",
                raw.rules.deadline.as_deref(),
                Duration::from_millis(50),
                Duration::from_millis(1),
                Duration::from_secs(60),
            )?,
            memory_limit: size(
                "rules.memory_limit",
                raw.rules.memory_limit.as_deref(),
                32 << 20,
                1 << 20,
            )?,
            memory_budget: size(
                "rules.memory_budget",
                raw.rules.memory_budget.as_deref(),
                1 << 30,
                1 << 20,
            )?,
            max_runs_per_signal: count(
                "rules.max_runs_per_signal",
                raw.rules.max_runs_per_signal,
                1000,
                1..=1_000_000,
            )?,
            log_lines_per_second: count(
                "rules.log_lines_per_second",
                raw.rules.log_lines_per_second,
                100,
                1..=100_000,
            )?,
        };
        if rules.memory_budget < rules.memory_limit {
            return Err(invalid(
                "rules.memory_budget",
                rules.memory_budget,
                format!("at least rules.memory_limit ({} bytes)", rules.memory_limit),
            ));
        }
        if raw.cluster.is_some()
            && let Some(r) = raw.failover.role.as_deref()
        {
            return Err(invalid(
                "failover.role",
                format!("{r:?}"),
                "no [failover] beside [cluster]: a node is a pair member or a cluster member, not both",
            ));
        }
        let cluster = match raw.cluster {
            Some(c) => Some(cluster::validate(c, &node.name)?),
            None => None,
        };
        let role = match raw.failover.role.as_deref() {
            None if cluster.is_some() => Role::Cluster,
            None | Some("standalone") => Role::Standalone,
            Some("primary") => Role::Primary,
            Some("secondary") => Role::Secondary,
            Some(other) => {
                return Err(invalid(
                    "failover.role",
                    format!("{other:?}"),
                    "\"standalone\", \"primary\" or \"secondary\"",
                ));
            }
        };
        let failover = match role {
            Role::Standalone | Role::Cluster => None,
            Role::Primary | Role::Secondary => {
                Some(failover::validate(raw.failover, role, &node.name)?)
            }
        };
        if let Some(link) = failover.as_ref().and_then(|f| f.listen)
            && link.port() == admin.listen.port()
            && link.port() != 0
            && (link.ip() == admin.listen.ip()
                || link.ip().is_unspecified()
                || admin.listen.ip().is_unspecified())
        {
            return Err(invalid(
                "failover.listen",
                format!("\"{link}\""),
                format!(
                    "a port other than admin.listen's ({}): the link and the admin API cannot share one",
                    admin.listen
                ),
            ));
        }
        let sinks = sinks::validate(raw.sinks)?;
        Ok(Config {
            node,
            admin,
            rules,
            role,
            failover,
            cluster,
            sinks,
        })
    }

    /// The secret that signs `/internal/v1/*` calls: the pair's or the
    /// cluster's.
    pub fn internal_secret(&self) -> Option<&str> {
        self.failover
            .as_ref()
            .map(|f| f.secret.as_str())
            .or(self.cluster.as_ref().map(|c| c.secret.as_str()))
    }

    /// The groups rules may name: the cluster's, or only `default`.
    pub fn rule_groups(&self) -> Vec<String> {
        match &self.cluster {
            Some(c) => c.groups.keys().cloned().collect(),
            None => vec![DEFAULT_GROUP.to_owned()],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_is_valid() {
        let c = Config::parse(EXAMPLE).unwrap();
        let k = Config::parse(CLUSTER_EXAMPLE).expect("the cluster example is valid");
        assert_eq!(k.cluster.expect("cluster").groups.len(), 3);
        assert_eq!(c.node.name, "dev4120");
        assert_eq!(c.rules.deadline, Duration::from_millis(50));
        assert_eq!(c.rules.memory_limit, 32 << 20);
        assert_eq!(c.role, Role::Standalone);
        assert_eq!(c.sinks[0].kind, SinkKind::Log);
    }

    #[test]
    fn an_empty_file_gets_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.admin.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.node.retention, Duration::from_secs(30 * 86_400));
        assert_eq!(c.sinks.len(), 1, "a log sink by default");
    }

    #[test]
    fn bad_values_name_key_value_and_what_is_allowed() {
        let cases = [
            (
                "[rules]\ndeadline = \"fast\"",
                "rules.deadline",
                "a duration",
            ),
            ("[rules]\ndeadline = \"5m\"", "rules.deadline", "between"),
            (
                "[rules]\nmemory_limit = \"32 parsecs\"",
                "rules.memory_limit",
                "a size",
            ),
            (
                "[admin]\nlisten = \"localhost\"",
                "admin.listen",
                "an address",
            ),
            (
                "[failover]\nrole = \"tertiary\"",
                "failover.role",
                "\"standalone\"",
            ),
            (
                "[[sinks]]\nname = \"x\"\nkind = \"pigeon\"",
                "sinks[0].kind",
                "\"webhook\"",
            ),
            (
                "[[sinks]]\nname = \"x\"\nkind = \"webhook\"",
                "sinks[0].url",
                "(missing)",
            ),
            ("[node]\nname = \"a b\"", "node.name", "letters"),
        ];
        for (text, key, allowed) in cases {
            let err = Config::parse(text).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(allowed), "{text}: {err}");
        }
    }

    #[test]
    fn sinks_need_distinct_names_and_sane_attempts() {
        let two =
            "[[sinks]]\nname = \"a\"\nkind = \"log\"\n[[sinks]]\nname = \"a\"\nkind = \"log\"\n";
        assert!(
            Config::parse(two)
                .unwrap_err()
                .to_string()
                .contains("sinks[1].name")
        );
        let bad = "[[sinks]]\nname = \"a\"\nkind = \"log\"\nmax_attempts = 0\n";
        assert!(
            Config::parse(bad)
                .unwrap_err()
                .to_string()
                .contains("max_attempts")
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Config::parse("[node]\nnmae = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("nmae"), "{err}");
    }

    #[test]
    fn tokens_must_be_set_and_distinct() {
        let err = Config::parse("[admin]\ntoken = \"\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("admin.token"), "{err}");
        let err = Config::parse("[admin]\ntoken = \"t\"\ningest_token = \"t\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("admin.ingest_token"), "{err}");
        Config::parse("[admin]\ntoken = \"t\"\ningest_token = \"u\"").expect("distinct");
    }

    #[test]
    fn the_link_and_the_admin_api_cannot_share_a_port() {
        let text = "[admin]\nlisten = \"127.0.0.1:8082\"\n[failover]\nrole = \"secondary\"\n\
                    primary = \"p\"\nsecondary = \"tandem\"\nlisten = \"0.0.0.0:8082\"\n\
                    secret = \"0123456789abcdef0123456789abcdef\"\n";
        let err = Config::parse(text).unwrap_err().to_string();
        assert!(
            err.contains("failover.listen") && err.contains("admin.listen"),
            "{err}"
        );
        Config::parse(&text.replace("0.0.0.0:8082", "0.0.0.0:6511")).expect("other ports");
    }

    #[test]
    fn a_bad_zone_is_refused() {
        let err = Config::parse("[node]\ntimezone = \"Mars/Olympus\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("node.timezone") && err.contains("Mars/Olympus"),
            "{err}"
        );
    }
}
