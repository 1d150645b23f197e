//! Ingest: validate a batch, run each signal through the rule set (the
//! gate decides whether rules run), then store in ONE transaction every
//! signal with what its rules did and every notification they asked for.
//! The caller replies only after the commit.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tandem_guest::Signal;

use crate::engine::RuleRun;

use super::notify::queue_notifications;
use super::*;

impl Node {
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
        let cluster = self.config.cluster.is_some();
        let mut may_run = true;
        let mut signals = signals;
        let (results, queued) = loop {
            // A cluster member checks its fencing deadline immediately
            // before the commit; past it, the batch is stored again with
            // nothing run (pending), so nothing is lost.
            let attempt = self.store.write_blocking(|conn| {
                // From before the dispatch until the commit: a close of a
                // group returns only once what ran in it is committed.
                let _committing = self.gate.hold();
                let tx = conn.transaction()?;
                let mut seen = std::collections::HashSet::new();
                let mut results = Vec::with_capacity(signals.len());
                let mut rows = Vec::with_capacity(signals.len());
                let mut grouped = super::groups::GroupedTx::new(now, None, may_run);
                {
                    let mut rules = self.lock_rules();
                    for signal in std::mem::take(&mut signals) {
                        let run = if !seen.insert(signal.key.clone()) {
                            Run::Covered
                        } else if cluster {
                            self.run_grouped(&tx, &mut rules, &signal, &mut grouped)?
                        } else {
                            let duplicate = exec::already_run(&tx, &signal.key)?;
                            self.run_one(&tx, &mut rules, &signal, duplicate, now)?
                        };
                        rows.push(self.event_row(&signal, &run, now));
                        if let Run::Executed(o, _) = &run {
                            rows.extend(self.raised_rows(&signal, o, now));
                        }
                        results.push((signal, run));
                    }
                    save_quarantines(&tx, &mut rules)?;
                }
                events::insert(&tx, &rows)?;
                grouped.record(&tx)?;
                let queued = self.finish(&tx, &results, now)?;
                if may_run && !self.gate.within_deadline() {
                    return Ok(Err(results.into_iter().map(|(s, _)| s).collect()));
                }
                tx.commit()?;
                grouped.committed(self);
                Ok(Ok((results, queued)))
            })?;
            match attempt {
                Ok(done) => break done,
                Err(back) => {
                    tracing::warn!(
                        "fenced: the fencing deadline passed before the commit; the batch is kept as pending"
                    );
                    signals = back;
                    may_run = false;
                }
            }
        };
        self.after_commit(&results, queued);
        // The owners named in the reply: looked up once per signal name.
        let mut owners = std::collections::HashMap::new();
        let mut rules = cluster.then(|| self.lock_rules());
        Ok(results
            .iter()
            .map(|(s, run)| Accepted {
                id: s.id,
                key: s.key.clone(),
                executed: matches!(run, Run::Executed(..)),
                owners: rules.as_mut().and_then(|r| {
                    owners
                        .entry(s.name.as_str())
                        .or_insert_with(|| {
                            serde_json::value::to_raw_value(&self.owners_for(r, &s.name))
                                .ok()
                                .map(Arc::from)
                        })
                        .clone()
                }),
            })
            .collect())
    }

    /// Decide and, if the gate is open, run one signal (inside the store
    /// transaction, under the rule set's lock).
    pub(super) fn run_one(
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

    /// The signals `o`'s rules raised, as events of their own (status
    /// `raised`) linked to `parent`, each with the runs it caused.
    pub(super) fn raised_rows(
        &self,
        parent: &Signal,
        o: &Outcome,
        now: i64,
    ) -> Vec<events::NewEvent> {
        o.raised
            .iter()
            .enumerate()
            .map(|(i, raised)| events::NewEvent {
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                key: raised.key.clone(),
                name: raised.name.clone(),
                source: raised.source.clone(),
                time: raised.time,
                received_at: now,
                fields: serde_json::to_string(&raised.fields).unwrap_or_else(|_| "{}".into()),
                node: self.config.node.name.clone(),
                status: "raised",
                replayed: raised.replayed,
                outcome: Some(runs_json(o, parent, |r| r.origin == i + 1)),
                parent: Some(parent.id),
            })
            .collect()
    }

    /// [`Node::raised_rows`], stored (inside the caller's transaction).
    pub(super) fn record_raised(
        &self,
        tx: &rusqlite::Transaction<'_>,
        parent: &Signal,
        o: &Outcome,
        now: i64,
    ) -> Result<(), StoreError> {
        events::insert(tx, &self.raised_rows(parent, o, now))
    }

    pub(super) fn status_of(&self, run: &Run) -> &'static str {
        match run {
            Run::Executed(..) => "executed",
            Run::Covered => "covered",
            // A pair or cluster member keeps what it could not run, to
            // replay it.
            Run::Stored if self.config.failover.is_some() || self.config.cluster.is_some() => {
                "pending"
            }
            Run::Stored => "suppressed",
        }
    }

    pub(super) fn event_row(&self, signal: &Signal, run: &Run, now: i64) -> events::NewEvent {
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
                Run::Executed(o, _) => Some(outcome_json(o, signal)),
                _ => None,
            },
            parent: None,
        }
    }

    /// Queue the notifications of executed runs; returns how many rows.
    pub(super) fn finish(
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

    pub(super) fn after_commit(&self, results: &[(Signal, Run)], queued: u64) {
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
            .filter(|&seq| seq > 0)
        {
            self.exec_seq.send_replace(seq);
        }
        if queued > 0 {
            self.wake_delivery();
        }
        if self.config.cluster.is_some() {
            self.fan_out(Self::raised_inputs(results));
        }
    }
}

