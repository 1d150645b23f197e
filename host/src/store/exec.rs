//! Executed keys, tombstones and pending signals: what makes a keyed signal
//! that reached both nodes run once across the pair.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{StoreError, now_ms};

const ABSORBED_KEY: &str = "peer.absorbed_seq";

/// Whether a key must not run here: the peer executed it (tombstone), or
/// this node already did.
pub fn already_run(tx: &Transaction<'_>, key: &str) -> Result<bool, StoreError> {
    let tomb = tx
        .prepare_cached("SELECT 1 FROM tombstone WHERE key = ?1")?
        .query_row([key], |_| Ok(()))
        .optional()?
        .is_some();
    if tomb {
        return Ok(true);
    }
    Ok(tx
        .prepare_cached("SELECT 1 FROM executed_key WHERE key = ?1 LIMIT 1")?
        .query_row([key], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Log one execution (inside the execution's transaction); returns its
/// number.
pub fn record(tx: &Transaction<'_>, key: &str, at: i64) -> Result<u64, StoreError> {
    tx.prepare_cached("INSERT INTO executed_key (key, at) VALUES (?1, ?2)")?
        .execute(params![key, at])?;
    Ok(tx.last_insert_rowid().max(0) as u64)
}

/// The last execution number (0 for none).
pub fn last_seq(conn: &Connection) -> Result<u64, StoreError> {
    let n: Option<i64> = conn.query_row("SELECT max(seq) FROM executed_key", [], |r| r.get(0))?;
    Ok(n.unwrap_or(0).max(0) as u64)
}

/// Executions after `seq`, oldest first, at most `limit`.
pub fn after(conn: &Connection, seq: u64, limit: u32) -> Result<Vec<(u64, String)>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT seq, key FROM executed_key WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
    let rows = stmt.query_map(params![seq as i64, limit], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get(1)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The last execution number of the peer this node has recorded.
pub fn absorbed(conn: &Connection) -> Result<u64, StoreError> {
    Ok(super::setting(conn, ABSORBED_KEY)?.unwrap_or(0))
}

/// Store the peer's executed keys as tombstones, mark matching pending
/// signals as covered, and move the absorbed number up; one transaction.
/// Returns the new absorbed number.
pub fn absorb(conn: &mut Connection, keys: &[(u64, String)]) -> Result<u64, StoreError> {
    let tx = conn.transaction()?;
    let now = now_ms();
    let mut top = absorbed(&tx)?;
    {
        let mut tomb = tx.prepare_cached(
            "INSERT INTO tombstone (key, peer_seq, at) VALUES (?1, ?2, ?3)
             ON CONFLICT (key) DO NOTHING",
        )?;
        let mut cover = tx.prepare_cached(
            "UPDATE event_log SET status = 'covered' WHERE key = ?1 AND status = 'pending'",
        )?;
        for (seq, key) in keys {
            tomb.execute(params![key, *seq as i64, now])?;
            cover.execute([key])?;
            top = top.max(*seq);
        }
    }
    super::set_setting(&tx, ABSORBED_KEY, top)?;
    tx.commit()?;
    Ok(top)
}

/// Pending signals of this node, oldest first: (id, received_at).
pub fn pending(conn: &Connection, node: &str, limit: u32) -> Result<Vec<i64>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id FROM event_log WHERE status = 'pending' AND node = ?1 ORDER BY id LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![node, limit], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Delete executed keys and tombstones older than `before_ms`.
pub fn prune(conn: &Connection, before_ms: i64) -> Result<usize, StoreError> {
    Ok(
        conn.execute("DELETE FROM executed_key WHERE at < ?1", [before_ms])?
            + conn.execute("DELETE FROM tombstone WHERE at < ?1", [before_ms])?,
    )
}
