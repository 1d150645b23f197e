//! The admin HTTP API: `app(node) -> Router`, separate from serving it.
//!
//! `/status` and `/metrics` are open. Everything under `/api/v1/` needs
//! `Authorization: Bearer <token>`: the admin token for all of it, or the
//! ingest token for `POST /api/v1/signals` only. `/internal/v1/*` is for
//! the peer, signed with the shared secret ([`crate::internal_auth`]).
//! Errors are `{"error", "code"}` ([`ApiError`]); answers are the typed
//! structs of each resource's file.
//!
//! - `status`: `/status`, `/metrics`, `/api/v1/status`;
//! - `signals`: ingest; `rules`: rules and scripts;
//! - `history`: events, notifications, failovers;
//! - `contacts`: persons, groups and their members;
//! - `pair`: failback, switchover, sync; `internal`: the peer's calls;
//! - `cluster`: a cluster member's API and its members' signed calls;
//! - `console`: the operators' web console at `/ui/`.

mod cluster;
mod console;
mod contacts;
mod error;
mod history;
mod internal;
mod pair;
mod rules;
mod signals;
mod status;

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Router};

pub use cluster::{ClusterReply, MoveReply};
pub use error::ApiError;
pub use pair::CommandReply;
pub use rules::{RuleView, ScriptReply};
pub use signals::IngestReply;
pub use status::{ApiStatus, PeerStatusView, StatusBody};

use crate::failover::Handle as Failover;
use crate::internal_auth::same_secret;
use crate::node::Node;

/// Largest script upload.
pub const MAX_SCRIPT: usize = 16 << 20;

type AppState = Arc<Node>;

/// The failover handle, absent on a standalone node.
type Pair = Extension<Option<Failover>>;

/// The whole API. `failover` is `None` on a standalone node.
pub fn app(node: Arc<Node>, failover: Option<Failover>) -> Router {
    app_with(node, failover, None)
}

/// [`app`] for any role: `cluster` is a cluster member's handle.
pub fn app_with(
    node: Arc<Node>,
    failover: Option<Failover>,
    cluster: Option<crate::cluster::Handle>,
) -> Router {
    let api = Router::new()
        .route("/status", get(status::api_status))
        .route("/signals", post(signals::post_signals))
        .route("/rules", get(rules::list_rules))
        .route(
            "/rules/{name}",
            get(rules::get_rule)
                .put(rules::put_rule)
                .delete(rules::delete_rule),
        )
        .route("/rules/{name}/reset", post(rules::reset_rule))
        .route("/scripts/{name}", put(rules::put_script))
        .route("/events", get(history::list_events))
        .route("/notifications", get(history::list_notifications))
        .route("/failovers", get(history::list_failovers))
        .route("/failback", post(pair::failback))
        .route("/switchover", post(pair::switchover))
        .route("/sync", post(pair::sync_now))
        .route(
            "/persons",
            get(contacts::list_persons).post(contacts::create_person),
        )
        .route(
            "/persons/{name}",
            get(contacts::get_person)
                .put(contacts::put_person)
                .delete(contacts::delete_person),
        )
        .route(
            "/groups",
            get(contacts::list_groups).post(contacts::create_group),
        )
        .route(
            "/groups/{name}",
            get(contacts::get_group).delete(contacts::delete_group),
        )
        .route(
            "/groups/{name}/members",
            get(contacts::get_members)
                .post(contacts::add_members)
                .put(contacts::put_members),
        )
        .route(
            "/groups/{name}/members/{person}",
            axum::routing::delete(contacts::remove_member),
        )
        .route("/cluster", get(cluster::get_cluster))
        .route("/cluster/failback", post(cluster::failback))
        .route("/cluster/switchover", post(cluster::switchover))
        .route("/cluster/publisher", post(cluster::publisher))
        .fallback(|| async { ApiError::not_found("no such endpoint under /api/v1/") })
        .layer(middleware::from_fn_with_state(node.clone(), authorize));
    Router::new()
        .route("/status", get(status::status))
        .route("/metrics", get(status::metrics))
        .nest("/api/v1", api)
        .route(crate::sync::receive::PATH, post(internal::sync))
        .route(crate::sync::receive::PULL_PATH, get(internal::pull))
        .route(
            crate::cluster::fanout::PATH,
            post(cluster::internal_signals),
        )
        .route(cluster::MOVE_PATH, post(cluster::internal_move))
        .route(
            crate::cluster::copyback::PATH,
            post(cluster::internal_copyback),
        )
        .merge(console::routes(
            node.clone(),
            failover.clone(),
            cluster.clone(),
        ))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(Extension(failover))
        .layer(Extension(cluster))
        .with_state(node)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

async fn authorize(State(node): State<AppState>, request: Request, next: Next) -> Response {
    let admin = node.config().admin.token.as_deref();
    let ingest = node.config().admin.ingest_token.as_deref();
    let is_ingest = request.method() == Method::POST && request.uri().path() == "/signals";
    let ok = match bearer(request.headers()) {
        None => false,
        Some(given) => {
            admin.is_some_and(|t| same_secret(given.as_bytes(), t.as_bytes()))
                || (is_ingest
                    && ingest.is_some_and(|t| same_secret(given.as_bytes(), t.as_bytes())))
        }
    };
    if ok {
        return next.run(request).await;
    }
    let message = if admin.is_none() && ingest.is_none() {
        "no token is configured on this node: set [admin] token (or TANDEM_ADMIN_TOKEN)"
    } else if bearer(request.headers()).is_none() {
        "missing `Authorization: Bearer <token>`"
    } else {
        "wrong token for this endpoint"
    };
    ApiError::unauthorized(message).into_response()
}

async fn read_body(body: Body, limit: usize, what: &str) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::too_large(format!("{what} is larger than {limit} bytes")))
}

/// (active, fs, epoch) of this node.
fn role_state(node: &Node, failover: &Option<Failover>) -> (bool, u8, u64) {
    match failover {
        Some(f) => {
            let v = f.view();
            (v.active, v.fs, v.epoch)
        }
        None => {
            let open = node.gate().is_open();
            (open, if open { 1 } else { 2 }, 0)
        }
    }
}

fn state_name(active: bool) -> &'static str {
    if active { "active" } else { "standby" }
}

/// 409 when tables of `table_type` are synced to this node from the
/// primary (or, in a cluster, from the publisher): change them there.
fn read_only(node: &Node, table_type: &str, what: &str) -> Result<(), ApiError> {
    if let Some(cluster) = node.config().cluster.as_ref()
        && cluster
            .table_sync_types
            .iter()
            .any(|t| t == "all" || t == table_type)
        && let Some((publisher, _)) = node.publisher()
        && publisher != node.config().node.name
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "read_only",
            format!("{what} are synced from the publisher `{publisher}`: change them there"),
        ));
    }
    match node.config().failover.as_ref() {
        Some(f) if f.synced_here(table_type) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "read_only",
            format!(
                "{what} are synced from the primary `{}`: change them there",
                f.primary
            ),
        )),
        _ => Ok(()),
    }
}

/// A blocking task's panic or cancellation, as a 500.
fn task_failed(e: tokio::task::JoinError) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
}
