//! The primary's sync triggers: daily at `table_sync_time`, and shortly
//! after a change to synced tables when `sync_on_change` is set.
//!
//! A change is never dropped: a sync that cannot run for a passing reason
//! (no secondary connected yet, a node not Ready, another sync running) is
//! tried again at the next check until it runs, and changes that arrive
//! meanwhile are carried by that one sync.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::SyncError;
use super::push::{Origin, sync_from};
use crate::config::PairRole;
use crate::failover::Handle;
use crate::node::Node;

/// Quiet time after a change before the sync starts, so a burst of
/// changes goes in one sync.
pub const CHANGE_DEBOUNCE: Duration = Duration::from_millis(300);

const DAILY_KEY: &str = "sync.daily.last";

/// What to do with a change after a sync attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterAttempt {
    /// It went through, or failed for good (logged): nothing is owed.
    Done,
    /// Try again at the next check.
    Retry,
}

/// Decide from a sync attempt's result whether a change is still owed.
pub fn after_attempt(result: &Result<super::push::SyncResult, SyncError>) -> AfterAttempt {
    match result {
        Err(SyncError::Precondition(p)) if p.is_passing() => AfterAttempt::Retry,
        // The secondary could not be reached or failed mid-way: the
        // change still has to get there.
        Err(SyncError::Peer(_)) => AfterAttempt::Retry,
        _ => AfterAttempt::Done,
    }
}

/// Run the triggers until `stop`.
pub async fn run_triggers(node: Arc<Node>, failover: Handle, stop: crate::shutdown::Listener) {
    let Some(cfg) = node.config().failover.clone() else {
        return;
    };
    if cfg.role != PairRole::Primary {
        return;
    }
    let tz = node.config().node.timezone.clone();
    let stop = stop.wait();
    tokio::pin!(stop);
    let every = cfg.check_interval.max(Duration::from_millis(500));
    let mut tick = tokio::time::interval(every);
    // When a change is owed, the time to try it.
    let mut change_due: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = node.synced_tables_changed(), if cfg.sync_on_change => {
                change_due.get_or_insert_with(|| Instant::now() + CHANGE_DEBOUNCE);
                continue;
            }
            _ = tokio::time::sleep_until(change_due.unwrap_or_else(Instant::now)), if change_due.is_some() => {
                let result = sync_from(&node, &failover, false, Origin::Trigger).await;
                match (&result, after_attempt(&result)) {
                    (Ok(r), _) => {
                        tracing::info!(generation = r.generation, "table sync after a change");
                        change_due = None;
                    }
                    (Err(e), AfterAttempt::Retry) => {
                        tracing::debug!("table sync after a change, trying again: {e}");
                        change_due = Some(Instant::now() + every);
                    }
                    (Err(e), AfterAttempt::Done) => {
                        tracing::warn!("table sync after a change: {e}");
                        change_due = None;
                    }
                }
                continue;
            }
            _ = tick.tick() => {}
        }
        let Some(at) = cfg.table_sync_time else {
            continue;
        };
        let now = jiff::Timestamp::now();
        let last: Option<i64> = node
            .store()
            .read(|c| crate::store::setting(c, DAILY_KEY))
            .await
            .unwrap_or(None);
        let last = match last {
            Some(ms) => jiff::Timestamp::from_millisecond(ms).ok(),
            None => {
                // A new node: nothing was due before it existed.
                if let Some(t) = super::schedule::latest(now, at, &tz) {
                    mark_daily(&node, t).await;
                }
                continue;
            }
        };
        let Some(due) = super::schedule::due(now, last, at, &tz) else {
            continue;
        };
        let result = sync_from(&node, &failover, false, Origin::Trigger).await;
        match (&result, after_attempt(&result)) {
            (Ok(r), _) => {
                tracing::info!(generation = r.generation, "daily table sync done");
                mark_daily(&node, due).await;
            }
            // Waiting for the secondary: try again at the next check.
            (Err(_), AfterAttempt::Retry) => {}
            (Err(e), AfterAttempt::Done) => {
                tracing::error!("daily table sync: {e}");
                mark_daily(&node, due).await;
            }
        }
    }
}

async fn mark_daily(node: &Node, t: jiff::Timestamp) {
    let ms = t.as_millisecond();
    let _ = node
        .store()
        .write(move |c| crate::store::set_setting(c, DAILY_KEY, ms))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::push::Precondition;

    #[test]
    fn passing_refusals_and_peer_failures_are_tried_again() {
        for p in [
            Precondition::NoSecondary,
            Precondition::PrimaryNotReady,
            Precondition::SecondaryNotReady,
            Precondition::Busy,
        ] {
            assert_eq!(
                after_attempt(&Err(SyncError::Precondition(p.clone()))),
                AfterAttempt::Retry,
                "{p}"
            );
        }
        assert_eq!(
            after_attempt(&Err(SyncError::Peer("connection refused".into()))),
            AfterAttempt::Retry
        );
        for p in [
            Precondition::NoPeerAdmin,
            Precondition::Version {
                ours: "1".into(),
                theirs: "2".into(),
            },
        ] {
            assert_eq!(
                after_attempt(&Err(SyncError::Precondition(p.clone()))),
                AfterAttempt::Done,
                "{p}"
            );
        }
        assert_eq!(
            after_attempt(&Err(SyncError::Refused("bad".into()))),
            AfterAttempt::Done
        );
        assert_eq!(
            after_attempt(&Err(SyncError::PeerRefused("400: types differ".into()))),
            AfterAttempt::Done
        );
    }
}
