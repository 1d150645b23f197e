//! `[cluster]`: a cluster member's settings, validated (DESIGN.md §7).
//!
//! The groups are kept in the order of their names; each group's node list
//! keeps the order it was written in: that order is the group's priority.

use std::collections::BTreeMap;
use std::time::Duration;

use super::failover::Failback;
use super::raw::RawCluster;
use super::units::{duration, lab_delay, secret, startup_delay, strong_secret, sync_types};
use super::{ConfigError, invalid};

/// The group a rule belongs to when it names none.
pub const DEFAULT_GROUP: &str = "default";

/// `[cluster]`, validated.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The cluster's name: etcd keys live under `/tandem/<name>/`.
    pub name: String,
    /// etcd endpoints, `http://host:port`.
    pub etcd: Vec<String>,
    /// This node's admin URL as peers and clients reach it.
    pub advertise: String,
    pub lease_ttl: Duration,
    /// Signs `/internal/v1/*` calls between members.
    pub secret: String,
    pub failback: Failback,
    pub replay_window: Duration,
    pub startup_delay: Duration,
    pub fence_margin: Duration,
    /// Group -> its nodes in priority order.
    pub groups: BTreeMap<String, Vec<String>>,
    pub lab_timings: bool,
    /// How long executed keys are gathered before one batch is put.
    pub publish_window: Duration,
    /// The tables the publisher pushes to every member (DESIGN.md §5).
    pub table_sync_types: Vec<String>,
    /// Lab only: a pause in a handback between closing the gate and
    /// moving the key (`[cluster.advanced] handback_delay`).
    pub handback_delay: Duration,
    /// Lab only: a pause between copy-back batches
    /// (`[cluster.advanced] copyback_delay`).
    pub copyback_delay: Duration,
}

impl ClusterConfig {
    /// The etcd key prefix, `/tandem/<name>/`.
    pub fn prefix(&self) -> String {
        format!("/tandem/{}/", self.name)
    }

    /// Every node named in any group, sorted, each once.
    pub fn nodes(&self) -> Vec<String> {
        let mut all: Vec<String> = self.groups.values().flatten().cloned().collect();
        all.sort();
        all.dedup();
        all
    }

    /// The groups `node` is listed in.
    pub fn groups_of<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.groups
            .iter()
            .filter(move |(_, nodes)| nodes.iter().any(|n| n == node))
            .map(|(g, _)| g.as_str())
    }

    /// A digest of the groups, the same on every node configured alike.
    pub fn groups_digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for (g, nodes) in &self.groups {
            h.update(g.as_bytes());
            h.update([0]);
            for n in nodes {
                h.update(n.as_bytes());
                h.update([1]);
            }
            h.update([2]);
        }
        hex::encode(&h.finalize()[..16])
    }
}

fn valid_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

