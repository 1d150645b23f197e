//! The `notification` table: the durable outbox, one row per notification
//! and sink, and the contact lookups that turn `group:NAME` into addresses.

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::Serialize;

use super::StoreError;

/// A notification to queue.
#[derive(Debug, Clone)]
pub struct NewNotification {
    pub id: String,
    pub sink: String,
    pub event_id: u64,
    pub rule: String,
    pub node: String,
    pub to: String,
    pub channel: String,
    pub subject: String,
    pub body: String,
    /// JSON of the triggering signal.
    pub signal: String,
    pub created_at: i64,
    /// The group epoch it was made under (a cluster member's), if any.
    pub epoch: Option<u64>,
}

/// Queue a notification (inside the caller's transaction). A row with the
/// same id and sink is kept as it is: `false` then.
pub fn insert(tx: &Transaction<'_>, n: &NewNotification) -> Result<bool, StoreError> {
    let mut stmt = tx.prepare_cached(
        "INSERT OR IGNORE INTO notification (id, sink, event_id, rule, node, to_addr, channel, subject,
             body, signal, status, attempts, next_attempt_at, created_at, updated_at, epoch)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'pending', 0, ?11, ?11, ?11, ?12)",
    )?;
    Ok(stmt.execute(params![
        n.id,
        n.sink,
        n.event_id as i64,
        n.rule,
        n.node,
        n.to,
        n.channel,
        n.subject,
        n.body,
        n.signal,
        n.created_at,
        n.epoch.map(|e| e as i64)
    ])? > 0)
}

/// A queued notification.
#[derive(Debug, Clone, Serialize)]
pub struct NotificationView {
    pub id: String,
    pub sink: String,
    pub event_id: Option<i64>,
    pub rule: String,
    pub node: String,
    pub to: String,
    pub channel: String,
    pub subject: String,
    pub body: String,
    pub signal: serde_json::Value,
    pub status: String,
    pub attempts: u32,
    pub next_attempt_at: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_error: Option<String>,
}

const COLUMNS: &str =
    "id, sink, event_id, rule, node, to_addr, channel, subject, body, signal, status,
    attempts, next_attempt_at, created_at, updated_at, last_error";

fn view(r: &rusqlite::Row<'_>) -> rusqlite::Result<NotificationView> {
    let signal: String = r.get(9)?;
    Ok(NotificationView {
        id: r.get(0)?,
        sink: r.get(1)?,
        event_id: r.get(2)?,
        rule: r.get(3)?,
        node: r.get(4)?,
        to: r.get(5)?,
        channel: r.get(6)?,
        subject: r.get(7)?,
        body: r.get(8)?,
        signal: serde_json::from_str(&signal).unwrap_or(serde_json::Value::Null),
        status: r.get(10)?,
        attempts: r.get(11)?,
        next_attempt_at: r.get(12)?,
        created_at: r.get(13)?,
        updated_at: r.get(14)?,
        last_error: r.get(15)?,
    })
}

/// Pending rows whose next attempt is due, oldest first.
pub fn due(conn: &Connection, now: i64, limit: u32) -> Result<Vec<NotificationView>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM notification WHERE status = 'pending' AND next_attempt_at <= ?1
         ORDER BY next_attempt_at, created_at LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![now, limit], view)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Pending rows of `sink` due at `now`, oldest due first.
pub fn due_for(
    conn: &Connection,
    sink: &str,
    now: i64,
    limit: u32,
) -> Result<Vec<NotificationView>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM notification WHERE status = 'pending' AND sink = ?1
             AND next_attempt_at <= ?2
         ORDER BY next_attempt_at, created_at LIMIT ?3"
    ))?;
    let rows = stmt.query_map(params![sink, now, limit], view)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The earliest next attempt among `sink`'s pending rows.
pub fn next_due_for(conn: &Connection, sink: &str) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT min(next_attempt_at) FROM notification WHERE status = 'pending' AND sink = ?1",
            [sink],
            |r| r.get::<_, Option<i64>>(0),
        )
        .optional()?
        .flatten())
}