/// The JSON the event log keeps of a dispatch: one object per rule run,
/// and, when the signal reached the cap of rule runs, a last object
/// `{"capped": N}` counting the runs and raises refused.
pub(super) fn outcome_json(o: &Outcome, dispatched: &Signal) -> String {
    let capped = (o.capped > 0).then_some(OutcomeItem::Capped { capped: o.capped });
    outcome_string(runs_of(o, dispatched, |_| true).chain(capped))
}

/// The runs of `o` that `keep` selects, as [`outcome_json`] writes them.
fn runs_json(o: &Outcome, dispatched: &Signal, keep: impl Fn(&RuleRun) -> bool) -> String {
    outcome_string(runs_of(o, dispatched, keep))
}

fn runs_of<'a>(
    o: &'a Outcome,
    dispatched: &'a Signal,
    keep: impl Fn(&RuleRun) -> bool + 'a,
) -> impl Iterator<Item = OutcomeItem<'a>> {
    o.runs.iter().filter(move |r| keep(r)).map(move |r| {
        let signal = o.signal_of(r, dispatched);
        // A cluster member's runs say under which group and epoch.
        let grouped = r.epoch > 0;
        OutcomeItem::Run(RunJson {
            actions: &r.actions,
            depth: r.depth,
            epoch: grouped.then_some(r.epoch),
            error: r.error.as_ref().map(|e| RunError {
                kind: e.kind(),
                message: e.to_string(),
            }),
            group: grouped.then_some(&*r.group),
            key: &signal.key,
            rejected: &r.rejected,
            rule: &r.rule,
            signal: &signal.name,
        })
    })
}

/// A JSON array of `items` (`[]` if one could not be written: none of
/// these types fails to serialise).
fn outcome_string<'a>(items: impl Iterator<Item = OutcomeItem<'a>>) -> String {
    let items: Vec<OutcomeItem<'a>> = items.collect();
    serde_json::to_string(&items).unwrap_or_else(|_| "[]".into())
}

/// One element of an event's outcome. The fields are in the order the
/// outcome has always been written in (by name), so rows old and new read
/// the same.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum OutcomeItem<'a> {
    Run(RunJson<'a>),
    Capped { capped: u32 },
}

/// A rule's run, as the event log keeps it.
#[derive(serde::Serialize)]
struct RunJson<'a> {
    actions: &'a [tandem_guest::Action],
    depth: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<u64>,
    error: Option<RunError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<&'a str>,
    key: &'a str,
    rejected: &'a [String],
    rule: &'a str,
    signal: &'a str,
}

/// Why a run failed.
#[derive(serde::Serialize)]
struct RunError {
    kind: &'static str,
    message: String,
}

/// Store the rules quarantined by the dispatches of this transaction.
pub(super) fn save_quarantines(
    tx: &rusqlite::Transaction<'_>,
    rules: &mut RuleSet,
) -> Result<(), StoreError> {
    for (name, why) in rules.take_newly_quarantined() {
        rules::save_quarantine(tx, &name, &why)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rule: &str, origin: usize, group: &str, epoch: u64) -> RuleRun {
        RuleRun {
            rule: rule.into(),
            depth: u32::from(origin > 0),
            origin,
            actions: Vec::new(),
            error: None,
            rejected: Vec::new(),
            group: group.into(),
            epoch,
        }
    }

    #[test]
    fn outcome_json_keeps_its_shape() {
        let mut signal = Signal::new("DOOR-1");
        signal.key = "k1".into();
        let mut raised = Signal::new("ALARM");
        raised.key = "k1/r".into();
        let mut failed = run("b", 1, "elementary", 3);
        failed.error = Some(crate::engine::CallError::Deadline(
            std::time::Duration::from_millis(5),
        ));
        failed.rejected = vec!["too deep".into()];
        let o = Outcome {
            runs: vec![run("a", 0, "default", 0), failed],
            raised: vec![raised],
            capped: 2,
        };
        let v: serde_json::Value = serde_json::from_str(&outcome_json(&o, &signal)).expect("json");
        let message =
            crate::engine::CallError::Deadline(std::time::Duration::from_millis(5)).to_string();
        assert_eq!(
            v,
            serde_json::json!([
                {"rule": "a", "signal": "DOOR-1", "key": "k1", "depth": 0,
                 "actions": [], "error": null, "rejected": []},
                {"rule": "b", "signal": "ALARM", "key": "k1/r", "depth": 1,
                 "actions": [], "error": {"kind": "deadline", "message": message},
                 "rejected": ["too deep"], "group": "elementary", "epoch": 3},
                {"capped": 2}
            ])
        );
        // Keys by name, as the event log has always held them.
        let text = outcome_json(&o, &signal);
        assert!(
            text.starts_with(r#"[{"actions":[],"depth":0,"error":null,"key":"k1""#),
            "{text}"
        );
        // A raised signal's row keeps only the runs it caused.
        let v: serde_json::Value =
            serde_json::from_str(&runs_json(&o, &signal, |r| r.origin == 1)).expect("json");
        assert_eq!(v.as_array().map(Vec::len), Some(1));
        assert_eq!(v[0]["rule"], "b");
    }
}
