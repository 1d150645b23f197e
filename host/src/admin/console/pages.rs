//! The console's Failover, Rules, Notifications and Cluster pages. Each
//! command goes through the same handler as its API call, so the console
//! can do nothing the API refuses; failback, switchover and delete ask for
//! a confirmation first (a page of its own: no script).

use std::collections::BTreeMap;

use askama::Template;
use axum::body::Body;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use serde::Deserialize;

use super::{Chrome, Console, Refusal, render};
use crate::store::failover::FailoverRow;
use crate::store::outbox::{self, NotificationView};
use crate::store::synclog::{self, SyncLogRow};

/// A wall-clock time in ms as `2026-12-01T04:32:20Z` (empty for none).
pub(super) fn when(ms: i64) -> String {
    if ms <= 0 {
        return String::new();
    }
    // humantime formats up to year 9999; a row copied from elsewhere may
    // hold anything.
    if ms >= 253_402_300_800_000 {
        return ms.to_string();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The answer of an API handler, as a message for the page.
async fn outcome(r: Result<Response, super::super::ApiError>) -> Result<String, String> {
    match r {
        Ok(resp) => {
            let ok = resp.status().is_success();
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes).into_owned();
            if ok { Ok(text) } else { Err(text) }
        }
        Err(e) => Err(e.message),
    }
}

// ----- Failover ---------------------------------------------------------

/// A failover log row as the page shows it.
struct LogRow {
    node: String,
    start: String,
    end: String,
    duration: String,
    reason: String,
    failback_mode: String,
    executed: i64,
}

impl From<FailoverRow> for LogRow {
    fn from(f: FailoverRow) -> Self {
        LogRow {
            node: match f.group {
                Some(g) => format!("{} ({g})", f.node),
                None => f.node,
            },
            start: when(f.started_at),
            end: f.ended_at.map(when).unwrap_or_else(|| "open".into()),
            duration: format!("{:.1} s", f.duration_ms as f64 / 1000.0),
            reason: f.reason,
            failback_mode: f.failback_mode,
            executed: f.executed,
        }
    }
}

struct SyncRow {
    at: String,
    direction: String,
    generation: u64,
    result: String,
    detail: String,
}

impl From<SyncLogRow> for SyncRow {
    fn from(s: SyncLogRow) -> Self {
        SyncRow {
            at: when(s.at),
            direction: s.direction,
            generation: s.generation,
            result: s.result,
            detail: s.detail,
        }
    }
}

#[derive(Template)]
#[template(path = "failover.html")]
struct FailoverPage {
    chrome: Chrome,
    settings: Vec<(&'static str, String)>,
    log: Vec<LogRow>,
    syncs: Vec<SyncRow>,
}

pub(super) async fn failover_page(State(c): State<Console>, headers: HeaderMap) -> Response {
    match c.signed_in(&headers) {
        Ok(s) => failover_view(&c, c.chrome(Some(&s)), StatusCode::OK).await,
        Err(r) => r.into_response(),
    }
}

async fn failover_view(c: &Console, mut chrome: Chrome, status: StatusCode) -> Response {
    let settings = match c.node.config().failover.as_ref() {
        Some(f) => vec![
            ("role", format!("{:?}", f.role).to_lowercase()),
            ("rank", f.rank.to_string()),
            ("primary", f.primary.clone()),
            ("secondary", f.secondary.clone()),
            ("peer", f.peer.clone().unwrap_or_default()),
            (
                "listen",
                f.listen.map(|l| l.to_string()).unwrap_or_default(),
            ),
            ("peer_admin", f.peer_admin.clone().unwrap_or_default()),
            ("failback", format!("{:?}", f.failback).to_lowercase()),
            ("failback_after", f.failback_after.to_string()),
            (
                "startup_delay",
                humantime::format_duration(f.startup_delay).to_string(),
            ),
            ("timeout", humantime::format_duration(f.timeout).to_string()),
            (
                "check_interval",
                humantime::format_duration(f.check_interval).to_string(),
            ),
            (
                "replay_window",
                humantime::format_duration(f.replay_window).to_string(),
            ),
            ("table_sync_types", f.table_sync_types.join(", ")),
            ("sync_on_change", f.sync_on_change.to_string()),
        ],
        None => {
            chrome.notice =
                Some("This node is not in a pair: failback, switchover and sync need one.".into());
            Vec::new()
        }
    };
    let rows = c
        .node
        .store()
        .read(|conn| {
            Ok((
                crate::store::failover::list(conn, 100)?,
                synclog::recent(conn, 50)?,
            ))
        })
        .await;
    let (log, syncs) = match rows {
        Ok((l, s)) => (
            l.into_iter().map(LogRow::from).collect(),
            s.into_iter().map(SyncRow::from).collect(),
        ),
        Err(e) => {
            chrome.error = Some(e.to_string());
            (Vec::new(), Vec::new())
        }
    };
    render(
        &FailoverPage {
            chrome,
            settings,
            log,
            syncs,
        },
        status,
    )
}

#[derive(Template)]
#[template(path = "confirm.html")]
struct ConfirmPage {
    chrome: Chrome,
    title: String,
    question: String,
    action: String,
    button: String,
    back: String,
    fields: Vec<(&'static str, String)>,
}

pub(super) async fn confirm_failover(
    State(c): State<Console>,
    headers: HeaderMap,
    Path(command): Path<String>,
) -> Response {
    let session = match c.signed_in(&headers) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let (title, question) = match command.as_str() {
        "failback" => (
            "Failback",
            "Hand execution back to the primary now? The secondary stops running rules once the primary has taken over.",
        ),
        "switchover" => (
            "Switchover",
            "Swap the roles of the two nodes now? The active node hands over and the other one runs the rules.",
        ),
        _ => return (StatusCode::NOT_FOUND, "no such command").into_response(),
    };
    render(
        &ConfirmPage {
            chrome: c.chrome(Some(&session)),
            title: title.into(),
            question: question.into(),
            action: format!("/ui/failover/{command}"),
            button: format!("Yes, {}", title.to_lowercase()),
            back: "/ui/failover".into(),
            fields: Vec::new(),
        },
        StatusCode::OK,
    )
}

/// Failback, switchover or sync, after the form's checks.
pub(super) async fn failover_command(
    State(c): State<Console>,
    headers: HeaderMap,
    Path(command): Path<String>,
    Form(form): Form<BTreeMap<String, String>>,
) -> Response {
    let session = match c.post_allowed(&headers, &form) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let pair = Extension(c.failover.clone());
    let result = match command.as_str() {
        "failback" | "switchover" if form.get("confirm").map(String::as_str) != Some("yes") => {
            return Redirect::to(&format!("/ui/failover/confirm/{command}")).into_response();
        }
        "failback" => {
            outcome(
                super::super::pair::failback(pair)
                    .await
                    .map(IntoResponse::into_response),
            )
            .await
        }
        "switchover" => {
            outcome(
                super::super::pair::switchover(pair)
                    .await
                    .map(IntoResponse::into_response),
            )
            .await
        }
        "sync" => {
            outcome(
                super::super::pair::sync_now(
                    State(c.node.clone()),
                    pair,
                    Query(super::super::pair::SyncQuery::default()),
                )
                .await
                .map(IntoResponse::into_response),
            )
            .await
        }
        _ => return (StatusCode::NOT_FOUND, "no such command").into_response(),
    };
    // Post/redirect/get: a reload of the page after cannot send the
    // command again.
    c.flash(
        &session,
        result
            .map(|t| format!("{command}: {t}"))
            .map_err(|t| format!("{command} refused: {t}")),
    );
    Redirect::to("/ui/failover").into_response()
}

// ----- Rules ------------------------------------------------------------

/// A rule as the page shows it.
struct RuleRow {
    name: String,
    signals: String,
    group: String,
    sha256: String,
    state: &'static str,
    quarantined: bool,
    last_error: String,
}

#[derive(Template)]
#[template(path = "rules.html")]
struct RulesPage {
    chrome: Chrome,
    rules: Vec<RuleRow>,
    editable: bool,
}

pub(super) async fn rules_page(State(c): State<Console>, headers: HeaderMap) -> Response {
    match c.signed_in(&headers) {
        Ok(s) => rules_view(&c, c.chrome(Some(&s)), StatusCode::OK).await,
        Err(r) => r.into_response(),
    }
}

async fn rules_view(c: &Console, mut chrome: Chrome, status: StatusCode) -> Response {
    let read_only = super::super::read_only(&c.node, "rule", "rules").err();
    if let Some(e) = &read_only {
        chrome.notice.get_or_insert(e.message.clone());
    }
    let rules = match super::super::rules::list_rules(State(c.node.clone())).await {
        Ok(axum::Json(list)) => list
            .into_iter()
            .map(|r| RuleRow {
                signals: r.patterns.clone().unwrap_or(r.signals).join(", "),
                state: match (r.loaded, r.quarantined, r.enabled) {
                    (_, true, _) => "quarantined",
                    (true, _, false) => "disabled",
                    (true, _, true) => "loaded",
                    (false, _, _) => "not loaded",
                },
                quarantined: r.quarantined,
                sha256: r.sha256.unwrap_or_default(),
                last_error: r.last_error.unwrap_or_default(),
                group: r.group,
                name: r.name,
            })
            .collect(),
        Err(e) => {
            chrome.error = Some(e.message);
            Vec::new()
        }
    };
    render(
        &RulesPage {
            chrome,
            rules,
            editable: read_only.is_none(),
        },
        status,
    )
}

/// The most a rule upload may hold (the module, its sidecar, the fields).
pub(super) const MAX_UPLOAD: usize = super::super::MAX_SCRIPT + (1 << 20);

/// `POST /ui/rules/upload` (multipart: csrf, name, wasm, sidecar): the
/// module through `PUT /api/v1/scripts/NAME`, then, if a sidecar came, the
/// rule through `PUT /api/v1/rules/NAME` (its checks, its errors).
pub(super) async fn upload_rule(
    State(c): State<Console>,
    headers: HeaderMap,
    mut multipart: Multipart,
) -> Response {
    // Nothing of the body is read for a post that is not from a signed-in
    // page of this site (its CSRF token is checked once read).
    if let Err(r) = super::same_site(&headers).and_then(|()| c.signed_in(&headers)) {
        return r.into_response();
    }
    let mut form = BTreeMap::new();
    let (mut wasm, mut sidecar) = (None, None);
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                return (StatusCode::BAD_REQUEST, format!("not a valid upload: {e}"))
                    .into_response();
            }
        };
        let name = field.name().unwrap_or_default().to_owned();
        let bytes = match field.bytes().await {
            Ok(b) => b,
            Err(e) => {
                return (StatusCode::BAD_REQUEST, format!("not a valid upload: {e}"))
                    .into_response();
            }
        };
        match name.as_str() {
            "wasm" => wasm = Some(bytes),
            "sidecar" if !bytes.is_empty() => sidecar = Some(bytes),
            "csrf" | "name" => {
                form.insert(name, String::from_utf8_lossy(&bytes).trim().to_owned());
            }
            _ => {}
        }
    }
    let session = match c.post_allowed(&headers, &form) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let name = form.get("name").cloned().unwrap_or_default();
    let result = upload(&c, &name, wasm, sidecar).await;
    c.flash(&session, result);
    Redirect::to("/ui/rules").into_response()
}

