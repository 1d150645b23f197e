//! Replay: run what this node stored while standby (at a takeover, a
//! hand-over or an unfence), and store rows copied back from the peer.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::ingest::{outcome_json, save_quarantines};
use super::*;

impl Node {
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
                            Run::Executed(o, _) => {
                                self.record_raised(&tx, &signal, o, now)?;
                                Some(outcome_json(o, &signal))
                            }
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
}
