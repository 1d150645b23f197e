//! The `event_log` table: every signal a node received, with what its rules
//! did.

use rusqlite::{Connection, Transaction, params};
use serde::Serialize;

use super::StoreError;

/// One signal to record.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: u64,
    pub key: String,
    pub name: String,
    pub source: String,
    pub time: i64,
    pub received_at: i64,
    /// JSON object.
    pub fields: String,
    pub node: String,
    /// `executed`, `suppressed`, `pending`, `covered`, or `raised` for a
    /// signal a rule raised.
    pub status: &'static str,
    pub replayed: bool,
    /// JSON of the rules' runs, if any ran.
    pub outcome: Option<String>,
    /// For a raised signal: the event whose dispatch raised it.
    pub parent: Option<u64>,
}

/// Insert events (inside the caller's transaction), and remember that
/// their ids are used ([`save_next_id`]).
pub fn insert(tx: &Transaction<'_>, events: &[NewEvent]) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO event_log (id, key, name, source, time, received_at, fields, node, status, replayed, outcome, parent)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?;
    for e in events {
        stmt.execute(params![
            e.id as i64,
            e.key,
            e.name,
            e.source,
            e.time,
            e.received_at,
            e.fields,
            e.node,
            e.status,
            e.replayed,
            e.outcome,
            e.parent.map(|p| p as i64)
        ])?;
    }
    if let Some(max) = events.iter().map(|e| e.id).max() {
        save_next_id(tx, max + 1)?;
    }
    Ok(())
}

const NEXT_ID_KEY: &str = "event_log.next_id";

/// The next event id to hand out: above every id ever used, even when
/// retention has pruned them all (ids, and the default `NODE:ID` keys made
/// from them, are never reused).
pub fn next_id(conn: &Connection) -> Result<u64, StoreError> {
    let max: Option<i64> = conn.query_row("SELECT max(id) FROM event_log", [], |r| r.get(0))?;
    let stored: u64 = super::setting(conn, NEXT_ID_KEY)?.unwrap_or(0);
    Ok((max.unwrap_or(0).max(0) as u64 + 1).max(stored))
}

/// Remember that ids below `next` are used (inside the ingest transaction).
/// Never lowers what is stored: ids are handed out before the write
/// transaction, so transactions may commit out of id order.
pub fn save_next_id(tx: &Transaction<'_>, next: u64) -> Result<(), StoreError> {
    let stored: u64 = super::setting(tx, NEXT_ID_KEY)?.unwrap_or(0);
    if next > stored {
        super::set_setting(tx, NEXT_ID_KEY, next)?;
    }
    Ok(())
}

/// An event as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct EventView {
    pub id: u64,
    pub key: String,
    pub name: String,
    pub source: String,
    pub time: i64,
    pub received_at: i64,
    pub fields: serde_json::Value,
    pub node: String,
    pub status: String,
    pub replayed: bool,
    pub outcome: serde_json::Value,
    /// For a signal a rule raised (status `raised`): the event whose
    /// dispatch raised it.
    pub parent: Option<u64>,
}

/// What the console's Events page filters on (each `None`: any).
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// A glob on the signal name (`DOOR-*`, `PANIC-?`).
    pub name: Option<String>,
    pub key: Option<String>,
    /// `executed`, `pending`, `covered`, `suppressed` or `raised`.
    pub status: Option<String>,
    /// Only events that were replayed.
    pub replayed: bool,
}

