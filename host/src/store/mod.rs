//! The node's SQLite store: one file at `DATA_DIR/tandem.db`, WAL mode.
//!
//! One writer connection and one reader connection, each behind a mutex.
//! The async API ([`Store::write`], [`Store::read`]) runs the closure on
//! tokio's blocking pool, so SQLite never blocks an executor thread; the
//! sync variants are for the CLI and for code already on a blocking thread.
//!
//! Durability: WAL with `synchronous = NORMAL` survives a kill -9 of the
//! process (every committed transaction is in the WAL file); a power loss
//! may lose the last transactions.

pub mod console;
pub mod contacts;
pub mod copyback;
pub mod events;
pub mod exec;
pub mod failover;
pub mod groups;
pub mod outbox;
pub mod rules;
mod schema;
pub mod synclog;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};

pub use schema::VERSION as SCHEMA_VERSION;

/// What went wrong in the store. Callers match on `Full` and `TooNew`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database at {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error(
        "the database has schema version {found}, newer than this build's {supported}: \
         run the newer tandem, or restore a backup"
    )]
    TooNew { found: u32, supported: u32 },
    #[error("migration to schema version {to} failed: {message}")]
    Migration { to: u32, message: String },
    #[error("the disk is full: nothing was stored")]
    Full,
    #[error(
        "the database {path} is read-only: give the node's user write access to it \
         and to its directory"
    )]
    ReadOnly { path: PathBuf },
    #[error("database error: {0}")]
    Sqlite(rusqlite::Error),
    #[error("store task failed: {0}")]
    Task(String),
    #[error("{0}")]
    Invalid(String),
    #[error("write failure injected by a test")]
    Injected,
}

/// Name the file when SQLite says it cannot write to it.
fn read_only(e: StoreError, path: &Path) -> StoreError {
    match &e {
        StoreError::Sqlite(s) if s.sqlite_error_code() == Some(ErrorCode::ReadOnly) => {
            StoreError::ReadOnly {
                path: path.to_owned(),
            }
        }
        _ => e,
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => StoreError::Full,
            _ => StoreError::Sqlite(e),
        }
    }
}

/// The store handle. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
    writer: Arc<Mutex<Connection>>,
    reader: Arc<Mutex<Connection>>,
    fail_writes: Arc<std::sync::atomic::AtomicBool>,
}

fn open_conn(path: &Path, flags: OpenFlags) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(path, flags).map_err(|e| StoreError::Open {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // `rarray(?)`: a statement takes a whole list of keys as one
    // parameter (tombstones are stored a batch at a time).
    rusqlite::vtab::array::load_module(&conn)?;
    Ok(conn)
}

impl Store {
    /// Open (creating and migrating as needed) the database in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| StoreError::Open {
            path: data_dir.to_owned(),
            message: e.to_string(),
        })?;
        let path = data_dir.join("tandem.db");
        let mut writer = open_conn(&path, OpenFlags::default())?;
        schema::migrate(&mut writer).map_err(|e| match e {
            StoreError::Migration { message, .. } if message.contains("readonly") => {
                StoreError::ReadOnly { path: path.clone() }
            }
            e => read_only(e, &path),
        })?;
        let reader = open_conn(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        Ok(Store {
            path,
            writer: Arc::new(Mutex::new(writer)),
            reader: Arc::new(Mutex::new(reader)),
            fail_writes: Arc::default(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run `f` on the writer connection, here (a blocking call).
    pub fn write_blocking<R>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if self.fail_writes.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(StoreError::Injected);
        }
        f(&mut conn).map_err(|e| read_only(e, &self.path))
    }

    /// Test hook: make every write fail (with [`StoreError::Injected`])
    /// until called again with `false`.
    #[doc(hidden)]
    pub fn inject_write_failure(&self, on: bool) {
        self.fail_writes
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Run `f` on the reader connection, here (a blocking call).
    pub fn read_blocking<R>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let conn = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn)
    }

    /// Run `f` on the writer connection on the blocking pool.
    pub async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.write_blocking(f))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Run `f` on the reader connection on the blocking pool.
    pub async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.read_blocking(f))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

/// A node-local setting (`settings` table), parsed; `None` when unset or
/// unparsable.
pub fn setting<T: std::str::FromStr>(
    conn: &Connection,
    key: &str,
) -> Result<Option<T>, StoreError> {
    use rusqlite::OptionalExtension;
    let v: Option<String> = conn
        .prepare_cached("SELECT value FROM settings WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?;
    Ok(v.and_then(|v| v.parse().ok()))
}

/// Set a node-local setting.
pub fn set_setting(
    conn: &Connection,
    key: &str,
    value: impl std::fmt::Display,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO settings (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute(rusqlite::params![key, value.to_string()])?;
    Ok(())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_migrates_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let version: u32 = store
            .read_blocking(|c| Ok(c.query_row("PRAGMA user_version", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let mode: String = store
            .read_blocking(|c| Ok(c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(mode, "wal");
        drop(store);
        // Reopening an up-to-date database applies nothing and keeps data.
        let store = Store::open(dir.path()).unwrap();
        store
            .write_blocking(|c| Ok(c.execute("INSERT INTO settings VALUES ('a', 'b')", [])?))
            .unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let v: String = store
            .read_blocking(|c| {
                Ok(
                    c.query_row("SELECT value FROM settings WHERE key = 'a'", [], |r| {
                        r.get(0)
                    })?,
                )
            })
            .unwrap();
        assert_eq!(v, "b");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let conn = Connection::open(dir.path().join("tandem.db")).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::TooNew { .. }), "{err:?}");
        assert!(err.to_string().contains("newer than this build"), "{err}");
    }

    #[test]
    fn a_failed_migration_leaves_the_database_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tandem.db");
        // A table the first migration also creates makes it fail midway.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE event_log (x INTEGER);")
            .unwrap();
        drop(conn);
        let err = Store::open(dir.path()).unwrap_err();
        assert!(
            matches!(err, StoreError::Migration { to: 1, .. }),
            "{err:?}"
        );
        let conn = Connection::open(&path).unwrap();
        let version: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!((version, tables), (0, 1), "rolled back as one transaction");
    }
}
