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
struct RawAdvanced {
    lab_timings: bool,
    copyback_batch: Option<u32>,
    copyback_delay: Option<String>,
    import_delay: Option<String>,
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
    /// Present for a primary or secondary.
    pub failover: Option<FailoverConfig>,
    pub sinks: Vec<SinkConfig>,
}

/// `[failover]` of a pair member, validated.
#[derive(Debug, Clone)]
pub struct FailoverConfig {
    /// Primary or secondary (standalone nodes have none).
    pub role: crate::failover::machine::PairRole,
    pub rank: u32,
    /// The identity pair: (primary's name, secondary's name).
    pub primary: String,
    pub secondary: String,
    /// The primary dials this (the secondary's link listener).
    pub peer: Option<String>,
    /// The secondary listens here.
    pub listen: Option<SocketAddr>,
    /// The peer's admin URL (named in standby replies).
    pub peer_admin: Option<String>,
    pub secret: String,
    pub startup_delay: Duration,
    pub timeout: Duration,
    pub check_interval: Duration,
    pub heartbeat_every: u32,
    pub failback: crate::failover::machine::Failback,
    pub failback_after: u32,
    pub primary_grace: Duration,
    pub replay_window: Duration,
    pub table_sync_time: Option<String>,
    pub table_sync_types: Vec<String>,
    pub sync_on_change: bool,
    pub lab_timings: bool,
    /// Rows per copy-back frame (`[failover.advanced] copyback_batch`).
    pub copyback_batch: u32,
    /// Lab only: a pause between copy-back frames, so a test can kill a
    /// node in the middle (`[failover.advanced] copyback_delay`).
    pub copyback_delay: Duration,
    /// Lab only: a pause inside a table-sync import
    /// (`[failover.advanced] import_delay`).
    pub import_delay: Duration,
}

impl FailoverConfig {
    /// The peer's node name.
    pub fn peer_name(&self) -> &str {
        match self.role {
            crate::failover::machine::PairRole::Primary => &self.secondary,
            crate::failover::machine::PairRole::Secondary => &self.primary,
        }
    }
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
        if let Some(tz) = &raw.node.timezone {
            crate::sync::schedule::zone(Some(tz))
                .map_err(|e| invalid("node.timezone", format!("{tz:?}"), e))?;
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
        let failover = match role {
            Role::Standalone => None,
            Role::Primary | Role::Secondary => {
                Some(validate_failover(raw.failover, role, &node.name)?)
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
                max_attempts: match s.max_attempts {
                    None => 8,
                    Some(n @ 1..=100) => n,
                    Some(n) => return Err(invalid(&key("max_attempts"), n, "from 1 to 100")),
                },
            });
            if sinks[..sinks.len() - 1]
                .iter()
                .any(|o: &SinkConfig| o.name == sinks[sinks.len() - 1].name)
            {
                return Err(invalid(
                    &key("name"),
                    format!("{:?}", sinks[sinks.len() - 1].name),
                    "a name no other sink has",
                ));
            }
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
            failover,
            sinks,
        })
    }
}

