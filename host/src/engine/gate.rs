//! The gate: whether rules execute on this node, and for which groups.
//!
//! The engine reads it; it does not own it. Whoever decides (a standalone
//! node keeps it open; a pair's failover opens and closes it whole; a
//! cluster member opens and closes it per group) holds a clone. Every
//! dispatch holds the gate's read side for as long as it runs guest code, so
//! closing returns only once every in-flight dispatch has finished: the
//! handback's "let every rule finish, then close" is one call.
//!
//! A cluster member also gives the gate a fencing deadline on
//! CLOCK_BOOTTIME ([`crate::clock`]): [`Gate::within_deadline`] is what the
//! node asks immediately before it commits an execution.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

/// What is open.
#[derive(Debug, Default)]
struct Open {
    /// Every group (a standalone node, a pair's effective primary).
    all: bool,
    /// Open groups and the epoch each was opened under (a cluster member).
    groups: BTreeMap<Arc<str>, u64>,
}

/// No fencing deadline.
const NO_DEADLINE: u64 = u64::MAX;

/// A shared open/closed switch with "wait for in-flight work" on close.
#[derive(Debug, Clone)]
pub struct Gate {
    open: Arc<RwLock<Open>>,
    /// Held (read) by the node from before a dispatch until its store
    /// transaction commits; closing waits for the write side, so when a
    /// close returns, every execution of the closed group is committed
    /// (a handback reads the giver's executed keys right after).
    barrier: Arc<RwLock<()>>,
    /// CLOCK_BOOTTIME nanoseconds past which nothing may commit.
    deadline: Arc<AtomicU64>,
}

/// Held by a dispatch while it runs; the gate cannot close under it.
#[derive(Debug)]
pub struct GateGuard<'a>(RwLockReadGuard<'a, Open>);

/// Held by the node from before a dispatch until its commit
/// ([`Gate::hold`]).
#[derive(Debug)]
pub struct CommitGuard<'a>(#[allow(dead_code)] RwLockReadGuard<'a, ()>);

impl GateGuard<'_> {
    /// Whether rules of `group` may run in this dispatch, and the epoch
    /// they run under (0 when the whole gate is open).
    pub fn epoch(&self, group: &str) -> Option<u64> {
        if self.0.all {
            return Some(0);
        }
        self.0.groups.get(group).copied()
    }
}

impl Gate {
    /// A gate, open (every group) or closed.
    pub fn new(open: bool) -> Self {
        Gate {
            open: Arc::new(RwLock::new(Open {
                all: open,
                groups: BTreeMap::new(),
            })),
            deadline: Arc::new(AtomicU64::new(NO_DEADLINE)),
            barrier: Arc::new(RwLock::new(())),
        }
    }