/// The newest `limit` events that pass `f`, newest first.
pub fn recent(
    conn: &Connection,
    f: &EventFilter,
    limit: u32,
) -> Result<Vec<EventView>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, key, name, source, time, received_at, fields, node, status, replayed, outcome, parent
         FROM event_log WHERE (?1 IS NULL OR name GLOB ?1) AND (?2 IS NULL OR key = ?2)
           AND (?3 IS NULL OR status = ?3) AND (?4 = 0 OR replayed = 1)
         ORDER BY id DESC LIMIT ?5",
    )?;
    let rows = stmt.query_map(
        params![f.name, f.key, f.status, f.replayed, limit],
        event_view,
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn event_view(r: &rusqlite::Row<'_>) -> rusqlite::Result<EventView> {
    let fields: String = r.get(6)?;
    let outcome: Option<String> = r.get(10)?;
    Ok(EventView {
        id: r.get::<_, i64>(0)? as u64,
        key: r.get(1)?,
        name: r.get(2)?,
        source: r.get(3)?,
        time: r.get(4)?,
        received_at: r.get(5)?,
        fields: serde_json::from_str(&fields).unwrap_or(serde_json::Value::Null),
        node: r.get(7)?,
        status: r.get(8)?,
        replayed: r.get(9)?,
        outcome: outcome
            .and_then(|o| serde_json::from_str(&o).ok())
            .unwrap_or(serde_json::Value::Null),
        parent: r.get::<_, Option<i64>>(11)?.map(|p| p as u64),
    })
}

/// Events with an id above `after`, oldest first, at most `limit`;
/// optionally only those with signal name `name`.
pub fn list(
    conn: &Connection,
    after: u64,
    limit: u32,
    name: Option<&str>,
) -> Result<Vec<EventView>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, key, name, source, time, received_at, fields, node, status, replayed, outcome, parent
         FROM event_log WHERE id > ?1 AND (?2 IS NULL OR name = ?2) ORDER BY id LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![after as i64, name, limit], event_view)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Delete events received before `before_ms`, except pending ones.
pub fn prune_settled(conn: &Connection, before_ms: i64) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "DELETE FROM event_log WHERE received_at < ?1 AND status != 'pending'",
        [before_ms],
    )?)
}

/// Delete events received before `before_ms`; returns how many.
pub fn prune(conn: &Connection, before_ms: i64) -> Result<usize, StoreError> {
    Ok(conn.execute("DELETE FROM event_log WHERE received_at < ?1", [before_ms])?)
}

/// A stored signal and when it was received.
pub fn load(conn: &Connection, id: i64) -> Result<Option<(tandem_guest::Signal, i64)>, StoreError> {
    use rusqlite::OptionalExtension;
    conn.prepare_cached("SELECT id, key, name, source, time, fields, replayed, received_at FROM event_log WHERE id = ?1")?
        .query_row([id], |r| {
            let fields: String = r.get(5)?;
            Ok((
                tandem_guest::Signal {
                    id: r.get::<_, i64>(0)? as u64,
                    key: r.get(1)?,
                    name: r.get(2)?,
                    source: r.get(3)?,
                    time: r.get(4)?,
                    fields: serde_json::from_str(&fields).unwrap_or_default(),
                    replayed: r.get(6)?,
                },
                r.get(7)?,
            ))
        })
        .optional()
        .map_err(Into::into)
}

/// Change a stored signal's status (and outcome, and replayed flag).
pub fn set_status(
    conn: &Connection,
    id: i64,
    status: &str,
    outcome: Option<&str>,
    replayed: bool,
) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE event_log SET status = ?2, outcome = coalesce(?3, outcome), replayed = ?4 WHERE id = ?1")?
        .execute(params![id, status, outcome, replayed])?;
    Ok(())
}

/// A group of a cluster member ran event `id` later (a replay): its runs
/// join the row's outcome, the row says `executed`, and `replayed` sticks
/// once set. `runs` is the JSON array of the new runs.
pub fn append_outcome(
    conn: &Connection,
    id: u64,
    runs: &str,
    replayed: bool,
) -> Result<(), StoreError> {
    use rusqlite::OptionalExtension;
    let old: Option<Option<String>> = conn
        .prepare_cached("SELECT outcome FROM event_log WHERE id = ?1")?
        .query_row([id as i64], |r| r.get(0))
        .optional()?;
    let mut all: Vec<serde_json::Value> = old
        .flatten()
        .and_then(|o| serde_json::from_str(&o).ok())
        .unwrap_or_default();
    if let Ok(serde_json::Value::Array(new)) = serde_json::from_str(runs) {
        all.extend(new);
    }
    conn.prepare_cached(
        "UPDATE event_log SET status = 'executed', outcome = ?2, replayed = (replayed OR ?3) WHERE id = ?1",
    )?
    .execute(params![
        id as i64,
        serde_json::Value::Array(all).to_string(),
        replayed
    ])?;
    Ok(())
}