pub(super) fn validate(raw: RawCluster, node: &str) -> Result<ClusterConfig, ConfigError> {
    let lab = raw.advanced.lab_timings;
    let name = raw.name.unwrap_or_else(|| "tandem".to_owned());
    if !valid_label(&name) {
        return Err(invalid(
            "cluster.name",
            format!("{name:?}"),
            "1 to 64 letters, digits, `-`, `_` and `.`",
        ));
    }
    if raw.etcd.is_empty() || raw.etcd.len() > 16 {
        return Err(invalid(
            "cluster.etcd",
            format!("({} endpoints)", raw.etcd.len()),
            "1 to 16 etcd endpoints such as \"http://127.0.0.1:2379\"",
        ));
    }
    for e in &raw.etcd {
        // This build talks to etcd without TLS: an https:// endpoint would
        // never connect, so it is refused here rather than at 3 a.m.
        if !e.starts_with("http://") || e.len() > 256 {
            return Err(invalid(
                "cluster.etcd",
                format!("{e:?}"),
                "an http:// endpoint such as \"http://127.0.0.1:2379\" (etcd over TLS is not supported yet)",
            ));
        }
    }
    let advertise = raw.advertise.ok_or_else(|| {
        invalid(
            "cluster.advertise",
            "(missing)",
            "this node's admin URL as the other members reach it, e.g. \"http://10.0.0.1:8080\"",
        )
    })?;
    if !(advertise.starts_with("http://") || advertise.starts_with("https://"))
        || advertise.len() > 256
    {
        return Err(invalid(
            "cluster.advertise",
            format!("{advertise:?}"),
            "an http:// or https:// URL",
        ));
    }
    let lease_ttl = duration(
        "cluster.lease_ttl",
        raw.lease_ttl.as_deref(),
        Duration::from_secs(10),
        if lab {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(5)
        },
        Duration::from_secs(60),
    )?;
    if lease_ttl.subsec_nanos() != 0 {
        // etcd grants leases in whole seconds.
        return Err(invalid(
            "cluster.lease_ttl",
            format!("{:?}", raw.lease_ttl.as_deref().unwrap_or("")),
            "a whole number of seconds, such as \"10s\" (etcd grants leases in seconds)",
        ));
    }
    let secret = secret("cluster.secret", "TANDEM_CLUSTER_SECRET", raw.secret)?.ok_or_else(|| {
        invalid(
            "cluster.secret",
            "(missing)",
            "the cluster's shared secret (or TANDEM_CLUSTER_SECRET); `tandem secret new` makes one",
        )
    })?;
    strong_secret("cluster.secret", "TANDEM_CLUSTER_SECRET", &secret)?;
    let failback = Failback::parse("cluster.failback", raw.failback.as_deref())?;
    let replay_window = duration(
        "cluster.replay_window",
        raw.replay_window.as_deref(),
        lease_ttl + Duration::from_secs(10),
        lease_ttl,
        Duration::from_secs(7 * 86_400),
    )?;
    let startup_delay = startup_delay("cluster.startup_delay", raw.startup_delay.as_deref(), lab)?;
    let fence_margin = duration(
        "cluster.fence_margin",
        raw.fence_margin.as_deref(),
        lease_ttl / 3,
        Duration::from_millis(100),
        lease_ttl / 2,
    )?;
    let publish_window = duration(
        "cluster.advanced.publish_window",
        raw.advanced.publish_window.as_deref(),
        Duration::from_millis(20),
        Duration::from_millis(1),
        // The lab may hold keys back long enough to kill a node with keys
        // it executed and never published.
        if lab {
            Duration::from_secs(60)
        } else {
            Duration::from_secs(1)
        },
    )?;
    let handback_delay = lab_delay(
        "cluster.advanced.handback_delay",
        raw.advanced.handback_delay.as_deref(),
        lab,
        Duration::from_secs(60),
    )?;
    let copyback_delay = lab_delay(
        "cluster.advanced.copyback_delay",
        raw.advanced.copyback_delay.as_deref(),
        lab,
        Duration::from_secs(60),
    )?;
    if raw.groups.is_empty() || raw.groups.len() > 256 {
        return Err(invalid(
            "cluster.groups",
            format!("({} groups)", raw.groups.len()),
            "1 to 256 groups, each a list of node names in priority order",
        ));
    }
    for (g, nodes) in &raw.groups {
        let key = format!("cluster.groups.{g}");
        if !valid_label(g) {
            return Err(invalid(
                &key,
                format!("{g:?}"),
                "a group name of letters, digits, `-`, `_` and `.`",
            ));
        }
        if nodes.is_empty() || nodes.len() > 64 {
            return Err(invalid(&key, "[]", "1 to 64 node names in priority order"));
        }
        for (i, n) in nodes.iter().enumerate() {
            if !valid_label(n) {
                return Err(invalid(&key, format!("{n:?}"), "node names as [node] name"));
            }
            if nodes[..i].contains(n) {
                return Err(invalid(&key, format!("{n:?}"), "each node once"));
            }
        }
    }
    if !raw.groups.contains_key(DEFAULT_GROUP) {
        return Err(invalid(
            "cluster.groups",
            format!("{:?}", raw.groups.keys().collect::<Vec<_>>()),
            "a `default` group (rules that name no group are in it) among the groups",
        ));
    }
    if !raw
        .groups
        .values()
        .any(|nodes| nodes.iter().any(|n| n == node))
    {
        return Err(invalid(
            "cluster.groups",
            format!("(no group lists {node:?})"),
            "this node's name ([node] name) in at least one group",
        ));
    }
    Ok(ClusterConfig {
        name,
        etcd: raw.etcd,
        advertise: advertise.trim_end_matches('/').to_owned(),
        lease_ttl,
        secret,
        failback,
        replay_window,
        startup_delay,
        fence_margin,
        groups: raw.groups,
        lab_timings: lab,
        publish_window,
        handback_delay,
        copyback_delay,
        table_sync_types: sync_types("cluster.table_sync_types", raw.table_sync_types)?,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn cluster(extra: &str) -> String {
        format!(
            "[node]\nname = \"office\"\n[cluster]\nname = \"district\"\netcd = [\"http://127.0.0.1:2379\"]\n\
             advertise = \"http://10.0.0.1:8080\"\nsecret = \"{SECRET}\"\n{extra}\n\
             [cluster.groups]\ndefault = [\"office\", \"elementary\", \"highschool\"]\n\
             elementary = [\"elementary\", \"office\", \"highschool\"]\n"
        )
    }

    #[test]
    fn the_design_example_is_valid_with_defaults_derived_from_the_ttl() {
        let c = Config::parse(&cluster("lease_ttl = \"9s\"")).expect("valid");
        let k = c.cluster.expect("cluster");
        assert_eq!(k.prefix(), "/tandem/district/");
        assert_eq!(k.fence_margin, std::time::Duration::from_secs(3));
        assert_eq!(k.replay_window, std::time::Duration::from_secs(19));
        assert_eq!(k.groups["elementary"][0], "elementary");
        assert_eq!(k.groups_of("office").count(), 2);
        assert_eq!(k.nodes(), ["elementary", "highschool", "office"]);
        assert_eq!(c.role, crate::config::Role::Cluster);
    }

    #[test]
    fn lab_timings_allow_a_one_second_lease() {
        let err = Config::parse(&cluster("lease_ttl = \"1s\""))
            .expect_err("1s needs lab timings")
            .to_string();
        assert!(err.contains("cluster.lease_ttl"), "{err}");
        let ok = cluster("lease_ttl = \"1s\"\n[cluster.advanced]\nlab_timings = true");
        let c = Config::parse(&ok).expect("valid in the lab");
        assert_eq!(
            c.cluster.expect("cluster").lease_ttl,
            std::time::Duration::from_secs(1)
        );
    }

    #[test]
    fn bad_clusters_are_refused_naming_the_key() {
        let cases = [
            (
                cluster("")
                    .replace("[\"office\", \"elementary\", \"highschool\"]", "[\"x\"]")
                    .replace("[\"elementary\", \"office\", \"highschool\"]", "[\"y\"]"),
                "this node's name",
            ),
            (
                cluster("").replace("default = ", "other = "),
                "a `default` group",
            ),
            (
                cluster("").replace(
                    "\"office\", \"elementary\", \"highschool\"",
                    "\"office\", \"office\"",
                ),
                "each node once",
            ),
            (cluster("fence_margin = \"9s\""), "cluster.fence_margin"),
            (cluster("lease_ttl = \"7500ms\""), "whole number of seconds"),
            (
                cluster("").replace("http://127.0.0.1:2379", "https://127.0.0.1:2379"),
                "not supported",
            ),
            (cluster("failback = \"sometimes\""), "cluster.failback"),
            (
                cluster("").replace("http://10.0.0.1:8080", "10.0.0.1:8080"),
                "cluster.advertise",
            ),
            (cluster("").replace(SECRET, "short"), "cluster.secret"),
            (
                cluster("") + "[failover]\nrole = \"primary\"\n",
                "[failover]",
            ),
        ];
        for (text, want) in cases {
            let err = Config::parse(&text).expect_err(&text).to_string();
            assert!(err.contains(want), "{want:?} not in {err:?}");
        }
    }

    #[test]
    fn the_digest_follows_groups_and_order() {
        let a = Config::parse(&cluster(""))
            .expect("valid")
            .cluster
            .expect("c");
        let mut b = a.clone();
        assert_eq!(a.groups_digest(), b.groups_digest());
        b.groups.get_mut("default").expect("default").swap(0, 1);
        assert_ne!(a.groups_digest(), b.groups_digest());
    }
}
