//! `POST /api/v1/signals`: one signal or an array, stored before the reply.

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;

use super::{ApiError, AppState, Failover, Pair, read_body, role_state, state_name};
use crate::node::{Accepted, SignalInput};

/// The 202 answer.
#[derive(Debug, Clone, Serialize)]
pub struct IngestReply {
    /// This node's state: `active` or `standby`.
    pub state: &'static str,
    pub accepted: Vec<Accepted>,
    /// The admin URL of the node whose rules run, if known.
    pub active: Option<String>,
}

pub(super) async fn post_signals(
    State(node): State<AppState>,
    Extension(failover): Pair,
    body: Body,
) -> Result<Response, ApiError> {
    let limits = node.limits();
    let bytes = read_body(body, limits.max_body, "the request body").await?;
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    let batch: Vec<SignalInput> = match first {
        Some(b'[') => serde_json::from_slice(&bytes),
        _ => serde_json::from_slice(&bytes).map(|one| vec![one]),
    }
    .map_err(|e| {
        ApiError::bad_request(
            "bad_json",
            format!("the body is not a signal or an array of signals: {e}"),
        )
    })?;
    let accepted = node.ingest(batch, false).await?;
    let (here, _, _) = role_state(&node, &failover);
    // Where the rules run: here, or the peer if it says it is active.
    let active = if here {
        node.admin_url().map(str::to_owned)
    } else {
        failover
            .as_ref()
            .map(Failover::view)
            .filter(|v| v.peer.as_ref().is_some_and(|p| p.fs == 1))
            .and_then(|v| v.peer_admin)
    };
    let reply = IngestReply {
        state: state_name(here),
        accepted,
        active,
    };
    Ok((StatusCode::ACCEPTED, Json(reply)).into_response())
}
