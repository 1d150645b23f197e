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
pub mod watch;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tandem_guest::{Action, Fields, Signal};

use crate::config::{Config, SinkConfig};
use crate::engine::{
    Dispatch, Engine, EngineConfig, EngineError, Gate, Outcome, RuleSet, RuleSpec, RuleStatus,
    valid_name,
};
use crate::metrics::{Metrics, NotificationStatus, Snapshot};
use crate::store::outbox::NewNotification;
use crate::store::{Store, StoreError, events, exec, now_ms, outbox, rules};

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
#[derive(Debug, Clone, Default, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Accepted {
    pub id: u64,
    pub key: String,
    pub executed: bool,
}

/// Why ingest refused a request. Nothing of a refused request is stored.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("signal {index}: {message}")]
    BadSignal { index: usize, message: String },
    #[error("signal {index}: `{name}` is raised by the host only (FAILOVER-*, NOTIFY-*)")]
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
    /// Rules ran; the execution's number.
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
    delivery_wake: tokio::sync::Notify,
    exec_seq: tokio::sync::watch::Sender<u64>,
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
            delivery_wake: tokio::sync::Notify::new(),
            exec_seq: tokio::sync::watch::channel(last_seq).0,
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

    /// Clear a rule's quarantine, here and in the store.
    pub fn reset_rule(&self, name: &str) -> bool {
        if let Err(e) = self
            .store
            .write_blocking(|c| rules::clear_quarantine(c, name))
        {
            tracing::error!(rule = %crate::escape::log_safe(name), "cannot clear the stored quarantine: {e}");
        }
        self.lock_rules().reset(name)
    }

    fn lock_rules(&self) -> std::sync::MutexGuard<'_, RuleSet> {
        self.rules.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wake the delivery worker.
    pub fn wake_delivery(&self) {
        self.delivery_wake.notify_one();
    }

    pub(crate) async fn delivery_woken(&self) {
        self.delivery_wake.notified().await;
    }

    /// Check a batch against the limits and the naming rules.
    pub fn validate(&self, batch: &[SignalInput], internal: bool) -> Result<(), IngestError> {
        if batch.is_empty() {
            return Err(IngestError::BadSignal {
                index: 0,
                message: "the batch is empty: send a signal object or a non-empty array".into(),
            });
        }
        if batch.len() > self.limits.max_batch {
            return Err(IngestError::TooLarge(format!(
                "{} signals in one request; at most {} are allowed",
                batch.len(),
                self.limits.max_batch
            )));
        }
        for (index, s) in batch.iter().enumerate() {
            if !valid_name(&s.name) {
                return Err(IngestError::BadSignal {
                    index,
                    message: format!(
                        "name {:?} must match [A-Z0-9][A-Z0-9_-]*, e.g. DOOR-1-OPEN",
                        s.name
                    ),
                });
            }
            if !internal && crate::engine::names::host_only(&s.name).is_some() {
                return Err(IngestError::Reserved {
                    index,
                    name: s.name.clone(),
                });
            }
            if s.fields.len() > self.limits.max_fields {
                return Err(IngestError::TooLarge(format!(
                    "signal {index} has {} fields; at most {} are allowed",
                    s.fields.len(),
                    self.limits.max_fields
                )));
            }
            if s.key
                .as_deref()
                .is_some_and(|k| k.is_empty() || k.len() > 256)
            {
                return Err(IngestError::BadSignal {
                    index,
                    message: "key must be 1 to 256 characters".into(),
                });
            }
        }
        Ok(())
    }

    /// Validate, dispatch and store a batch (one transaction); returns what
    /// happened to each signal. `internal` allows host-only names.
    pub async fn ingest(
        self: &Arc<Self>,
        batch: Vec<SignalInput>,
        internal: bool,
    ) -> Result<Vec<Accepted>, IngestError> {
        if let Err(e) = self.validate(&batch, internal) {
            self.metrics.signals_rejected.inc_by(batch.len() as u64);
            return Err(e);
        }
        let node = self.clone();
        tokio::task::spawn_blocking(move || node.ingest_blocking(batch))
            .await
            .map_err(|e| IngestError::Store(StoreError::Task(e.to_string())))?
    }

    fn ingest_blocking(&self, batch: Vec<SignalInput>) -> Result<Vec<Accepted>, IngestError> {
        let now = now_ms();
        let node_name = self.config.node.name.clone();
        let signals: Vec<Signal> = batch
            .into_iter()
            .map(|input| {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                Signal {
                    id,
                    key: input.key.unwrap_or_else(|| format!("{node_name}:{id}")),
                    name: input.name,
                    source: input.source.unwrap_or_default(),
                    time: input.time.unwrap_or(now),
                    fields: input.fields,
                    replayed: false,
                }
            })
            .collect();
        let results = self.store.write_blocking(|conn| {
            let tx = conn.transaction()?;
            let mut seen = std::collections::HashSet::new();
            let mut results = Vec::with_capacity(signals.len());
            let mut rows = Vec::with_capacity(signals.len());
            {
                let mut rules = self.lock_rules();
                for signal in signals {
                    let duplicate =
                        !seen.insert(signal.key.clone()) || exec::already_run(&tx, &signal.key)?;
                    let run = self.run_one(&tx, &mut rules, &signal, duplicate, now)?;
                    rows.push(self.event_row(&signal, &run, now));
                    results.push((signal, run));
                }
                save_quarantines(&tx, &mut rules)?;
            }
            events::insert(&tx, &rows)?;
            if let Some(last) = rows.last() {
                events::save_next_id(&tx, last.id + 1)?;
            }
            let queued = self.finish(&tx, &results, now)?;
            tx.commit()?;
            Ok((results, queued))
        })?;
        let (results, queued) = results;
        self.after_commit(&results, queued);
        Ok(results
            .iter()
            .map(|(s, run)| Accepted {
                id: s.id,
                key: s.key.clone(),
                executed: matches!(run, Run::Executed(..)),
            })
            .collect())
    }

    /// Decide and, if the gate is open, run one signal (inside the store
    /// transaction, under the rule set's lock).
    fn run_one(
        &self,
        tx: &rusqlite::Transaction<'_>,
        rules: &mut RuleSet,
        signal: &Signal,
        duplicate: bool,
        now: i64,
    ) -> Result<Run, StoreError> {
        if duplicate {
            return Ok(Run::Covered);
        }
        let started = Instant::now();
        let d = rules.dispatch(signal);
        self.metrics.observe_dispatch(started.elapsed());
        if let Dispatch::Executed(o) = &d
            && o.capped > 0
        {
            self.metrics.fanout_refused.inc_by(u64::from(o.capped));
            tracing::warn!(
                signal = %signal.name,
                refused = o.capped,
                cap = self.config.rules.max_runs_per_signal,
                "rule runs refused: the signal reached [rules] max_runs_per_signal"
            );
        }
        Ok(match d {
            Dispatch::Suppressed => Run::Stored,
            Dispatch::Executed(o) => Run::Executed(o, exec::record(tx, &signal.key, now)?),
        })
    }

    fn status_of(&self, run: &Run) -> &'static str {
        match run {
            Run::Executed(..) => "executed",
            Run::Covered => "covered",
            // A pair member keeps what it could not run, to replay it.
            Run::Stored if self.config.failover.is_some() => "pending",
            Run::Stored => "suppressed",
        }
    }

    fn event_row(&self, signal: &Signal, run: &Run, now: i64) -> events::NewEvent {
        events::NewEvent {
            id: signal.id,
            key: signal.key.clone(),
            name: signal.name.clone(),
            source: signal.source.clone(),
            time: signal.time,
            received_at: now,
            fields: serde_json::to_string(&signal.fields).unwrap_or_else(|_| "{}".into()),
            node: self.config.node.name.clone(),
            status: self.status_of(run),
            replayed: signal.replayed,
            outcome: match run {
                Run::Executed(o, _) => Some(outcome_json(o).to_string()),
                _ => None,
            },
        }
    }

    /// Queue the notifications of executed runs; returns how many rows.
    fn finish(
        &self,
        tx: &rusqlite::Transaction<'_>,
        results: &[(Signal, Run)],
        now: i64,
    ) -> Result<u64, StoreError> {
        let mut queued = 0;
        for (signal, run) in results {
            if let Run::Executed(o, _) = run {
                queued += queue_notifications(
                    tx,
                    &self.config.node.name,
                    &self.config.sinks,
                    signal,
                    o,
                    now,
                )?;
            }
        }
        Ok(queued)
    }

    fn after_commit(&self, results: &[(Signal, Run)], queued: u64) {
        let executed = results
            .iter()
            .filter(|(_, r)| matches!(r, Run::Executed(..)))
            .count() as u64;
        self.metrics.signals_received.inc_by(results.len() as u64);
        self.metrics.signals_executed.inc_by(executed);
        self.metrics
            .signals_suppressed
            .inc_by(results.len() as u64 - executed);
        self.metrics
            .notifications(NotificationStatus::Queued, queued);
        if let Some(seq) = results
            .iter()
            .filter_map(|(_, r)| match r {
                Run::Executed(_, seq) => Some(*seq),
                _ => None,
            })
            .max()
        {
            self.exec_seq.send_replace(seq);
        }
        if queued > 0 {
            self.wake_delivery();
        }
    }

    /// Run the signals this node stored while standby (status `pending`),
    /// oldest first, flagged `replayed` with their original time. Keys the
    /// peer executed (tombstones) or this node already ran are marked
    /// `covered`; with a `window`, pending signals received longer ago are
    /// marked `stale` instead of run. Stops if the gate closes.
    pub async fn replay_pending(
        self: &Arc<Self>,
        window: Option<Duration>,
    ) -> Result<ReplaySummary, NodeError> {
        let node = self.clone();
        let summary = tokio::task::spawn_blocking(move || node.replay_blocking(window))
            .await
            .map_err(|e| NodeError::Task(e.to_string()))??;
        if summary.executed + summary.covered + summary.stale > 0 {
            tracing::info!(
                executed = summary.executed,
                covered = summary.covered,
                stale = summary.stale,
                "replayed pending signals"
            );
        }
        self.wake_delivery();
        Ok(summary)
    }

    fn replay_blocking(&self, window: Option<Duration>) -> Result<ReplaySummary, StoreError> {
        let mut summary = ReplaySummary::default();
        let name = self.config.node.name.clone();
        loop {
            let more = self.store.write_blocking(|conn| {
                let ids = exec::pending(conn, &name, 500)?;
                if ids.is_empty() {
                    return Ok(false);
                }
                let now = now_ms();
                let tx = conn.transaction()?;
                let mut results = Vec::new();
                let mut gate_closed = false;
                {
                    let mut rules = self.lock_rules();
                    for id in ids {
                        let Some((mut signal, received_at)) = events::load(&tx, id)? else {
                            continue;
                        };
                        signal.replayed = true;
                        let status = if exec::already_run(&tx, &signal.key)? {
                            Run::Covered
                        } else if window.is_some_and(|w| now - received_at > w.as_millis() as i64) {
                            events::set_status(&tx, id, "stale", None, false)?;
                            summary.stale += 1;
                            continue;
                        } else {
                            self.run_one(&tx, &mut rules, &signal, false, now)?
                        };
                        if matches!(status, Run::Stored) {
                            gate_closed = true;
                            break;
                        }
                        let outcome = match &status {
                            Run::Executed(o, _) => Some(outcome_json(o).to_string()),
                            _ => None,
                        };
                        events::set_status(
                            &tx,
                            id,
                            self.status_of(&status),
                            outcome.as_deref(),
                            true,
                        )?;
                        match status {
                            Run::Covered => summary.covered += 1,
                            _ => {
                                summary.executed += 1;
                                results.push((signal, status));
                            }
                        }
                    }
                    save_quarantines(&tx, &mut rules)?;
                }
                let queued = self.finish(&tx, &results, now)?;
                tx.commit()?;
                self.after_commit(&results, queued);
                Ok(!gate_closed)
            })?;
            if !more {
                return Ok(summary);
            }
        }
    }

    /// Store rows copied back from the peer `peer` (see
    /// [`crate::store::copyback`]).
    pub async fn import_copy(
        self: &Arc<Self>,
        peer: String,
        events: Vec<crate::store::copyback::CopiedEvent>,
        notes: Vec<crate::store::copyback::CopiedNotification>,
    ) -> Result<(), StoreError> {
        let node = self.clone();
        self.store
            .write(move |c| {
                crate::store::copyback::import(c, &peer, &events, &notes, || {
                    node.next_id.fetch_add(1, Ordering::Relaxed)
                })
            })
            .await
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

    /// Reload the rule set from the store (see the module docs).
    pub async fn reload(self: &Arc<Self>) -> Result<ReloadSummary, NodeError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let node = self.clone();
        let summary = tokio::task::spawn_blocking(move || node.reload_blocking())
            .await
            .map_err(|e| NodeError::Task(e.to_string()))??;
        self.metrics.reloads.inc_by(1);
        self.metrics
            .reload_failures
            .inc_by(summary.errors.len() as u64);
        for e in &summary.errors {
            tracing::error!("reload: {e}");
        }
        if !summary.loaded.is_empty() || !summary.removed.is_empty() {
            tracing::info!(loaded = ?summary.loaded, removed = ?summary.removed, kept = summary.kept.len(), "rules reloaded");
        }
        *self.last_reload.lock().unwrap_or_else(|p| p.into_inner()) = summary.clone();
        Ok(summary)
    }

    fn reload_blocking(&self) -> Result<ReloadSummary, NodeError> {
        // Modules still loaded are found by their stored sha256: their bytes
        // are not even read.
        let rows = self.store.read_blocking(|c| {
            rules::rules_with_scripts(c, |sha| self.cached_script(sha).is_some())
        })?;
        let mut errors = Vec::new();
        let mut specs = Vec::with_capacity(rows.len());
        let mut keep = Vec::new();
        // Compile outside the rule set's lock: signals keep flowing.
        for row in rows {
            let r = row.rule;
            let script = match (
                row.sha256.as_deref().and_then(|s| self.cached_script(s)),
                row.wasm,
            ) {
                (Some(script), _) => Ok(script),
                (None, Some(wasm)) => self.engine.compile(&r.name, &wasm),
                (None, None) => Err(EngineError::Malformed {
                    rule: r.name.clone(),
                    reason: format!("its script `{}` does not exist", r.script),
                }),
            };
            match script {
                Ok(script) => specs.push(RuleSpec {
                    name: r.name,
                    script,
                    signals: r.signals,
                    config: r.config,
                    deadline: r.deadline_ms.map(Duration::from_millis),
                    enabled: r.enabled,
                }),
                Err(e) => {
                    // The previous version keeps running, unless the row
                    // now disables the rule.
                    if r.enabled {
                        errors.push(e.to_string());
                    }
                    keep.push((r.name, r.enabled));
                }
            }
        }
        // Quarantine outlives restarts and reloads, until an operator
        // resets the rule.
        let stored_quarantine = self.store.read_blocking(rules::quarantined)?;
        let mut rules = self.lock_rules();
        specs.extend(keep.iter().filter_map(|(name, enabled)| {
            let mut spec = rules.spec(name)?;
            spec.enabled = *enabled;
            Some(spec)
        }));
        let report = rules.install(specs);
        for (name, why) in stored_quarantine {
            rules.restore_quarantine(&name, &why);
        }
        drop(rules);
        errors.extend(report.failed.iter().map(|(e, kept)| {
            if *kept {
                format!("{e} (the previous version keeps running)")
            } else {
                e.to_string()
            }
        }));
        Ok(ReloadSummary {
            loaded: report.loaded,
            kept: report.kept,
            removed: report.removed,
            errors,
        })
    }

    /// A loaded module by its hex sha256.
    fn cached_script(&self, sha_hex: &str) -> Option<Arc<crate::engine::Script>> {
        let sha: crate::engine::Sha256Digest = hex::decode(sha_hex).ok()?.try_into().ok()?;
        self.engine.cached(&sha)
    }

    /// Delete event log rows and finished notifications older than the
    /// retention.
    ///
    /// Pending signals, executed keys and tombstones are what a handback
    /// needs: while a failover is open (a failover log row without an end),
    /// none of them is pruned.
    pub async fn prune(&self) -> Result<(usize, usize), StoreError> {
        let before = now_ms() - self.config.node.retention.as_millis() as i64;
        self.store
            .write(move |c| {
                let open: i64 = c.query_row(
                    "SELECT count(*) FROM failover_log WHERE ended_at IS NULL",
                    [],
                    |r| r.get(0),
                )?;
                crate::store::synclog::prune(c)?;
                let events = if open > 0 {
                    events::prune_settled(c, before)?
                } else {
                    exec::prune(c, before)?;
                    events::prune(c, before)?
                };
                Ok((events, outbox::prune(c, before)?))
            })
            .await
    }
}

