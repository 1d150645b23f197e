//! Moving a snapshot from the primary to the secondary: the preconditions,
//! the signed POST to `/internal/v1/sync`, and the receiving side.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{SyncError, SyncStats};
use crate::failover::Handle;
use crate::failover::machine::PairRole;
use crate::node::Node;
use crate::store::now_ms;

/// The internal path snapshots are POSTed to.
pub const PATH: &str = "/internal/v1/sync";
/// The largest snapshot body accepted.
pub const MAX_BODY: u64 = 256 << 20;
/// The most a snapshot may decompress to.
pub const MAX_RAW: u64 = 4 << 30;
/// Timestamps further than this from the receiver's clock are refused.
pub const MAX_SKEW_MS: i64 = 5 * 60 * 1000;

/// What `POST /api/v1/sync` answers.
#[derive(Debug, Clone, Serialize)]
pub struct SyncResult {
    pub generation: u64,
    pub rows: std::collections::BTreeMap<String, u64>,
    pub bytes_raw: u64,
    pub bytes_compressed: u64,
    pub duration_ms: u64,
}

fn refuse(node: &Node, why: String) -> SyncError {
    let detail = why.clone();
    let _ = node.store().write_blocking(move |c| {
        super::log(c, "export", 0, "refused", &detail)
            .map_err(|e| crate::store::StoreError::Invalid(e.to_string()))
    });
    SyncError::Precondition(why)
}

/// The preconditions of an export, in order; the error is the message.
pub fn preconditions(
    cfg: &crate::config::FailoverConfig,
    view: &crate::failover::View,
    version: &str,
) -> Result<(), String> {
    let Some(peer) = view.peer.as_ref().filter(|_| view.link_up) else {
        return Err("no secondary connected".into());
    };
    let ours = super::normalise(&cfg.table_sync_types);
    let theirs = super::normalise(&peer.sync_types);
    if ours != theirs {
        return Err(format!(
            "table_sync_types differ (primary {ours:?}, secondary {theirs:?})"
        ));
    }
    if peer.version != version {
        return Err(format!(
            "version mismatch (primary {version}, secondary {})",
            peer.version
        ));
    }
    if peer.node != cfg.secondary {
        return Err(format!(
            "identity pair differs (secondary is `{}`, expected `{}`)",
            peer.node, cfg.secondary
        ));
    }
    if !view.ready {
        return Err("the primary is not Ready yet (startup_delay)".into());
    }
    if !peer.ready {
        return Err("the secondary is not Ready yet (startup_delay)".into());
    }
    Ok(())
}

