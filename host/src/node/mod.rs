//! The node: the pipeline from a signal to the outbox, and the reload loop.
//!
//! A signal's walk: [`Node::ingest`] validates the batch, dispatches each
//! signal through the [`RuleSet`] (the gate decides whether rules run),
//! then in ONE transaction stores every signal in `event_log` with what its
//! rules did, and every notify action as outbox rows (one per recipient and
//! matching sink). Only then does the caller reply. Delivery
//! ([`delivery`]) sends the outbox, whatever the node's failover state.
//!
//! [`Node::reload`] reads `signal_rule` and `signal_script`, compiles what
//! changed outside the rule set's lock (unchanged modules come from the
//! cache), and swaps the new set in between two signals.

pub mod delivery;
pub mod feed;
mod groups;
mod ingest;
mod notify;
mod reload;
mod replay;
mod timers;
pub mod watch;

pub use groups::replay_since;
pub use timers::{TIMER_TICK, timer_loop};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tandem_guest::Fields;

use crate::config::{Config, SinkConfig};
use crate::engine::{
    Dispatch, Engine, EngineConfig, EngineError, Gate, Outcome, RuleSet, RuleSpec, RuleStatus,
    valid_name,
};
use crate::metrics::{Metrics, NotificationStatus, Snapshot};
use crate::store::outbox::NewNotification;
use crate::store::{Store, StoreError, events, exec, now_ms, outbox, rules};

/// The fewest tombstones a prune's sweep visits (however few were stored
/// since the last prune), and how many it visits in one transaction.
const SWEEP_MIN: u64 = 100_000;
const SWEEP_CHUNK: u64 = 5_000;

/// Ingest limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of one request body.
    pub max_body: usize,
    /// Signals in one request.
    pub max_batch: usize,
    /// Fields of one signal.
    pub max_fields: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 1 << 20,
            max_batch: 1000,
            max_fields: 256,
        }
    }
}

/// A signal as it arrives over HTTP: only `name` is required.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct SignalInput {
    pub name: String,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub time: Option<i64>,
    #[serde(default)]
    pub fields: Fields,
}

/// What happened to one accepted signal.
#[derive(Debug, Clone, Serialize)]
pub struct Accepted {
    pub id: u64,
    pub key: String,
    pub executed: bool,
    /// A cluster member names, for each group the signal has rules in,
    /// the node that owns it now (`null`: nobody): a JSON object, written
    /// once for the signals of a batch with the same name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owners: Option<Arc<serde_json::value::RawValue>>,
}

/// Why ingest refused a request. Nothing of a refused request is stored.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("signal {index}: {message}")]
    BadSignal { index: usize, message: String },
    #[error("signal {index}: `{name}` is raised by the host only (FAILOVER-*, NOTIFY-*, TIMER)")]
    Reserved { index: usize, name: String },
    #[error("{0}")]
    TooLarge(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a reload failed as a whole (single rules failing is reported, not an
/// error).
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("internal task failed: {0}")]
    Task(String),
}

/// What a reload did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadSummary {
    pub loaded: Vec<String>,
    pub kept: Vec<String>,
    pub removed: Vec<String>,
    /// `rule: error` for each rule that failed (its previous version, if
    /// any, keeps running).
    pub errors: Vec<String>,
}

/// What happened to one signal in the pipeline.
#[derive(Debug)]
enum Run {
    /// Rules ran; the execution's number (0 from a cluster member's
    /// grouped run: its numbers are written before the commit and move
    /// the execution watch after it, [`groups::GroupedTx::committed`]).
    Executed(Outcome, u64),
    /// The gate was closed: stored (pending on a pair member).
    Stored,
    /// Its key already ran here or on the peer: not run again.
    Covered,
}

/// What a replay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ReplaySummary {
    pub executed: u64,
    pub covered: u64,
    pub stale: u64,
}

/// The id of a notification: the same on both nodes of a pair.
pub fn notification_id(key: &str, rule: &str, action_index: usize, recipient: &str) -> String {
    let mut h = Sha256::new();
    for part in [key, rule, &action_index.to_string(), recipient] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..16])
}

