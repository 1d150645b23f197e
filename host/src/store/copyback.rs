//! Copy-back: after a handback the secondary copies the event and
//! notification rows it made during the failover to the primary, which
//! keeps them tagged with the secondary's name and never delivers them.
//! Resumable: the secondary remembers the last event id the primary
//! acknowledged.

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::StoreError;

const LAST_KEY: &str = "copyback.last_event_id";

/// An event row as copied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopiedEvent {
    pub id: i64,
    pub key: String,
    pub name: String,
    pub source: String,
    pub time: i64,
    pub received_at: i64,
    pub fields: String,
    pub status: String,
    pub replayed: bool,
    pub outcome: Option<String>,
}

/// A notification row as copied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopiedNotification {
    pub id: String,
    pub sink: String,
    pub event_id: i64,
    pub rule: String,
    pub to: String,
    pub channel: String,
    pub subject: String,
    pub body: String,
    pub signal: String,
    pub status: String,
    pub attempts: u32,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_error: Option<String>,
}

/// The last event id the peer acknowledged.
pub fn last_copied(conn: &Connection) -> Result<i64, StoreError> {
    Ok(super::setting(conn, LAST_KEY)?.unwrap_or(0))
}

/// Remember what the peer acknowledged.
pub fn set_last_copied(conn: &Connection, id: i64) -> Result<(), StoreError> {
    super::set_setting(conn, LAST_KEY, id)
}

/// The next batch: this node's executed events after `after`, with their
/// notifications.
pub fn batch(
    conn: &Connection,
    node: &str,
    after: i64,
    limit: u32,
) -> Result<(Vec<CopiedEvent>, Vec<CopiedNotification>), StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, key, name, source, time, received_at, fields, status, replayed, outcome FROM event_log
         WHERE node = ?1 AND status = 'executed' AND id > ?2 ORDER BY id LIMIT ?3",
    )?;
    let events: Vec<CopiedEvent> = stmt
        .query_map(params![node, after, limit], |r| {
            Ok(CopiedEvent {
                id: r.get(0)?,
                key: r.get(1)?,
                name: r.get(2)?,
                source: r.get(3)?,
                time: r.get(4)?,
                received_at: r.get(5)?,
                fields: r.get(6)?,
                status: r.get(7)?,
                replayed: r.get(8)?,
                outcome: r.get(9)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let mut notes = Vec::new();
    let mut nstmt = conn.prepare_cached(
        "SELECT id, sink, event_id, rule, to_addr, channel, subject, body, signal, status, attempts,
                created_at, updated_at, last_error
         FROM notification WHERE event_id = ?1 AND node = ?2",
    )?;
    for e in &events {
        let rows = nstmt.query_map(params![e.id, node], |r| {
            Ok(CopiedNotification {
                id: r.get(0)?,
                sink: r.get(1)?,
                event_id: r.get(2)?,
                rule: r.get(3)?,
                to: r.get(4)?,
                channel: r.get(5)?,
                subject: r.get(6)?,
                body: r.get(7)?,
                signal: r.get(8)?,
                status: r.get(9)?,
                attempts: r.get(10)?,
                created_at: r.get(11)?,
                updated_at: r.get(12)?,
                last_error: r.get(13)?,
            })
        })?;
        for n in rows {
            notes.push(n?);
        }
    }
    Ok((events, notes))
}

/// Store copied rows from `peer` (one transaction). Events get ids from
/// `next_id`; a peer event already copied (same peer and key) is skipped,
/// so a resent batch changes nothing. Notifications keep their status,
/// except that one still pending there becomes `remote`: never delivered
/// here.
pub fn import(
    conn: &mut Connection,
    peer: &str,
    events: &[CopiedEvent],
    notes: &[CopiedNotification],
    mut next_id: impl FnMut() -> u64,
) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    let mut ids = std::collections::HashMap::new();
    for e in events {
        let existing: Option<i64> = tx
            .query_row(
                "SELECT id FROM event_log WHERE node = ?1 AND key = ?2 AND status = ?3",
                params![peer, e.key, e.status],
                |r| r.get(0),
            )
            .optional()?;
        let id = match existing {
            Some(id) => id,
            None => {
                let id = next_id() as i64;
                tx.execute(
                    "INSERT INTO event_log (id, key, name, source, time, received_at, fields, node, status, replayed, outcome)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    params![id, e.key, e.name, e.source, e.time, e.received_at, e.fields, peer, e.status, e.replayed, e.outcome],
                )?;
                id
            }
        };
        ids.insert(e.id, id);
    }
    for n in notes {
        let status = if n.status == "pending" {
            "remote"
        } else {
            n.status.as_str()
        };
        tx.execute(
            "INSERT OR IGNORE INTO notification (id, sink, event_id, rule, node, to_addr, channel, subject, body,
                 signal, status, attempts, next_attempt_at, created_at, updated_at, last_error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?13, ?14, ?15)",
            params![
                n.id,
                n.sink,
                ids.get(&n.event_id).copied(),
                n.rule,
                peer,
                n.to,
                n.channel,
                n.subject,
                n.body,
                n.signal,
                status,
                n.attempts,
                n.created_at,
                n.updated_at,
                n.last_error
            ],
        )?;
    }
    if let Some(max) = ids.values().max() {
        super::events::save_next_id(&tx, *max as u64 + 1)?;
    }
    tx.commit()?;
    Ok(())
}
