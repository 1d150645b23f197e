//! A cluster member's API (DESIGN.md §7): `GET /api/v1/cluster`, `POST
//! /api/v1/cluster/failback?group=G`, `/switchover?group=G&to=NODE` and
//! `/publisher?node=NODE`; and the members' signed calls `POST
//! /internal/v1/signals` (raised signals) and `POST
//! /internal/v1/cluster/move` (a failback or switchover forwarded to the
//! group's owner).

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState};
use crate::cluster::fanout::{self, FanoutError};
use crate::cluster::{ClusterError, Handle, Status};
use crate::internal_auth::{self, AuthError};
use crate::node::Accepted;
use crate::store::failover::FailoverRow;

/// The cluster handle, absent unless the node is a cluster member.
pub(super) type Cluster = Extension<Option<Handle>>;

/// The path a failback or switchover is forwarded on.
pub const MOVE_PATH: &str = "/internal/v1/cluster/move";

/// `GET /api/v1/cluster`.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterReply {
    #[serde(flatten)]
    pub status: Status,
    /// The failover log (takeovers and their ends), newest first.
    pub failovers: Vec<FailoverRow>,
}

/// The answer to failback, switchover and publisher.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MoveReply {
    pub group: Option<String>,
    /// The group's owner (or the publisher) now.
    pub node: String,
    /// Which node carried the command out.
    pub by: String,
}

fn handle(cluster: Option<Handle>) -> Result<Handle, ApiError> {
    cluster.ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "wrong_role",
            "this node is not a cluster member ([cluster] in its config)",
        )
    })
}

fn cluster_error(e: ClusterError) -> ApiError {
    match e {
        ClusterError::NoGroup(_) => ApiError::bad_request("no_group", e.to_string()),
        ClusterError::Refused(_) => ApiError::new(StatusCode::CONFLICT, "refused", e.to_string()),
        ClusterError::Etcd(_) | ClusterError::Stopped => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "etcd", e.to_string())
        }
    }
}

pub(super) async fn get_cluster(
    State(node): State<AppState>,
    Extension(cluster): Cluster,
) -> Result<Json<ClusterReply>, ApiError> {
    let h = handle(cluster)?;
    let failovers = node
        .store()
        .read(|c| crate::store::failover::list(c, 100))
        .await?;
    Ok(Json(ClusterReply {
        status: h.status(),
        failovers,
    }))
}

#[derive(Debug, Deserialize)]
pub(super) struct GroupQuery {
    group: String,
    #[serde(default)]
    to: Option<String>,
}

/// The body of a forwarded move.
#[derive(Debug, Serialize, Deserialize)]
struct MoveRequest {
    group: String,
    to: Option<String>,
    pin: bool,
}

pub(super) async fn failback(
    State(node): State<AppState>,
    Extension(cluster): Cluster,
    Query(q): Query<GroupQuery>,
) -> Result<Json<MoveReply>, ApiError> {
    move_group(&node, handle(cluster)?, q.group, None, false).await
}

pub(super) async fn switchover(
    State(node): State<AppState>,
    Extension(cluster): Cluster,
    Query(q): Query<GroupQuery>,
) -> Result<Json<MoveReply>, ApiError> {
    let to = q
        .to
        .ok_or_else(|| ApiError::bad_request("bad_query", "switchover needs ?group=G&to=NODE"))?;
    move_group(&node, handle(cluster)?, q.group, Some(to), true).await
}

/// Carry a move out here when this node owns the group, or forward it,
/// signed, to the owner.
async fn move_group(
    node: &AppState,
    h: Handle,
    group: String,
    to: Option<String>,
    pin: bool,
) -> Result<Json<MoveReply>, ApiError> {
    let me = node.config().node.name.clone();
    if h.owns(&group) {
        let taker = h
            .move_group(group.clone(), to, pin)
            .await
            .map_err(cluster_error)?;
        return Ok(Json(MoveReply {
            group: Some(group),
            node: taker,
            by: me,
        }));
    }
    let status = h.status();
    if !status.owners.iter().any(|o| o.group == group) {
        return Err(cluster_error(ClusterError::NoGroup(group)));
    }
    let owner = status.owner_of(&group).ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "no_owner",
            format!("nobody owns group {group:?} now: nothing to move"),
        )
    })?;
    let url = status.advertise_of(owner).ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "no_owner",
            format!("the owner of {group:?}, {owner:?}, is not a Ready member"),
        )
    })?;
    let secret = node
        .config()
        .internal_secret()
        .unwrap_or_default()
        .to_owned();
    let body = serde_json::to_vec(&MoveRequest { group, to, pin })
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let headers = internal_auth::sign_body(secret.as_bytes(), &me, "POST", MOVE_PATH, &body);
    let client =
        crate::http_client::client(Duration::from_secs(3), Duration::from_secs(30), None, &[])
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e))?;
    let mut req = client
        .post(format!("{url}{MOVE_PATH}"))
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let resp = req.body(body).send().await.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "owner_unreachable",
            format!(
                "the owner {owner:?} at {url}: {}",
                crate::http_client::error_chain(&e)
            ),
        )
    })?;
    let code = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if code.is_success() {
        return serde_json::from_str(&text)
            .map(Json)
            .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "bad_answer", e.to_string()));
    }
    let msg = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or(text);
    Err(ApiError::new(
        StatusCode::from_u16(code.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
        "refused_by_owner",
        format!("the owner {owner:?}: {msg}"),
    ))
}

