//! Copy-back: after a handback the secondary copies the event and
//! notification rows it made during the failover to the primary, which
//! keeps them tagged with the secondary's name and never delivers them.
//! Resumable: the secondary remembers the last event id the primary
//! acknowledged.

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::StoreError;

const LAST_KEY: &str = "copyback.last_event_id";

/// The most one batch may hold, counted as the bytes of its text (a
/// batch goes in one link frame, capped at 1 MiB with its encoding).
pub const MAX_BATCH_BYTES: usize = 512 << 10;
/// What a text field of a row too large for any batch is cut to.
const SLIM_FIELD: usize = 4 << 10;
/// Encoding overhead counted per row (field names, numbers).
const ROW_OVERHEAD: usize = 256;

impl CopiedEvent {
    fn size(&self) -> usize {
        ROW_OVERHEAD
            + self.key.len()
            + self.name.len()
            + self.source.len()
            + self.fields.len()
            + self.status.len()
            + self.outcome.as_ref().map_or(0, String::len)
    }
}

impl CopiedNotification {
    fn size(&self) -> usize {
        ROW_OVERHEAD
            + self.id.len()
            + self.sink.len()
            + self.rule.len()
            + self.to.len()
            + self.channel.len()
            + self.subject.len()
            + self.body.len()
            + self.signal.len()
            + self.status.len()
            + self.last_error.as_ref().map_or(0, String::len)
    }
}

/// `text` cut to at most `max` bytes on a character boundary, with a
/// marker saying how long it was.
fn cut(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let total = text.len();
    text.truncate(end);
    text.push_str(&format!(" [cut by copy-back: {total} bytes]"));
}

/// Make a row that alone is over [`MAX_BATCH_BYTES`] fit: its large text
/// fields are cut, and notifications past the cap are left out (counted in
/// the log). The peer then still learns the event and what it caused.
fn slim(event: &mut CopiedEvent, notes: &mut Vec<CopiedNotification>) {
    cut(&mut event.fields, SLIM_FIELD);
    if let Some(o) = event.outcome.as_mut() {
        cut(o, SLIM_FIELD);
    }
    let mut total = event.size();
    let mut kept = 0;
    for n in notes.iter_mut() {
        for field in [&mut n.subject, &mut n.body, &mut n.signal, &mut n.to] {
            cut(field, SLIM_FIELD / 4);
        }
        if let Some(e) = n.last_error.as_mut() {
            cut(e, SLIM_FIELD / 4);
        }
        if total + n.size() > MAX_BATCH_BYTES {
            break;
        }
        total += n.size();
        kept += 1;
    }
    if kept < notes.len() {
        tracing::error!(
            event = event.id,
            left_out = notes.len() - kept,
            "copy-back: the event's notifications are over the batch cap; the rest are not copied"
        );
        notes.truncate(kept);
    }
    tracing::warn!(
        event = event.id,
        "copy-back: an event over the batch cap is copied with its large fields cut"
    );
}

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

/// The last event id of `group` a cluster's first node acknowledged.
pub fn last_copied_of(conn: &Connection, group: &str) -> Result<i64, StoreError> {
    Ok(super::setting(conn, &format!("{LAST_KEY}.{group}"))?.unwrap_or(0))
}

/// Remember what the first node of `group` acknowledged.
pub fn set_last_copied_of(conn: &Connection, group: &str, id: i64) -> Result<(), StoreError> {
    super::set_setting(conn, &format!("{LAST_KEY}.{group}"), id)
}

/// Remember what the peer acknowledged.
pub fn set_last_copied(conn: &Connection, id: i64) -> Result<(), StoreError> {
    super::set_setting(conn, LAST_KEY, id)
}

/// The next batch: this node's executed events after `after`, with their
/// notifications, at most `limit` events and [`MAX_BATCH_BYTES`]. A first
/// event that alone is over the cap goes alone, slimmed (see `slim`).
pub fn batch(
    conn: &Connection,
    node: &str,
    after: i64,
    limit: u32,
) -> Result<(Vec<CopiedEvent>, Vec<CopiedNotification>), StoreError> {
    batch_of(conn, node, None, after, limit)
}