/// Run a sync now, from the primary. Every refusal is recorded in
/// `sync_log` and names what is wrong.
pub async fn sync_now(
    node: &Arc<Node>,
    failover: &Handle,
    force: bool,
) -> Result<SyncResult, SyncError> {
    let started = Instant::now();
    let Some(cfg) = node.config().failover.clone() else {
        return Err(SyncError::Precondition(
            "this node is standalone: table sync needs a pair".into(),
        ));
    };
    if cfg.role != PairRole::Primary {
        return Err(SyncError::Precondition(
            "only the primary exports; run it on the primary".into(),
        ));
    }
    let view = failover.view();
    if let Err(why) = preconditions(&cfg, &view, env!("CARGO_PKG_VERSION")) {
        return Err(refuse(node, why));
    }
    let Some(peer) = view.peer.clone() else {
        return Err(refuse(node, "no secondary connected".into()));
    };
    let Some(admin) = view.peer_admin.clone().or(peer.admin.clone()) else {
        return Err(refuse(
            node,
            "the secondary's admin URL is unknown: set [failover] peer_admin".into(),
        ));
    };
    let generation = node.sync_generation().max(peer.sync_generation) + 1;
    // Export into a temporary file, row by row.
    let path = node.config().node.data_dir.join("sync-export.tmp");
    let (types, name, n2, p2) = (
        cfg.table_sync_types.clone(),
        node.config().node.name.clone(),
        node.clone(),
        path.clone(),
    );
    let stats: SyncStats = tokio::task::spawn_blocking(move || -> Result<SyncStats, SyncError> {
        let file = std::io::BufWriter::new(
            std::fs::File::create(&p2).map_err(super::snapshot::SnapshotError::Io)?,
        );
        let (file, stats) = n2
            .store()
            .read_blocking(|c| Ok(super::export(c, &types, generation, &name, force, file)))??;
        file.into_inner()
            .map_err(|e| super::snapshot::SnapshotError::Io(e.into_error()))?
            .sync_all()
            .map_err(super::snapshot::SnapshotError::Io)?;
        Ok(stats)
    })
    .await
    .map_err(|e| SyncError::Peer(e.to_string()))??;
    let body = tokio::fs::read(&path)
        .await
        .map_err(super::snapshot::SnapshotError::Io)?;
    let compressed = body.len() as u64;
    let ts = now_ms();
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(|e| SyncError::Peer(e.to_string()))?;
    let nonce = hex::encode(nonce);
    let digest = Sha256::digest(&body);
    let sig = super::signature(cfg.secret.as_bytes(), "POST", PATH, ts, &nonce, &digest);
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{}{PATH}", admin.trim_end_matches('/')))
        .header("x-tandem-node", &node.config().node.name)
        .header("x-tandem-timestamp", ts.to_string())
        .header("x-tandem-nonce", &nonce)
        .header("x-tandem-signature", sig)
        .body(body)
        .send()
        .await;
    let _ = tokio::fs::remove_file(&path).await;
    let outcome = match resp {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => {
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            let msg = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or(text);
            Err(SyncError::Peer(format!("{status}: {msg}")))
        }
        Err(e) => Err(SyncError::Peer(e.to_string())),
    };
    let (result, detail) = match &outcome {
        Ok(()) => ("ok", format!("{} rows", stats.rows.values().sum::<u64>())),
        Err(e) => ("failed", e.to_string()),
    };
    let detail2 = detail.clone();
    let _ = node
        .store()
        .write(move |c| {
            if result == "ok" {
                super::set_generation(c, generation)
                    .map_err(|e| crate::store::StoreError::Invalid(e.to_string()))?;
            }
            super::log(c, "export", generation, result, &detail2)
                .map_err(|e| crate::store::StoreError::Invalid(e.to_string()))
        })
        .await;
    outcome?;
    node.set_sync_generation(generation);
    tracing::info!(generation, rows = %detail, compressed, "table sync done");
    Ok(SyncResult {
        generation,
        rows: stats.rows,
        bytes_raw: stats.bytes_raw,
        bytes_compressed: compressed,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

/// Nonces seen inside the skew window.
static NONCES: Mutex<Vec<(String, i64)>> = Mutex::new(Vec::new());

/// Check and remember a nonce; `false` if seen in the window.
fn fresh_nonce(nonce: &str, now: i64) -> bool {
    let mut seen = NONCES.lock().unwrap_or_else(|p| p.into_inner());
    seen.retain(|(_, at)| now - at < 2 * MAX_SKEW_MS);
    if seen.iter().any(|(n, _)| n == nonce) {
        return false;
    }
    seen.push((nonce.to_owned(), now));
    true
}

/// Why the receiving side refused; the admin layer maps these to HTTP.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    WrongRole(String),
    #[error(transparent)]
    Sync(#[from] SyncError),
}

/// The secondary's side: body to a temporary file under a cap, signature,
/// then the import (one transaction), then a reload.
pub async fn receive(
    node: &Arc<Node>,
    headers: &axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<SyncStats, ReceiveError> {
    use futures_util::StreamExt;
    let Some(cfg) = node.config().failover.clone() else {
        return Err(ReceiveError::WrongRole("this node is standalone".into()));
    };
    if cfg.role != PairRole::Secondary {
        return Err(ReceiveError::WrongRole(
            "only a secondary imports snapshots".into(),
        ));
    }
    // 1. The body to a temporary file, under a size cap, hashing as it goes.
    let path = node.config().node.data_dir.join("sync-import.tmp");
    let mut file = std::fs::File::create(&path).map_err(|e| SyncError::Snapshot(e.into()))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| ReceiveError::Sync(SyncError::Refused(format!("truncated body: {e}"))))?;
        size += chunk.len() as u64;
        if size > MAX_BODY {
            let _ = std::fs::remove_file(&path);
            return Err(ReceiveError::TooLarge(format!(
                "snapshot over {MAX_BODY} bytes"
            )));
        }
        hasher.update(&chunk);
        file.write_all(&chunk)
            .map_err(|e| SyncError::Snapshot(e.into()))?;
    }
    drop(file);
    // 2. The signature (over the body's sha256), the timestamp window and
    // a nonce not seen before.
    if let Err(e) = check_signed(&cfg.secret, "POST", PATH, headers, &hasher.finalize()) {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    // 3. The import: generation, decompression cap, tables, columns, one
    // transaction.
    let (n2, p2, types) = (node.clone(), path.clone(), cfg.table_sync_types.clone());
    let result = tokio::task::spawn_blocking(move || -> Result<SyncStats, SyncError> {
        let file = std::io::BufReader::new(
            std::fs::File::open(&p2).map_err(super::snapshot::SnapshotError::Io)?,
        );
        // Lab hook: every row written, not committed: a test kills the node
        // here and finds the old data after the restart.
        let delay = n2.import_delay();
        let hold = move || {
            if !delay.is_zero() {
                std::thread::sleep(delay);
            }
        };
        n2.store()
            .write_blocking(|c| Ok(super::import(c, file, &types, MAX_RAW, &hold)))
            .map_err(SyncError::Store)?
    })
    .await
    .map_err(|e| SyncError::Peer(e.to_string()))?;
    let _ = std::fs::remove_file(&path);
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
                .write(move |c| {
                    super::log(c, "import", 0, "refused", &detail)
                        .map_err(|e| crate::store::StoreError::Invalid(e.to_string()))
                })
                .await;
            tracing::warn!("table sync refused: {e}");
            Err(e.into())
        }
    }
}

const DAILY_KEY: &str = "sync.daily.last";

/// The primary's sync triggers: daily at `table_sync_time`, and shortly
/// after a change to synced tables when `sync_on_change` is set. Runs
/// until `stop`.
pub async fn run_triggers(node: Arc<Node>, failover: Handle, stop: crate::shutdown::Listener) {
    let Some(cfg) = node.config().failover.clone() else {
        return;
    };
    if cfg.role != PairRole::Primary {
        return;
    }
    let daily = cfg
        .table_sync_time
        .as_deref()
        .and_then(super::schedule::parse_time);
    let tz = match super::schedule::zone(node.config().node.timezone.as_deref()) {
        Ok(tz) => tz,
        Err(e) => {
            tracing::error!("daily table sync disabled: {e}");
            return;
        }
    };
    let stop = stop.wait();
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(
        cfg.check_interval
            .max(std::time::Duration::from_millis(500)),
    );
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {}
            _ = node.synced_tables_changed(), if cfg.sync_on_change => {
                // Debounce: let a burst of changes settle.
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                match sync_now(&node, &failover, false).await {
                    Ok(r) => tracing::info!(generation = r.generation, "table sync after a change"),
                    Err(e) => tracing::warn!("table sync after a change: {e}"),
                }
                continue;
            }
        }
        let Some(at) = daily else { continue };
        let now = jiff::Timestamp::now();
        let last: Option<i64> = node
            .store()
            .read(|c| crate::store::setting(c, DAILY_KEY))
            .await
            .unwrap_or(None);
        let last = match last {
            Some(ms) => jiff::Timestamp::from_millisecond(ms).ok(),
            None => {
                // A new node: nothing was due before it existed.
                if let Some(t) = super::schedule::latest(now, at, &tz) {
                    mark_daily(&node, t).await;
                }
                continue;
            }
        };
        let Some(due) = super::schedule::due(now, last, at, &tz) else {
            continue;
        };
        match sync_now(&node, &failover, false).await {
            Ok(r) => {
                tracing::info!(generation = r.generation, "daily table sync done");
                mark_daily(&node, due).await;
            }
            // Waiting for the secondary: try again at the next check.
            Err(SyncError::Precondition(why))
                if why.contains("connected") || why.contains("Ready") => {}
            Err(e) => {
                tracing::error!("daily table sync: {e}");
                mark_daily(&node, due).await;
            }
        }
    }
}

