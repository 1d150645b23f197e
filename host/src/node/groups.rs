//! A cluster member's pipeline (DESIGN.md §7): a signal runs the rules of
//! the groups this node owns (the gate says which, with their epochs) and
//! is kept as pending, per (group, key), for every other group it has
//! rules in. A group that already ran a key here does not run it again.
//!
//! Raised signals (by rules or by the host) are also handed to the fan-out
//! that the cluster driver installs ([`Node::set_fanout`]), which posts
//! them to every member: whoever owns the groups of their rules runs them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_guest::Signal;

use super::feed::ExecRow;
use super::ingest::{outcome_json, save_quarantines};
use super::*;
use crate::store::groups;

/// What the grouped runs of one store transaction share
/// ([`Node::run_grouped`]); one per transaction.
#[derive(Debug)]
pub(super) struct GroupedTx<'a> {
    /// The transaction's time (ms).
    pub(super) now: i64,
    /// Only this group's rules run (a replay); every open group's when
    /// `None`.
    pub(super) only: Option<&'a str>,
    /// False keeps the signal pending everywhere (a commit refused by the
    /// fencing deadline is redone that way).
    pub(super) may_run: bool,
    /// Which groups keep pending rows or tombstones, asked once in the
    /// transaction.
    pub(super) rows: groups::GroupRows,
    /// The executions to record, by group and epoch, written in one
    /// statement each before the commit ([`GroupedTx::record`]). Until
    /// then [`groups::state`] does not see them: a transaction runs a key
    /// at most once (ingest skips a key repeated in its batch, a replay
    /// reads one pending row per key).
    to_record: Vec<(Arc<str>, u64, Vec<String>)>,
    /// The executions recorded, for the publisher's feed once committed
    /// ([`GroupedTx::committed`]).
    recorded: Vec<ExecRow>,
    /// The groups each signal name has rules in, looked up once per name
    /// in the transaction (the rule set's index does not change while its
    /// lock is held; at most one entry per signal of the batch).
    groups_of: HashMap<String, Arc<[Arc<str>]>>,
    /// Scratch for one signal, kept for the next: the groups still to run
    /// it (and whether each keeps it as pending), and those whose rules
    /// ran with their epochs.
    todo: Vec<(Arc<str>, bool)>,
    ran: Vec<(Arc<str>, u64)>,
}

impl<'a> GroupedTx<'a> {
    pub(super) fn new(now: i64, only: Option<&'a str>, may_run: bool) -> Self {
        GroupedTx {
            now,
            only,
            may_run,
            rows: groups::GroupRows::default(),
            to_record: Vec::new(),
            recorded: Vec::new(),
            groups_of: HashMap::new(),
            todo: Vec::new(),
            ran: Vec::new(),
        }
    }

    /// The groups `name` has rules in ([`RuleSet::groups_of`]), memoised.
    fn groups_of(&mut self, rules: &mut RuleSet, name: &str) -> Arc<[Arc<str>]> {
        if let Some(g) = self.groups_of.get(name) {
            return g.clone();
        }
        let g: Arc<[Arc<str>]> = rules.groups_of(name).into();
        self.groups_of.insert(name.to_owned(), g.clone());
        g
    }

    /// Write the executions of the transaction's runs, a statement per
    /// group; call once, after the last run and before the commit.
    pub(super) fn record(&mut self, tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
        for (group, epoch, keys) in self.to_record.drain(..) {
            for (seq, key) in groups::record_many(tx, &group, epoch, keys, self.now)? {
                self.recorded.push((seq, Arc::clone(&group), key, self.now));
            }
        }
        Ok(())
    }

    /// Once the transaction has committed (never before): hand the
    /// executions it recorded to the publisher's feed, then move the
    /// execution watch to the newest (the publisher wakes).
    pub(super) fn committed(self, node: &Node) {
        let newest = self.recorded.iter().map(|r| r.0).max();
        node.exec_feed.push(self.recorded);
        if let Some(seq) = newest {
            node.exec_seq.send_if_modified(|s| {
                let moved = seq > *s;
                *s = (*s).max(seq);
                moved
            });
        }
    }
}

