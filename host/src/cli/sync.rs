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
    }
}

fn sql_literal(v: &SqlValue) -> String {
    match v {
        SqlValue::Null => "NULL".into(),
        SqlValue::Integer(i) => i.to_string(),
        SqlValue::Real(f) => format!("{f:?}"),
        SqlValue::Text(t) => format!("'{}'", t.replace('\'', "''")),
        SqlValue::Blob(b) => format!("x'{}'", hex::encode(b)),
    }
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
    let generation = crate::sync::last_generation(&conn)?;
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
                        writeln!(out, "DELETE FROM {name};")?;
                        table = (name, columns);
                    }
                    crate::sync::snapshot::Record::Row(values) => {
                        let vals: Vec<String> = values.iter().map(sql_literal).collect();
                        writeln!(
                            out,
                            "INSERT INTO {} ({}) VALUES ({});",
                            table.0,
                            table.1.join(", "),
                            vals.join(", ")
                        )?;
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
