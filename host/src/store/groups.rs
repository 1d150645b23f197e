//! A cluster member's rows per group (DESIGN.md §7): executions per
//! (group, signal key) with their epoch, and signals kept as pending for a
//! group this node did not own when they arrived.

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::StoreError;

/// One execution: (seq, group, key, at in ms). The group is shared: a
/// transaction's executions name a handful of groups.
pub type ExecRow = (u64, Arc<str>, String, i64);

/// What this node knows of `key` for `group` (read in one statement).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// The group ran it, here or (a tombstone) on another member.
    Ran,
    /// Kept as pending for the group, not run.
    Pending,
    /// Never seen for the group.
    New,
}

/// Whether groups keep any pending row or any tombstone, asked once per
/// group within one transaction. The owner of a group keeps no pending
/// row (it runs what arrives), and a group that has not changed hands
/// lately has no tombstones; [`state`] then skips those lookups key by
/// key. One per transaction: pending rows added through
/// [`GroupRows::add`] are counted; rows added any other way in the same
/// transaction are not (tombstones are stored only in their own
/// transactions, [`apply_batches`]).
#[derive(Debug, Default)]
pub struct GroupRows {
    pending: HashMap<String, bool>,
    tombstones: HashMap<String, bool>,
}

impl GroupRows {
    /// Whether `group` keeps any pending row.
    fn any_pending(&mut self, tx: &Transaction<'_>, group: &str) -> Result<bool, StoreError> {
        if let Some(&any) = self.pending.get(group) {
            return Ok(any);
        }
        let any = has_pending(tx, group)?;
        self.pending.insert(group.to_owned(), any);
        Ok(any)
    }

    /// Whether `group` has any tombstone.
    fn any_tombstone(&mut self, tx: &Transaction<'_>, group: &str) -> Result<bool, StoreError> {
        if let Some(&any) = self.tombstones.get(group) {
            return Ok(any);
        }
        let any: bool = tx
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM group_tombstone WHERE grp = ?1)")?
            .query_row([group], |r| r.get(0))?;
        self.tombstones.insert(group.to_owned(), any);
        Ok(any)
    }

    /// Keep `key` (event `event_id`) as pending for `group`.
    pub fn add(
        &mut self,
        tx: &Transaction<'_>,
        group: &str,
        key: &str,
        event_id: u64,
        at: i64,
    ) -> Result<(), StoreError> {
        tx.prepare_cached(
            "INSERT INTO group_pending (grp, key, event_id, received_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (grp, key) DO NOTHING",
        )?
        .execute(params![group, key, event_id as i64, at])?;
        self.pending.insert(group.to_owned(), true);
        Ok(())
    }
}

/// Whether `group` keeps any pending row.
fn has_pending(tx: &Transaction<'_>, group: &str) -> Result<bool, StoreError> {
    Ok(tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM group_pending WHERE grp = ?1)")?
        .query_row([group], |r| r.get(0))?)
}

