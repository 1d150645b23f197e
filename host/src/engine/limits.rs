//! Memory limits: a cap per instance and one budget for all rules together.
//!
//! Every instance's linear memory growth, including its initial size at
//! instantiation, goes through its [`Limiter`]. Growth beyond the instance's
//! cap, or beyond what is left of the shared [`MemoryBudget`], is refused
//! (`memory.grow` returns -1; at instantiation the load fails). The limiter
//! remembers which limit was hit so a resulting trap is reported as such.
//! An instance's memory returns to the budget when the instance is dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use wasmtime::ResourceLimiter;

/// Most table elements an instance may have (function tables of Rust
/// modules hold a few hundred).
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Bytes of linear memory all instances together may hold.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        MemoryBudget {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    /// The limit in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes held by live instances now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn try_reserve(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&n| n <= self.limit)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Which limit refused a growth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    /// The instance's own cap.
    Cap,
    /// The budget of all rules.
    Budget,
}

/// One instance's limiter.
#[derive(Debug)]
pub struct Limiter {
    cap: usize,
    budget: Arc<MemoryBudget>,
    reserved: usize,
    /// The last refusal, if any, since [`Limiter::take_hit`].
    hit: Option<LimitHit>,
}

impl Limiter {
    /// A limiter with a per-instance `cap` drawing on `budget`.
    pub fn new(cap: usize, budget: Arc<MemoryBudget>) -> Self {
        Limiter {
            cap,
            budget,
            reserved: 0,
            hit: None,
        }
    }

    /// The per-instance cap in bytes.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Bytes this instance holds.
    pub fn reserved(&self) -> usize {
        self.reserved
    }

    /// Which limit refused a growth since the last call, if any.
    pub fn take_hit(&mut self) -> Option<LimitHit> {
        self.hit.take()
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.hit = Some(LimitHit::Cap);
            return Ok(false);
        }
        let delta = desired.saturating_sub(current);
        if !self.budget.try_reserve(delta) {
            self.hit = Some(LimitHit::Budget);
            return Ok(false);
        }
        self.reserved += delta;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        1
    }

    fn memories(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        4
    }
}

impl Drop for Limiter {
    fn drop(&mut self) {
        self.budget.release(self.reserved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_and_budget_refuse_and_say_which() {
        let budget = Arc::new(MemoryBudget::new(100));
        let mut a = Limiter::new(80, budget.clone());
        let mut b = Limiter::new(80, budget.clone());
        assert!(a.memory_growing(0, 60, None).unwrap());
        assert!(!a.memory_growing(60, 81, None).unwrap());
        assert_eq!(a.take_hit(), Some(LimitHit::Cap));
        assert!(!b.memory_growing(0, 50, None).unwrap());
        assert_eq!(b.take_hit(), Some(LimitHit::Budget));
        assert!(b.memory_growing(0, 40, None).unwrap());
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 40);
        drop(b);
        assert_eq!(budget.used(), 0);
    }
}