fn validate_failover(
    raw: RawFailover,
    role: Role,
    name: &str,
) -> Result<FailoverConfig, ConfigError> {
    use crate::failover::machine::{Failback, PairRole};
    let lab = raw.advanced.lab_timings;
    let ms = Duration::from_millis;
    let min = |prod: Duration| if lab { ms(50) } else { prod };
    let pair_role = if role == Role::Primary {
        PairRole::Primary
    } else {
        PairRole::Secondary
    };
    let primary = raw
        .primary
        .ok_or_else(|| invalid("failover.primary", "(missing)", "the primary's node name"))?;
    let secondary = raw.secondary.ok_or_else(|| {
        invalid(
            "failover.secondary",
            "(missing)",
            "the secondary's node name",
        )
    })?;
    if primary == secondary {
        return Err(invalid(
            "failover.secondary",
            format!("{secondary:?}"),
            "a name other than the primary's",
        ));
    }
    let own = if role == Role::Primary {
        &primary
    } else {
        &secondary
    };
    if own != name {
        return Err(invalid(
            if role == Role::Primary {
                "failover.primary"
            } else {
                "failover.secondary"
            },
            format!("{own:?}"),
            format!(
                "this node's own name ({name:?}), since its role is {}",
                role.as_str()
            ),
        ));
    }
    let rank = raw
        .rank
        .unwrap_or(if role == Role::Primary { 1 } else { 2 });
    let want = if role == Role::Primary { 1 } else { 2 };
    if rank != want {
        return Err(invalid(
            "failover.rank",
            rank,
            format!("{want} for a {}", role.as_str()),
        ));
    }
    let secret = secret("TANDEM_PAIR_SECRET", raw.secret).ok_or_else(|| {
        invalid(
            "failover.secret",
            "(missing)",
            "the pair's shared secret (or TANDEM_PAIR_SECRET)",
        )
    })?;
    let check_interval = duration(
        "failover.check_interval",
        raw.check_interval.as_deref(),
        Duration::from_secs(20),
        min(Duration::from_secs(1)),
        Duration::from_secs(300),
    )?;
    let heartbeat_every = raw.heartbeat_every.unwrap_or(2);
    if !(1..=100).contains(&heartbeat_every) {
        return Err(invalid(
            "failover.heartbeat_every",
            heartbeat_every,
            "from 1 to 100 checks",
        ));
    }
    let period = check_interval * heartbeat_every;
    let timeout = duration(
        "failover.timeout",
        raw.timeout.as_deref(),
        Duration::from_secs(120),
        min(Duration::from_secs(120)),
        Duration::from_secs(1200),
    )?;
    if timeout < period * 3 {
        return Err(invalid(
            "failover.timeout",
            humantime::format_duration(timeout),
            format!(
                "at least 3 heartbeat periods ({} = check_interval x heartbeat_every x 3)",
                humantime::format_duration(period * 3)
            ),
        ));
    }
    let startup_delay = duration(
        "failover.startup_delay",
        raw.startup_delay.as_deref(),
        Duration::from_secs(120),
        if lab {
            Duration::ZERO
        } else {
            Duration::from_secs(10)
        },
        Duration::from_secs(1800),
    )?;
    let primary_grace = duration(
        "failover.primary_grace",
        raw.primary_grace.as_deref(),
        timeout,
        min(Duration::from_secs(120)),
        Duration::from_secs(3600),
    )?;
    let replay_window = duration(
        "failover.replay_window",
        raw.replay_window.as_deref(),
        timeout + period * 2,
        min(Duration::from_secs(1)),
        Duration::from_secs(7 * 86_400),
    )?;
    let failback = match raw.failback.as_deref() {
        None | Some("auto") => Failback::Auto,
        Some("manual") => Failback::Manual,
        Some(other) => {
            return Err(invalid(
                "failover.failback",
                format!("{other:?}"),
                "\"auto\" or \"manual\"",
            ));
        }
    };
    let failback_after = raw.failback_after.unwrap_or(3);
    if !(1..=1000).contains(&failback_after) {
        return Err(invalid(
            "failover.failback_after",
            failback_after,
            "from 1 to 1000 heartbeats",
        ));
    }
    let (peer, listen) = match role {
        Role::Primary => {
            let peer = raw.peer.ok_or_else(|| {
                invalid(
                    "failover.peer",
                    "(missing)",
                    "the secondary's link address, e.g. \"10.0.0.2:6511\"",
                )
            })?;
            (Some(peer), None)
        }
        _ => {
            let text = raw.listen.unwrap_or_else(|| "0.0.0.0:6511".to_owned());
            let addr = text.parse().map_err(|_| {
                invalid(
                    "failover.listen",
                    format!("{text:?}"),
                    "an address such as \"0.0.0.0:6511\"",
                )
            })?;
            (None, Some(addr))
        }
    };
    if let Some(url) = &raw.peer_admin
        && !url.starts_with("http://")
    {
        return Err(invalid(
            "failover.peer_admin",
            format!("{url:?}"),
            "the peer's admin URL, e.g. \"http://10.0.0.2:8080\"",
        ));
    }
    let table_sync_types = raw
        .table_sync_types
        .unwrap_or_else(|| vec!["all".to_owned()]);
    for t in &table_sync_types {
        if !["rule", "contact", "device", "pbx", "text", "all"].contains(&t.as_str()) {
            return Err(invalid(
                "failover.table_sync_types",
                format!("{t:?}"),
                "rule, contact, device, pbx, text or all",
            ));
        }
    }
    Ok(FailoverConfig {
        role: pair_role,
        rank,
        primary,
        secondary,
        peer,
        listen,
        peer_admin: raw.peer_admin,
        secret,
        startup_delay,
        timeout,
        check_interval,
        heartbeat_every,
        failback,
        failback_after,
        primary_grace,
        replay_window,
        table_sync_time: raw.table_sync_time,
        table_sync_types,
        sync_on_change: raw.sync_on_change.unwrap_or(false),
        lab_timings: lab,
        copyback_batch: match raw.advanced.copyback_batch {
            None => 200,
            Some(n @ 1..=5000) => n,
            Some(n) => {
                return Err(invalid(
                    "failover.advanced.copyback_batch",
                    n,
                    "from 1 to 5000 rows",
                ));
            }
        },
        copyback_delay: match raw.advanced.copyback_delay.as_deref() {
            None => Duration::ZERO,
            Some(_) if !lab => {
                return Err(invalid(
                    "failover.advanced.copyback_delay",
                    "(set)",
                    "only with lab_timings = true",
                ));
            }
            Some(d) => duration(
                "failover.advanced.copyback_delay",
                Some(d),
                Duration::ZERO,
                Duration::ZERO,
                Duration::from_secs(10),
            )?,
        },
        import_delay: match raw.advanced.import_delay.as_deref() {
            None => Duration::ZERO,
            Some(_) if !lab => {
                return Err(invalid(
                    "failover.advanced.import_delay",
                    "(set)",
                    "only with lab_timings = true",
                ));
            }
            Some(d) => duration(
                "failover.advanced.import_delay",
                Some(d),
                Duration::ZERO,
                Duration::ZERO,
                Duration::from_secs(60),
            )?,
        },
    })
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

    const PAIR: &str = r#"
[node]
name = "dev4120"
[failover]
role = "primary"
primary = "dev4120"
secondary = "wat4120"
peer = "127.0.0.1:6511"
peer_admin = "http://127.0.0.1:8082"
secret = "pair-secret"
startup_delay = "1s"
timeout = "1s"
check_interval = "100ms"
failback = "auto"
table_sync_types = ["rule", "contact"]
[failover.advanced]
lab_timings = true
"#;

    #[test]
    fn design_pair_example_is_valid() {
        let c = Config::parse(PAIR).unwrap();
        let f = c.failover.unwrap();
        assert_eq!(f.peer_name(), "wat4120");
        assert_eq!(f.check_interval, Duration::from_millis(100));
        assert_eq!(f.primary_grace, f.timeout, "grace defaults to the timeout");
        assert_eq!(
            f.replay_window,
            Duration::from_millis(1400),
            "timeout + 2 heartbeat periods"
        );
    }

    #[test]
    fn production_ranges_need_lab_timings_to_go_lower() {
        let err = Config::parse(&PAIR.replace("lab_timings = true", "lab_timings = false"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("failover.check_interval") && err.contains("between"),
            "{err}"
        );
        let err = Config::parse(&PAIR.replace("timeout = \"1s\"", "timeout = \"500ms\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least 3 heartbeat periods"), "{err}");
        let err = Config::parse(&PAIR.replace("primary = \"dev4120\"", "primary = \"other\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("this node's own name"), "{err}");
        let err = Config::parse(&PAIR.replace("secret = \"pair-secret\"", ""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("failover.secret"), "{err}");
        let err = Config::parse(&PAIR.replace("failback = \"auto\"", "failback = \"sometimes\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("failover.failback"), "{err}");
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