/// Pending rows of sinks no longer configured: failed, with why. Returns
/// how many.
pub fn fail_unknown_sinks(
    conn: &Connection,
    known: &[&str],
    now: i64,
) -> Result<usize, StoreError> {
    let mut stmt =
        conn.prepare("SELECT DISTINCT sink FROM notification WHERE status = 'pending'")?;
    let sinks: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut n = 0;
    for sink in sinks.iter().filter(|s| !known.contains(&s.as_str())) {
        n += conn.execute(
            "UPDATE notification SET status = 'failed', updated_at = ?2,
                 last_error = 'sink `' || ?1 || '` is no longer configured'
             WHERE status = 'pending' AND sink = ?1",
            params![sink, now],
        )?;
    }
    Ok(n)
}

/// The earliest next attempt among pending rows.
pub fn next_due(conn: &Connection) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT min(next_attempt_at) FROM notification WHERE status = 'pending'",
            [],
            |r| r.get::<_, Option<i64>>(0),
        )
        .optional()?
        .flatten())
}

/// Rows filtered by node and status, newest first.
pub fn list(
    conn: &Connection,
    node: Option<&str>,
    status: Option<&str>,
    limit: u32,
) -> Result<Vec<NotificationView>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM notification WHERE (?1 IS NULL OR node = ?1) AND (?2 IS NULL OR status = ?2)
         ORDER BY created_at DESC, id LIMIT ?3"
    ))?;
    let rows = stmt.query_map(params![node, status, limit], view)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// How a delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Sent,
    /// Try again at `next_at` (ms).
    Retry {
        next_at: i64,
        error: String,
    },
    Failed {
        error: String,
    },
    Expired,
}

/// Record an attempt's result.
pub fn record(
    conn: &Connection,
    id: &str,
    sink: &str,
    result: &Delivery,
    now: i64,
) -> Result<(), StoreError> {
    let (status, next_at, error) = match result {
        Delivery::Sent => ("sent", None, None),
        Delivery::Retry { next_at, error } => ("pending", Some(*next_at), Some(error.as_str())),
        Delivery::Failed { error } => ("failed", None, Some(error.as_str())),
        Delivery::Expired => ("expired", None, None),
    };
    let attempted = i64::from(!matches!(result, Delivery::Expired));
    conn.execute(
        "UPDATE notification SET status = ?3, attempts = attempts + ?4,
             next_attempt_at = coalesce(?5, next_attempt_at), last_error = coalesce(?6, last_error),
             updated_at = ?7
         WHERE id = ?1 AND sink = ?2",
        params![id, sink, status, attempted, next_at, error, now],
    )?;
    Ok(())
}

/// Delete finished rows last updated before `before_ms`.
pub fn prune(conn: &Connection, before_ms: i64) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "DELETE FROM notification WHERE status IN ('sent', 'failed', 'expired', 'remote') AND updated_at < ?1",
        [before_ms],
    )?)
}

/// The newest notifications made by this node (`node` = `me`) or, with
/// `others`, those copied here from other nodes; optionally of one
/// `status`; at most `limit`.
pub fn list_by_origin(
    conn: &Connection,
    me: &str,
    others: bool,
    status: Option<&str>,
    limit: u32,
) -> Result<Vec<NotificationView>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM notification WHERE (node = ?1) = ?2 AND (?3 IS NULL OR status = ?3)
         ORDER BY created_at DESC, id LIMIT ?4"
    ))?;
    let rows = stmt.query_map(params![me, !others, status, limit], view)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Resolve a recipient for a channel: `group:NAME` to its members'
