//! Executions committed here, handed to the cluster's publisher of
//! executed keys in memory (DESIGN.md §7), so that it does not read back
//! from SQLite, on the single writer, each key that ingest just wrote.
//!
//! The store stays the truth: the publisher takes rows from the feed only
//! when they continue its cursor without a hole (every seq after it, in
//! order), and reads the store otherwise: at its first pass, after an
//! execution recorded by a path that does not feed (a rule timer), or
//! when the feed was full. Rows are added after their commit, so the feed
//! never holds one that a rollback took back.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

pub use crate::store::groups::ExecRow;

/// The most rows the feed holds; past it, rows are dropped and the
/// publisher reads them from the store.
const CAP: usize = 20_000;

/// Rows by seq: (group, key, at).
type Rows = BTreeMap<u64, (Arc<str>, String, i64)>;

/// Committed executions not yet taken by the publisher, by seq.
#[derive(Debug, Default)]
pub struct ExecFeed {
    rows: Mutex<Rows>,
}

impl ExecFeed {
    /// Add committed executions; those past the cap are dropped (the
    /// publisher finds the hole and reads the store).
    pub fn push(&self, rows: Vec<ExecRow>) {
        if rows.is_empty() {
            return;
        }
        let mut m = self.lock();
        for (seq, group, key, at) in rows {
            if m.len() >= CAP {
                return;
            }
            m.entry(seq).or_insert((group, key, at));
        }
    }

    /// Up to `limit` rows right after `cursor`: every seq from `cursor + 1`
    /// on, without a hole. `None` when the feed does not hold the next
    /// one (read the store). Rows at or below `cursor` are dropped.
    pub fn take_after(&self, cursor: u64, limit: usize) -> Option<Vec<ExecRow>> {
        let mut m = self.lock();
        let first = cursor.saturating_add(1);
        let rest = m.split_off(&first);
        *m = rest;
        // Seqs are unique and sorted: the rows to take are the run that
        // counts up from `first`, and they leave the map in one split.
        let n = m
            .keys()
            .zip(first..)
            .take(limit)
            .take_while(|(seq, want)| **seq == *want)
            .count();
        if n == 0 {
            return None;
        }
        let rest = m.split_off(&first.saturating_add(n as u64));
        let taken = std::mem::replace(&mut *m, rest);
        Some(
            taken
                .into_iter()
                .map(|(seq, (group, key, at))| (seq, group, key, at))
                .collect(),
        )
    }

    /// Whether the feed holds nothing.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rows> {
        // A panic while holding it leaves a map still worth reading: the
        // store is the truth either way.
        self.rows.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: u64) -> ExecRow {
        (seq, "g".into(), format!("k{seq}"), 0)
    }

    fn seqs(rows: &Option<Vec<ExecRow>>) -> Option<Vec<u64>> {
        rows.as_ref().map(|r| r.iter().map(|x| x.0).collect())
    }

    #[test]
    fn rows_are_taken_only_when_they_continue_the_cursor_without_a_hole() {
        let f = ExecFeed::default();
        assert_eq!(seqs(&f.take_after(0, 10)), None, "empty: read the store");
        // Out of order (two commits' pushes crossing) is fine.
        f.push(vec![row(3), row(4)]);
        f.push(vec![row(1), row(2)]);
        assert_eq!(seqs(&f.take_after(0, 3)), Some(vec![1, 2, 3]), "limit");
        assert_eq!(seqs(&f.take_after(3, 10)), Some(vec![4]));
        assert!(f.is_empty());
        // A hole (seq 6 recorded by a path that does not feed): the run
        // stops before it, and the next take reads the store.
        f.push(vec![row(5), row(7), row(8)]);
        assert_eq!(seqs(&f.take_after(4, 10)), Some(vec![5]));
        assert_eq!(seqs(&f.take_after(5, 10)), None);
        // The store's read moved the cursor past the hole: the feed goes
        // on, and what the store covered is dropped.
        assert_eq!(seqs(&f.take_after(7, 10)), Some(vec![8]));
        assert!(f.is_empty());
        // The front behind the cursor (published from the store already).
        f.push(vec![row(9), row(10), row(11)]);
        assert_eq!(seqs(&f.take_after(10, 10)), Some(vec![11]));
    }

    #[test]
    fn a_seq_pushed_twice_keeps_its_first_row_and_a_full_feed_drops_rows() {
        let f = ExecFeed::default();
        f.push(vec![(1, "a".into(), "k".into(), 5)]);
        f.push(vec![(1, "b".into(), "other".into(), 6)]);
        assert_eq!(
            f.take_after(0, 10),
            Some(vec![(1, "a".into(), "k".into(), 5)])
        );
        f.push((1..=CAP as u64 + 10).map(row).collect());
        assert_eq!(f.lock().len(), CAP);
        // The dropped tail is a hole after the kept run.
        let taken = f.take_after(0, CAP + 100).map(|r| r.len());
        assert_eq!(taken, Some(CAP));
        assert_eq!(seqs(&f.take_after(CAP as u64, 10)), None);
    }
}