/// Store the module, then the sidecar's rule; what happened, as the page
/// says it.
async fn upload(
    c: &Console,
    name: &str,
    wasm: Option<axum::body::Bytes>,
    sidecar: Option<axum::body::Bytes>,
) -> Result<String, String> {
    let wasm = wasm
        .filter(|w| !w.is_empty())
        .ok_or("upload refused: choose a .wasm module")?;
    // The sidecar is read before anything is stored.
    let rule = match &sidecar {
        None => None,
        Some(bytes) => Some(sidecar_json(name, bytes).map_err(|e| format!("upload refused: {e}"))?),
    };
    let node = State(c.node.clone());
    let reply = outcome(
        super::super::rules::put_script(node.clone(), Path(name.to_owned()), Body::from(wasm))
            .await,
    )
    .await
    .map_err(|e| format!("upload refused: {e}"))?;
    let reload_errors: Vec<String> = serde_json::from_str::<serde_json::Value>(&reply)
        .ok()
        .and_then(|v| serde_json::from_value(v["reload_errors"].clone()).ok())
        .unwrap_or_default();
    if let Some(rule) = rule {
        outcome(
            super::super::rules::put_rule(node, Path(name.to_owned()), Body::from(rule.to_string()))
                .await,
        )
        .await
        .map_err(|e| {
            format!(
                "module `{name}` stored and running (with the rule's previous settings, or its defaults if it is new); the sidecar was refused: {e}"
            )
        })?;
    }
    if reload_errors.is_empty() {
        Ok(format!("rule `{name}` uploaded and loaded"))
    } else {
        Err(format!(
            "module `{name}` stored, but the reload reported: {}",
            reload_errors.join("; ")
        ))
    }
}

