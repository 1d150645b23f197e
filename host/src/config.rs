//! Configuration: one TOML file, parsed into raw serde structs, then
//! validated into a typed [`Config`]. Every refusal names the key, the value
//! and what is allowed.
//!
//! Environment variables override secrets: `TANDEM_ADMIN_TOKEN`,
//! `TANDEM_INGEST_TOKEN`, `TANDEM_PAIR_SECRET`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

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

// ------------------------------------------------------------------ raw

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    node: RawNode,
    admin: RawAdmin,
    rules: RawRules,
    failover: RawFailover,
    sinks: Vec<RawSink>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawNode {
    name: Option<String>,
    data_dir: Option<String>,
    timezone: Option<String>,
    retention: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAdmin {
    listen: Option<String>,
    token: Option<String>,
    ingest_token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRules {
    dir: Option<String>,
    deadline: Option<String>,
    memory_limit: Option<String>,
    memory_budget: Option<String>,
}

/// `[failover]`: parsed so a pair's file is accepted; only `role` is used
/// until failover is built, the rest is validated then.
#[derive(Debug, Default, Deserialize)]
#[allow(dead_code)]
#[serde(deny_unknown_fields, default)]
struct RawFailover {
    role: Option<String>,
    rank: Option<u32>,
    primary: Option<String>,
    secondary: Option<String>,
    peer: Option<String>,
    listen: Option<String>,
    peer_admin: Option<String>,
    secret: Option<String>,
    startup_delay: Option<String>,
    timeout: Option<String>,
    check_interval: Option<String>,
    heartbeat_every: Option<u32>,
    failback: Option<String>,
    failback_after: Option<u32>,
    primary_grace: Option<String>,
    replay_window: Option<String>,
    table_sync_time: Option<String>,
    table_sync_types: Option<Vec<String>>,
    sync_on_change: Option<bool>,
    advanced: RawAdvanced,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(dead_code)]
struct RawAdvanced {
    lab_timings: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
    name: String,
    kind: String,
    url: Option<String>,
    channels: Option<Vec<String>>,
    max_age: Option<String>,
    max_attempts: Option<u32>,
}

// ------------------------------------------------------------------ typed

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub node: NodeConfig,
    pub admin: AdminConfig,
    pub rules: RulesConfig,
    pub role: Role,
    pub sinks: Vec<SinkConfig>,
}

/// `[node]`.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub data_dir: PathBuf,
    pub timezone: Option<String>,
    /// How long event log rows and pending signals are kept.
    pub retention: Duration,
}

/// `[admin]`.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub token: Option<String>,
    pub ingest_token: Option<String>,
}

/// `[rules]`.
#[derive(Debug, Clone)]
pub struct RulesConfig {
    pub dir: Option<PathBuf>,
    pub deadline: Duration,
    pub memory_limit: usize,
    pub memory_budget: usize,
}

/// This node's role in a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Standalone,
    Primary,
    Secondary,
}

impl Role {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Standalone => "standalone",
            Role::Primary => "primary",
            Role::Secondary => "secondary",
        }
    }
}

/// A `[[sinks]]` entry.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub name: String,
    pub kind: SinkKind,
    /// Channel patterns (`*` globs); default `["*"]`.
    pub channels: Vec<String>,
    /// Older notifications are marked expired, not sent.
    pub max_age: Duration,
    /// Attempts before a retryable failure is final.
    pub max_attempts: u32,
}

/// Where a sink sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkKind {
    Webhook { url: String },
    Log,
}

/// Parse a duration such as `150ms`, `20s`, `2m`, `1h`, `30d`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    humantime::parse_duration(s.trim()).ok()
}

