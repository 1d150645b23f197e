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