/// addresses, `person:NAME` to the person's address. `None` when the group
/// or person is unknown or the group is empty: the caller keeps the
/// recipient as it is (and warns).
pub fn resolve(
    conn: &Connection,
    to: &str,
    channel: &str,
) -> Result<Option<Vec<String>>, StoreError> {
    if let Some(group) = to.strip_prefix("group:") {
        let mut stmt = conn.prepare_cached(
            "SELECT p.address, p.addresses FROM contact_group g
             JOIN group_member m ON m.group_id = g.id JOIN person p ON p.id = m.person_id
             WHERE g.name = ?1 ORDER BY p.name",
        )?;
        let addrs = stmt
            .query_map([group], |r| Ok(pick(r.get(0)?, r.get(1)?, channel)))?
            .filter_map(|a| a.transpose())
            .collect::<Result<Vec<String>, _>>()?;
        return Ok((!addrs.is_empty()).then_some(addrs));
    }
    if let Some(person) = to.strip_prefix("person:") {
        let found = conn
            .query_row(
                "SELECT address, addresses FROM person WHERE name = ?1",
                [person],
                |r| Ok(pick(r.get(0)?, r.get(1)?, channel)),
            )
            .optional()?
            .flatten();
        return Ok(found.map(|a| vec![a]));
    }
    Ok(Some(vec![to.to_owned()]))
}

/// A person's address for `channel`: the per-channel one if set, else the
/// default one; `None` if neither.
fn pick(address: String, addresses: String, channel: &str) -> Option<String> {
    serde_json::from_str::<std::collections::BTreeMap<String, String>>(&addresses)
        .ok()
        .and_then(|m| m.get(channel).cloned())
        .filter(|a| !a.is_empty())
        .or(Some(address).filter(|a| !a.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn groups_resolve_to_member_addresses_per_channel() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .write_blocking(|c| {
                c.execute_batch(
                    "INSERT INTO person (id, name, address, addresses) VALUES
                        (1, 'ann', 'ann@example.org', '{\"sms\": \"+100\"}'),
                        (2, 'bob', 'bob@example.org', '{}'),
                        (3, 'cid', '', '{}');
                     INSERT INTO contact_group (id, name) VALUES (1, 'it'), (2, 'empty');
                     INSERT INTO group_member VALUES (1, 1), (1, 2), (1, 3);",
                )?;
                Ok(())
            })
            .unwrap();
        let r = |to: &str, ch: &str| store.read_blocking(|c| resolve(c, to, ch)).unwrap();
        assert_eq!(
            r("group:it", "email"),
            Some(vec!["ann@example.org".into(), "bob@example.org".into()])
        );
        assert_eq!(
            r("group:it", "sms"),
            Some(vec!["+100".into(), "bob@example.org".into()])
        );
        assert_eq!(r("group:empty", "email"), None);
        assert_eq!(r("group:nope", "email"), None);
        assert_eq!(r("person:bob", "x"), Some(vec!["bob@example.org".into()]));
        assert_eq!(r("person:zed", "x"), None);
        assert_eq!(
            r("ops@example.org", "x"),
            Some(vec!["ops@example.org".into()])
        );
    }

    #[test]
    fn this_node_and_other_nodes_are_told_apart_and_filtered_by_status() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .write_blocking(|c| {
                for (id, node, status, at) in [
                    ("a", "n1", "sent", 1),
                    ("b", "n1", "pending", 2),
                    ("c", "n2", "remote", 3),
                    ("d", "n3", "sent", 4),
                ] {
                    c.execute(
                        "INSERT INTO notification (id, sink, event_id, rule, node, to_addr, channel,
                             subject, body, signal, status, attempts, next_attempt_at, created_at, updated_at)
                         VALUES (?1, 'hook', 1, 'r', ?2, 'x', 'default', 's', 'b', '{}', ?3, 0, ?4, ?4, ?4)",
                        params![id, node, status, at],
                    )?;
                }
                Ok(())
            })
            .unwrap();
        let ids = |others: bool, status: Option<&str>| {
            store
                .read_blocking(|c| list_by_origin(c, "n1", others, status, 10))
                .unwrap()
                .into_iter()
                .map(|n| n.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(false, None), ["b", "a"], "this node's, newest first");
        assert_eq!(ids(true, None), ["d", "c"], "every other node's");
        assert_eq!(ids(false, Some("sent")), ["a"]);
        assert_eq!(ids(true, Some("sent")), ["d"]);
    }
}