#[derive(Debug, Deserialize)]
pub(super) struct PublisherQuery {
    node: String,
}

pub(super) async fn publisher(
    State(node): State<AppState>,
    Extension(cluster): Cluster,
    Query(q): Query<PublisherQuery>,
) -> Result<Json<MoveReply>, ApiError> {
    let h = handle(cluster)?;
    let p = h.set_publisher(q.node).await.map_err(cluster_error)?;
    Ok(Json(MoveReply {
        group: None,
        node: p,
        by: node.config().node.name.clone(),
    }))
}

/// The largest forwarded move.
const MAX_MOVE: u64 = 4096;

/// `POST /internal/v1/cluster/move`: a member forwards a move to this
/// node, the group's owner.
pub(super) async fn internal_move(
    State(node): State<AppState>,
    Extension(cluster): Cluster,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<MoveReply>, ApiError> {
    let h = handle(cluster)?;
    let secret = node
        .config()
        .internal_secret()
        .unwrap_or_default()
        .to_owned();
    let claim = internal_auth::check(node.store(), secret.as_bytes(), "POST", MOVE_PATH, &headers)
        .await
        .map_err(auth_error)?;
    if claim.length > MAX_MOVE {
        return Err(ApiError::too_large(format!("at most {MAX_MOVE} bytes")));
    }
    let bytes = internal_auth::read_checked(claim, body)
        .await
        .map_err(auth_error)?;
    let m: MoveRequest = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("bad_json", e.to_string()))?;
    if !h.owns(&m.group) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_owner",
            format!("this node does not own group {:?}", m.group),
        ));
    }
    let taker = h
        .move_group(m.group.clone(), m.to, m.pin)
        .await
        .map_err(cluster_error)?;
    Ok(Json(MoveReply {
        group: Some(m.group),
        node: taker,
        by: node.config().node.name.clone(),
    }))
}

fn auth_error(e: AuthError) -> ApiError {
    match e {
        AuthError::Store(s) => s.into(),
        AuthError::Body => ApiError::bad_request("bad_body", AuthError::Body.to_string()),
        a => ApiError::unauthorized(a.to_string()),
    }
}

/// `POST /internal/v1/copyback`: rows a giver copies to a group's first
/// node.
pub(super) async fn internal_copyback(
    State(node): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    use crate::cluster::copyback::{CopyError, receive};
    match receive(&node, &headers, body).await {
        Ok(n) => Ok(Json(serde_json::json!({ "events": n }))),
        Err(CopyError::NotClustered) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "wrong_role",
            CopyError::NotClustered.to_string(),
        )),
        Err(CopyError::Auth(a)) => Err(auth_error(a)),
        Err(e @ CopyError::TooLarge(_)) => Err(ApiError::too_large(e.to_string())),
        Err(e @ CopyError::BadBody(_)) => Err(ApiError::bad_request("bad_body", e.to_string())),
        Err(CopyError::Store(s)) => Err(s.into()),
    }
}

/// `POST /internal/v1/signals`.
pub(super) async fn internal_signals(
    State(node): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Vec<Accepted>>, ApiError> {
    match fanout::receive(&node, &headers, body).await {
        Ok(a) => Ok(Json(a)),
        Err(FanoutError::NotClustered) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "wrong_role",
            FanoutError::NotClustered.to_string(),
        )),
        Err(FanoutError::Auth(a)) => Err(auth_error(a)),
        Err(FanoutError::TooLarge(n)) => {
            Err(ApiError::too_large(FanoutError::TooLarge(n).to_string()))
        }
        Err(e @ FanoutError::BadJson(_)) => Err(ApiError::bad_request("bad_json", e.to_string())),
        Err(FanoutError::Ingest(e)) => Err(e.into()),
    }
}