/// A sidecar (`NAME.toml` of a rules directory) as the body of
/// `PUT /api/v1/rules/NAME`.
fn sidecar_json(name: &str, bytes: &[u8]) -> Result<serde_json::Value, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "the sidecar is not UTF-8 text")?;
    let table: toml::Table = toml::from_str(text).map_err(|e| format!("the sidecar: {e}"))?;
    let mut json = serde_json::to_value(&table).map_err(|e| format!("the sidecar: {e}"))?;
    json["script"] = name.into();
    Ok(json)
}

pub(super) async fn reset_rule(
    State(c): State<Console>,
    headers: HeaderMap,
    Form(form): Form<BTreeMap<String, String>>,
) -> Response {
    let session = match c.post_allowed(&headers, &form) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let name = form.get("name").cloned().unwrap_or_default();
    let r = super::super::rules::reset_rule(State(c.node.clone()), Path(name.clone()))
        .await
        .map(IntoResponse::into_response);
    let result = outcome(r)
        .await
        .map(|_| format!("rule `{name}`: quarantine reset"));
    c.flash(&session, result);
    Redirect::to("/ui/rules").into_response()
}

#[derive(Debug, Deserialize)]
pub(super) struct NameQuery {
    #[serde(default)]
    name: String,
}

pub(super) async fn confirm_delete_rule(
    State(c): State<Console>,
    headers: HeaderMap,
    Query(q): Query<NameQuery>,
) -> Response {
    let session = match c.signed_in(&headers) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    render(
        &ConfirmPage {
            chrome: c.chrome(Some(&session)),
            title: "Delete a rule".into(),
            question: format!(
                "Delete rule `{}`? It stops running here now (its module stays stored).",
                q.name
            ),
            action: "/ui/rules/delete".into(),
            button: "Yes, delete".into(),
            back: "/ui/rules".into(),
            fields: vec![("name", q.name)],
        },
        StatusCode::OK,
    )
}