/// Parse a size such as `32MiB`, `1GiB`, `512KiB`, `1000` (bytes).
pub fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num.parse().ok()?;
    let mult: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn duration(
    key: &str,
    raw: Option<&str>,
    default: Duration,
    min: Duration,
    max: Duration,
) -> Result<Duration, ConfigError> {
    let Some(text) = raw else { return Ok(default) };
    let d = parse_duration(text).ok_or_else(|| {
        invalid(
            key,
            format!("{text:?}"),
            "a duration such as \"150ms\", \"20s\", \"2m\", \"30d\"",
        )
    })?;
    if d < min || d > max {
        return Err(invalid(
            key,
            format!("{text:?}"),
            format!(
                "between {} and {}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        ));
    }
    Ok(d)
}

fn size(key: &str, raw: Option<&str>, default: usize, min: usize) -> Result<usize, ConfigError> {
    let Some(text) = raw else { return Ok(default) };
    let n = parse_size(text).ok_or_else(|| {
        invalid(
            key,
            format!("{text:?}"),
            "a size such as \"32MiB\" or \"1GiB\"",
        )
    })?;
    if n < min {
        return Err(invalid(
            key,
            format!("{text:?}"),
            format!("at least {min} bytes"),
        ));
    }
    Ok(n)
}

fn secret(env: &str, file: Option<String>) -> Option<String> {
    std::env::var(env)
        .ok()
        .filter(|s| !s.is_empty())
        .or(file)
        .filter(|s| !s.is_empty())
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
        let node = NodeConfig {
            data_dir: PathBuf::from(raw.node.data_dir.unwrap_or_else(|| "./data".to_owned())),
            timezone: raw.node.timezone,
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
            token: secret("TANDEM_ADMIN_TOKEN", raw.admin.token),
            ingest_token: secret("TANDEM_INGEST_TOKEN", raw.admin.ingest_token),
        };
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
        };
        if rules.memory_budget < rules.memory_limit {
            return Err(invalid(
                "rules.memory_budget",
                rules.memory_budget,
                format!("at least rules.memory_limit ({} bytes)", rules.memory_limit),
            ));
        }
        let role = match raw.failover.role.as_deref() {
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
        let mut sinks = Vec::new();
        for (i, s) in raw.sinks.into_iter().enumerate() {
            let key = |k: &str| format!("sinks[{i}].{k}");
            let kind = match s.kind.as_str() {
                "webhook" => {
                    let url = s.url.ok_or_else(|| {
                        invalid(
                            &key("url"),
                            "(missing)",
                            "an http:// URL for a webhook sink",
                        )
                    })?;
                    if !url.starts_with("http://") {
                        return Err(invalid(
                            &key("url"),
                            format!("{url:?}"),
                            "an http:// URL (TLS is not built in yet: terminate it in a local proxy)",
                        ));
                    }
                    SinkKind::Webhook { url }
                }
                "log" => SinkKind::Log,
                other => {
                    return Err(invalid(
                        &key("kind"),
                        format!("{other:?}"),
                        "\"webhook\" or \"log\"",
                    ));
                }
            };
            let channels = s.channels.unwrap_or_else(|| vec!["*".to_owned()]);
            if channels.is_empty() {
                return Err(invalid(
                    &key("channels"),
                    "[]",
                    "at least one channel pattern, or leave it out for [\"*\"]",
                ));
            }
            sinks.push(SinkConfig {
                name: s.name,
                kind,
                channels,
                max_age: duration(
                    &key("max_age"),
                    s.max_age.as_deref(),
                    Duration::from_secs(3600),
                    Duration::from_secs(1),
                    Duration::from_secs(30 * 86_400),
                )?,
                max_attempts: s.max_attempts.unwrap_or(8).clamp(1, 100),
            });
        }
        if sinks.is_empty() {
            sinks.push(SinkConfig {
                name: "log".to_owned(),
                kind: SinkKind::Log,
                channels: vec!["*".to_owned()],
                max_age: Duration::from_secs(3600),
                max_attempts: 1,
            });
        }
        Ok(Config {
            node,
            admin,
            rules,
            role,
            sinks,
        })
    }
}

/// The commented example `tandem config example` prints.
pub const EXAMPLE: &str = r#"# Tandem node configuration. Durations: "150ms", "20s", "2m", "30d".
# Sizes: "32MiB", "1GiB". Secrets may come from TANDEM_ADMIN_TOKEN,
# TANDEM_INGEST_TOKEN and TANDEM_PAIR_SECRET instead.

[node]
name = "dev4120"            # this node's name, unique in the pair
data_dir = "./data"         # SQLite database, module cache, listen.json
# timezone = "Europe/Berlin" # for the daily table sync (default: the system's)
retention = "30d"           # event log and pending signals are kept this long

[admin]
listen = "127.0.0.1:8080"   # port 0 picks a free port (see DATA_DIR/listen.json)
token = "change-me"         # Bearer token for everything under /api/v1/
# ingest_token = "devices"  # may only POST /api/v1/signals

[rules]
dir = "./rules"             # NAME.wasm (+ NAME.toml) here are loaded and watched
deadline = "50ms"           # per call; a rule's NAME.toml may override it
memory_limit = "32MiB"      # per rule instance
memory_budget = "1GiB"      # all rules together; loads beyond it are refused

[failover]
role = "standalone"         # standalone | primary | secondary

# Notifications go to every sink whose channels match (default ["*"]).
[[sinks]]
name = "log"
kind = "log"

# [[sinks]]
# name = "oncall"
# kind = "webhook"
# url = "http://127.0.0.1:9000/notify"
# channels = ["*"]
# max_age = "1h"            # older notifications are marked expired
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_is_valid() {
        let c = Config::parse(EXAMPLE).unwrap();
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
    fn unknown_keys_are_refused() {
        let err = Config::parse("[node]\nnmae = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("nmae"), "{err}");
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("32MiB"), Some(32 << 20));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("7"), Some(7));
        assert_eq!(parse_size("MiB"), None);
        assert_eq!(parse_duration("150ms"), Some(Duration::from_millis(150)));
        assert_eq!(
            parse_duration("30d"),
            Some(Duration::from_secs(30 * 86_400))
        );
    }
}
