//! The config file as written: serde structs that refuse unknown keys.
//! Nothing here is validated; [`super::Config::parse`] does that.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawConfig {
    pub(super) node: RawNode,
    pub(super) admin: RawAdmin,
    pub(super) rules: RawRules,
    pub(super) failover: RawFailover,
    pub(super) cluster: Option<RawCluster>,
    pub(super) sinks: Vec<RawSink>,
}

/// `[cluster]` (DESIGN.md §7).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawCluster {
    pub(super) name: Option<String>,
    pub(super) etcd: Vec<String>,
    pub(super) advertise: Option<String>,
    pub(super) lease_ttl: Option<String>,
    pub(super) secret: Option<String>,
    pub(super) failback: Option<String>,
    pub(super) replay_window: Option<String>,
    pub(super) startup_delay: Option<String>,
    pub(super) fence_margin: Option<String>,
    pub(super) table_sync_types: Option<Vec<String>>,
    /// Group name -> its nodes in priority order (a TOML table keeps the
    /// order it was written in only per list, which is all that matters).
    pub(super) groups: std::collections::BTreeMap<String, Vec<String>>,
    pub(super) advanced: RawClusterAdvanced,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawClusterAdvanced {
    pub(super) lab_timings: bool,
    /// Executed keys are gathered this long before one batch is put.
    pub(super) publish_window: Option<String>,
    /// Lab only: a pause in a handback between closing the gate and
    /// moving the key, so a test can kill the taker in between.
    pub(super) handback_delay: Option<String>,
    /// Lab only: a pause between copy-back batches.
    pub(super) copyback_delay: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawNode {
    pub(super) name: Option<String>,
    pub(super) data_dir: Option<String>,
    pub(super) timezone: Option<String>,
    pub(super) retention: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAdmin {
    pub(super) listen: Option<String>,
    pub(super) token: Option<String>,
    pub(super) ingest_token: Option<String>,
    pub(super) header_timeout: Option<String>,
    pub(super) request_timeout: Option<String>,
    pub(super) idle_timeout: Option<String>,
    pub(super) max_connections: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawRules {
    pub(super) dir: Option<String>,
    pub(super) deadline: Option<String>,
    pub(super) memory_limit: Option<String>,
    pub(super) memory_budget: Option<String>,
    pub(super) max_runs_per_signal: Option<u32>,
    pub(super) log_lines_per_second: Option<u32>,
}

/// `[failover]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawFailover {
    pub(super) role: Option<String>,
    pub(super) rank: Option<u32>,
    pub(super) primary: Option<String>,
    pub(super) secondary: Option<String>,
    pub(super) peer: Option<String>,
    pub(super) listen: Option<String>,
    pub(super) peer_admin: Option<String>,
    pub(super) peer_ca_file: Option<String>,
    pub(super) secret: Option<String>,
    pub(super) startup_delay: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) check_interval: Option<String>,
    pub(super) heartbeat_every: Option<u32>,
    pub(super) failback: Option<String>,
    pub(super) failback_after: Option<u32>,
    pub(super) primary_grace: Option<String>,
    pub(super) replay_window: Option<String>,
    pub(super) table_sync_time: Option<String>,
    pub(super) table_sync_types: Option<Vec<String>>,
    pub(super) sync_on_change: Option<bool>,
    pub(super) advanced: RawAdvanced,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAdvanced {
    pub(super) lab_timings: bool,
    pub(super) copyback_batch: Option<u32>,
    pub(super) copyback_delay: Option<String>,
    pub(super) import_delay: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSink {
    pub(super) name: String,
    pub(super) kind: String,
    pub(super) url: Option<String>,
    pub(super) channels: Option<Vec<String>>,
    pub(super) max_age: Option<String>,
    pub(super) max_attempts: Option<u32>,
    pub(super) concurrency: Option<u32>,
    pub(super) connect_timeout: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) ca_file: Option<String>,
    pub(super) headers: Option<std::collections::BTreeMap<String, String>>,
    pub(super) format: Option<String>,
    pub(super) host: Option<String>,
    pub(super) port: Option<u16>,
    pub(super) tls: Option<String>,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) from: Option<String>,
}
