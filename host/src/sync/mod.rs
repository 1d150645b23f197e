//! Table sync (DESIGN.md §5): the primary's configuration tables copied to
//! the secondary as a zstd snapshot over signed HTTP, imported there in one
//! transaction, then hot-reloaded.
//!
//! - [`snapshot`]: the streamed format.
//! - [`export`] / [`import`]: tables to snapshot and back, with every check
//!   of the import (generation, tables, columns, emptied tables) inside one
//!   transaction that rolls back on any error.
//! - [`push`]: the primary's side (preconditions, the signed POST);
//!   [`receive`]: the secondary's; [`triggers`]: daily and on change.

pub mod push;
pub mod receive;
pub mod schedule;
pub mod snapshot;
pub mod triggers;

use std::collections::BTreeMap;
use std::io::{Read, Write};

use rusqlite::Connection;
use serde::Serialize;

use snapshot::{Header, Reader, Record, SnapshotError, SqlValue, Writer};

/// Table types and their tables, in export order.
pub const TYPES: &[(&str, &[&str])] = &[
    ("rule", &["signal_script", "signal_rule"]),
    (
        "contact",
        &[
            "person",
            "contact_group",
            "group_member",
            "location",
            "zone",
        ],
    ),
    ("device", &["device"]),
    ("pbx", &["pbx_settings", "voice_recording"]),
    ("text", &["text_provider"]),
];

/// The primary key order of each synced table.
fn order_by(table: &str) -> &'static str {
    match table {
        "signal_script" | "signal_rule" => "name",
        "pbx_settings" => "key",
        "group_member" => "group_id, person_id",
        _ => "id",
    }
}

/// Why a sync step failed. Each names what to do.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("table sync refused: {0}")]
    Precondition(push::Precondition),
    #[error("snapshot refused: {0}")]
    Refused(String),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("database: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The secondary could not be reached, or failed in a way that may
    /// pass (5xx, busy): worth trying again.
    #[error("the secondary failed the import: {0}")]
    Peer(String),
    /// The secondary refused the snapshot (4xx): trying again would not help.
    #[error("the secondary refused the snapshot: {0}")]
    PeerRefused(String),
}

impl From<rusqlite::Error> for SyncError {
    fn from(e: rusqlite::Error) -> Self {
        SyncError::Store(e.into())
    }
}

/// The tables of `types` (`all` means every type), deduplicated, in order.
pub fn tables_of(types: &[String]) -> Result<Vec<&'static str>, SyncError> {
    let all = types.iter().any(|t| t == "all");
    let mut out = Vec::new();
    for t in types {
        if t != "all" && !TYPES.iter().any(|(name, _)| name == t) {
            return Err(SyncError::Refused(format!("unknown table type `{t}`")));
        }
    }
    for (name, tables) in TYPES {
        if all || types.iter().any(|t| t == name) {
            out.extend_from_slice(tables);
        }
    }
    Ok(out)
}

/// Normalised type list (`all` expanded), for comparing two nodes.
pub fn normalise(types: &[String]) -> Vec<String> {
    let mut v: Vec<String> = if types.iter().any(|t| t == "all") {
        TYPES.iter().map(|(n, _)| (*n).to_owned()).collect()
    } else {
        types.to_vec()
    };
    v.sort();
    v.dedup();
    v
}

fn columns(conn: &Connection, table: &str) -> Result<Vec<String>, SyncError> {
    let mut stmt = conn.prepare(&format!("PRAGMA table_info({table})"))?;
    let cols = stmt.query_map([], |r| r.get::<_, String>(1))?;
    Ok(cols.collect::<Result<_, _>>()?)
}

/// What an export or import did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SyncStats {
    pub generation: u64,
    pub rows: BTreeMap<String, u64>,
    pub bytes_raw: u64,
    pub bytes_compressed: u64,
}

/// A cluster's generations are (publisher key's mod revision << this) +
/// a counter: ordered by (revision, counter) as DESIGN.md §7 asks.
pub const PUBLISHER_SHIFT: u32 = 24;

