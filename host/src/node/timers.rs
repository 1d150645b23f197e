//! Rule timers: a rule's `ctx.set_timer(after)` comes due here as a
//! `TIMER` signal to that rule alone, stored and handled like any executed
//! signal (event row, raised signals, notifications) in one transaction.
//!
//! A timer fires only while the gate is open for the rule's group: a
//! standby, or a cluster member that does not own the group, drops it
//! (its rule instance is not the one executing). Timers live in the
//! instance and are lost with it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tandem_guest::Signal;
use tandem_guest::names::TIMER;

use super::ingest::save_quarantines;
use super::*;

impl Node {
    /// Fire every timer due now; returns how many ran.
    pub fn fire_timers(&self) -> Result<usize, StoreError> {
        let due = {
            let mut rules = self.lock_rules();
            if rules.next_timer().is_none() {
                return Ok(0);
            }
            let now = (rules.engine().clock())();
            rules.take_due_timers(now)
        };
        let mut fired = 0;
        for (rule, due_at) in due {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let node = &self.config.node.name;
            let signal = Signal {
                id,
                key: format!("{node}:timer:{rule}:{id}"),
                name: TIMER.to_owned(),
                source: rule.to_string(),
                time: due_at,
                replayed: false,
                fields: [("rule".to_owned(), rule.to_string().into())].into(),
            };
            let now = now_ms();
            let done = self.store.write_blocking(|conn| {
                let _committing = self.gate.hold();
                let tx = conn.transaction()?;
                let outcome = {
                    let mut rules = self.lock_rules();
                    let d = rules.dispatch_timer(&rule, &signal);
                    save_quarantines(&tx, &mut rules)?;
                    match d {
                        Dispatch::Executed(o) if !o.runs.is_empty() => o,
                        // Not executing the rule here: the timer is dropped.
                        _ => return Ok(None),
                    }
                };
                // Numbered as its kind of node numbers executions: a
                // cluster member by the group row (published, copied back
                // with the group), a pair member by its executed key.
                let seq = match (&self.config.cluster, outcome.runs.first()) {
                    (Some(_), Some(r)) => {
                        crate::store::groups::record(&tx, &r.group, &signal.key, r.epoch, now)?
                            .unwrap_or(0)
                    }
                    _ => exec::record(&tx, &signal.key, now)?,
                };
                let run = Run::Executed(outcome, seq);
                let mut rows = vec![self.event_row(&signal, &run, now)];
                if let Run::Executed(o, _) = &run {
                    rows.extend(self.raised_rows(&signal, o, now));
                }
                events::insert(&tx, &rows)?;
                let results = vec![(signal.clone(), run)];
                let queued = self.finish(&tx, &results, now)?;
                if !self.gate.within_deadline() {
                    // Fenced before the commit: nothing of it is kept.
                    return Ok(None);
                }
                tx.commit()?;
                Ok(Some((results, queued)))
            });
            // One timer's failure does not drop the others taken with it.
            match done {
                Ok(Some((results, queued))) => {
                    self.after_commit(&results, queued);
                    fired += 1;
                }
                Ok(None) => {}
                Err(e) => tracing::error!(rule = %rule, "rule timer not stored: {e}"),
            }
        }
        Ok(fired)
    }
}

/// How often due timers are looked for: their granularity.
pub const TIMER_TICK: std::time::Duration = std::time::Duration::from_millis(50);

/// Fire due timers every [`TIMER_TICK`] until `stop`.
pub async fn timer_loop(node: Arc<Node>, stop: impl std::future::Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(TIMER_TICK) => {}
        }
        // On a blocking thread: the rules' lock may be held by a dispatch.
        let n = node.clone();
        match tokio::task::spawn_blocking(move || n.fire_timers()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!("rule timers: {e}"),
            Err(e) => tracing::error!("rule timers: {e}"),
        }
    }
}
