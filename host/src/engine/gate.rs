//! The gate: whether rules execute on this node.
//!
//! The engine reads it; it does not own it. Whoever decides (a standalone
//! node keeps it open; failover opens and closes it) holds a clone. Every
//! dispatch holds the gate's read side for as long as it runs guest code, so
//! [`Gate::close`] returns only once every in-flight dispatch has finished:
//! the handback's "let every rule finish, then close" is one call.

use std::sync::{Arc, RwLock, RwLockReadGuard};

/// A shared open/closed switch with "wait for in-flight work" on close.
#[derive(Debug, Clone)]
pub struct Gate(Arc<RwLock<bool>>);

/// Held by a dispatch while it runs; the gate cannot close under it.
#[derive(Debug)]
pub struct GateGuard<'a>(#[allow(dead_code)] RwLockReadGuard<'a, bool>);

impl Gate {
    /// A gate, open or closed.
    pub fn new(open: bool) -> Self {
        Gate(Arc::new(RwLock::new(open)))
    }

    /// Open the gate: later dispatches run rules.
    pub fn open(&self) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = true;
    }

    /// Close the gate. Blocks until every dispatch that entered while it was
    /// open has finished; after it returns, no guest code runs until the
    /// gate opens again. Call it from a blocking context.
    pub fn close(&self) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = false;
    }

    /// Whether the gate is open now.
    pub fn is_open(&self) -> bool {
        *self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Enter for one dispatch: `None` when closed.
    pub fn enter(&self) -> Option<GateGuard<'_>> {
        let guard = self.0.read().unwrap_or_else(|p| p.into_inner());
        if *guard { Some(GateGuard(guard)) } else { None }
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
