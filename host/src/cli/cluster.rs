//! `tandem cluster status|failback|switchover|publisher`: a cluster
//! member's admin API (DESIGN.md §7) from the command line. Any member
//! will do: a failback or switchover is forwarded to the group's owner.

use clap::Subcommand;

use super::client::{Target, get_json, post_json};

/// `tandem cluster ...`.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Members, owners with their epochs and pins, this node's fencing.
    Status {
        #[command(flatten)]
        target: Target,
        /// Print the full JSON answer instead of the summary.
        #[arg(long)]
        json: bool,
    },
    /// Hand a group back to its first Ready node (and unpin it).
    Failback {
        /// The group.
        group: String,
        #[command(flatten)]
        target: Target,
    },
    /// Move a group to a node of its list, and pin it there (auto
    /// failback leaves it until a failback).
    Switchover {
        /// The group.
        group: String,
        /// The node to move it to.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        target: Target,
    },
    /// Make NODE the publisher of the synced tables.
    Publisher {
        /// The node.
        node: String,
        #[command(flatten)]
        target: Target,
    },
}

/// Run a `tandem cluster` command.
pub fn run(cmd: ClusterCommand) -> anyhow::Result<()> {
    match cmd {
        ClusterCommand::Status { target, json } => {
            let v = get_json(&target, "cluster")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", summary(&v));
            }
        }
        ClusterCommand::Failback { group, target } => {
            let v = post_json(
                &target,
                &format!("cluster/failback?group={}", query(&group)),
            )?;
            println!(
                "group {group}: owned by {} (done by {})",
                v["node"], v["by"]
            );
        }
        ClusterCommand::Switchover { group, to, target } => {
            let v = post_json(
                &target,
                &format!(
                    "cluster/switchover?group={}&to={}",
                    query(&group),
                    query(&to)
                ),
            )?;
            println!(
                "group {group}: owned by {} and pinned (done by {})",
                v["node"], v["by"]
            );
        }
        ClusterCommand::Publisher { node, target } => {
            let v = post_json(&target, &format!("cluster/publisher?node={}", query(&node)))?;
            println!("publisher: {}", v["node"]);
        }
    }
    Ok(())
}

/// Percent-encode a query value (names are plain, but never trust that).
fn query(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The human summary of `GET /api/v1/cluster`.
fn summary(v: &serde_json::Value) -> String {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    let mut out = format!(
        "cluster {} as seen by {} (etcd: {})\n",
        s(&v["cluster"]),
        s(&v["node"]),
        v["etcd"]
            .as_array()
            .map(|a| a.iter().map(s).collect::<Vec<_>>().join(", "))
            .unwrap_or_default()
    );
    match &v["fenced"] {
        serde_json::Value::Null => out.push_str(&format!(
            "this node: not fenced, deadline in {} ms, owns {}\n",
            v["deadline_in_ms"],
            v["owned"]
                .as_array()
                .map(|a| a.iter().map(s).collect::<Vec<_>>().join(", "))
                .unwrap_or_default()
        )),
        f => out.push_str(&format!(
            "this node: FENCED since {}: {}\n",
            f["since"],
            s(&f["reason"])
        )),
    }
    out.push_str("groups:\n");
    for o in v["owners"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {:<16} owner {:<16} epoch {:<8} {}nodes {}\n",
            s(&o["group"]),
            s(&o["node"]),
            o["epoch"],
            if o["pinned"] == true { "PINNED " } else { "" },
            o["nodes"]
                .as_array()
                .map(|a| a.iter().map(s).collect::<Vec<_>>().join(" > "))
                .unwrap_or_default()
        ));
    }
    out.push_str("members:\n");
    for m in v["members"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {:<16} {:<28} {} v{} batches v{}\n",
            s(&m["node"]),
            s(&m["advertise"]),
            if m["ready"] == true {
                "ready"
            } else {
                "not ready"
            },
            s(&m["version"]),
            m["batch_format"].as_u64().unwrap_or(1)
        ));
    }
    if let Some(p) = v["publisher"].as_str() {
        out.push_str(&format!("publisher: {p}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_summary_names_owners_pins_and_fencing() {
        let v = serde_json::json!({
            "cluster": "district", "node": "office", "etcd": ["http://e:2379"],
            "fenced": {"since": 5, "reason": "no keepalive credited"},
            "owners": [{"group": "elementary", "node": "office", "epoch": 12, "pinned": true,
                        "nodes": ["elementary", "office"]}],
            "members": [{"node": "office", "advertise": "http://o:8080", "ready": true, "version": "0.1.0",
                         "batch_format": 2}],
        });
        let text = super::summary(&v);
        assert!(
            text.contains("FENCED since 5: no keepalive credited"),
            "{text}"
        );
        assert!(
            text.contains("elementary") && text.contains("PINNED"),
            "{text}"
        );
        assert!(text.contains("elementary > office"), "{text}");
        assert!(text.contains("v0.1.0 batches v2"), "{text}");
        assert_eq!(super::query("a b&c"), "a%20b%26c");
    }
}
