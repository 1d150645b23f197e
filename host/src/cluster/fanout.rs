//! Raised signals reach every member (DESIGN.md §7): a signal raised here,
//! by a rule or by the host (FAILOVER-ON/OFF, NOTIFY-FAILED), is posted
//! with its key to every other member through signed `POST
//! /internal/v1/signals`, so the owner of whatever group its rules are in
//! runs it; copies collapse on the key there.
//!
//! Each member is posted to on its own, under a timeout: a slow or dead
//! member delays nobody else.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};

use super::Status;
use crate::config::ClusterConfig;
use crate::internal_auth::{self, AuthError};
use crate::node::{Accepted, IngestError, Node, SignalInput};
use crate::shutdown::Listener;

/// The path members post raised signals to.
pub const PATH: &str = "/internal/v1/signals";
/// The largest body accepted there.
pub const MAX_BODY: u64 = 1 << 20;
/// How long one post to one member may take.
const POST_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a posted batch was refused.
#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    #[error("this node is not a cluster member")]
    NotClustered,
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("a body of {0} bytes; at most {MAX_BODY} are accepted")]
    TooLarge(u64),
    #[error("the body is not a JSON array of signals: {0}")]
    BadJson(String),
    #[error(transparent)]
    Ingest(#[from] IngestError),
}

/// Post every batch the node hands over to every other member.
pub async fn run(
    node: Arc<Node>,
    cfg: ClusterConfig,
    status: watch::Receiver<Status>,
    mut rx: mpsc::Receiver<Vec<SignalInput>>,
    stop: Listener,
) {
    let client = match crate::http_client::client(POST_TIMEOUT, POST_TIMEOUT, None, &[]) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("cluster fan-out: cannot build an HTTP client: {e}");
            return;
        }
    };
    let me = node.config().node.name.clone();
    let stop = stop.wait();
    tokio::pin!(stop);
    loop {
        let batch = tokio::select! {
            _ = &mut stop => return,
            b = rx.recv() => match b {
                Some(b) => b,
                None => return,
            },
        };
        let body = match serde_json::to_vec(&batch) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("cluster fan-out: cannot encode signals: {e}");
                continue;
            }
        };
        let targets: Vec<(String, String)> = status
            .borrow()
            .members
            .iter()
            .filter(|m| m.node != me)
            .map(|m| (m.node.clone(), m.advertise.clone()))
            .collect();
        let posts = targets.into_iter().map(|(name, url)| {
            let headers = internal_auth::sign_body(cfg.secret.as_bytes(), &me, "POST", PATH, &body);
            let mut req = client
                .post(format!("{url}{PATH}"))
                .header("content-type", "application/json");
            for (k, v) in headers {
                req = req.header(k, v);
            }
            let req = req.body(body.clone());
            async move {
                match req.send().await {
                    Ok(r) if r.status().is_success() => Ok(()),
                    Ok(r) => Err((name, format!("HTTP {}", r.status()))),
                    Err(e) => Err((name, crate::http_client::error_chain(&e))),
                }
            }
        });
        let results = futures_util::stream::iter(posts)
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
        for (member, why) in results.into_iter().filter_map(Result::err) {
            node.metrics().cluster_fanout_failed.inc();
            tracing::warn!(member = %member, signals = batch.len(), "cluster: could not post raised signals to a member: {why}");
        }
    }
}

/// `POST /internal/v1/signals`: check the signature before anything is
/// read, then the body against it, then ingest (host names allowed).
pub async fn receive(
    node: &Arc<Node>,
    headers: &http::HeaderMap,
    body: axum::body::Body,
) -> Result<Vec<Accepted>, FanoutError> {
    let Some(cfg) = node.config().cluster.as_ref() else {
        return Err(FanoutError::NotClustered);
    };
    let claim =
        internal_auth::check(node.store(), cfg.secret.as_bytes(), "POST", PATH, headers).await?;
    if claim.length > MAX_BODY {
        return Err(FanoutError::TooLarge(claim.length));
    }
    let bytes = internal_auth::read_checked(claim, body).await?;
    let batch: Vec<SignalInput> =
        serde_json::from_slice(&bytes).map_err(|e| FanoutError::BadJson(e.to_string()))?;
    // Copies collapse on the key: a signal without one would run again.
    if let Some(i) = batch.iter().position(|s| s.key.is_none()) {
        return Err(FanoutError::BadJson(format!("signal {i} has no key")));
    }
    Ok(node.ingest(batch, true).await?)
}