/// What [`PublisherCheck::current`] returns: the publisher and its key's
/// mod revision, `None` when there is none.
pub type PublisherFuture<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Option<(String, i64)>, String>> + Send + 'a>,
>;

/// A linearizable read of a cluster's publisher key.
pub trait PublisherCheck: Send + Sync + std::fmt::Debug {
    fn current(&self) -> PublisherFuture<'_>;
}

/// The node.
#[derive(Debug)]
pub struct Node {
    config: Arc<Config>,
    store: Store,
    engine: Engine,
    gate: Gate,
    metrics: Arc<Metrics>,
    limits: Limits,
    rules: Mutex<RuleSet>,
    next_id: AtomicU64,
    reload_lock: tokio::sync::Mutex<()>,
    last_reload: Mutex<ReloadSummary>,
    /// Rules directory pairs that cannot be installed: rule -> (the
    /// content's fingerprint, the error).
    dir_errors: Mutex<std::collections::BTreeMap<String, (String, String)>>,
    /// Where host signals go while this node is standby (set by failover).
    forwarder: Mutex<Option<tokio::sync::mpsc::Sender<SignalInput>>>,
    /// Where signals raised here go to reach every cluster member (set by
    /// the cluster driver).
    fanout: Mutex<Option<tokio::sync::mpsc::Sender<Vec<SignalInput>>>>,
    /// Group -> the node that owns it, as the cluster driver last read.
    group_owners: Mutex<std::collections::BTreeMap<String, String>>,
    /// A cluster's publisher of synced tables, as last read, and its key's
    /// mod revision.
    publisher: Mutex<Option<(String, i64)>>,
    /// How a cluster subscriber reads the publisher key linearizably
    /// before it imports a snapshot (set by the cluster driver).
    publisher_check: OnceLock<Arc<dyn PublisherCheck>>,
    /// Bumped when rows are queued: every sink's worker wakes.
    delivery_wake: tokio::sync::watch::Sender<u64>,
    exec_seq: tokio::sync::watch::Sender<u64>,
    /// A cluster member's committed executions, for its publisher.
    exec_feed: feed::ExecFeed,
    /// Where the sweep of old tombstones goes on from, and how many were
    /// stored since the last prune (its pace).
    sweep: Mutex<(crate::store::groups::SweepAt, u64)>,
    sync_gen: AtomicU64,
    /// One table sync (export or import) at a time.
    sync_lock: tokio::sync::Mutex<()>,
    tables_changed: tokio::sync::Notify,
    admin_url: OnceLock<String>,
    started: Instant,
}

