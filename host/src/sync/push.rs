//! The primary's side of a table sync: the preconditions, the export into
//! a private temporary file, and the signed POST to the secondary's
//! `/internal/v1/sync`. One sync at a time per node.

use std::io::{Read, Seek};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::snapshot::SnapshotError;
use super::{SyncError, SyncStats};
use crate::config::{FailoverConfig, PairRole};
use crate::failover::{Handle, View};
use crate::internal_auth;
use crate::node::Node;
use crate::store::StoreError;

/// The internal path snapshots are POSTed to.
pub const PATH: &str = "/internal/v1/sync";
/// How long a connection to the secondary may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the whole POST (upload and import) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// What `POST /api/v1/sync` answers.
#[derive(Debug, Clone, Serialize)]
pub struct SyncResult {
    pub generation: u64,
    pub rows: std::collections::BTreeMap<String, u64>,
    pub bytes_raw: u64,
    pub bytes_compressed: u64,
    pub duration_ms: u64,
}

/// Why a sync cannot run now. Each has its own message (DESIGN.md §5).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Precondition {
    #[error("this node is standalone: table sync needs a pair")]
    Standalone,
    #[error("only the primary exports; run it on the primary")]
    NotPrimary,
    #[error("no secondary connected")]
    NoSecondary,
    #[error("table_sync_types differ (primary {ours:?}, secondary {theirs:?})")]
    TypesDiffer {
        ours: Vec<String>,
        theirs: Vec<String>,
    },
    #[error("version mismatch (primary {ours}, secondary {theirs})")]
    Version { ours: String, theirs: String },
    #[error("identity pair differs (secondary is `{got}`, expected `{expected}`)")]
    Identity { got: String, expected: String },
    #[error("the primary is not Ready yet (startup_delay)")]
    PrimaryNotReady,
    #[error("the secondary is not Ready yet (startup_delay)")]
    SecondaryNotReady,
    #[error("the secondary's admin URL is unknown: set [failover] peer_admin")]
    NoPeerAdmin,
    #[error("another sync is running on this node; try again when it is over")]
    Busy,
}

impl Precondition {
    /// Whether it passes by itself (the secondary connects, a node becomes
    /// Ready, the other sync ends): a trigger tries again later.
    pub fn is_passing(&self) -> bool {
        matches!(
            self,
            Precondition::NoSecondary
                | Precondition::PrimaryNotReady
                | Precondition::SecondaryNotReady
                | Precondition::Busy
        )
    }
}

/// The preconditions of an export, in order.
pub fn preconditions(cfg: &FailoverConfig, view: &View, version: &str) -> Result<(), Precondition> {
    let Some(peer) = view.peer.as_ref().filter(|_| view.link_up) else {
        return Err(Precondition::NoSecondary);
    };
    let ours = super::normalise(&cfg.table_sync_types);
    let theirs = super::normalise(&peer.sync_types);
    if ours != theirs {
        return Err(Precondition::TypesDiffer { ours, theirs });
    }
    if peer.version != version {
        return Err(Precondition::Version {
            ours: version.to_owned(),
            theirs: peer.version.clone(),
        });
    }
    if peer.node != cfg.secondary {
        return Err(Precondition::Identity {
            got: peer.node.clone(),
            expected: cfg.secondary.clone(),
        });
    }
    if !view.ready {
        return Err(Precondition::PrimaryNotReady);
    }
    if !peer.ready {
        return Err(Precondition::SecondaryNotReady);
    }
    Ok(())
}

/// Record a refusal in `sync_log` and return it as the error.
async fn refuse(node: &Node, why: Precondition) -> SyncError {
    let detail = why.to_string();
    let _ = node
        .store()
        .write(move |c| crate::store::synclog::log(c, "export", 0, "refused", &detail))
        .await;
    SyncError::Precondition(why)
}

/// Who asked for a sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// An operator (`POST /api/v1/sync`, `tandem sync now`): every refusal
    /// goes to `sync_log`.
    Operator,
    /// A trigger that tries again by itself: a passing refusal is not
    /// logged at every try.
    Trigger,
}