impl Node {
    /// Run `signal` in the open groups that have not run its key (only in
    /// `g.only`, when given); keep it pending for the others.
    pub(super) fn run_grouped(
        &self,
        tx: &rusqlite::Transaction<'_>,
        rules: &mut RuleSet,
        signal: &Signal,
        g: &mut GroupedTx<'_>,
    ) -> Result<Run, StoreError> {
        let all = g.groups_of(rules, &signal.name);
        let only = g.only;
        // The groups still to run it, each with whether it keeps the key
        // as pending.
        g.todo.clear();
        let (mut candidates, mut done) = (0, 0);
        for group in all.iter().filter(|x| only.is_none_or(|o| &***x == o)) {
            candidates += 1;
            match groups::state(tx, &mut g.rows, group, &signal.key)? {
                groups::KeyState::Ran => done += 1,
                groups::KeyState::Pending => g.todo.push((Arc::clone(group), true)),
                groups::KeyState::New => g.todo.push((Arc::clone(group), false)),
            }
        }
        if candidates == 0 {
            // No rule anywhere takes it: nothing to run, nothing to keep.
            return Ok(Run::Executed(Outcome::default(), 0));
        }
        if g.todo.is_empty() && done > 0 {
            return Ok(Run::Covered);
        }
        let started = Instant::now();
        let d = if g.may_run {
            let todo = &g.todo;
            rules.dispatch_where(signal, &mut |grp| todo.iter().any(|(t, _)| **t == *grp))
        } else {
            Dispatch::Suppressed
        };
        self.metrics.observe_dispatch(started.elapsed());
        let outcome = match d {
            Dispatch::Executed(o) => Some(o),
            Dispatch::Suppressed => None,
        };
        g.ran.clear();
        for r in outcome
            .iter()
            .flat_map(|o| &o.runs)
            .filter(|r| r.origin == 0)
        {
            if !g.ran.iter().any(|(g, _)| *g == r.group) {
                g.ran.push((r.group.clone(), r.epoch));
            }
        }
        // The group row numbers the execution (a cluster member keeps no
        // pair `executed_key` row), written before the commit
        // ([`GroupedTx::record`]), which also moves the execution watch.
        for (group, pending) in &g.todo {
            match g.ran.iter().find(|(r, _)| r == group) {
                Some((_, epoch)) => {
                    match g
                        .to_record
                        .iter_mut()
                        .find(|(r, e, _)| r == group && e == epoch)
                    {
                        Some((_, _, keys)) => keys.push(signal.key.clone()),
                        None => {
                            g.to_record
                                .push((Arc::clone(group), *epoch, vec![signal.key.clone()]))
                        }
                    }
                    if *pending {
                        groups::drop_pending(tx, group, &signal.key)?;
                    }
                }
                None if !pending => g.rows.add(tx, group, &signal.key, signal.id, g.now)?,
                None => {}
            }
        }
        match outcome {
            Some(o) if !g.ran.is_empty() => Ok(Run::Executed(o, 0)),
            _ => Ok(Run::Stored),
        }
    }