impl Node {
    /// Open the store and build the engine. The gate is handed in: a
    /// standalone node passes an open one.
    pub fn open(config: Config, gate: Gate) -> Result<Arc<Node>, NodeError> {
        let store = Store::open(&config.node.data_dir)?;
        let engine = Engine::new(EngineConfig {
            deadline: config.rules.deadline,
            memory_limit: config.rules.memory_limit,
            memory_budget: config.rules.memory_budget,
            max_runs: config.rules.max_runs_per_signal,
            log_lines_per_second: config.rules.log_lines_per_second,
            cache_dir: Some(config.node.data_dir.join("module-cache")),
            ..EngineConfig::default()
        })?;
        let next = store.read_blocking(events::next_id)?;
        let last_seq = store.read_blocking(exec::last_seq)?;
        let sync_gen = store.read_blocking(crate::store::synclog::last_generation)?;
        Ok(Arc::new(Node {
            rules: Mutex::new(RuleSet::new(engine.clone(), gate.clone())),
            config: Arc::new(config),
            store,
            engine,
            gate,
            metrics: Arc::new(Metrics::default()),
            limits: Limits::default(),
            next_id: AtomicU64::new(next),
            reload_lock: tokio::sync::Mutex::new(()),
            last_reload: Mutex::new(ReloadSummary::default()),
            dir_errors: Mutex::new(std::collections::BTreeMap::new()),
            forwarder: Mutex::new(None),
            fanout: Mutex::new(None),
            group_owners: Mutex::new(std::collections::BTreeMap::new()),
            publisher: Mutex::new(None),
            publisher_check: OnceLock::new(),
            delivery_wake: tokio::sync::watch::channel(0).0,
            exec_seq: tokio::sync::watch::channel(last_seq).0,
            exec_feed: feed::ExecFeed::default(),
            sweep: Mutex::new((None, 0)),
            sync_gen: AtomicU64::new(sync_gen),
            sync_lock: tokio::sync::Mutex::new(()),
            tables_changed: tokio::sync::Notify::new(),
            admin_url: OnceLock::new(),
            started: Instant::now(),
        }))
    }

    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn store(&self) -> &Store {
        &self.store
    }
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
    pub fn gate(&self) -> &Gate {
        &self.gate
    }
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
    /// The metrics, shared (for tasks that outlive a borrow).
    pub fn metrics_arc(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The metrics text, with the engine's counters and the rule counts.
    pub fn render_metrics(&self, rules_loaded: usize, rules_quarantined: usize) -> String {
        let e = self.engine.stats();
        let get = crate::engine::EngineStats::get;
        self.metrics.render(Snapshot {
            rule_calls: get(&e.calls),
            rule_traps: get(&e.traps),
            rule_deadline_hits: get(&e.deadline_hits),
            rule_quarantines: get(&e.quarantines),
            module_compiles: get(&e.compiles),
            guest_logs_dropped: get(&e.logs_dropped),
            rules_loaded: rules_loaded as u64,
            rules_quarantined: rules_quarantined as u64,
        })
    }
    pub fn limits(&self) -> Limits {
        self.limits
    }
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Record the admin URL once the listener is bound.
    pub fn set_admin_url(&self, url: String) {
        let _ = self.admin_url.set(url);
    }

    /// The admin URL, once bound.
    pub fn admin_url(&self) -> Option<&str> {
        self.admin_url.get().map(String::as_str)
    }

    /// Every rule's engine-side state (blocks while a dispatch holds the
    /// rule set: call it from a blocking context, or use
    /// [`Node::rule_status_async`]).
    pub fn rule_status(&self) -> Vec<RuleStatus> {
        self.lock_rules().status()
    }

    /// [`Node::rule_status`] on the blocking pool.
    pub async fn rule_status_async(self: &Arc<Self>) -> Vec<RuleStatus> {
        let node = self.clone();
        tokio::task::spawn_blocking(move || node.rule_status())
            .await
            .unwrap_or_default()
    }

    /// [`Node::reset_rule`] on the blocking pool.
    pub async fn reset_rule_async(self: &Arc<Self>, name: String) -> bool {
        let node = self.clone();
        tokio::task::spawn_blocking(move || node.reset_rule(&name))
            .await
            .unwrap_or(false)
    }

    /// What the last reload did.
    pub fn last_reload(&self) -> ReloadSummary {
        self.last_reload
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Record (or with `None` clear) why a rules directory pair cannot be
    /// installed; `true` when this error is new for this content.
    pub fn set_dir_error(&self, rule: &str, error: Option<(String, String)>) -> bool {
        let mut errors = self.dir_errors.lock().unwrap_or_else(|p| p.into_inner());
        match error {
            Some(e) => errors.insert(rule.to_owned(), e.clone()).as_ref() != Some(&e),
            None => errors.remove(rule).is_some(),
        }
    }

    /// Rules directory pairs that cannot be installed, and why.
    pub fn dir_errors(&self) -> std::collections::BTreeMap<String, String> {
        self.dir_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(rule, (_, e))| (rule.clone(), e.clone()))
            .collect()
    }

    /// Clear a rule's quarantine, here and in the store; `false` when the
    /// rule is neither loaded nor stored as quarantined.
    pub fn reset_rule(&self, name: &str) -> bool {
        let stored = match self
            .store
            .write_blocking(|c| rules::clear_quarantine(c, name))
        {
            Ok(cleared) => cleared,
            Err(e) => {
                tracing::error!(rule = %crate::escape::log_safe(name), "cannot clear the stored quarantine: {e}");
                false
            }
        };
        self.lock_rules().reset(name) || stored
    }

    fn lock_rules(&self) -> std::sync::MutexGuard<'_, RuleSet> {
        self.rules.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wake the delivery worker.
    pub fn wake_delivery(&self) {
        self.delivery_wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Raise a host signal (NOTIFY-FAILED) where rules run: here when this
    /// node's gate is open; otherwise handed to the active node through
    /// the forwarder failover set ([`Node::set_forwarder`]), and stored
    /// here as pending only when there is none or it cannot take it.
    pub async fn raise_on_active(self: &Arc<Self>, signal: SignalInput) {
        if self.config.cluster.is_some() {
            // A cluster member runs it for the groups it owns and posts it
            // to every member for the others; copies collapse on the key.
            let mut signal = signal;
            if signal.key.is_none() {
                let mut nonce = [0u8; 8];
                let _ = getrandom::fill(&mut nonce);
                signal.key = Some(format!(
                    "{}:{}:{}",
                    self.config.node.name,
                    signal.name,
                    hex::encode(nonce)
                ));
            }
            self.raise_here(signal.clone()).await;
            self.fan_out(vec![signal]);
            return;
        }
        if !self.gate.is_open() {
            let forwarder = self
                .forwarder
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(f) = forwarder {
                match f.try_send(signal) {
                    Ok(()) => return,
                    Err(tokio::sync::mpsc::error::TrySendError::Full(s))
                    | Err(tokio::sync::mpsc::error::TrySendError::Closed(s)) => {
                        tracing::warn!(signal = %s.name, "cannot hand the signal to the active node: stored here");
                        return self.raise_here(s).await;
                    }
                }
            }
        }
        self.raise_here(signal).await;
    }

    async fn raise_here(self: &Arc<Self>, signal: SignalInput) {
        let name = signal.name.clone();
        if let Err(e) = self.ingest(vec![signal], true).await {
            tracing::error!(signal = %name, "could not raise it: {e}");
        }
    }

    /// Failover's way to the active node: host signals raised while this
    /// node is standby go there (see [`Node::raise_on_active`]).
    pub fn set_forwarder(&self, forwarder: tokio::sync::mpsc::Sender<SignalInput>) {
        *self.forwarder.lock().unwrap_or_else(|p| p.into_inner()) = Some(forwarder);
    }

    /// A receiver that sees every [`Node::wake_delivery`] after it.
    pub(crate) fn delivery_wakes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.delivery_wake.subscribe()
    }

    /// Held while a table sync runs here: one at a time.
    pub fn sync_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.sync_lock
    }

