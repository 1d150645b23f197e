//! Copy-back in a cluster (DESIGN.md §7): after a node has handed a group
//! back, it copies the group's events and notifications of its tenure to
//! the group's first node through signed `POST /internal/v1/copyback`,
//! resumably (a cursor per group, moved only when the first node
//! acknowledged). They show there under `?node=`, and are never queued for
//! delivery (a notification still pending here arrives as `remote`).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::Status;
use crate::internal_auth::{self, AuthError};
use crate::node::Node;
use crate::shutdown::Listener;
use crate::store::copyback::{self, CopiedEvent, CopiedNotification};

/// The path copied rows are posted to.
pub const PATH: &str = "/internal/v1/copyback";
/// The largest body accepted there.
pub const MAX_BODY: u64 = 8 << 20;
/// Events per batch.
const BATCH: u32 = 200;
/// How often a node looks for rows to copy.
const EVERY: Duration = Duration::from_secs(2);

/// A batch of copied rows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CopyBatch {
    pub group: String,
    /// The node the rows come from.
    pub node: String,
    pub events: Vec<CopiedEvent>,
    pub notifications: Vec<CopiedNotification>,
}

/// Why a copied batch was refused.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("this node is not a cluster member")]
    NotClustered,
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("a body of {0} bytes; at most {MAX_BODY} are accepted")]
    TooLarge(u64),
    #[error("not a copy-back batch: {0}")]
    BadBody(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Copy, for every group this node does not own and is not first in, the
/// rows not yet acknowledged; until `stop`.
pub(super) async fn run(node: Arc<Node>, status: watch::Receiver<Status>, stop: Listener) {
    let Some(cfg) = node.config().cluster.clone() else {
        return;
    };
    let me = node.config().node.name.clone();
    let client = match crate::http_client::client(
        Duration::from_secs(3),
        Duration::from_secs(60),
        None,
        &[],
    ) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("cluster copy-back: cannot build an HTTP client: {e}");
            return;
        }
    };
    let stop = stop.wait();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
        for (group, list) in &cfg.groups {
            let Some(first) = list.first() else { continue };
            let (owned, url) = {
                let st = status.borrow();
                (
                    st.owned.iter().any(|g| g == group),
                    st.advertise_of(first).map(str::to_owned),
                )
            };
            // Only after a handback, and to a Ready first node.
            if *first == me || owned {
                continue;
            }
            let Some(url) = url else { continue };
            loop {
                let (g, n) = (group.clone(), me.clone());
                let batch = node
                    .store()
                    .read(move |c| {
                        let after = copyback::last_copied_of(c, &g)?;
                        copyback::batch_of(c, &n, Some(&g), after, BATCH)
                    })
                    .await;
                let (events, notifications) = match batch {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!(group, "cluster copy-back: {e}");
                        break;
                    }
                };
                let Some(upto) = events.iter().map(|e| e.id).max() else {
                    break;
                };
                let body = CopyBatch {
                    group: group.clone(),
                    node: me.clone(),
                    events,
                    notifications,
                };
                let Ok(body) = serde_json::to_vec(&body) else {
                    break;
                };
                let headers =
                    internal_auth::sign_body(cfg.secret.as_bytes(), &me, "POST", PATH, &body);
                let mut req = client
                    .post(format!("{url}{PATH}"))
                    .header("content-type", "application/json");
                for (k, v) in headers {
                    req = req.header(k, v);
                }
                match req.body(body).send().await {
                    Ok(r) if r.status().is_success() => {
                        let g = group.clone();
                        if let Err(e) = node
                            .store()
                            .write(move |c| copyback::set_last_copied_of(c, &g, upto))
                            .await
                        {
                            tracing::error!(group, "cluster copy-back: {e}");
                            break;
                        }
                        tracing::info!(group, to = %first, upto, "cluster: copied back");
                        if !cfg.copyback_delay.is_zero() {
                            tokio::time::sleep(cfg.copyback_delay).await;
                        }
                    }
                    Ok(r) => {
                        tracing::warn!(group, to = %first, "cluster copy-back refused: HTTP {}", r.status());
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(group, to = %first, "cluster copy-back: {}", crate::http_client::error_chain(&e));
                        break;
                    }
                }
            }
        }
    }
}

/// `POST /internal/v1/copyback`: the signature before anything is read,
/// the body against it, the sender a configured node; then the import.
pub async fn receive(
    node: &Arc<Node>,
    headers: &http::HeaderMap,
    body: axum::body::Body,
) -> Result<usize, CopyError> {
    let Some(cfg) = node.config().cluster.as_ref() else {
        return Err(CopyError::NotClustered);
    };
    let claim =
        internal_auth::check(node.store(), cfg.secret.as_bytes(), "POST", PATH, headers).await?;
    if claim.length > MAX_BODY {
        return Err(CopyError::TooLarge(claim.length));
    }
    let bytes = internal_auth::read_checked(claim, body).await?;
    let b: CopyBatch =
        serde_json::from_slice(&bytes).map_err(|e| CopyError::BadBody(e.to_string()))?;
    if !cfg.nodes().contains(&b.node) || b.node == node.config().node.name {
        return Err(CopyError::BadBody(format!(
            "{:?} is not another node of this cluster",
            b.node
        )));
    }
    let n = b.events.len();
    node.import_copy(b.node, b.events, b.notifications).await?;
    Ok(n)
}