    /// Run `group`'s pending signals received at or after `since` (ms),
    /// oldest first, flagged `replayed` when received before `flag_before`
    /// (`i64::MAX`: all, `i64::MIN`: none); those received before `since`
    /// are dropped from the group's pending rows. Stops early if the
    /// group's gate closes.
    pub async fn replay_group(
        self: &Arc<Self>,
        group: String,
        since: i64,
        flag_before: i64,
    ) -> Result<ReplaySummary, StoreError> {
        let node = self.clone();
        let summary = tokio::task::spawn_blocking(move || {
            node.replay_group_blocking(&group, since, flag_before)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
        if summary.executed > 0 {
            self.wake_delivery();
        }
        Ok(summary)
    }

    fn replay_group_blocking(
        &self,
        group: &str,
        since: i64,
        flag_before: i64,
    ) -> Result<ReplaySummary, StoreError> {
        let mut summary = ReplaySummary::default();
        summary.stale += self.store.write_blocking(|c| {
            let tx = c.transaction()?;
            let n = groups::drop_pending_before(&tx, group, since)?;
            tx.commit()?;
            Ok(n as u64)
        })?;
        loop {
            let ids = self
                .store
                .read_blocking(|c| groups::pending(c, group, since, 500))?;
            if ids.is_empty() || !self.gate.is_group_open(group) {
                return Ok(summary);
            }
            let progressed = self.store.write_blocking(|conn| {
                let _committing = self.gate.hold();
                let now = now_ms();
                let tx = conn.transaction()?;
                let mut results = Vec::new();
                let mut progressed = false;
                let mut grouped = GroupedTx::new(now, Some(group), true);
                {
                    let mut rules = self.lock_rules();
                    for (id, received_at) in ids {
                        let flag = received_at < flag_before;
                        let Some((mut signal, _)) = events::load(&tx, id as i64)? else {
                            // Its event row is gone (pruned): nothing to run.
                            tx.execute(
                                "DELETE FROM group_pending WHERE grp = ?1 AND event_id = ?2",
                                rusqlite::params![group, id as i64],
                            )?;
                            continue;
                        };
                        signal.replayed = flag;
                        let run = self.run_grouped(&tx, &mut rules, &signal, &mut grouped)?;
                        match &run {
                            Run::Executed(o, _) => {
                                events::append_outcome(&tx, id, &outcome_json(o, &signal), flag)?;
                                self.record_raised(&tx, &signal, o, now)?;
                                summary.executed += 1;
                                progressed = true;
                                results.push((signal, run));
                            }
                            Run::Covered => {
                                tx.execute(
                                    "DELETE FROM group_pending WHERE grp = ?1 AND key = ?2",
                                    rusqlite::params![group, signal.key],
                                )?;
                                summary.covered += 1;
                                progressed = true;
                            }
                            // The gate closed under us: stop here.
                            Run::Stored => break,
                        }
                    }
                    save_quarantines(&tx, &mut rules)?;
                }
                grouped.record(&tx)?;
                if !self.gate.within_deadline() {
                    // Fenced meanwhile: nothing of this round commits.
                    return Ok(false);
                }
                let queued = self.finish(&tx, &results, now)?;
                tx.commit()?;
                grouped.committed(self);
                self.after_commit(&results, queued);
                Ok(progressed)
            })?;
            if !progressed {
                return Ok(summary);
            }
        }
    }

    /// The cluster driver's way to every member: signals raised here (by
    /// rules or the host) are handed to it after their commit.
    pub fn set_fanout(&self, fanout: tokio::sync::mpsc::Sender<Vec<SignalInput>>) {
        *self.fanout.lock().unwrap_or_else(|p| p.into_inner()) = Some(fanout);
    }

    /// Hand signals to the fan-out, if there is one; a full queue drops
    /// them with a warning (each member also keeps what devices sent it).
    pub(super) fn fan_out(&self, signals: Vec<SignalInput>) {
        if signals.is_empty() {
            return;
        }
        let fanout = self
            .fanout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(f) = fanout
            && let Err(e) = f.try_send(signals)
        {
            tracing::warn!("cannot hand raised signals to the other members: {e}");
        }
    }

    /// The raised signals of committed results, as members receive them.
    pub(super) fn raised_inputs(results: &[(Signal, Run)]) -> Vec<SignalInput> {
        results
            .iter()
            .filter_map(|(_, r)| match r {
                Run::Executed(o, _) => Some(&o.raised),
                _ => None,
            })
            .flatten()
            .map(|s| SignalInput {
                name: s.name.clone(),
                source: Some(s.source.clone()),
                key: Some(s.key.clone()),
                time: Some(s.time),
                fields: s.fields.clone(),
            })
            .collect()
    }

    /// Record who owns each group (the cluster driver, after each read).
    pub fn set_group_owners(&self, owners: std::collections::BTreeMap<String, String>) {
        *self.group_owners.lock().unwrap_or_else(|p| p.into_inner()) = owners;
    }

    /// The owner of each group a signal named `name` has rules in (for
    /// the ingest reply); `None` when nobody owns it now.
    pub(super) fn owners_for(
        &self,
        rules: &mut RuleSet,
        name: &str,
    ) -> std::collections::BTreeMap<String, Option<String>> {
        let owners = self.group_owners.lock().unwrap_or_else(|p| p.into_inner());
        rules
            .groups_of(name)
            .iter()
            .map(|g| (g.to_string(), owners.get(&**g).cloned()))
            .collect()
    }

    /// Record the publisher of synced tables (the cluster driver).
    pub fn set_publisher(&self, publisher: Option<(String, i64)>) {
        *self.publisher.lock().unwrap_or_else(|p| p.into_inner()) = publisher;
    }

    /// The publisher of synced tables and its key's mod revision, as last
    /// read.
    pub fn publisher(&self) -> Option<(String, i64)> {
        self.publisher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Install the publisher check (once).
    pub fn set_publisher_check(&self, check: Arc<dyn super::PublisherCheck>) {
        let _ = self.publisher_check.set(check);
    }

    /// A linearizable read of the publisher key, if this node can do one.
    pub async fn current_publisher(&self) -> Result<Option<(String, i64)>, String> {
        match self.publisher_check.get() {
            Some(c) => c.current().await,
            None => Err("not a cluster member".into()),
        }
    }

    /// How long ago (ms) this node started: a takeover's `down_since` when
    /// it never saw the group owned.
    pub fn started_at_ms(&self) -> i64 {
        now_ms() - self.started.elapsed().as_millis() as i64
    }
}

/// How a replay window turns into a `since` (ms): `down_since - window`.
pub fn replay_since(down_since_ms: i64, window: Duration) -> i64 {
    down_since_ms - window.as_millis() as i64
}