    /// The last table-sync generation imported or exported here.
    pub fn sync_generation(&self) -> u64 {
        self.sync_gen.load(Ordering::Relaxed)
    }

    /// Lab hook (`[failover.advanced] import_delay`): a pause inside a
    /// table-sync import, before its transaction.
    pub fn import_delay(&self) -> Duration {
        self.config
            .failover
            .as_ref()
            .map_or(Duration::ZERO, |f| f.import_delay)
    }

    /// Say that synced tables changed here (every change of rules or
    /// scripts through the API or the rules directory, however small):
    /// `sync_on_change` syncs shortly after.
    pub fn note_tables_changed(&self) {
        self.tables_changed.notify_one();
    }

    /// Resolves at the next [`Node::note_tables_changed`].
    pub async fn synced_tables_changed(&self) {
        self.tables_changed.notified().await;
    }

    /// Record a table-sync generation.
    pub fn set_sync_generation(&self, g: u64) {
        self.sync_gen.fetch_max(g, Ordering::Relaxed);
    }

    /// The last execution number, and a watch that moves with it.
    pub fn executions(&self) -> tokio::sync::watch::Receiver<u64> {
        self.exec_seq.subscribe()
    }

    /// The executions committed here that the cluster's publisher has not
    /// taken yet ([`feed::ExecFeed`]).
    pub fn executed_feed(&self) -> &feed::ExecFeed {
        &self.exec_feed
    }