/// Whether `group` already ran `key` (here or on another member), keeps
/// it as pending, or has never seen it, in one statement; `memo` spares
/// the pending and tombstone lookups of a group that has none.
pub fn state(
    tx: &Transaction<'_>,
    memo: &mut GroupRows,
    group: &str,
    key: &str,
) -> Result<KeyState, StoreError> {
    // `group` (?1) ran `key` (?2) here; another member ran it (a
    // tombstone); it is kept as pending.
    macro_rules! here {
        () => {
            "EXISTS (SELECT 1 FROM group_executed WHERE grp = ?1 AND key = ?2)"
        };
    }
    macro_rules! elsewhere {
        () => {
            " OR EXISTS (SELECT 1 FROM group_tombstone WHERE grp = ?1 AND key = ?2)"
        };
    }
    macro_rules! pending {
        () => {
            ", EXISTS (SELECT 1 FROM group_pending WHERE grp = ?1 AND key = ?2)"
        };
    }
    let sql = match (memo.any_tombstone(tx, group)?, memo.any_pending(tx, group)?) {
        (false, false) => concat!("SELECT ", here!(), ", 0"),
        (true, false) => concat!("SELECT ", here!(), elsewhere!(), ", 0"),
        (false, true) => concat!("SELECT ", here!(), pending!()),
        (true, true) => concat!("SELECT ", here!(), elsewhere!(), pending!()),
    };
    let (ran, pending): (bool, bool) = tx
        .prepare_cached(sql)?
        .query_row(params![group, key], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(match (ran, pending) {
        (true, _) => KeyState::Ran,
        (false, true) => KeyState::Pending,
        (false, false) => KeyState::New,
    })
}

/// `keys` as one `rarray(?)` parameter (moved, not copied).
fn key_array(keys: Vec<String>) -> std::rc::Rc<Vec<Value>> {
    std::rc::Rc::new(keys.into_iter().map(Value::Text).collect())
}

/// Keys another member executed for `group`: stored as tombstones, and
/// the matching pending rows of that group (only) dropped. Returns how
/// many tombstones were new and how many pending rows went.
///
/// One statement for the whole list (`rarray`): its cursor stays open
/// from key to key, where a statement per key walks the tree from its
/// root each time (half the cost a key, measured in docs/performance.md).
pub fn tombstone(
    tx: &Transaction<'_>,
    group: &str,
    keys: Vec<String>,
    at: i64,
) -> Result<(usize, usize), StoreError> {
    let keys = key_array(keys);
    // `WHERE true`: an upsert after a SELECT needs it to parse.
    let stored = tx
        .prepare_cached(
            "INSERT INTO group_tombstone (grp, key, at) SELECT ?1, value, ?2 FROM rarray(?3)
             WHERE true ON CONFLICT (grp, key) DO NOTHING",
        )?
        .execute(params![group, at, keys.clone()])?;
    // A member that keeps nothing pending for the group (it owns it, or
    // no device sends here) has no row to look for.
    let dropped = if has_pending(tx, group)? {
        tx.prepare_cached("DELETE FROM group_pending WHERE grp = ?1 AND key IN rarray(?2)")?
            .execute(params![group, keys])?
    } else {
        0
    };
    Ok((stored, dropped))
}

/// Drop `group`'s pending row of `key`, if any; returns how many went.
pub fn drop_pending(tx: &Transaction<'_>, group: &str, key: &str) -> Result<usize, StoreError> {
    Ok(tx
        .prepare_cached("DELETE FROM group_pending WHERE grp = ?1 AND key = ?2")?
        .execute(params![group, key])?)
}

const PUBLISHED_UPTO: &str = "cluster.published_upto";

/// The publisher's cursor: every execution here with seq at or below it
/// is in an executed batch in etcd (migration 008).
pub fn published_upto(conn: &Connection) -> Result<u64, StoreError> {
    Ok(super::setting::<u64>(conn, PUBLISHED_UPTO)?.unwrap_or(0))
}

/// Move the publisher's cursor to `seq` (never back).
pub fn set_published_upto(conn: &Connection, seq: u64) -> Result<(), StoreError> {
    if seq > published_upto(conn)? {
        super::set_setting(conn, PUBLISHED_UPTO, seq)?;
    }
    Ok(())
}

/// Up to `limit` executions after seq `after`, oldest first:
/// (seq, group, key, at). Only `group`'s when given.
pub fn executed_after(
    conn: &Connection,
    after: u64,
    group: Option<&str>,
    limit: u32,
) -> Result<Vec<ExecRow>, StoreError> {
    // A walk of the seq (rowid) range; `+grp` keeps the planner off the
    // (grp, key) index, which would visit every row of the group.
    let row = |r: &rusqlite::Row<'_>| {
        Ok((
            r.get::<_, i64>(0)?.max(0) as u64,
            Arc::<str>::from(r.get::<_, String>(1)?),
            r.get(2)?,
            r.get(3)?,
        ))
    };
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let rows = conn
        .prepare_cached(
            "SELECT seq, grp, key, at FROM group_executed
             WHERE seq > ?1 AND (?2 IS NULL OR +grp = ?2) ORDER BY seq LIMIT ?3",
        )?
        .query_map(params![after, group, limit], row)?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// The publisher's cursor and up to `limit` executions not yet published
/// (after it), oldest first: (seq, group, key, at). Only `group`'s when
/// given.
pub fn unpublished(
    conn: &Connection,
    group: Option<&str>,
    limit: u32,
) -> Result<(u64, Vec<ExecRow>), StoreError> {
    let upto = published_upto(conn)?;
    Ok((upto, executed_after(conn, upto, group, limit)?))
}

const APPLIED_REV: &str = "cluster.applied_rev";

/// The etcd revision up to which executed batches are applied here.
pub fn applied_rev(conn: &Connection) -> Result<i64, StoreError> {
    Ok(super::setting::<i64>(conn, APPLIED_REV)?.unwrap_or(0))
}

/// Apply the tombstones of one watch answer and move `applied_rev`, in one
/// transaction: `batches` are (group, keys). Returns how many tombstones
/// were new.
pub fn apply_batches(
    conn: &mut Connection,
    batches: Vec<(String, Vec<String>)>,
    rev: i64,
) -> Result<usize, StoreError> {
    let tx = conn.transaction()?;
    let at = super::now_ms();
    let mut stored = 0;
    for (g, keys) in batches {
        stored += tombstone(&tx, &g, keys, at)?.0;
    }
    if rev > applied_rev(&tx)? {
        super::set_setting(&tx, APPLIED_REV, rev)?;
    }
    tx.commit()?;
    Ok(stored)
}

/// Where a sweep of the tombstones stopped: the last (group, key) it
/// visited; `None` starts from the first.
pub type SweepAt = Option<(String, String)>;

/// Delete the tombstones stored before `before` among the next `limit`
/// in primary-key order after `from`, in one transaction. Returns how
/// many went and where to go on from (`None`: the sweep reached the end).
///
/// Tombstones keep no index on their time (migration 010): a sweep that
/// visits each row a few times in its life costs less than a second
/// b-tree written for every tombstone.
pub fn sweep_tombstones(
    conn: &mut Connection,
    before: i64,
    from: SweepAt,
    limit: u32,
) -> Result<(usize, SweepAt), StoreError> {
    let tx = conn.transaction()?;
    let (g, k) = from.unwrap_or_default();
    // The last row of this stretch; `(grp, key) > ('', '')` holds for
    // every row (a group is named, a key is 1 to 256 characters).
    let end: SweepAt = tx
        .prepare_cached(
            "SELECT grp, key FROM group_tombstone WHERE (grp, key) > (?1, ?2)
             ORDER BY grp, key LIMIT 1 OFFSET ?3",
        )?
        .query_row(params![g, k, limit.max(1) - 1], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    let deleted = match &end {
        Some((eg, ek)) => tx
            .prepare_cached(
                "DELETE FROM group_tombstone
                 WHERE (grp, key) > (?1, ?2) AND (grp, key) <= (?3, ?4) AND at < ?5",
            )?
            .execute(params![g, k, eg, ek, before])?,
        None => tx
            .prepare_cached("DELETE FROM group_tombstone WHERE (grp, key) > (?1, ?2) AND at < ?3")?
            .execute(params![g, k, before])?,
    };
    tx.commit()?;
    Ok((deleted, end))
}

/// Record a gap in this node's history of executed keys at `rev`.
pub fn add_gap(conn: &Connection, rev: i64, reason: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO history_gap (rev, at, reason) VALUES (?1, ?2, ?3)",
        params![rev, super::now_ms(), reason],
    )?;
    Ok(())
}

/// The last gap: (revision, when, why).
pub fn last_gap(conn: &Connection) -> Result<Option<(i64, i64, String)>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT rev, at, reason FROM history_gap ORDER BY rowid DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?)
}

