//! `failover_state` (FS and epoch, one row) and `failover_log` (one row per
//! failover).

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::{StoreError, now_ms};

/// The stored FS (1 or 2) and epoch; `None` on a fresh node.
pub fn load_state(conn: &Connection) -> Result<Option<(i64, u64)>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT fs, epoch FROM failover_state WHERE id = 1",
            [],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?.max(0) as u64)),
        )
        .optional()?)
}

/// Store FS and epoch (durable when this returns).
pub fn save_state(conn: &Connection, fs: u8, epoch: u64) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO failover_state (id, fs, epoch, updated_at) VALUES (1, ?1, ?2, ?3)
         ON CONFLICT (id) DO UPDATE SET fs = excluded.fs, epoch = excluded.epoch, updated_at = excluded.updated_at",
        params![fs, epoch as i64, now_ms()],
    )?;
    Ok(())
}

/// Open a failover row.
pub fn start(
    conn: &Connection,
    node: &str,
    reason: &str,
    failback: &str,
    at: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO failover_log (node, started_at, reason, failback_mode) VALUES (?1, ?2, ?3, ?4)",
        params![node, at, reason, failback],
    )?;
    Ok(())
}

/// Open a cluster member's failover row for `group`.
pub fn start_group(
    conn: &Connection,
    node: &str,
    group: &str,
    reason: &str,
    failback: &str,
    at: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO failover_log (node, started_at, reason, failback_mode, grp) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![node, at, reason, failback, group],
    )?;
    Ok(())
}

/// Close this node's open failover row of `group`.
pub fn end_group(conn: &Connection, node: &str, group: &str, at: i64) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE failover_log SET ended_at = ?3,
             executed = (SELECT count(*) FROM group_executed x
                         WHERE x.grp = ?2 AND x.at >= failover_log.started_at AND x.at <= ?3)
         WHERE node = ?1 AND grp = ?2 AND ended_at IS NULL",
        params![node, group, at],
    )?;
    Ok(())
}

/// Close the open failover row: end time and how many signals this node
/// executed since it started.
pub fn end(conn: &Connection, node: &str, at: i64) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE failover_log SET ended_at = ?2,
             executed = (SELECT count(*) FROM event_log e
                         WHERE e.node = ?1 AND e.status = 'executed'
                           AND e.received_at >= failover_log.started_at AND e.received_at <= ?2)
         WHERE node = ?1 AND ended_at IS NULL",
        params![node, at],
    )?;
    Ok(())
}

/// A failover as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverRow {
    pub id: i64,
    pub node: String,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub duration_ms: i64,
    pub active: bool,
    pub reason: String,
    pub failback_mode: String,
    pub executed: i64,
    /// The group (a cluster member's rows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// Every failover, newest first. An open one counts its executions so far.
pub fn list(conn: &Connection, limit: u32) -> Result<Vec<FailoverRow>, StoreError> {
    let now = now_ms();
    let mut stmt = conn.prepare(
        "SELECT f.id, f.node, f.started_at, f.ended_at, f.reason, f.failback_mode,
                CASE WHEN f.ended_at IS NULL THEN
                    (SELECT count(*) FROM event_log e WHERE e.node = f.node AND e.status = 'executed'
                       AND e.received_at >= f.started_at)
                ELSE f.executed END, f.grp
         FROM failover_log f ORDER BY f.id DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit], |r| {
        let started: i64 = r.get(2)?;
        let ended: Option<i64> = r.get(3)?;
        Ok(FailoverRow {
            id: r.get(0)?,
            node: r.get(1)?,
            started_at: started,
            ended_at: ended,
            duration_ms: ended.unwrap_or(now) - started,
            active: ended.is_none(),
            reason: r.get(4)?,
            failback_mode: r.get(5)?,
            executed: r.get(6)?,
            group: r.get(7)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