pub(super) async fn delete_rule(
    State(c): State<Console>,
    headers: HeaderMap,
    Form(form): Form<BTreeMap<String, String>>,
) -> Response {
    let session = match c.post_allowed(&headers, &form) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let name = form.get("name").cloned().unwrap_or_default();
    if form.get("confirm").map(String::as_str) != Some("yes") {
        return Redirect::to("/ui/rules").into_response();
    }
    let r = super::super::rules::delete_rule(State(c.node.clone()), Path(name.clone())).await;
    let result = outcome(r).await.map(|_| format!("rule `{name}` deleted"));
    c.flash(&session, result);
    Redirect::to("/ui/rules").into_response()
}

// ----- Notifications ----------------------------------------------------

#[derive(Debug, Default, Deserialize)]
pub(super) struct NotificationsQuery {
    #[serde(default)]
    tab: String,
    #[serde(default)]
    status: String,
}

struct NotificationRow {
    created: String,
    v: NotificationView,
}

#[derive(Template)]
#[template(path = "notifications.html")]
struct NotificationsPage {
    chrome: Chrome,
    others: bool,
    status: String,
    /// Each status to filter by, and whether it is the one chosen.
    statuses: Vec<(&'static str, bool)>,
    rows: Vec<NotificationRow>,
}

/// The statuses a notification can have, `""` for any.
const STATUSES: [&str; 6] = ["", "pending", "sent", "failed", "expired", "remote"];

pub(super) async fn notifications_page(
    State(c): State<Console>,
    headers: HeaderMap,
    Query(q): Query<NotificationsQuery>,
) -> Response {
    let session = match c.signed_in(&headers) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let mut chrome = c.chrome(Some(&session));
    let others = q.tab == "others";
    let status = STATUSES
        .iter()
        .find(|s| **s == q.status)
        .copied()
        .unwrap_or("");
    let me = c.node.config().node.name.clone();
    let filter = (!status.is_empty()).then(|| status.to_owned());
    let rows = c
        .node
        .store()
        .read(move |conn| outbox::list_by_origin(conn, &me, others, filter.as_deref(), 500))
        .await;
    let rows = match rows {
        Ok(r) => r
            .into_iter()
            .map(|v| NotificationRow {
                created: when(v.created_at),
                v,
            })
            .collect(),
        Err(e) => {
            chrome.error = Some(e.to_string());
            Vec::new()
        }
    };
    render(
        &NotificationsPage {
            chrome,
            others,
            status: status.to_owned(),
            statuses: STATUSES.iter().map(|s| (*s, *s == status)).collect(),
            rows,
        },
        StatusCode::OK,
    )
}

// ----- Cluster ----------------------------------------------------------

#[derive(Template)]
#[template(path = "cluster.html")]
struct ClusterPage {
    chrome: Chrome,
    c: crate::cluster::Status,
}

pub(super) async fn cluster_page(State(c): State<Console>, headers: HeaderMap) -> Response {
    let session = match c.signed_in(&headers) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let Some(h) = &c.cluster else {
        return Refusal::NotHere("this node is not a cluster member").into_response();
    };
    render(
        &ClusterPage {
            chrome: c.chrome(Some(&session)),
            c: h.status(),
        },
        StatusCode::OK,
    )
}
