//! Table-sync bookkeeping kept in the store: the last generation and the
//! `sync_log` table (both nodes write a row per sync, refused ones too).

use rusqlite::{Connection, params};
use serde::Serialize;

use super::{StoreError, now_ms, set_setting, setting};

const GENERATION_KEY: &str = "sync.generation";

/// The largest generation a snapshot may carry: numbering above it could
/// overflow (and `sync_log` stores it as a signed 64-bit integer).
pub const MAX_GENERATION: u64 = i64::MAX as u64 - 1;

/// The last generation imported (or exported, on a primary).
pub fn last_generation(conn: &Connection) -> Result<u64, StoreError> {
    Ok(setting(conn, GENERATION_KEY)?.unwrap_or(0))
}

/// Remember a generation.
pub fn set_generation(conn: &Connection, g: u64) -> Result<(), StoreError> {
    set_setting(conn, GENERATION_KEY, g)
}

/// Record a sync in `sync_log`.
pub fn log(
    conn: &Connection,
    direction: &str,
    generation: u64,
    result: &str,
    detail: &str,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO sync_log (at, direction, generation, result, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![now_ms(), direction, generation.min(i64::MAX as u64) as i64, result, detail],
    )?;
    Ok(())
}

/// A `sync_log` row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyncLogRow {
    pub at: i64,
    /// `export` or `import`.
    pub direction: String,
    pub generation: u64,
    /// `ok`, `failed` or `refused`.
    pub result: String,
    pub detail: String,
}

/// The newest `limit` rows, newest first.
pub fn recent(conn: &Connection, limit: u32) -> Result<Vec<SyncLogRow>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT at, direction, generation, result, detail FROM sync_log ORDER BY id DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit], |r| {
        Ok(SyncLogRow {
            at: r.get(0)?,
            direction: r.get(1)?,
            generation: r.get::<_, Option<i64>>(2)?.unwrap_or(0).max(0) as u64,
            result: r.get(3)?,
            detail: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The newest row, if any.
pub fn last(conn: &Connection) -> Result<Option<SyncLogRow>, StoreError> {
    Ok(recent(conn, 1)?.into_iter().next())
}

/// Rows of `sync_log` kept: older ones are pruned.
pub const KEEP: u32 = 1000;

/// Delete all but the newest [`KEEP`] rows; returns how many went.
pub fn prune(conn: &Connection) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "DELETE FROM sync_log WHERE id <= (SELECT id FROM sync_log ORDER BY id DESC LIMIT 1 OFFSET ?1)",
        [KEEP],
    )?)
}