/// [`batch`], only of events whose key a cluster `group` ran here (when
/// given).
pub fn batch_of(
    conn: &Connection,
    node: &str,
    group: Option<&str>,
    after: i64,
    limit: u32,
) -> Result<(Vec<CopiedEvent>, Vec<CopiedNotification>), StoreError> {
    // A group's batch starts from the group's executions here (its
    // (grp, key) index, then each event by key): starting from this node's
    // executed events would walk all of them, every group's, at each look.
    let mut stmt = match group {
        None => conn.prepare_cached(
            "SELECT id, key, name, source, time, received_at, fields, status, replayed, outcome
             FROM event_log WHERE node = ?1 AND status = 'executed' AND id > ?2
             ORDER BY id LIMIT ?3",
        )?,
        Some(_) => conn.prepare_cached(
            "SELECT e.id, e.key, e.name, e.source, e.time, e.received_at, e.fields, e.status,
                    e.replayed, e.outcome
             FROM group_executed g CROSS JOIN event_log e ON e.key = g.key
             WHERE g.grp = ?4 AND e.node = ?1 AND +e.status = 'executed' AND +e.id > ?2
             ORDER BY e.id LIMIT ?3",
        )?,
    };
    let mut args = params![node, after, limit].to_vec();
    if let Some(g) = &group {
        args.push(g);
    }
    let events: Vec<CopiedEvent> = stmt
        .query_map(&*args, |r| {
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
    let mut nstmt = conn.prepare_cached(
        "SELECT id, sink, event_id, rule, to_addr, channel, subject, body, signal, status, attempts,
                created_at, updated_at, last_error
         FROM notification WHERE event_id = ?1 AND node = ?2",
    )?;
    let (mut out_events, mut out_notes) = (Vec::new(), Vec::new());
    let mut total = 0;
    for mut e in events {
        let mut notes = nstmt
            .query_map(params![e.id, node], |r| {
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
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let size = e.size() + notes.iter().map(CopiedNotification::size).sum::<usize>();
        if total + size > MAX_BATCH_BYTES {
            if !out_events.is_empty() {
                break;
            }
            slim(&mut e, &mut notes);
        }
        total += size;
        out_events.push(e);
        out_notes.append(&mut notes);
    }
    Ok((out_events, out_notes))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let mut c = Connection::open_in_memory().expect("db");
        crate::store::schema::migrate(&mut c).expect("schema");
        c
    }

    fn event(c: &Connection, id: i64, outcome: &str) {
        c.execute(
            "INSERT INTO event_log (id, key, name, source, time, received_at, fields, node, status, outcome)
             VALUES (?1, ?2, 'X', '', 0, 0, '{}', 'wat4120', 'executed', ?3)",
            params![id, format!("k{id}"), outcome],
        )
        .expect("event");
    }

    fn note(c: &Connection, event: i64, n: u32, body: &str) {
        c.execute(
            "INSERT INTO notification (id, sink, event_id, rule, node, to_addr, channel, subject, body, signal,
                 status, next_attempt_at, created_at, updated_at)
             VALUES (?1, 'hook', ?2, 'r', 'wat4120', 'x@y', 'email', 's', ?3, '{}', 'sent', 0, 0, 0)",
            params![format!("n{event}-{n}"), event, body],
        )
        .expect("note");
    }

    /// What the link frame would carry.
    fn encoded(batch: &(Vec<CopiedEvent>, Vec<CopiedNotification>)) -> usize {
        rmp_serde::to_vec_named(batch).expect("encode").len()
    }

    #[test]
    fn batches_are_capped_by_bytes() {
        let c = db();
        let big = "o".repeat(40 << 10);
        for id in 1..=40 {
            event(&c, id, &big);
        }
        let b = batch(&c, "wat4120", 0, 200).expect("batch");
        assert!(
            (1..=12).contains(&b.0.len()),
            "{} events of 40 KiB",
            b.0.len()
        );
        assert!(encoded(&b) < crate::store::copyback::MAX_BATCH_BYTES * 2);
        let next = batch(&c, "wat4120", b.0.last().expect("some").id, 200).expect("batch");
        assert_eq!(next.0.first().map(|e| e.id), Some(b.0.len() as i64 + 1));
    }

    #[test]
    fn a_row_over_the_cap_goes_alone_and_slimmed() {
        let c = db();
        event(&c, 1, &"o".repeat(3 << 20));
        let huge = "b".repeat(600 << 10);
        note(&c, 1, 1, &huge);
        note(&c, 1, 2, &huge);
        event(&c, 2, "{}");
        let b = batch(&c, "wat4120", 0, 200).expect("batch");
        assert_eq!(b.0.len(), 1, "alone");
        assert_eq!(b.1.len(), 2, "its notifications, slimmed");
        assert!(
            b.0[0]
                .outcome
                .as_deref()
                .is_some_and(|o| o.contains("cut by copy-back"))
        );
        assert!(b.1[0].body.contains("cut by copy-back"));
        assert!(encoded(&b) < 64 << 10, "{} bytes", encoded(&b));
        let next = batch(&c, "wat4120", 1, 200).expect("batch");
        assert_eq!(next.0.first().map(|e| e.id), Some(2), "progress goes on");
    }
}
