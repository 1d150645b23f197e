//! `tandem sync now | export`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};

use super::client::Target;
use crate::sync::snapshot::SqlValue;

/// Table sync commands.
#[derive(Debug, Subcommand)]
pub enum SyncCommand {
    /// Sync the tables to the secondary now (run against the primary).
    Now {
        #[command(flatten)]
        target: Target,
        /// Allow emptying a table the secondary has rows in.
        #[arg(long)]
        force: bool,
    },
    /// Write the synced tables to a file: a readable .sql dump or a snapshot.
    Export {
        /// The node's config (its data directory is read, not written).
        #[arg(long)]
        config: PathBuf,
        /// Table types (`rule`, `contact`, `device`, `pbx`, `text`, `all`).
        #[arg(long, value_delimiter = ',', default_value = "all")]
        types: Vec<String>,
        #[arg(long, value_enum, default_value = "sql")]
        format: Format,
        /// The output file.
        #[arg(short = 'o', long)]
        output: PathBuf,
    },
    /// Load a snapshot into a standalone node's database (stop the node
    /// first), with every check of a sync import.
    Import {
        /// The node's config.
        #[arg(long)]
        config: PathBuf,
        /// The snapshot (`sync export --format snapshot`).
        file: PathBuf,
    },
    /// On a rebuilt primary (stopped): import the secondary's synced
    /// tables, and continue the generation numbering above its own.
    Pull {
        /// The primary's config (its `peer_admin` and `secret` are used).
        #[arg(long)]
        config: PathBuf,
    },
}

/// Export formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Sql,
    Snapshot,
}

/// Run a sync command.
pub fn run(cmd: SyncCommand) -> anyhow::Result<()> {
    match cmd {
        SyncCommand::Now { target, force } => {
            let path = if force { "sync?force=true" } else { "sync" };
            let body = super::client::post_json(&target, path)?;
            println!("{}", serde_json::to_string_pretty(&body)?);
            Ok(())
        }
        SyncCommand::Export {
            config,
            types,
            format,
            output,
        } => export(&config, &types, format, &output),
        SyncCommand::Import { config, file } => import(&config, &file),
        SyncCommand::Pull { config } => pull(&config),
    }
}

fn print_stats(stats: &crate::sync::SyncStats) {
    println!("imported generation {}", stats.generation);
    for (table, rows) in &stats.rows {
        println!("  {table}: {rows} rows");
    }
}

fn import(config: &std::path::Path, file: &std::path::Path) -> anyhow::Result<()> {
    let config = crate::config::Config::load(config)?;
    if config.role != crate::config::Role::Standalone {
        bail!(
            "sync import is for a standalone node; a pair's secondary imports through `sync now` on its primary"
        );
    }
    let store = crate::store::Store::open(&config.node.data_dir)?;
    let input = std::io::BufReader::new(
        std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?,
    );
    let stats = store.write_blocking(|c| {
        Ok(crate::sync::import(
            c,
            input,
            &["all".to_owned()],
            crate::sync::receive::MAX_RAW,
            &|| {},
        ))
    })??;
    print_stats(&stats);
    Ok(())
}

