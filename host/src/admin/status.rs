//! `GET /status` (for load balancers), `GET /metrics` (Prometheus) and
//! `GET /api/v1/status` (the full picture).

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;

use super::{AppState, Failover, Pair, role_state, state_name};
use crate::failover::peer::PeerView;
use crate::store::synclog::SyncLogRow;

/// The body of `GET /status`: 200 on the effective primary, 503 otherwise.
#[derive(Debug, Clone, Serialize)]
pub struct StatusBody {
    pub node: String,
    pub role: &'static str,
    pub state: &'static str,
    pub fs: u8,
    pub epoch: u64,
    /// A cluster member: the groups it owns now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    /// A cluster member: why it is fenced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fenced: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct StatusQuery {
    #[serde(default)]
    group: Option<String>,
}

/// The peer as `GET /api/v1/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PeerStatusView {
    pub name: String,
    pub link: Option<String>,
    pub admin: Option<String>,
    pub link_state: &'static str,
    pub last_heartbeat: Option<i64>,
    pub status: Option<PeerView>,
}

/// Failover details of a pair member.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverStatus {
    pub fenced: bool,
    pub failback: &'static str,
    pub failover_open: bool,
    /// Why the node could not store its failover state, while that lasts.
    pub persist_error: Option<String>,
}

/// The rules part of `GET /api/v1/status`.
#[derive(Debug, Clone, Serialize)]
pub struct RulesStatus {
    pub loaded: usize,
    pub quarantined: Vec<String>,
    /// Errors of the last reload, and of rules directory files that cannot
    /// be installed.
    pub last_reload_errors: Vec<String>,
    pub memory_bytes: usize,
}

/// The body of `GET /api/v1/status`.
#[derive(Debug, Clone, Serialize)]
pub struct ApiStatus {
    pub node: String,
    pub role: &'static str,
    pub state: &'static str,
    pub fs: u8,
    pub epoch: u64,
    pub ready: bool,
    pub uptime_ms: u64,
    pub version: &'static str,
    pub admin: Option<String>,
    pub peer: Option<PeerStatusView>,
    pub failover: Option<FailoverStatus>,
    pub rules: RulesStatus,
    pub last_sync: Option<SyncLogRow>,
}

pub(super) async fn status(
    State(node): State<AppState>,
    Extension(failover): Pair,
    Extension(cluster): super::cluster::Cluster,
    axum::extract::Query(q): axum::extract::Query<StatusQuery>,
) -> Response {
    if let Some(c) = cluster {
        // 200 when this node owns a group (or, with ?group=G, owns G) and
        // is not fenced: one load-balancer backend per group.
        let st = c.status();
        let fenced = st.fenced.as_ref().map(|f| f.reason.clone());
        let active = fenced.is_none()
            && match &q.group {
                Some(g) => st.owned.iter().any(|o| o == g),
                None => !st.owned.is_empty(),
            };
        let epoch = q
            .group
            .as_ref()
            .and_then(|g| st.owners.iter().find(|o| &o.group == g))
            .and_then(|o| o.epoch)
            .unwrap_or(0);
        let body = StatusBody {
            node: node.config().node.name.clone(),
            role: node.config().role.as_str(),
            state: if fenced.is_some() {
                "fenced"
            } else {
                state_name(active)
            },
            fs: if active { 1 } else { 2 },
            epoch: epoch.max(0) as u64,
            groups: Some(st.owned),
            fenced,
        };
        let code = if active {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        return (code, Json(body)).into_response();
    }
    let (active, fs, epoch) = role_state(&node, &failover);
    let body = StatusBody {
        node: node.config().node.name.clone(),
        role: node.config().role.as_str(),
        state: state_name(active),
        fs,
        epoch,
        groups: None,
        fenced: None,
    };
    let code = if active {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

pub(super) async fn metrics(State(node): State<AppState>) -> Response {
    let rules = node.rule_status_async().await;
    let quarantined = rules.iter().filter(|r| r.quarantined).count();
    let text = node.render_metrics(rules.len(), quarantined);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

pub(super) async fn api_status(
    State(node): State<AppState>,
    Extension(failover): Pair,
) -> Json<ApiStatus> {
    Json(full_status(&node, &failover).await)
}

/// The full picture of `GET /api/v1/status` (also the console's Status
/// page).
pub(crate) async fn full_status(node: &AppState, failover: &Option<Failover>) -> ApiStatus {
    let rules = node.rule_status_async().await;
    let mut last_reload_errors = node.last_reload().errors;
    last_reload_errors.extend(
        node.dir_errors()
            .into_iter()
            .map(|(rule, e)| format!("rule `{rule}`: {e}")),
    );
    let (active, fs, epoch) = role_state(node, failover);
    let view = failover.as_ref().map(Failover::view);
    let last_sync = node
        .store()
        .read(crate::store::synclog::last)
        .await
        .unwrap_or(None);
    ApiStatus {
        node: node.config().node.name.clone(),
        role: node.config().role.as_str(),
        state: state_name(active),
        fs,
        epoch,
        ready: view.as_ref().is_none_or(|v| v.ready),
        uptime_ms: node.uptime().as_millis() as u64,
        version: env!("CARGO_PKG_VERSION"),
        admin: node.admin_url().map(str::to_owned),
        peer: view.as_ref().map(|v| PeerStatusView {
            name: v.peer_name.clone(),
            link: v.peer_link.clone(),
            admin: v.peer_admin.clone(),
            link_state: if v.link_up { "up" } else { "down" },
            last_heartbeat: v.last_heartbeat,
            status: v.peer.clone(),
        }),
        failover: view.as_ref().map(|v| FailoverStatus {
            fenced: v.fenced,
            failback: v.failback,
            failover_open: v.failover_open,
            persist_error: v.persist_error.clone(),
        }),
        rules: RulesStatus {
            loaded: rules.len(),
            quarantined: rules
                .iter()
                .filter(|r| r.quarantined)
                .map(|r| r.name.clone())
                .collect(),
            last_reload_errors,
            memory_bytes: node.engine().budget().used(),
        },
        last_sync,
    }
}
