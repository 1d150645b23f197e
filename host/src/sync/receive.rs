//! The secondary's side of a table sync: `POST /internal/v1/sync` and, for
//! a rebuilt primary, `GET /internal/v1/snapshot`.
//!
//! The order is what keeps a forged request off the disk: the signature
//! (which covers the body's declared sha256 and length) is checked from the
//! headers first; only then is the body streamed, under the declared length
//! and [`MAX_BODY`], into a private temporary file that has no name (so it
//! cannot be opened, swapped or left behind by anyone else). The bytes must
//! hash to the signed digest, and exactly those bytes are imported, from
//! the same file handle, in one transaction.

use std::io::Seek;
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::push::Precondition;
use super::snapshot::SnapshotError;
use super::{SyncError, SyncStats};
use crate::config::PairRole;
use crate::internal_auth::{self, AuthError, BodyCheck};
use crate::node::Node;
use crate::store::StoreError;

pub use super::push::PATH;
/// The path a rebuilt primary pulls the secondary's tables from.
pub const PULL_PATH: &str = "/internal/v1/snapshot";
/// The largest snapshot body accepted.
pub const MAX_BODY: u64 = 256 << 20;
/// The most a snapshot may decompress to.
pub const MAX_RAW: u64 = 4 << 30;

/// Why the receiving side refused; the admin layer maps these to HTTP.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    WrongRole(String),
    #[error(transparent)]
    Sync(#[from] SyncError),
}

fn secondary_secret(node: &Node, what: &str) -> Result<(String, Vec<String>), ReceiveError> {
    if let Some(c) = node.config().cluster.as_ref() {
        return Ok((c.secret.clone(), c.table_sync_types.clone()));
    }
    let Some(cfg) = node.config().failover.as_ref() else {
        return Err(ReceiveError::WrongRole("this node is standalone".into()));
    };
    if cfg.role != PairRole::Secondary {
        return Err(ReceiveError::WrongRole(format!("only a secondary {what}")));
    }
    Ok((cfg.secret.clone(), cfg.table_sync_types.clone()))
}

/// Receive, check and import a snapshot, then reload the rules.
pub async fn receive(
    node: &Arc<Node>,
    headers: &http::HeaderMap,
    body: axum::body::Body,
) -> Result<SyncStats, ReceiveError> {
    let (secret, types) = secondary_secret(node, "imports snapshots")?;
    // 1. Authenticate from the headers alone: nothing is written before.
    let claim =
        internal_auth::check(node.store(), secret.as_bytes(), "POST", PATH, headers).await?;
    if claim.length > MAX_BODY {
        return Err(ReceiveError::TooLarge(format!(
            "a snapshot of {} bytes; at most {MAX_BODY} are accepted",
            claim.length
        )));
    }
    let Ok(_one_at_a_time) = node.sync_lock().try_lock() else {
        return Err(SyncError::Precondition(Precondition::Busy).into());
    };
    // 2. The body into a nameless temporary file, checked against the
    // signed length and digest as it arrives.
    let data_dir = node.config().node.data_dir.clone();
    let file = tokio::task::spawn_blocking(move || tempfile::tempfile_in(data_dir))
        .await
        .map_err(|e| SyncError::Store(StoreError::Task(e.to_string())))?
        .map_err(|e| SyncError::Snapshot(SnapshotError::Io(e)))?;
    let mut file = tokio::fs::File::from_std(file);
    let mut check = BodyCheck::new(claim);
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| SyncError::Refused(format!("the body was cut short: {e}")))?;
        check.update(&chunk)?;
        file.write_all(&chunk)
            .await
            .map_err(|e| SyncError::Snapshot(SnapshotError::Io(e)))?;
    }
    check.finish()?;
    file.flush()
        .await
        .map_err(|e| SyncError::Snapshot(SnapshotError::Io(e)))?;
    let file = file.into_std().await;
    // 3. A cluster subscriber takes snapshots of the current publisher
    // only: a linearizable read of the publisher key, whose mod revision
    // the generation carries (DESIGN.md §7).
    let publisher_rev = if node.config().cluster.is_some() {
        match node.current_publisher().await {
            Ok(Some((p, _))) if p == node.config().node.name => {
                return Err(ReceiveError::WrongRole(
                    "this node is the publisher: it exports, it does not import".into(),
                ));
            }
            Ok(Some((_, rev))) => Some(rev),
            Ok(None) => {
                return Err(SyncError::Refused("the cluster has no publisher".into()).into());
            }
            Err(e) => {
                return Err(
                    SyncError::Refused(format!("cannot read the publisher key: {e}")).into(),
                );
            }
        }
    } else {
        None
    };
    let accept = move |generation: u64| match publisher_rev {
        Some(rev) if generation >> crate::sync::PUBLISHER_SHIFT != rev as u64 => Err(format!(
            "generation {generation} comes from publisher revision {}, not the current {rev}",
            generation >> crate::sync::PUBLISHER_SHIFT
        )),
        _ => Ok(()),
    };
    // 4. The import of exactly those bytes: generation, decompression cap,
    // tables, columns, one transaction.
    let n2 = node.clone();
    let result = tokio::task::spawn_blocking(move || -> Result<SyncStats, SyncError> {
        let mut file = file;
        file.rewind().map_err(SnapshotError::Io)?;
        let input = std::io::BufReader::new(file);
        // Lab hook: every row written, not committed: a test kills the node
        // here and finds the old data after the restart.
        let delay = n2.import_delay();
        let hold = move || {
            if !delay.is_zero() {
                std::thread::sleep(delay);
            }
        };
        n2.store()
            .write_blocking(|c| {
                Ok(super::import_checked(
                    c, input, &types, MAX_RAW, &hold, &accept,
                ))
            })
            .map_err(SyncError::Store)?
    })
    .await
    .map_err(|e| SyncError::Store(StoreError::Task(e.to_string())))?;
    match result {
        Ok(stats) => {
            node.set_sync_generation(stats.generation);
            if let Err(e) = node.reload().await {
                tracing::error!("reload after table sync: {e}");
            }
            tracing::info!(generation = stats.generation, "table sync imported");
            Ok(stats)
        }
        Err(e) => {
            let detail = e.to_string();
            let _ = node
                .store()
                .write(move |c| crate::store::synclog::log(c, "import", 0, "refused", &detail))
                .await;
            tracing::warn!("table sync refused: {e}");
            Err(e.into())
        }
    }
}

/// The secondary's side of `tandem sync pull`: a snapshot of its synced
/// tables, at the generation it last imported.
pub async fn serve_pull(
    node: &Arc<Node>,
    headers: &http::HeaderMap,
) -> Result<Vec<u8>, ReceiveError> {
    let (secret, types) = secondary_secret(node, "serves its tables to a rebuilt primary")?;
    let claim =
        internal_auth::check(node.store(), secret.as_bytes(), "GET", PULL_PATH, headers).await?;
    // A GET has no body: the signed one must be empty too.
    BodyCheck::new(claim).finish()?;
    let (n2, name) = (node.clone(), node.config().node.name.clone());
    let generation = node.sync_generation();
    tokio::task::spawn_blocking(move || {
        n2.store()
            .read_blocking(|c| {
                Ok(super::export(
                    c,
                    &types,
                    generation.max(1),
                    &name,
                    true,
                    Vec::new(),
                ))
            })
            .map_err(SyncError::Store)?
            .map(|(bytes, _)| bytes)
    })
    .await
    .map_err(|e| ReceiveError::Sync(SyncError::Store(StoreError::Task(e.to_string()))))?
    .map_err(ReceiveError::Sync)
}