fn pull(config: &std::path::Path) -> anyhow::Result<()> {
    let config = crate::config::Config::load(config)?;
    let Some(f) = config
        .failover
        .clone()
        .filter(|f| f.role == crate::config::PairRole::Primary)
    else {
        bail!("sync pull runs on the primary of a pair");
    };
    let Some(peer) = f.peer_admin.clone() else {
        bail!("[failover] peer_admin is needed to reach the secondary");
    };
    let path = crate::sync::receive::PULL_PATH;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let bytes = rt.block_on(async {
        let client = crate::http_client::client(
            std::time::Duration::from_secs(5),
            std::time::Duration::from_secs(600),
            f.peer_ca_pem.as_deref(),
            &[],
        )
        .map_err(anyhow::Error::msg)?;
        let mut req = client.get(format!("{}{path}", peer.trim_end_matches('/')));
        for (k, v) in crate::internal_auth::sign_body(
            f.secret.as_bytes(),
            &config.node.name,
            "GET",
            path,
            b"",
        ) {
            req = req.header(k, v);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach {peer}"))?;
        let status = resp.status();
        let body = resp.bytes().await?;
        if !status.is_success() {
            bail!("{status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(body)
    })?;
    let store = crate::store::Store::open(&config.node.data_dir)?;
    // A rebuilt primary may hold a generation at or above the secondary's:
    // start over below it, the pulled one becomes the last.
    let stats = store.write_blocking(|c| {
        crate::sync::set_generation(c, 0)
            .map_err(|e| crate::store::StoreError::Invalid(e.to_string()))?;
        Ok(crate::sync::import(
            c,
            &bytes[..],
            &f.table_sync_types,
            crate::sync::receive::MAX_RAW,
            &|| {},
        ))
    })??;
    print_stats(&stats);
    println!(
        "pulled from {peer}; the next sync numbers above generation {}",
        stats.generation
    );
    Ok(())
}

/// A value as an SQL literal that loads back as the same value in
/// `sqlite3`, whatever it holds: text with a NUL or any control character
/// (which the shell would cut or mangle) is written as the hex of its
/// UTF-8 bytes cast to text; other text is quoted with quotes doubled.
fn sql_literal(v: &SqlValue) -> String {
    match v {
        SqlValue::Null => "NULL".into(),
        SqlValue::Integer(i) => i.to_string(),
        SqlValue::Real(f) if f.is_nan() => "NULL".into(),
        SqlValue::Real(f) if f.is_infinite() => {
            if *f > 0.0 {
                "9e999".into()
            } else {
                "-9e999".into()
            }
        }
        SqlValue::Real(f) => format!("{f:?}"),
        SqlValue::Text(t) if t.chars().any(char::is_control) => {
            format!("CAST(x'{}' AS TEXT)", hex::encode(t.as_bytes()))
        }
        SqlValue::Text(t) => format!("'{}'", t.replace('\'', "''")),
        SqlValue::Blob(b) => format!("x'{}'", hex::encode(b)),
    }
}

/// One `INSERT` statement.
fn sql_insert(table: &str, columns: &[String], values: &[SqlValue]) -> String {
    let cols: Vec<String> = columns.iter().map(|c| sql_ident(c)).collect();
    let vals: Vec<String> = values.iter().map(sql_literal).collect();
    format!(
        "INSERT INTO {} ({}) VALUES ({});",
        sql_ident(table),
        cols.join(", "),
        vals.join(", ")
    )
}

/// An SQL identifier, double-quoted.
fn sql_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn export(
    config: &std::path::Path,
    types: &[String],
    format: Format,
    output: &std::path::Path,
) -> anyhow::Result<()> {
    let config = crate::config::Config::load(config)?;
    let db = config.node.data_dir.join("tandem.db");
    if !db.is_file() {
        bail!("no database at {}", db.display());
    }
    let conn =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("opening {}", db.display()))?;
    let file = std::io::BufWriter::new(
        std::fs::File::create(output).with_context(|| format!("creating {}", output.display()))?,
    );
    // A new generation: a snapshot taken now is newer than any imported.
    let generation = crate::sync::last_generation(&conn)? + 1;
    match format {
        Format::Snapshot => {
            let (mut file, stats) =
                crate::sync::export(&conn, types, generation, &config.node.name, false, file)?;
            file.flush()?;
            eprintln!(
                "wrote {} rows to {}",
                stats.rows.values().sum::<u64>(),
                output.display()
            );
        }
        Format::Sql => {
            // Through the snapshot reader: one code path for what is synced.
            let (bytes, _) = crate::sync::export(
                &conn,
                types,
                generation,
                &config.node.name,
                false,
                Vec::new(),
            )?;
            let mut reader = crate::sync::snapshot::Reader::new(&bytes[..], u64::MAX)?;
            let mut out = file;
            let mut table = (String::new(), Vec::new());
            writeln!(
                out,
                "-- tandem sync export of {} (generation {generation})",
                config.node.name
            )?;
            writeln!(out, "BEGIN;")?;
            while let Some(rec) = reader.next_record()? {
                match rec {
                    crate::sync::snapshot::Record::Table { name, columns } => {
                        writeln!(out, "DELETE FROM {};", sql_ident(&name))?;
                        table = (name, columns);
                    }
                    crate::sync::snapshot::Record::Row(values) => {
                        writeln!(out, "{}", sql_insert(&table.0, &table.1, &values))?;
                    }
                    _ => {}
                }
            }
            writeln!(out, "COMMIT;")?;
            out.flush()?;
            eprintln!("wrote {}", output.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dump_loads_back_the_same_values_whatever_they_hold() {
        let nasty = [
            "plain",
            "it's",
            "'); DROP TABLE person; --",
            "a\0b",
            "line\nbreak\r\n",
            "esc\u{1b}[2J",
            "semi;colon",
            "\"dq\"",
            "é ü 漢",
            "",
        ];
        let db = rusqlite::Connection::open_in_memory().expect("db");
        db.execute_batch(
            "CREATE TABLE person (id INTEGER PRIMARY KEY, name TEXT, score REAL, raw BLOB);
             CREATE TABLE keep (id INTEGER);
             INSERT INTO keep VALUES (1);",
        )
        .expect("schema");
        let cols = ["id", "name", "score", "raw"].map(String::from);
        let mut sql = String::from("BEGIN;\n");
        for (i, text) in nasty.iter().enumerate() {
            let values = [
                SqlValue::Integer(i as i64),
                SqlValue::Text((*text).to_owned()),
                SqlValue::Real(if i == 1 { f64::INFINITY } else { 0.5 }),
                SqlValue::Blob(text.as_bytes().to_vec()),
            ];
            sql.push_str(&sql_insert("person", &cols, &values));
            sql.push('\n');
        }
        sql.push_str("COMMIT;\n");
        assert!(!sql.contains('\0'), "no NUL reaches the dump");
        db.execute_batch(&sql).expect("the dump loads");
        let mut stmt = db
            .prepare("SELECT name, raw FROM person ORDER BY id")
            .expect("select");
        let back: Vec<(String, Vec<u8>)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(back.len(), nasty.len());
        for ((name, raw), text) in back.iter().zip(nasty) {
            assert_eq!(name, text);
            assert_eq!(raw, text.as_bytes());
        }
        let kept: i64 = db
            .query_row("SELECT count(*) FROM keep", [], |r| r.get(0))
            .expect("other tables untouched");
        assert_eq!(kept, 1);
    }
}
