//! Rules and scripts: `GET/PUT/DELETE /api/v1/rules/{name}`,
//! `POST /api/v1/rules/{name}/reset`, `PUT /api/v1/scripts/{name}`.
//!
//! Every change is checked whole before it is stored (the module compiles,
//! the config passes the rule's init, names and patterns are valid), then
//! the rule set reloads. On a secondary with `rule` synced they are
//! read-only (409 naming the primary).

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tandem_guest::Config;

use super::{ApiError, AppState, MAX_SCRIPT, read_body, read_only, task_failed};
use crate::engine::RuleStatus;
use crate::engine::names::{RULE_NAME_RULE, check_patterns, valid_rule_name};
use crate::store::rules::{self, RuleRow};

/// Largest rule body.
const MAX_RULE_BODY: usize = 1 << 20;

/// A rule row with its state on this node.
#[derive(Debug, Clone, Serialize)]
pub struct RuleView {
    pub name: String,
    pub script: String,
    pub enabled: bool,
    pub signals: Vec<String>,
    pub deadline: Option<String>,
    pub config: Config,
    pub updated_at: i64,
    /// The rule's group (DESIGN.md §7).
    pub group: String,
    pub loaded: bool,
    pub patterns: Option<Vec<String>>,
    pub sha256: Option<String>,
    pub quarantined: bool,
    pub traps_in_row: u32,
    pub last_error: Option<String>,
}

impl RuleView {
    fn new(row: &RuleRow, status: &[RuleStatus], dir_error: Option<String>) -> RuleView {
        let st = status.iter().find(|s| s.name == row.name);
        RuleView {
            name: row.name.clone(),
            script: row.script.clone(),
            enabled: row.enabled,
            signals: row.signals.clone(),
            deadline: row.deadline_ms.map(|d| format!("{d}ms")),
            config: row.config.clone(),
            group: row.group.clone(),
            updated_at: row.updated_at,
            loaded: st.is_some(),
            patterns: st.map(|s| s.patterns.clone()),
            sha256: st.map(|s| s.sha256.clone()),
            quarantined: st.is_some_and(|s| s.quarantined),
            traps_in_row: st.map_or(0, |s| s.traps_in_row),
            last_error: dir_error.or_else(|| st.and_then(|s| s.last_error.clone())),
        }
    }
}

/// The answer to `PUT /api/v1/scripts/{name}`.
#[derive(Debug, Clone, Serialize)]
pub struct ScriptReply {
    pub name: String,
    pub sha256: String,
    pub size: usize,
    pub default_signals: Vec<String>,
    pub reload_errors: Vec<String>,
}

/// The answer to a quarantine reset.
#[derive(Debug, Clone, Serialize)]
pub struct ResetReply {
    pub rule: String,
    pub quarantined: bool,
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if valid_rule_name(name) {
        Ok(())
    } else {
        Err(ApiError::bad_request("bad_name", RULE_NAME_RULE))
    }
}

async fn view(node: &AppState, row: &RuleRow) -> RuleView {
    let dir_error = node.dir_errors().remove(&row.name);
    RuleView::new(row, &node.rule_status_async().await, dir_error)
}

pub(super) async fn list_rules(
    State(node): State<AppState>,
) -> Result<Json<Vec<RuleView>>, ApiError> {
    let rows = node.store().read(rules::list_rules).await?;
    let status = node.rule_status_async().await;
    let mut dir_errors = node.dir_errors();
    Ok(Json(
        rows.iter()
            .map(|r| RuleView::new(r, &status, dir_errors.remove(&r.name)))
            .collect(),
    ))
}

pub(super) async fn get_rule(
    State(node): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<RuleView>, ApiError> {
    let n = name.clone();
    let row = node
        .store()
        .read(move |c| rules::get_rule(c, &n))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no rule `{name}`")))?;
    Ok(Json(view(&node, &row).await))
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
    /// The rule's group (DESIGN.md §7); `default` when absent.
    #[serde(default)]
    group: Option<String>,
}

fn yes() -> bool {
    true
}

pub(super) async fn put_rule(
    State(node): State<AppState>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    read_only(&node, "rule", "rules")?;
    check_name(&name)?;
    let bytes = read_body(body, MAX_RULE_BODY, "the rule").await?;
    let put: RulePut = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("bad_json", format!("the body is not a rule: {e}")))?;
    check_name(&put.script)?;
    check_patterns(&put.signals)
        .map_err(|e| ApiError::bad_request("bad_rule", format!("rule `{name}`: {e}")))?;
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
    let group = put
        .group
        .clone()
        .unwrap_or_else(|| crate::config::DEFAULT_GROUP.to_owned());
    let groups = node.config().rule_groups();
    if !groups.contains(&group) {
        return Err(ApiError::bad_request(
            "bad_rule",
            format!("rule `{name}`: group {group:?} is not configured; the groups are {groups:?}"),
        ));
    }
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
            script
                .check_config(&config)
                .map_err(|reason| crate::engine::EngineError::Config {
                    rule: name.clone(),
                    reason,
                })?;
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
        .map_err(task_failed)?
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
        group,
    };
    let stored = row.clone();
    node.store()
        .write(move |c| rules::upsert_rule(c, &stored))
        .await?;
    node.note_tables_changed();
    node.reload().await?;
    let n = name.clone();
    let row = node
        .store()
        .read(move |c| rules::get_rule(c, &n))
        .await?
        .unwrap_or(row);
    Ok(Json(view(&node, &row).await).into_response())
}

pub(super) async fn delete_rule(
    State(node): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    read_only(&node, "rule", "rules")?;
    let n = name.clone();
    if !node
        .store()
        .write(move |c| rules::delete_rule(c, &n))
        .await?
    {
        return Err(ApiError::not_found(format!("no rule `{name}`")));
    }
    node.note_tables_changed();
    node.reload().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn reset_rule(
    State(node): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ResetReply>, ApiError> {
    if !node.reset_rule_async(name.clone()).await {
        return Err(ApiError::not_found(format!("no loaded rule `{name}`")));
    }
    tracing::info!(rule = %crate::escape::log_safe(&name), "quarantine reset by an operator");
    Ok(Json(ResetReply {
        rule: name,
        quarantined: false,
    }))
}

pub(super) async fn put_script(
    State(node): State<AppState>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    read_only(&node, "rule", "rules")?;
    check_name(&name)?;
    let wasm = read_body(body, MAX_SCRIPT, "the script").await?.to_vec();
    // Compile first: invalid wasm is refused with the engine's message and
    // the old version keeps running.
    let script = {
        let node = node.clone();
        let (name, wasm) = (name.clone(), wasm.clone());
        tokio::task::spawn_blocking(move || node.engine().compile(&name, &wasm))
            .await
            .map_err(task_failed)?
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
                        group: crate::config::DEFAULT_GROUP.to_owned(),
                    },
                )?;
            }
            tx.commit()?;
            Ok(sha)
        })
        .await?;
    node.note_tables_changed();
    let summary = node.reload().await?;
    Ok(Json(ScriptReply {
        name,
        sha256: sha,
        size: script.size(),
        default_signals: script.default_signals().to_vec(),
        reload_errors: summary.errors,
    })
    .into_response())
}
