//! Schema migrations on `PRAGMA user_version`, all in one transaction.
//!
//! `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`. Opening a
//! database applies the missing ones; a database whose version is newer
//! than this build knows is refused (an older binary must not write to a
//! newer schema).

use rusqlite::{Connection, TransactionBehavior};

use super::StoreError;

/// The migrations, in order.
const MIGRATIONS: &[&str] = &[
    include_str!("sql/001_init.sql"),
    include_str!("sql/002_exactly_once.sql"),
    include_str!("sql/003_hardening.sql"),
    include_str!("sql/004_cluster.sql"),
    include_str!("sql/005_unpublished_index.sql"),
    include_str!("sql/006_console.sql"),
    include_str!("sql/007_raised_events.sql"),
    include_str!("sql/008_published_cursor.sql"),
    include_str!("sql/009_without_rowid.sql"),
    include_str!("sql/010_tombstone_sweep.sql"),
];

/// The schema version this build writes.
pub const VERSION: u32 = MIGRATIONS.len() as u32;

/// Bring `conn` to [`VERSION`].
pub fn migrate(conn: &mut Connection) -> Result<u32, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let current: u32 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > VERSION {
        return Err(StoreError::TooNew {
            found: current,
            supported: VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.execute_batch(sql).map_err(|e| StoreError::Migration {
            to: i as u32 + 1,
            message: e.to_string(),
        })?;
    }
    tx.pragma_update(None, "user_version", VERSION)?;
    tx.commit()?;
    Ok(VERSION)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-memory database brought to schema `version`.
    fn db_at(version: u32) -> Connection {
        let conn = Connection::open_in_memory().expect("open");
        for sql in &MIGRATIONS[..version as usize] {
            conn.execute_batch(sql).expect("migration");
        }
        conn.pragma_update(None, "user_version", version)
            .expect("version");
        conn
    }

    /// A database at schema 7 holding executions flagged `published` as
    /// `flags` says (seq 1, 2, ...), migrated to this build's version: the
    /// publisher's cursor it starts from.
    fn cursor_after_migration_from_7(flags: &[bool]) -> u64 {
        let mut conn = db_at(7);
        for (i, published) in flags.iter().enumerate() {
            conn.execute(
                "INSERT INTO group_executed (grp, key, epoch, at, published)
                 VALUES ('g', ?1, 1, 0, ?2)",
                rusqlite::params![format!("k{i}"), *published],
            )
            .expect("insert");
        }
        assert_eq!(migrate(&mut conn).expect("migrate"), VERSION);
        let flag_left: i64 = conn
            .query_row(
                "SELECT count(*) FROM pragma_table_info('group_executed') WHERE name = 'published'",
                [],
                |r| r.get(0),
            )
            .expect("columns");
        assert_eq!(flag_left, 0, "the flag column is gone");
        super::super::groups::published_upto(&conn).expect("cursor")
    }

    #[test]
    fn the_published_flags_become_a_cursor_below_the_oldest_unpublished_row() {
        // Published rows after the oldest unpublished one are put again
        // (harmless); an unpublished one is never skipped.
        assert_eq!(cursor_after_migration_from_7(&[true, true, false, true]), 2);
        assert_eq!(cursor_after_migration_from_7(&[false, true]), 0);
        assert_eq!(cursor_after_migration_from_7(&[true, true, true]), 3);
        assert_eq!(cursor_after_migration_from_7(&[]), 0);
    }

    #[test]
    fn tombstones_keep_no_time_index_from_version_10() {
        let mut conn = db_at(9);
        conn.execute(
            "INSERT INTO group_tombstone (grp, key, at) VALUES ('a', 'k1', 10)",
            [],
        )
        .expect("row");
        let indexes = |conn: &Connection| -> i64 {
            conn.query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'group_tombstone'",
                [],
                |r| r.get(0),
            )
            .expect("indexes")
        };
        assert_eq!(indexes(&conn), 1, "version 9 indexes `at`");
        assert_eq!(migrate(&mut conn).expect("migrate"), VERSION);
        assert_eq!(indexes(&conn), 0, "the primary key is the table");
        let at: i64 = conn
            .query_row(
                "SELECT at FROM group_tombstone WHERE grp = 'a' AND key = 'k1'",
                [],
                |r| r.get(0),
            )
            .expect("kept");
        assert_eq!(at, 10);
    }

    #[test]
    fn tombstones_and_pending_rows_survive_the_move_to_without_rowid() {
        let mut conn = db_at(8);
        conn.execute_batch(
            "INSERT INTO group_tombstone (grp, key, at) VALUES ('a', 'k1', 10), ('b', 'k1', 11);
             INSERT INTO group_pending (grp, key, event_id, received_at) VALUES ('a', 'k2', 7, 12);",
        )
        .expect("rows");
        assert_eq!(migrate(&mut conn).expect("migrate"), VERSION);
        let tombs: Vec<(String, String, i64)> = conn
            .prepare("SELECT grp, key, at FROM group_tombstone ORDER BY grp")
            .expect("select")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(
            tombs,
            [("a".into(), "k1".into(), 10), ("b".into(), "k1".into(), 11)]
        );
        let pending: (String, i64, i64) = conn
            .query_row(
                "SELECT key, event_id, received_at FROM group_pending WHERE grp = 'a'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .expect("pending");
        assert_eq!(pending, ("k2".into(), 7, 12));
        // Keyed by (group, key) alone: no rowid, and the key is unique.
        for table in ["group_tombstone", "group_pending"] {
            assert!(
                conn.prepare(&format!("SELECT rowid FROM {table}")).is_err(),
                "{table} has a rowid"
            );
        }
        assert!(
            conn.execute(
                "INSERT INTO group_tombstone (grp, key, at) VALUES ('a', 'k1', 99)",
                []
            )
            .is_err()
        );
    }
}
