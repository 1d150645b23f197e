//! A cluster member on etcd (DESIGN.md §7): membership, ownership of
//! priority groups, takeover, handback, switchover and self-fencing.
//!
//! etcd does the consensus: leases, revisions, create-only transactions,
//! linearizable reads and watches. This module keeps to the rules that
//! `models/CLUSTER-MODEL.md` checked ([`model`] holds them as pure
//! functions) and reaches the rest of the node only through two things:
//! the engine's [`crate::engine::Gate`] (opened and closed per group, with
//! the fencing deadline) and the [`Node`] (replay, raising FAILOVER-ON/OFF,
//! the owners named in ingest replies).
//!
//! - [`model`]: wanted owner, the per-group step, deadline, credit, reopen;
//! - `keys`: the etcd key layout;
//! - `driver`: the task that talks to etcd and applies the steps;
//! - [`fanout`]: raised signals posted to every member, and the receiving
//!   end of `POST /internal/v1/signals`;
//! - `publish`: the publisher pushes the synced tables to every member;
//! - [`copyback`]: a giver's rows of a group copied to its first node.

pub mod copyback;
mod driver;
mod executed;
pub mod fanout;
mod keepalive;
mod keys;
pub mod model;
mod publish;

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::node::Node;
use crate::shutdown::Listener;

/// Why a cluster command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("etcd: {0}")]
    Etcd(String),
    #[error("{0}")]
    Refused(String),
    #[error("no group {0:?} in [cluster.groups]")]
    NoGroup(String),
    #[error("the cluster driver has stopped")]
    Stopped,
}

/// A member as `GET /api/v1/cluster` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MemberView {
    pub node: String,
    pub advertise: String,
    pub ready: bool,
    pub version: String,
    pub lease: String,
    /// The table-sync generation it holds.
    pub generation: u64,
    /// The newest executed-batch value format it reads (docs/cluster.md,
    /// "Executed keys").
    pub batch_format: u32,
}

/// A group's owner as `GET /api/v1/cluster` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OwnerView {
    pub group: String,
    /// `None` while nobody owns it.
    pub node: Option<String>,
    /// The owner key's mod revision.
    pub epoch: Option<i64>,
    pub pinned: bool,
    /// The group's nodes in priority order.
    pub nodes: Vec<String>,
}

/// One stretch of time a group's gate was open here, on CLOCK_BOOTTIME
/// (shared by every process on a machine, so tests compare nodes).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Tenure {
    pub group: String,
    pub epoch: i64,
    pub opened_ns: u64,
    /// When executions stopped: the close, or the fencing deadline if
    /// that came first (nothing commits past it). `None` while open.
    pub closed_ns: Option<u64>,
}

/// Why this node is fenced.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FenceView {
    /// Wall clock (ms) when it fenced.
    pub since: i64,
    pub reason: String,
}

/// This member's picture of the cluster: what `GET /api/v1/cluster`
/// returns and `/status` decides on.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Status {
    pub cluster: String,
    pub node: String,
    pub etcd: Vec<String>,
    /// Whether this node is Ready (uptime past startup_delay).
    pub ready: bool,
    /// Whether this node's groups digest matches the one in etcd.
    pub digest_ok: bool,
    /// The current lease (hex), if any.
    pub lease: Option<String>,
    /// Groups whose gate is open here (owned, not fenced).
    pub owned: Vec<String>,
    pub fenced: Option<FenceView>,
    /// Milliseconds until the fencing deadline (negative: past it).
    pub deadline_in_ms: Option<i64>,
    /// Milliseconds since the last credited keepalive was sent.
    pub keepalive_age_ms: Option<u64>,
    pub members: Vec<MemberView>,
    pub owners: Vec<OwnerView>,
    /// The node that publishes the synced tables, if any.
    pub publisher: Option<String>,
    /// Revisions where this node's history of executed keys became
    /// incomplete (the newest 20).
    pub gaps: Vec<i64>,
    /// The last etcd error, if the last call failed.
    pub last_error: Option<String>,
    /// The last 100 tenures of groups here, oldest first.
    pub tenures: Vec<Tenure>,
}

impl Status {
    /// The owner of `group`, if any.
    pub fn owner_of(&self, group: &str) -> Option<&str> {
        self.owners
            .iter()
            .find(|o| o.group == group)
            .and_then(|o| o.node.as_deref())
    }

    /// A member's advertised admin URL.
    pub fn advertise_of(&self, node: &str) -> Option<&str> {
        self.members
            .iter()
            .find(|m| m.node == node)
            .map(|m| m.advertise.as_str())
    }
}

/// A command for the driver.
#[derive(Debug)]
pub(crate) enum Command {
    /// Move `group` (owned here) to `to`; `None` = its wanted owner (a
    /// failback). `pin` marks a switchover.
    Move {
        group: String,
        to: Option<String>,
        pin: bool,
        reply: oneshot::Sender<Result<String, ClusterError>>,
    },
    /// Make `node` the publisher of the synced tables.
    Publisher {
        node: String,
        reply: oneshot::Sender<Result<String, ClusterError>>,
    },
}

/// The admin API's handle on the driver.
#[derive(Debug, Clone)]
pub struct Handle {
    status: watch::Receiver<Status>,
    cmds: mpsc::Sender<Command>,
}

impl Handle {
    /// The latest picture.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// Whether this node owns `group` now.
    pub fn owns(&self, group: &str) -> bool {
        self.status.borrow().owned.iter().any(|g| g == group)
    }

    async fn ask(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<String, ClusterError>>) -> Command,
    ) -> Result<String, ClusterError> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(make(tx))
            .await
            .map_err(|_| ClusterError::Stopped)?;
        rx.await.map_err(|_| ClusterError::Stopped)?
    }

    /// Move `group`, owned here, to `to` (a switchover pins it) or, with
    /// `None`, back to its wanted owner (a failback). Returns the taker.
    pub async fn move_group(
        &self,
        group: String,
        to: Option<String>,
        pin: bool,
    ) -> Result<String, ClusterError> {
        self.ask(|reply| Command::Move {
            group,
            to,
            pin,
            reply,
        })
        .await
    }

    /// Make `node` the publisher.
    pub async fn set_publisher(&self, node: String) -> Result<String, ClusterError> {
        self.ask(|reply| Command::Publisher { node, reply }).await
    }
}

/// Start the driver and the fan-out; returns the handle and the tasks.
pub async fn run(
    node: Arc<Node>,
    stop: Listener,
) -> Result<(Handle, Vec<tokio::task::JoinHandle<()>>), ClusterError> {
    let cfg = node
        .config()
        .cluster
        .clone()
        .ok_or_else(|| ClusterError::Refused("no [cluster] in the config".into()))?;
    let (status_tx, status_rx) = watch::channel(Status::default());
    let (cmd_tx, cmd_rx) = mpsc::channel(16);
    let (fan_tx, fan_rx) = mpsc::channel(1024);
    node.set_fanout(fan_tx);
    let driver = driver::start(node.clone(), cfg.clone(), status_tx, cmd_rx, stop.clone());
    let fan = tokio::spawn(fanout::run(
        node.clone(),
        cfg,
        status_rx.clone(),
        fan_rx,
        stop.clone(),
    ));
    let publisher = tokio::spawn(publish::run(node.clone(), status_rx.clone(), stop.clone()));
    let copy = tokio::spawn(copyback::run(node, status_rx.clone(), stop));
    Ok((
        Handle {
            status: status_rx,
            cmds: cmd_tx,
        },
        vec![driver, fan, publisher, copy],
    ))
}