async fn mark_daily(node: &Node, t: jiff::Timestamp) {
    let ms = t.as_millisecond();
    let _ = node
        .store()
        .write(move |c| crate::store::set_setting(c, DAILY_KEY, ms))
        .await;
}

/// The path a rebuilt primary pulls the secondary's tables from.
pub const PULL_PATH: &str = "/internal/v1/snapshot";

/// Sign a body-less internal call: (timestamp, nonce, signature) headers.
pub fn sign_headers(
    secret: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> [(&'static str, String); 3] {
    let ts = now_ms();
    let mut nonce = [0u8; 16];
    let _ = getrandom::fill(&mut nonce);
    let nonce = hex::encode(nonce);
    let sig = super::signature(
        secret.as_bytes(),
        method,
        path,
        ts,
        &nonce,
        &Sha256::digest(body),
    );
    [
        ("x-tandem-timestamp", ts.to_string()),
        ("x-tandem-nonce", nonce),
        ("x-tandem-signature", sig),
    ]
}

/// Check a signed call's headers (timestamp window, nonce, signature).
pub fn check_signed(
    secret: &str,
    method: &str,
    path: &str,
    headers: &axum::http::HeaderMap,
    body_sha256: &[u8],
) -> Result<(), ReceiveError> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (Some(ts), Some(nonce), Some(sig)) = (
        header("x-tandem-timestamp"),
        header("x-tandem-nonce"),
        header("x-tandem-signature"),
    ) else {
        return Err(ReceiveError::Unauthorized("unsigned internal call".into()));
    };
    let ts: i64 = ts
        .parse()
        .map_err(|_| ReceiveError::Unauthorized("bad timestamp".into()))?;
    let now = now_ms();
    if (now - ts).abs() > MAX_SKEW_MS {
        return Err(ReceiveError::Unauthorized(
            "timestamp more than 5 minutes from this node's clock".into(),
        ));
    }
    if !super::verify(
        secret.as_bytes(),
        method,
        path,
        ts,
        &nonce,
        body_sha256,
        &sig,
    ) {
        return Err(ReceiveError::Unauthorized(
            "bad signature (not signed with the pair secret, or altered)".into(),
        ));
    }
    if !fresh_nonce(&nonce, now) {
        return Err(ReceiveError::Unauthorized(
            "nonce already seen (a replayed call)".into(),
        ));
    }
    Ok(())
}

/// The secondary's side of `tandem sync pull`: a snapshot of its synced
/// tables, at the generation it last imported.
pub async fn serve_pull(
    node: &Arc<Node>,
    headers: &axum::http::HeaderMap,
) -> Result<Vec<u8>, ReceiveError> {
    let Some(cfg) = node.config().failover.clone() else {
        return Err(ReceiveError::WrongRole("this node is standalone".into()));
    };
    if cfg.role != PairRole::Secondary {
        return Err(ReceiveError::WrongRole(
            "only a secondary serves its tables to a rebuilt primary".into(),
        ));
    }
    check_signed(&cfg.secret, "GET", PULL_PATH, headers, &Sha256::digest(b""))?;
    let (n2, types, name) = (
        node.clone(),
        cfg.table_sync_types.clone(),
        node.config().node.name.clone(),
    );
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
    .map_err(|e| ReceiveError::Sync(SyncError::Peer(e.to_string())))?
    .map_err(ReceiveError::Sync)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failover::peer::PeerView;

    fn cfg() -> crate::config::FailoverConfig {
        let text = "[node]\nname = \"p\"\n[failover]\nrole = \"primary\"\nprimary = \"p\"\nsecondary = \"s\"\n\
                    peer = \"127.0.0.1:1\"\nsecret = \"x\"\nstartup_delay = \"1s\"\ntimeout = \"1s\"\n\
                    check_interval = \"100ms\"\ntable_sync_types = [\"rule\", \"contact\"]\n[failover.advanced]\nlab_timings = true\n";
        crate::config::Config::parse(text)
            .unwrap()
            .failover
            .unwrap()
    }

    fn view() -> crate::failover::View {
        crate::failover::View {
            role: PairRole::Primary,
            fs: 1,
            epoch: 0,
            active: true,
            fenced: false,
            ready: true,
            link_up: true,
            peer_name: "s".into(),
            peer_link: None,
            peer_admin: None,
            peer: Some(PeerView {
                node: "s".into(),
                sync_types: vec!["contact".into(), "rule".into()],
                sync_generation: 0,
                fs: 2,
                epoch: 0,
                ready: true,
                version: "0.3.0".into(),
                admin: None,
            }),
            last_heartbeat: None,
            failback: "auto",
            failover_open: false,
            absorbed_seq: 0,
            peer_absorbed_seq: 0,
        }
    }

    #[test]
    fn each_precondition_has_its_own_message() {
        let c = cfg();
        assert_eq!(preconditions(&c, &view(), "0.3.0"), Ok(()));
        let mut v = view();
        v.link_up = false;
        assert_eq!(
            preconditions(&c, &v, "0.3.0").unwrap_err(),
            "no secondary connected"
        );
        let mut v = view();
        v.peer.as_mut().unwrap().sync_types = vec!["all".into()];
        assert!(
            preconditions(&c, &v, "0.3.0")
                .unwrap_err()
                .starts_with("table_sync_types differ")
        );
        let mut v = view();
        v.peer.as_mut().unwrap().version = "0.2.1".into();
        assert_eq!(
            preconditions(&c, &v, "0.3.0").unwrap_err(),
            "version mismatch (primary 0.3.0, secondary 0.2.1)"
        );
        let mut v = view();
        v.peer.as_mut().unwrap().node = "other".into();
        assert!(
            preconditions(&c, &v, "0.3.0")
                .unwrap_err()
                .starts_with("identity pair differs")
        );
        let mut v = view();
        v.ready = false;
        assert!(
            preconditions(&c, &v, "0.3.0")
                .unwrap_err()
                .contains("primary is not Ready")
        );
        let mut v = view();
        v.peer.as_mut().unwrap().ready = false;
        assert!(
            preconditions(&c, &v, "0.3.0")
                .unwrap_err()
                .contains("secondary is not Ready")
        );
    }
}