/// Write the tables of `types` as a snapshot to `out`, row by row.
pub fn export<W: Write>(
    conn: &Connection,
    types: &[String],
    generation: u64,
    source: &str,
    force: bool,
    out: W,
) -> Result<(W, SyncStats), SyncError> {
    let tables = tables_of(types)?;
    let mut w = Writer::new(out)?;
    w.write(&Record::Header(Header {
        format: snapshot::FORMAT.into(),
        version: snapshot::VERSION,
        generation,
        types: normalise(types),
        source: source.to_owned(),
        software: env!("CARGO_PKG_VERSION").into(),
        created_at: crate::store::now_ms(),
        force,
    }))?;
    let mut stats = SyncStats {
        generation,
        ..SyncStats::default()
    };
    let mut total = 0;
    for table in &tables {
        let cols = columns(conn, table)?;
        w.write(&Record::Table {
            name: (*table).to_owned(),
            columns: cols.clone(),
        })?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {} FROM {table} ORDER BY {}",
            cols.join(", "),
            order_by(table)
        ))?;
        let mut rows = stmt.query([])?;
        let mut n = 0u64;
        while let Some(row) = rows.next()? {
            let values = (0..cols.len())
                .map(|i| row.get_ref(i).map(SqlValue::from_ref))
                .collect::<Result<Vec<_>, _>>()?;
            w.write(&Record::Row(values))?;
            n += 1;
        }
        total += n;
        stats.rows.insert((*table).to_owned(), n);
    }
    w.write(&Record::End {
        tables: tables.len() as u32,
        rows: total,
    })?;
    let (out, raw) = w.finish()?;
    stats.bytes_raw = raw;
    Ok((out, stats))
}

pub use crate::store::synclog::{MAX_GENERATION, last_generation, log, set_generation};

/// Import a snapshot: check everything, replace the tables' rows in ONE
/// transaction; any error rolls back and leaves the old data.
/// `decompressed_cap` bounds the decompressed size; `before_commit` runs
/// with every row written but not committed (a lab hook for kill tests).
pub fn import<R: Read>(
    conn: &mut Connection,
    input: R,
    agreed: &[String],
    decompressed_cap: u64,
    before_commit: &dyn Fn(),
) -> Result<SyncStats, SyncError> {
    import_checked(
        conn,
        input,
        agreed,
        decompressed_cap,
        before_commit,
        &|_| Ok(()),
    )
}