    /// Store the tombstones of executed batches put by other members,
    /// (group, keys), and move `applied_rev` to `rev` (0: leave it), in
    /// one transaction; returns how many tombstones were new.
    pub async fn apply_executed(
        &self,
        batches: Vec<(String, Vec<String>)>,
        rev: i64,
    ) -> Result<usize, StoreError> {
        let stored = self
            .store
            .write(move |c| crate::store::groups::apply_batches(c, batches, rev))
            .await?;
        self.sweep.lock().unwrap_or_else(|p| p.into_inner()).1 += stored as u64;
        Ok(stored)
    }

    /// Delete event log rows and finished notifications older than the
    /// retention.
    ///
    /// Pending signals, executed keys and tombstones are what a handback
    /// needs: while a failover is open (a failover log row without an end),
    /// none of them is pruned. Tombstones go by a sweep of their own,
    /// after the rest ([`Node::sweep_tombstones`]).
    pub async fn prune(&self) -> Result<(usize, usize), StoreError> {
        let before = now_ms() - self.config.node.retention.as_millis() as i64;
        let (sweep, events, notes) = self
            .store
            .write(move |c| {
                let open: i64 = c.query_row(
                    "SELECT count(*) FROM failover_log WHERE ended_at IS NULL",
                    [],
                    |r| r.get(0),
                )?;
                crate::store::synclog::prune(c)?;
                // A cluster member's rows per group, past the retention,
                // unless a failover is open (its replay needs them).
                if open == 0 {
                    c.execute(
                        "DELETE FROM group_executed WHERE seq <= ?1 AND at < ?2",
                        rusqlite::params![
                            i64::try_from(crate::store::groups::published_upto(c)?)
                                .unwrap_or(i64::MAX),
                            before
                        ],
                    )?;
                    c.execute("DELETE FROM group_pending WHERE received_at < ?1", [before])?;
                }
                let events = if open > 0 {
                    events::prune_settled(c, before)?
                } else {
                    exec::prune(c, before)?;
                    events::prune(c, before)?
                };
                Ok((open == 0, events, outbox::prune(c, before)?))
            })
            .await?;
        if sweep {
            self.sweep_tombstones(before).await?;
        }
        Ok((events, notes))
    }

    /// Delete tombstones stored before `before`: a stretch of the table
    /// twice as long as the tombstones stored since the last prune (at
    /// least [`SWEEP_MIN`]), a transaction per [`SWEEP_CHUNK`] rows, from
    /// where the last sweep stopped. Every row is visited about every half
    /// retention, so a tombstone goes between one and one and a half
    /// retentions after it was stored.
    async fn sweep_tombstones(&self, before: i64) -> Result<usize, StoreError> {
        let (mut at, stored) = {
            let mut s = self.sweep.lock().unwrap_or_else(|p| p.into_inner());
            (s.0.take(), std::mem::take(&mut s.1))
        };
        let mut budget = stored.saturating_mul(2).max(SWEEP_MIN);
        let mut deleted = 0;
        while budget > 0 {
            let limit = budget.min(SWEEP_CHUNK);
            let from = at.take();
            let swept = self
                .store
                .write(move |c| {
                    crate::store::groups::sweep_tombstones(c, before, from, limit as u32)
                })
                .await;
            let (n, next) = match swept {
                Ok(done) => done,
                Err(e) => {
                    // What is left of the budget is kept for the next
                    // prune, which starts again from the first row.
                    self.sweep.lock().unwrap_or_else(|p| p.into_inner()).1 += budget / 2;
                    return Err(e);
                }
            };
            deleted += n;
            budget -= limit;
            at = next;
            if at.is_none() {
                // The end: the next prune starts from the first row.
                break;
            }
        }
        self.sweep.lock().unwrap_or_else(|p| p.into_inner()).0 = at;
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notification_ids_are_stable_and_distinct() {
        let a = notification_id("k", "r", 0, "x@y");
        assert_eq!(a, notification_id("k", "r", 0, "x@y"));
        assert_eq!(a.len(), 32);
        assert_ne!(a, notification_id("k", "r", 1, "x@y"));
        assert_ne!(a, notification_id("k", "r", 0, "z@y"));
        // No ambiguity from concatenation.
        assert_ne!(
            notification_id("ab", "c", 0, ""),
            notification_id("a", "bc", 0, "")
        );
    }
}