    /// Hold the commit barrier: call it before a dispatch and keep it
    /// until the transaction that records what ran commits. Never close
    /// the gate while holding it.
    pub fn hold(&self) -> CommitGuard<'_> {
        CommitGuard(self.barrier.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Wait until every holder of the commit barrier has let go.
    fn drain_commits(&self) {
        drop(self.barrier.write().unwrap_or_else(|p| p.into_inner()));
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Open> {
        self.open.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> RwLockReadGuard<'_, Open> {
        self.open.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Open the gate for every group: later dispatches run rules.
    pub fn open(&self) {
        self.write().all = true;
    }

    /// Close the gate for every group. Blocks until every dispatch that
    /// entered while it was open has finished; after it returns, no guest
    /// code runs until the gate opens again. Call it from a blocking
    /// context.
    pub fn close(&self) {
        {
            let mut w = self.write();
            w.all = false;
            w.groups.clear();
        }
        self.drain_commits();
    }

    /// Open `group` under `epoch`.
    pub fn open_group(&self, group: &str, epoch: u64) {
        self.write().groups.insert(group.into(), epoch);
    }

    /// Close `group`, waiting for in-flight dispatches as [`Gate::close`].
    /// Returns whether it was open.
    pub fn close_group(&self, group: &str) -> bool {
        let was = self.write().groups.remove(group).is_some();
        self.drain_commits();
        was
    }

    /// Whether any group is open now.
    pub fn is_open(&self) -> bool {
        let r = self.read();
        r.all || !r.groups.is_empty()
    }

    /// The open groups and their epochs (empty when the whole gate is
    /// open or closed).
    pub fn open_groups(&self) -> BTreeMap<Arc<str>, u64> {
        self.read().groups.clone()
    }

    /// Whether `group` is open now.
    pub fn is_group_open(&self, group: &str) -> bool {
        let r = self.read();
        r.all || r.groups.contains_key(group)
    }

    /// Enter for one dispatch: `None` when nothing is open.
    pub fn enter(&self) -> Option<GateGuard<'_>> {
        let guard = self.read();
        if guard.all || !guard.groups.is_empty() {
            Some(GateGuard(guard))
        } else {
            None
        }
    }

    /// Set the fencing deadline (CLOCK_BOOTTIME ns); `None` removes it.
    pub fn set_deadline(&self, boottime_ns: Option<u64>) {
        self.deadline
            .store(boottime_ns.unwrap_or(NO_DEADLINE), Ordering::SeqCst);
    }

    /// The fencing deadline, if any.
    pub fn deadline(&self) -> Option<u64> {
        match self.deadline.load(Ordering::SeqCst) {
            NO_DEADLINE => None,
            d => Some(d),
        }
    }

    /// Whether an execution may commit now: no deadline, or the clock has
    /// not reached it.
    pub fn within_deadline(&self) -> bool {
        match self.deadline() {
            None => true,
            Some(d) => crate::clock::boottime_ns() < d,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn enter_follows_open_and_close() {
        let g = Gate::new(false);
        assert!(g.enter().is_none());
        g.open();
        assert!(g.enter().is_some());
        assert!(g.is_open());
        g.close();
        assert!(g.enter().is_none());
    }

    #[test]
    fn groups_open_and_close_one_by_one_with_their_epochs() {
        let g = Gate::new(false);
        g.open_group("elementary", 7);
        let guard = g.enter().expect("a group is open");
        assert_eq!(guard.epoch("elementary"), Some(7));
        assert_eq!(guard.epoch("default"), None);
        drop(guard);
        assert!(g.is_group_open("elementary") && !g.is_group_open("default"));
        assert!(g.close_group("elementary"));
        assert!(!g.close_group("elementary"));
        assert!(g.enter().is_none());
        g.open();
        assert_eq!(g.enter().expect("open").epoch("anything"), Some(0));
    }

    #[test]
    fn the_deadline_refuses_commits_once_the_clock_reaches_it() {
        let g = Gate::new(true);
        assert!(g.within_deadline());
        g.set_deadline(Some(crate::clock::boottime_ns() + 60_000_000_000));
        assert!(g.within_deadline());
        g.set_deadline(Some(crate::clock::boottime_ns().saturating_sub(1)));
        assert!(!g.within_deadline());
        g.set_deadline(None);
        assert!(g.within_deadline());
    }

    #[test]
    fn close_waits_for_a_held_commit() {
        let g = Gate::new(false);
        g.open_group("a", 1);
        let held = g.hold();
        let (tx, rx) = mpsc::channel();
        let g2 = g.clone();
        let closer = std::thread::spawn(move || {
            g2.close_group("a");
            tx.send(()).expect("receiver alive");
        });
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        // The group is already closed to new dispatches meanwhile.
        assert!(!g.is_group_open("a"));
        drop(held);
        rx.recv_timeout(Duration::from_secs(5))
            .expect("close returned");
        closer.join().expect("closer thread");
    }

    #[test]
    fn close_waits_for_in_flight_dispatches() {
        let g = Gate::new(true);
        let guard = g.enter().expect("open");
        let (tx, rx) = mpsc::channel();
        let g2 = g.clone();
        let closer = std::thread::spawn(move || {
            g2.close();
            tx.send(()).expect("receiver alive");
        });
        // The closer must still be waiting while a dispatch is in flight.
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        drop(guard);
        rx.recv_timeout(Duration::from_secs(5))
            .expect("close returned");
        closer.join().expect("closer thread");
        assert!(!g.is_open());
    }
}