/// [`import`], with `accept` asked about the header's generation before
/// anything is written (a cluster subscriber checks that it comes from the
/// current publisher).
pub fn import_checked<R: Read>(
    conn: &mut Connection,
    input: R,
    agreed: &[String],
    decompressed_cap: u64,
    before_commit: &dyn Fn(),
    accept: &dyn Fn(u64) -> Result<(), String>,
) -> Result<SyncStats, SyncError> {
    let mut reader = Reader::new(input, decompressed_cap)?;
    let Some(Record::Header(h)) = reader.next_record()? else {
        return Err(SyncError::Refused(
            "the snapshot does not start with a header".into(),
        ));
    };
    if h.format != snapshot::FORMAT || h.version != snapshot::VERSION {
        return Err(SyncError::Refused(format!(
            "format {} v{} is not {} v{}",
            h.format,
            h.version,
            snapshot::FORMAT,
            snapshot::VERSION
        )));
    }
    if normalise(&h.types) != normalise(agreed) {
        return Err(SyncError::Refused(format!(
            "types {:?} differ from this node's {:?}",
            h.types,
            normalise(agreed)
        )));
    }
    let allowed = tables_of(agreed)?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let last = last_generation(&tx)?;
    if h.generation > MAX_GENERATION {
        return Err(SyncError::Refused(format!(
            "generation {} is over the largest allowed, {MAX_GENERATION}",
            h.generation
        )));
    }
    accept(h.generation).map_err(SyncError::Refused)?;
    if h.generation <= last {
        return Err(SyncError::Refused(format!(
            "generation {} is not newer than {last}, the last one imported (an old snapshot replayed?)",
            h.generation
        )));
    }
    let mut stats = SyncStats {
        generation: h.generation,
        ..SyncStats::default()
    };
    let mut current: Option<(String, Vec<String>, rusqlite::Statement<'_>)> = None;
    let mut seen = Vec::new();
    let mut ended = false;
    let mut total = 0u64;
    while let Some(rec) = reader.next_record()? {
        match rec {
            Record::Header(_) => return Err(SyncError::Refused("a second header".into())),
            Record::Table {
                name,
                columns: cols,
            } => {
                let Some(table) = allowed.iter().find(|t| **t == name) else {
                    return Err(SyncError::Refused(format!(
                        "unknown table `{name}` (not in the agreed types)"
                    )));
                };
                if seen.contains(table) {
                    return Err(SyncError::Refused(format!("table `{name}` appears twice")));
                }
                let local = columns(&tx, table)?;
                if let Some(bad) = cols.iter().find(|c| !local.contains(c)) {
                    return Err(SyncError::Refused(format!(
                        "unknown column `{bad}` in table `{name}`"
                    )));
                }
                let had: i64 =
                    tx.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?;
                tx.execute(&format!("DELETE FROM {table}"), [])?;
                seen.push(*table);
                stats.rows.insert(name.clone(), 0);
                stats.rows.insert(format!("{name}.before"), had as u64);
                let sql = format!(
                    "INSERT INTO {table} ({}) VALUES ({})",
                    cols.join(", "),
                    vec!["?"; cols.len()].join(", ")
                );
                let stmt = tx.prepare(&sql)?;
                current = Some((name, cols, stmt));
            }
            Record::Row(values) => {
                let Some((name, cols, stmt)) = current.as_mut() else {
                    return Err(SyncError::Refused("a row before any table".into()));
                };
                if values.len() != cols.len() {
                    return Err(SyncError::Refused(format!(
                        "a row of `{name}` has {} values for {} columns",
                        values.len(),
                        cols.len()
                    )));
                }
                let row = stats.rows.get(name.as_str()).copied().unwrap_or(0) + 1;
                stmt.execute(rusqlite::params_from_iter(values.iter()))
                    .map_err(|e| match e.sqlite_error_code() {
                        // The snapshot's fault, not the store's: a 400.
                        Some(rusqlite::ErrorCode::ConstraintViolation) => SyncError::Refused(
                            format!("row {row} of table `{name}` breaks a constraint: {e}"),
                        ),
                        _ => e.into(),
                    })?;
                *stats.rows.entry(name.clone()).or_default() += 1;
                total += 1;
            }
            Record::End { tables, rows } => {
                if tables as usize != seen.len() || rows != total {
                    return Err(SyncError::Refused(
                        "the end record does not match the content (truncated?)".into(),
                    ));
                }
                ended = true;
                break;
            }
        }
    }
    drop(current);
    if !ended {
        return Err(SyncError::Refused(
            "truncated snapshot: no end record".into(),
        ));
    }
    if let Some(missing) = allowed.iter().find(|t| !seen.contains(t)) {
        return Err(SyncError::Refused(format!(
            "the snapshot lacks table `{missing}`"
        )));
    }
    for t in &seen {
        let before = stats.rows.remove(&format!("{t}.before")).unwrap_or(0);
        let after = stats.rows.get(*t).copied().unwrap_or(0);
        if after == 0 && before > 0 && !h.force {
            return Err(SyncError::Refused(format!(
                "it would empty table `{t}` ({before} rows here); sync with force to allow it"
            )));
        }
    }
    set_generation(&tx, h.generation)?;
    log(
        &tx,
        "import",
        h.generation,
        "ok",
        &format!("{total} rows from {}", h.source),
    )?;
    before_commit();
    tx.commit()?;
    stats.bytes_raw = reader.raw_bytes();
    Ok(stats)
}

#[cfg(test)]
mod tests;