/// The JSON the event log keeps of a dispatch: one object per rule run,
/// and, when the signal reached the cap of rule runs, a last object
/// `{"capped": N}` counting the runs and raises refused.
fn outcome_json(o: &Outcome) -> serde_json::Value {
    let capped = (o.capped > 0).then(|| serde_json::json!({ "capped": o.capped }));
    serde_json::Value::Array(
        o.runs
            .iter()
            .map(|r| {
                serde_json::json!({
                    "rule": &*r.rule,
                    "signal": &*r.signal,
                    "key": &*r.key,
                    "depth": r.depth,
                    "actions": r.actions,
                    "error": r.error.as_ref().map(|e| serde_json::json!({"kind": e.kind(), "message": e.to_string()})),
                    "rejected": r.rejected,
                })
            })
            .chain(capped)
            .collect(),
    )
}

/// Store the rules quarantined by the dispatches of this transaction.
fn save_quarantines(tx: &rusqlite::Transaction<'_>, rules: &mut RuleSet) -> Result<(), StoreError> {
    for (name, why) in rules.take_newly_quarantined() {
        rules::save_quarantine(tx, &name, &why)?;
    }
    Ok(())
}

/// Queue every notify action of an outcome; returns how many rows.
fn queue_notifications(
    tx: &rusqlite::Transaction<'_>,
    node: &str,
    sinks: &[SinkConfig],
    dispatched: &Signal,
    o: &Outcome,
    now: i64,
) -> Result<u64, StoreError> {
    let mut queued = 0;
    for run in &o.runs {
        let signal = o.signal_of(run, dispatched);
        let mut signal_json = None;
        for (index, action) in run.actions.iter().enumerate() {
            let Action::Notify(n) = action else { continue };
            let recipients = match outbox::resolve(tx, &n.to, &n.channel)? {
                Some(r) => r,
                None => {
                    tracing::warn!(rule = %run.rule, to = %n.to, "unknown or empty recipient: one notification addressed to it as is");
                    vec![n.to.clone()]
                }
            };
            let signal_json = signal_json.get_or_insert_with(|| {
                serde_json::to_string(signal).unwrap_or_else(|_| "{}".into())
            });
            for to in recipients {
                let id = notification_id(&run.key, &run.rule, index, &to);
                for sink in sinks.iter().filter(|s| s.matcher.matches(&n.channel)) {
                    let row = NewNotification {
                        id: id.clone(),
                        sink: sink.name.clone(),
                        event_id: dispatched.id,
                        rule: run.rule.to_string(),
                        node: node.to_owned(),
                        to: to.clone(),
                        channel: n.channel.clone(),
                        subject: n.subject.clone(),
                        body: n.body.clone(),
                        signal: signal_json.clone(),
                        created_at: now,
                    };
                    if outbox::insert(tx, &row)? {
                        queued += 1;
                    }
                }
            }
        }
    }
    Ok(queued)
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
