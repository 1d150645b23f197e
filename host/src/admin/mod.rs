//! The admin HTTP API: `app(node) -> Router`, separate from serving it.
//!
//! `/status` and `/metrics` are open. Everything under `/api/v1/` needs
//! `Authorization: Bearer <token>`: the admin token for all of it, or the
//! ingest token for `POST /api/v1/signals` only. Errors are
//! `{"error", "code"}` ([`ApiError`]).

mod error;

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use tandem_guest::Config;

pub use error::ApiError;

use crate::engine::{RuleStatus, valid_pattern};
use crate::failover::Handle as Failover;
use crate::failover::machine::Command;
use crate::node::{Node, SignalInput};
use crate::store::rules::{self, RuleRow};
use crate::store::{events, outbox};

/// Largest script upload.
pub const MAX_SCRIPT: usize = 16 << 20;
/// Largest rule body.
const MAX_RULE_BODY: usize = 1 << 20;

type AppState = Arc<Node>;

/// The failover handle, absent on a standalone node.
type Pair = Extension<Option<Failover>>;

/// The whole API. `failover` is `None` on a standalone node.
pub fn app(node: Arc<Node>, failover: Option<Failover>) -> Router {
    let api = Router::new()
        .route("/status", get(api_status))
        .route("/signals", post(post_signals))
        .route("/rules", get(list_rules))
        .route(
            "/rules/{name}",
            get(get_rule).put(put_rule).delete(delete_rule),
        )
        .route("/rules/{name}/reset", post(reset_rule))
        .route("/scripts/{name}", put(put_script))
        .route("/events", get(list_events))
        .route("/notifications", get(list_notifications))
        .route("/failovers", get(list_failovers))
        .route("/failback", post(failback))
        .route("/switchover", post(switchover))
        .route("/sync", post(sync_now))
        .fallback(|| async { ApiError::not_found("no such endpoint under /api/v1/") })
        .layer(middleware::from_fn_with_state(node.clone(), authorize));
    Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .nest("/api/v1", api)
        .route(crate::sync::transfer::PATH, post(internal_sync))
        .route(crate::sync::transfer::PULL_PATH, get(internal_pull))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(Extension(failover))
        .with_state(node)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// Compare without an early exit on the first differing byte.
fn same_secret(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn authorize(State(node): State<AppState>, request: Request, next: Next) -> Response {
    let admin = node.config().admin.token.as_deref();
    let ingest = node.config().admin.ingest_token.as_deref();
    let is_ingest = request.method() == Method::POST && request.uri().path() == "/signals";
    let ok = match bearer(request.headers()) {
        None => false,
        Some(given) => {
            admin.is_some_and(|t| same_secret(given, t))
                || (is_ingest && ingest.is_some_and(|t| same_secret(given, t)))
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

async fn status(State(node): State<AppState>, Extension(failover): Pair) -> Response {
    let (active, fs, epoch) = role_state(&node, &failover);
    let body = serde_json::json!({
        "node": node.config().node.name,
        "role": node.config().role.as_str(),
        "state": state_name(active),
        "fs": fs,
        "epoch": epoch,
    });
    let code = if active {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn metrics(State(node): State<AppState>) -> Response {
    let rules = node.rule_status_async().await;
    let quarantined = rules.iter().filter(|r| r.quarantined).count();
    let text = node
        .metrics()
        .render(node.engine().stats(), rules.len(), quarantined);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn api_status(
    State(node): State<AppState>,
    Extension(failover): Pair,
) -> Json<serde_json::Value> {
    let rules = node.rule_status_async().await;
    let reload = node.last_reload();
    let (active, fs, epoch) = role_state(&node, &failover);
    let view = failover.as_ref().map(Failover::view);
    let peer = view.as_ref().map(|v| {
        serde_json::json!({
            "name": v.peer_name,
            "link": v.peer_link,
            "admin": v.peer_admin,
            "link_state": if v.link_up { "up" } else { "down" },
            "last_heartbeat": v.last_heartbeat,
            "status": v.peer,
        })
    });
    let failover_json = view.as_ref().map(|v| {
        serde_json::json!({
            "fenced": v.fenced,
            "failback": v.failback,
            "failover_open": v.failover_open,
        })
    });
    Json(serde_json::json!({
        "node": node.config().node.name,
        "role": node.config().role.as_str(),
        "state": state_name(active),
        "fs": fs,
        "epoch": epoch,
        "ready": view.as_ref().is_none_or(|v| v.ready),
        "uptime_ms": node.uptime().as_millis() as u64,
        "version": env!("CARGO_PKG_VERSION"),
        "admin": node.admin_url(),
        "peer": peer,
        "failover": failover_json,
        "rules": {
            "loaded": rules.len(),
            "quarantined": rules.iter().filter(|r| r.quarantined).map(|r| r.name.clone()).collect::<Vec<_>>(),
            "last_reload_errors": reload.errors,
            "memory_bytes": node.engine().budget().used(),
        },
        "last_sync": null,
    }))
}

async fn post_signals(
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
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({
            "state": state_name(here),
            "accepted": accepted,
            "active": active,
        })),
    )
        .into_response())
}

/// A rule row with its state on this node.
fn rule_json(row: &RuleRow, status: &[RuleStatus]) -> serde_json::Value {
    let st = status.iter().find(|s| s.name == row.name);
    serde_json::json!({
        "name": row.name,
        "script": row.script,
        "enabled": row.enabled,
        "signals": row.signals,
        "deadline": row.deadline_ms.map(|d| format!("{d}ms")),
        "config": row.config,
        "updated_at": row.updated_at,
        "loaded": st.is_some(),
        "patterns": st.as_ref().map(|s| s.patterns.clone()),
        "sha256": st.as_ref().map(|s| s.sha256.clone()),
        "quarantined": st.as_ref().is_some_and(|s| s.quarantined),
        "traps_in_row": st.as_ref().map_or(0, |s| s.traps_in_row),
        "last_error": st.as_ref().and_then(|s| s.last_error.clone()),
    })
}

async fn list_rules(State(node): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let rows = node.store().read(rules::list_rules).await?;
    let status = node.rule_status_async().await;
    Ok(Json(serde_json::Value::Array(
        rows.iter().map(|r| rule_json(r, &status)).collect(),
    )))
}

async fn get_rule(
    State(node): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let n = name.clone();
    let row = node
        .store()
        .read(move |c| rules::get_rule(c, &n))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no rule `{name}`")))?;
    Ok(Json(rule_json(&row, &node.rule_status_async().await)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulePut {
    script: String,
    #[serde(default)]
    signals: Vec<String>,
    #[serde(default)]
    config: Config,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    deadline: Option<String>,
}

fn yes() -> bool {
    true
}

async fn put_rule(
    State(node): State<AppState>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    rules_read_only(&node)?;
    let bytes = read_body(body, MAX_RULE_BODY, "the rule").await?;
    let put: RulePut = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("bad_json", format!("the body is not a rule: {e}")))?;
    if let Some(bad) = put.signals.iter().find(|p| !valid_pattern(p)) {
        return Err(ApiError::bad_request(
            "bad_rule",
            format!("invalid signal pattern `{bad}`: use A-Z, 0-9, `_`, `-` and `*`"),
        ));
    }
    let deadline_ms = match &put.deadline {
        None => None,
        Some(d) => Some(
            crate::config::parse_duration(d)
                .filter(|d| !d.is_zero() && *d <= Duration::from_secs(60))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "bad_rule",
                        format!("deadline {d:?}: a duration up to 60s, e.g. \"50ms\""),
                    )
                })?
                .as_millis() as u64,
        ),
    };
    let script_name = put.script.clone();
    let wasm: Option<Vec<u8>> = node
        .store()
        .read(move |c| {
            Ok(rusqlite::OptionalExtension::optional(c.query_row(
                "SELECT wasm FROM signal_script WHERE name = ?1",
                [&script_name],
                |r| r.get(0),
            ))?)
        })
        .await?;
    let wasm = wasm.ok_or_else(|| {
        ApiError::bad_request(
            "unknown_script",
            format!(
                "no script `{}`: PUT /api/v1/scripts/{} first",
                put.script, put.script
            ),
        )
    })?;
    // Check the whole rule before storing it: a config its init refuses is
    // a 400 and nothing changes.
    let check = {
        let node = node.clone();
        let (name, config) = (name.clone(), put.config.clone());
        tokio::task::spawn_blocking(move || {
            let script = node.engine().compile(&name, &wasm)?;
            node.engine()
                .instantiate(
                    &name,
                    &script,
                    &config,
                    deadline_ms.map(Duration::from_millis),
                )
                .map(drop)
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    };
    check.map_err(|e| ApiError::bad_request("bad_rule", e.to_string()))?;
    let row = RuleRow {
        name: name.clone(),
        script: put.script,
        enabled: put.enabled,
        signals: put.signals,
        deadline_ms,
        config: put.config,
        updated_at: 0,
    };
    let stored = row.clone();
    node.store()
        .write(move |c| rules::upsert_rule(c, &stored))
        .await?;
    node.reload().await?;
    let n = name.clone();
    let row = node
        .store()
        .read(move |c| rules::get_rule(c, &n))
        .await?
        .unwrap_or(row);
    Ok(Json(rule_json(&row, &node.rule_status_async().await)).into_response())
}

async fn delete_rule(
    State(node): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    rules_read_only(&node)?;
    let n = name.clone();
    if !node
        .store()
        .write(move |c| rules::delete_rule(c, &n))
        .await?
    {
        return Err(ApiError::not_found(format!("no rule `{name}`")));
    }
    node.reload().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn reset_rule(
    State(node): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !node.reset_rule_async(name.clone()).await {
        return Err(ApiError::not_found(format!("no loaded rule `{name}`")));
    }
    tracing::info!(rule = %name, "quarantine reset by an operator");
    Ok(Json(
        serde_json::json!({"rule": name, "quarantined": false}),
    ))
}

async fn put_script(
    State(node): State<AppState>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    rules_read_only(&node)?;
    if name.is_empty()
        || name.len() > 128
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(ApiError::bad_request(
            "bad_name",
            "script names use letters, digits, `-`, `_` and `.`",
        ));
    }
    let wasm = read_body(body, MAX_SCRIPT, "the script").await?.to_vec();
    // Compile first: invalid wasm is refused with the engine's message and
    // the old version keeps running.
    let script = {
        let node = node.clone();
        let (name, wasm) = (name.clone(), wasm.clone());
        tokio::task::spawn_blocking(move || node.engine().compile(&name, &wasm))
            .await
            .map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })?
    }
    .map_err(|e| ApiError::bad_request("bad_script", e.to_string()))?;
    let n = name.clone();
    let sha = node
        .store()
        .write(move |c| {
            let tx = c.transaction()?;
            let sha = rules::upsert_script(&tx, &n, &wasm)?;
            if rules::get_rule(&tx, &n)?.is_none() {
                rules::upsert_rule(
                    &tx,
                    &RuleRow {
                        name: n.clone(),
                        script: n.clone(),
                        enabled: true,
                        signals: Vec::new(),
                        deadline_ms: None,
                        config: Config::new(),
                        updated_at: 0,
                    },
                )?;
            }
            tx.commit()?;
            Ok(sha)
        })
        .await?;
    let summary = node.reload().await?;
    Ok(Json(serde_json::json!({
        "name": name,
        "sha256": sha,
        "size": script.size(),
        "default_signals": script.default_signals(),
        "reload_errors": summary.errors,
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    #[serde(default)]
    after: u64,
    #[serde(default = "default_limit")]
    limit: u32,
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct NotificationsQuery {
    node: Option<String>,
    status: Option<String>,
    #[serde(default = "default_limit")]
    limit: u32,
}

fn default_limit() -> u32 {
    100
}

async fn list_events(
    State(node): State<AppState>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Vec<events::EventView>>, ApiError> {
    let limit = q.limit.clamp(1, 1000);
    Ok(Json(
        node.store()
            .read(move |c| events::list(c, q.after, limit, q.name.as_deref()))
            .await?,
    ))
}

async fn list_notifications(
    State(node): State<AppState>,
    Query(q): Query<NotificationsQuery>,
) -> Result<Json<Vec<outbox::NotificationView>>, ApiError> {
    let limit = q.limit.clamp(1, 1000);
    Ok(Json(
        node.store()
            .read(move |c| outbox::list(c, q.node.as_deref(), q.status.as_deref(), limit))
            .await?,
    ))
}

async fn list_failovers(
    State(node): State<AppState>,
) -> Result<Json<Vec<crate::store::failover::FailoverRow>>, ApiError> {
    Ok(Json(
        node.store()
            .read(|c| crate::store::failover::list(c, 1000))
            .await?,
    ))
}

async fn pair_command(
    failover: Option<Failover>,
    command: Command,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(f) = failover else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "wrong_role",
            "this node is standalone: failback and switchover need a primary/secondary pair",
        ));
    };
    match f.command(command).await {
        Ok(result) => {
            let v = f.view();
            Ok(Json(
                serde_json::json!({"result": result, "state": state_name(v.active), "fs": v.fs, "epoch": v.epoch}),
            ))
        }
        Err(why) => Err(ApiError::new(StatusCode::CONFLICT, "refused", why)),
    }
}

async fn failback(Extension(failover): Pair) -> Result<Json<serde_json::Value>, ApiError> {
    pair_command(failover, Command::Failback).await
}

async fn switchover(Extension(failover): Pair) -> Result<Json<serde_json::Value>, ApiError> {
    pair_command(failover, Command::Switchover).await
}

#[derive(Debug, Deserialize)]
struct SyncQuery {
    #[serde(default)]
    force: bool,
}

async fn sync_now(
    State(node): State<AppState>,
    Extension(failover): Pair,
    Query(q): Query<SyncQuery>,
) -> Result<Json<crate::sync::transfer::SyncResult>, ApiError> {
    use crate::sync::SyncError;
    let Some(f) = failover else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "wrong_role",
            "this node is standalone: table sync needs a pair",
        ));
    };
    match crate::sync::transfer::sync_now(&node, &f, q.force).await {
        Ok(r) => Ok(Json(r)),
        Err(SyncError::Precondition(why)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "precondition",
            format!("table sync refused: {why}"),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "sync_failed",
            e.to_string(),
        )),
    }
}

async fn internal_sync(
    State(node): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<Json<crate::sync::SyncStats>, ApiError> {
    crate::sync::transfer::receive(&node, &headers, body)
        .await
        .map(Json)
        .map_err(receive_error)
}

fn receive_error(e: crate::sync::transfer::ReceiveError) -> ApiError {
    use crate::sync::SyncError;
    use crate::sync::transfer::ReceiveError;
    match e {
        ReceiveError::Unauthorized(m) => ApiError::unauthorized(m),
        ReceiveError::TooLarge(m) => ApiError::too_large(m),
        ReceiveError::WrongRole(m) => ApiError::new(StatusCode::CONFLICT, "wrong_role", m),
        ReceiveError::Sync(SyncError::Store(s)) => s.into(),
        ReceiveError::Sync(e) => ApiError::bad_request("refused", e.to_string()),
    }
}

async fn internal_pull(
    State(node): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let bytes = crate::sync::transfer::serve_pull(&node, &headers)
        .await
        .map_err(receive_error)?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

/// 409 when this node is a secondary and `rule` tables are synced to it.
fn rules_read_only(node: &Node) -> Result<(), ApiError> {
    let Some(f) = &node.config().failover else {
        return Ok(());
    };
    let synced = crate::sync::normalise(&f.table_sync_types)
        .iter()
        .any(|t| t == "rule");
    if f.role == crate::failover::machine::PairRole::Secondary && synced {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "read_only",
            format!(
                "rules are synced from the primary `{}`: change them there",
                f.primary
            ),
        ));
    }
    Ok(())
}