/// The newest `limit` gaps' revisions, oldest first.
pub fn gaps(conn: &Connection, limit: u32) -> Result<Vec<i64>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT rev FROM history_gap ORDER BY rowid DESC LIMIT ?1")?;
    let mut v: Vec<i64> = stmt
        .query_map([limit], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    v.reverse();
    Ok(v)
}

/// Record that `group` ran `key` under `epoch` (in the execution's
/// transaction): the row's seq, or `None` when the group has a row for
/// the key already (nothing written). A caller that found the key
/// [`KeyState::Pending`] drops that row with [`drop_pending`].
pub fn record(
    tx: &Transaction<'_>,
    group: &str,
    key: &str,
    epoch: u64,
    at: i64,
) -> Result<Option<u64>, StoreError> {
    let n = tx
        .prepare_cached(
            "INSERT INTO group_executed (grp, key, epoch, at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (grp, key) DO NOTHING",
        )?
        .execute(params![group, key, epoch as i64, at])?;
    Ok((n == 1).then(|| tx.last_insert_rowid().max(0) as u64))
}

/// [`record`] for many keys of one group and epoch, in one statement:
/// the (seq, key) of each row written, in no particular order (a key the
/// group has a row for already is skipped).
pub fn record_many(
    tx: &Transaction<'_>,
    group: &str,
    epoch: u64,
    keys: Vec<String>,
    at: i64,
) -> Result<Vec<(u64, String)>, StoreError> {
    let keys = key_array(keys);
    let mut stmt = tx.prepare_cached(
        "INSERT INTO group_executed (grp, key, epoch, at) SELECT ?1, value, ?2, ?3 FROM rarray(?4)
         WHERE true ON CONFLICT (grp, key) DO NOTHING RETURNING seq, key",
    )?;
    let rows = stmt.query_map(params![group, epoch as i64, at, keys], |r| {
        Ok((r.get::<_, i64>(0)?.max(0) as u64, r.get(1)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Up to `limit` pending rows of `group` received at or after `since`,
/// oldest first: (event id, received at).
pub fn pending(
    conn: &Connection,
    group: &str,
    since: i64,
    limit: u32,
) -> Result<Vec<(u64, i64)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT event_id, received_at FROM group_pending
         WHERE grp = ?1 AND received_at >= ?2 ORDER BY received_at, event_id LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![group, since, limit], |r| {
        Ok((r.get::<_, i64>(0)?.max(0) as u64, r.get(1)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Drop `group`'s pending rows received before `before` (outside a
/// takeover's replay window); returns how many.
pub fn drop_pending_before(
    tx: &Transaction<'_>,
    group: &str,
    before: i64,
) -> Result<usize, StoreError> {
    Ok(tx.execute(
        "DELETE FROM group_pending WHERE grp = ?1 AND received_at < ?2",
        params![group, before],
    )?)
}

/// How many signals are pending for each group.
pub fn pending_counts(conn: &Connection) -> Result<Vec<(String, u64)>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT grp, count(*) FROM group_pending GROUP BY grp ORDER BY grp")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_rows_are_per_group_and_leave_when_the_group_runs_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::Store::open(dir.path()).expect("open");
        store
            .write_blocking(|c| {
                let tx = c.transaction()?;
                let mut p = GroupRows::default();
                // A group asked before it keeps anything: the pending
                // lookup is skipped, and a row added through the memo
                // turns it back on.
                assert_eq!(state(&tx, &mut p, "a", "k1")?, KeyState::New);
                p.add(&tx, "a", "k1", 1, 100)?;
                p.add(&tx, "b", "k1", 1, 100)?;
                p.add(&tx, "a", "k2", 2, 200)?;
                p.add(&tx, "a", "k2", 2, 300)?; // a copy: kept once
                assert_eq!(state(&tx, &mut p, "a", "k1")?, KeyState::Pending);
                assert_eq!(state(&tx, &mut p, "a", "k9")?, KeyState::New);
                assert!(record(&tx, "a", "k1", 7, 400)?.is_some());
                assert_eq!(
                    record(&tx, "a", "k1", 8, 401)?,
                    None,
                    "once per (group, key)"
                );
                assert_eq!(drop_pending(&tx, "a", "k1")?, 1);
                assert_eq!(state(&tx, &mut p, "a", "k1")?, KeyState::Ran);
                assert_eq!(state(&tx, &mut p, "b", "k1")?, KeyState::Pending);
                // A fresh memo (the next transaction) asks the table.
                let mut fresh = GroupRows::default();
                assert_eq!(state(&tx, &mut fresh, "b", "k1")?, KeyState::Pending);
                assert!(!fresh.any_pending(&tx, "c")?);
                // Tombstones: ran for their group only, and the group's
                // pending row only goes.
                p.add(&tx, "a", "k3", 3, 300)?;
                assert_eq!(state(&tx, &mut p, "c", "k1")?, KeyState::New);
                assert_eq!(
                    tombstone(&tx, "a", vec!["k3".into(), "k4".into()], 500)?,
                    (2, 1)
                );
                assert_eq!(tombstone(&tx, "c", vec!["k1".into()], 500)?, (1, 0));
                assert_eq!(
                    tombstone(&tx, "c", vec!["k1".into(), "k5".into()], 501)?,
                    (1, 0),
                    "a tombstone is stored once"
                );
                // The memo that found no tombstone of `c` keeps saying so
                // (tombstones are stored in transactions of their own);
                // the next transaction's sees them.
                assert_eq!(state(&tx, &mut p, "c", "k1")?, KeyState::New);
                let mut next = GroupRows::default();
                assert_eq!(state(&tx, &mut next, "a", "k3")?, KeyState::Ran);
                assert_eq!(state(&tx, &mut next, "a", "k4")?, KeyState::Ran);
                assert_eq!(state(&tx, &mut next, "c", "k1")?, KeyState::Ran);
                assert_eq!(state(&tx, &mut next, "c", "k2")?, KeyState::New);
                // Ran here and pending elsewhere, with tombstones about.
                assert_eq!(state(&tx, &mut next, "a", "k2")?, KeyState::Pending);
                assert_eq!(state(&tx, &mut next, "a", "k1")?, KeyState::Ran);
                tx.commit()?;
                Ok(())
            })
            .expect("write");
        let a = store.read_blocking(|c| pending(c, "a", 0, 10)).expect("a");
        assert_eq!(a, vec![(2, 200)]);
        let b = store.read_blocking(|c| pending(c, "b", 0, 10)).expect("b");
        assert_eq!(b, vec![(1, 100)]);
        assert!(
            store
                .read_blocking(|c| pending(c, "b", 101, 10))
                .expect("b")
                .is_empty()
        );
        let counts = store.read_blocking(pending_counts).expect("counts");
        assert_eq!(counts, vec![("a".into(), 1), ("b".into(), 1)]);
    }

    #[test]
    fn many_executions_are_recorded_in_one_statement_each_key_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::Store::open(dir.path()).expect("open");
        let (first, again) = store
            .write_blocking(|c| {
                let tx = c.transaction()?;
                let k1 = record(&tx, "a", "k1", 3, 100)?.expect("new");
                let mut first = record_many(
                    &tx,
                    "a",
                    3,
                    vec!["k2".into(), "k1".into(), "k3".into()],
                    200,
                )?;
                first.sort();
                // Numbered after the row before them, in their order; k1
                // (already run) skipped. (Its attempt may use up a number:
                // a hole, which the publisher reads past from the store.)
                let keys: Vec<&str> = first.iter().map(|r| r.1.as_str()).collect();
                assert_eq!(keys, ["k2", "k3"]);
                assert!(k1 < first[0].0 && first[0].0 < first[1].0, "{first:?}");
                let again = record_many(&tx, "b", 4, vec!["k1".into()], 300)?;
                tx.commit()?;
                Ok((first, again))
            })
            .expect("write");
        assert_eq!(again.len(), 1, "another group's row of the same key");
        let rows = store
            .read_blocking(|c| executed_after(c, 0, None, 10))
            .expect("read");
        let seen: Vec<(u64, &str, &str, i64)> = rows
            .iter()
            .map(|r| (r.0, &*r.1, r.2.as_str(), r.3))
            .collect();
        assert_eq!(
            seen[1..3],
            [(first[0].0, "a", "k2", 200), (first[1].0, "a", "k3", 200)]
        );
        assert_eq!(seen[3], (again[0].0, "b", "k1", 300));
        let epoch: i64 = store
            .read_blocking(|c| {
                Ok(c.query_row(
                    "SELECT epoch FROM group_executed WHERE grp = 'b'",
                    [],
                    |r| r.get(0),
                )?)
            })
            .expect("epoch");
        assert_eq!(epoch, 4);
    }

    #[test]
    fn a_sweep_deletes_old_tombstones_a_stretch_at_a_time_and_starts_over_at_the_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::Store::open(dir.path()).expect("open");
        let left = || -> Vec<String> {
            store
                .read_blocking(|c| {
                    let mut st = c.prepare(
                        "SELECT grp || '/' || key FROM group_tombstone ORDER BY grp, key",
                    )?;
                    let rows = st.query_map([], |r| r.get(0))?;
                    Ok(rows.collect::<Result<_, _>>()?)
                })
                .expect("read")
        };
        store
            .write_blocking(|c| {
                // Old: a/k1, a/k3, b/k2, b/k4; new: a/k2, b/k1, b/k3.
                apply_batches(c, vec![("a".into(), vec!["k1".into(), "k3".into()])], 1)?;
                apply_batches(c, vec![("b".into(), vec!["k2".into(), "k4".into()])], 2)?;
                c.execute("UPDATE group_tombstone SET at = 100", [])?;
                let tx = c.transaction()?;
                tombstone(&tx, "a", vec!["k2".into()], 900)?;
                tombstone(&tx, "b", vec!["k1".into(), "k3".into()], 900)?;
                tx.commit()?;
                Ok(())
            })
            .expect("tombstones");
        let sweep = |from: SweepAt, limit| {
            store
                .write_blocking(|c| sweep_tombstones(c, 500, from, limit))
                .expect("sweep")
        };
        // a/k1, a/k2, a/k3: two of them old.
        let (n, at) = sweep(None, 3);
        assert_eq!((n, at.clone()), (2, Some(("a".into(), "k3".into()))));
        assert_eq!(left(), ["a/k2", "b/k1", "b/k2", "b/k3", "b/k4"]);
        // b/k1, b/k2: one.
        let (n, at) = sweep(at, 2);
        assert_eq!((n, at.clone()), (1, Some(("b".into(), "k2".into()))));
        // The rest, fewer than the limit: the end.
        let (n, at) = sweep(at, 10);
        assert_eq!((n, at.clone()), (1, None));
        assert_eq!(left(), ["a/k2", "b/k1", "b/k3"]);
        // From the start again: nothing old is left.
        assert_eq!(sweep(at, 10), (0, None));
        assert_eq!(left(), ["a/k2", "b/k1", "b/k3"]);
    }

    #[test]
    fn the_publisher_cursor_splits_published_from_unpublished_executions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::Store::open(dir.path()).expect("open");
        let seqs = store
            .write_blocking(|c| {
                let tx = c.transaction()?;
                let mut seqs = Vec::new();
                for (g, k) in [("a", "k1"), ("b", "k1"), ("a", "k2"), ("b", "k2")] {
                    seqs.push(record(&tx, g, k, 1, 100)?.expect("new"));
                }
                tx.commit()?;
                Ok(seqs)
            })
            .expect("write");
        let keys = |group: Option<&str>| {
            store
                .read_blocking(|c| unpublished(c, group, 10))
                .expect("read")
                .1
                .into_iter()
                .map(|r| format!("{}/{}", r.1, r.2))
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(None), ["a/k1", "b/k1", "a/k2", "b/k2"], "seq order");
        assert_eq!(keys(Some("b")), ["b/k1", "b/k2"]);
        store
            .write_blocking(|c| set_published_upto(c, seqs[1]))
            .expect("cursor");
        assert_eq!(keys(None), ["a/k2", "b/k2"]);
        assert_eq!(keys(Some("a")), ["a/k2"]);
        // The cursor never moves back.
        store
            .write_blocking(|c| set_published_upto(c, seqs[0]))
            .expect("cursor");
        assert_eq!(keys(None), ["a/k2", "b/k2"]);
        store
            .write_blocking(|c| set_published_upto(c, seqs[3]))
            .expect("cursor");
        assert!(keys(None).is_empty());
        assert_eq!(
            store.read_blocking(published_upto).expect("cursor"),
            seqs[3]
        );
    }
}