/// Run a sync now, from the primary. Every refusal is recorded in
/// `sync_log` and names what is wrong.
pub async fn sync_now(
    node: &Arc<Node>,
    failover: &Handle,
    force: bool,
) -> Result<SyncResult, SyncError> {
    sync_from(node, failover, force, Origin::Operator).await
}

/// [`sync_now`] for `origin`.
pub async fn sync_from(
    node: &Arc<Node>,
    failover: &Handle,
    force: bool,
    origin: Origin,
) -> Result<SyncResult, SyncError> {
    let refuse = |why: Precondition| async move {
        if origin == Origin::Trigger && why.is_passing() {
            SyncError::Precondition(why)
        } else {
            refuse(node, why).await
        }
    };
    let started = Instant::now();
    let Some(cfg) = node.config().failover.clone() else {
        return Err(SyncError::Precondition(Precondition::Standalone));
    };
    if cfg.role != PairRole::Primary {
        return Err(SyncError::Precondition(Precondition::NotPrimary));
    }
    let Ok(_one_at_a_time) = node.sync_lock().try_lock() else {
        return Err(SyncError::Precondition(Precondition::Busy));
    };
    let view = failover.view();
    if let Err(why) = preconditions(&cfg, &view, env!("CARGO_PKG_VERSION")) {
        return Err(refuse(why).await);
    }
    let Some(peer) = view.peer.clone() else {
        return Err(refuse(Precondition::NoSecondary).await);
    };
    let Some(admin) = view.peer_admin.clone().or(peer.admin.clone()) else {
        return Err(refuse(Precondition::NoPeerAdmin).await);
    };
    let generation = node
        .sync_generation()
        .max(peer.sync_generation)
        .checked_add(1)
        .filter(|g| *g <= super::MAX_GENERATION)
        .ok_or_else(|| {
            SyncError::Refused(format!(
                "the next generation would pass {}: the generation counters are corrupt",
                super::MAX_GENERATION
            ))
        })?;
    let (body, stats) =
        export_to_memory(node, cfg.table_sync_types.clone(), generation, force).await?;
    let compressed = body.len() as u64;
    let headers = internal_auth::sign_body(
        cfg.secret.as_bytes(),
        &node.config().node.name,
        "POST",
        PATH,
        &body,
    );
    let outcome = post(&admin, cfg.peer_ca_pem.as_deref(), headers, body).await;
    let (result, detail) = match &outcome {
        Ok(()) => ("ok", format!("{} rows", stats.rows.values().sum::<u64>())),
        Err(e) => ("failed", e.to_string()),
    };
    let logged = detail.clone();
    let _ = node
        .store()
        .write(move |c| {
            if result == "ok" {
                crate::store::synclog::set_generation(c, generation)?;
            }
            crate::store::synclog::log(c, "export", generation, result, &logged)
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

/// Export row by row into a private temporary file (no name, so nothing
/// else can open it and nothing is left behind), then read it back.
pub async fn export_to_memory(
    node: &Arc<Node>,
    types: Vec<String>,
    generation: u64,
    force: bool,
) -> Result<(Vec<u8>, SyncStats), SyncError> {
    let node = node.clone();
    tokio::task::spawn_blocking(move || -> Result<(Vec<u8>, SyncStats), SyncError> {
        let name = node.config().node.name.clone();
        let file =
            tempfile::tempfile_in(&node.config().node.data_dir).map_err(SnapshotError::Io)?;
        let out = std::io::BufWriter::new(file);
        let (out, stats) = node
            .store()
            .read_blocking(|c| Ok(super::export(c, &types, generation, &name, force, out)))??;
        let mut file = out
            .into_inner()
            .map_err(|e| SnapshotError::Io(e.into_error()))?;
        file.rewind().map_err(SnapshotError::Io)?;
        let mut body = Vec::new();
        file.read_to_end(&mut body).map_err(SnapshotError::Io)?;
        Ok((body, stats))
    })
    .await
    .map_err(|e| SyncError::Store(StoreError::Task(e.to_string())))?
}

/// POST a signed snapshot to `admin`'s `/internal/v1/sync`.
pub async fn post(
    admin: &str,
    ca_pem: Option<&[u8]>,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
) -> Result<(), SyncError> {
    let client = crate::http_client::client(CONNECT_TIMEOUT, REQUEST_TIMEOUT, ca_pem, &[])
        .map_err(SyncError::Peer)?;
    let mut req = client.post(format!("{}{PATH}", admin.trim_end_matches('/')));
    for (k, v) in headers {
        req = req.header(k, v);
    }
    match req.body(body).send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => {
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            let msg = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or(text);
            let msg = format!("{status}: {msg}");
            if status.is_client_error() && status != reqwest::StatusCode::CONFLICT {
                Err(SyncError::PeerRefused(msg))
            } else {
                Err(SyncError::Peer(msg))
            }
        }
        Err(e) => Err(SyncError::Peer(crate::http_client::error_chain(&e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failover::peer::PeerView;

    fn cfg() -> FailoverConfig {
        let text = "[node]\nname = \"p\"\n[failover]\nrole = \"primary\"\nprimary = \"p\"\nsecondary = \"s\"\n\
                    peer = \"127.0.0.1:1\"\nsecret = \"0123456789abcdef0123456789abcdef\"\nstartup_delay = \"1s\"\ntimeout = \"1s\"\n\
                    check_interval = \"100ms\"\ntable_sync_types = [\"rule\", \"contact\"]\n[failover.advanced]\nlab_timings = true\n";
        crate::config::Config::parse(text)
            .unwrap()
            .failover
            .unwrap()
    }

    fn view() -> View {
        let mut v = crate::failover::peer::placeholder_view();
        v.fs = 1;
        v.active = true;
        v.ready = true;
        v.link_up = true;
        v.peer_name = "s".into();
        v.peer = Some(PeerView {
            node: "s".into(),
            sync_types: vec!["contact".into(), "rule".into()],
            sync_generation: 0,
            fs: 2,
            epoch: 0,
            ready: true,
            version: "0.3.0".into(),
            admin: None,
            clock_skew_ms: 0,
        });
        v
    }

    #[test]
    fn each_precondition_has_its_own_message() {
        let c = cfg();
        assert_eq!(preconditions(&c, &view(), "0.3.0"), Ok(()));
        let mut v = view();
        v.link_up = false;
        let e = preconditions(&c, &v, "0.3.0").unwrap_err();
        assert_eq!(e, Precondition::NoSecondary);
        assert_eq!(e.to_string(), "no secondary connected");
        assert!(e.is_passing());
        let mut v = view();
        v.peer.as_mut().unwrap().sync_types = vec!["all".into()];
        let e = preconditions(&c, &v, "0.3.0").unwrap_err();
        assert!(e.to_string().starts_with("table_sync_types differ"), "{e}");
        assert!(!e.is_passing());
        let mut v = view();
        v.peer.as_mut().unwrap().version = "0.2.1".into();
        let e = preconditions(&c, &v, "0.3.0").unwrap_err();
        assert_eq!(
            e.to_string(),
            "version mismatch (primary 0.3.0, secondary 0.2.1)"
        );
        assert!(!e.is_passing());
        let mut v = view();
        v.peer.as_mut().unwrap().node = "other".into();
        let e = preconditions(&c, &v, "0.3.0").unwrap_err();
        assert!(e.to_string().starts_with("identity pair differs"), "{e}");
        let mut v = view();
        v.ready = false;
        let e = preconditions(&c, &v, "0.3.0").unwrap_err();
        assert_eq!(e, Precondition::PrimaryNotReady);
        assert!(e.is_passing());
        let mut v = view();
        v.peer.as_mut().unwrap().ready = false;
        let e = preconditions(&c, &v, "0.3.0").unwrap_err();
        assert_eq!(e, Precondition::SecondaryNotReady);
        assert!(e.is_passing());
        assert!(Precondition::Busy.is_passing());
    }
}
