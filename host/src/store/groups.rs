//! A cluster member's rows per group (DESIGN.md §7): executions per
//! (group, signal key) with their epoch, and signals kept as pending for a
//! group this node did not own when they arrived.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::StoreError;

/// Whether `group` already ran `key` here.
pub fn ran(tx: &Transaction<'_>, group: &str, key: &str) -> Result<bool, StoreError> {
    Ok(tx
        .prepare_cached("SELECT 1 FROM group_executed WHERE grp = ?1 AND key = ?2")?
        .query_row(params![group, key], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Record that `group` ran `key` under `epoch` (in the execution's
/// transaction), and drop the pending row it may have had.
pub fn record(
    tx: &Transaction<'_>,
    group: &str,
    key: &str,
    epoch: u64,
    at: i64,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO group_executed (grp, key, epoch, at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (grp, key) DO NOTHING",
    )?
    .execute(params![group, key, epoch as i64, at])?;
    tx.prepare_cached("DELETE FROM group_pending WHERE grp = ?1 AND key = ?2")?
        .execute(params![group, key])?;
    Ok(())
}

/// Keep `key` (event `event_id`) as pending for `group`.
pub fn add_pending(
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
    Ok(())
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
                add_pending(&tx, "a", "k1", 1, 100)?;
                add_pending(&tx, "b", "k1", 1, 100)?;
                add_pending(&tx, "a", "k2", 2, 200)?;
                add_pending(&tx, "a", "k2", 2, 300)?; // a copy: kept once
                record(&tx, "a", "k1", 7, 400)?;
                assert!(ran(&tx, "a", "k1")?);
                assert!(!ran(&tx, "b", "k1")?);
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
}
