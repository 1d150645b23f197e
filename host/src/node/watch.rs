//! The rules directory (`[rules] dir`), watched with `notify`.
//!
//! `NAME.wasm`, optionally with `NAME.toml` (`signals = [...]`, `enabled`,
//! `deadline = "50ms"`, and a `[config]` table), becomes the script and the
//! rule `NAME`. Changes are debounced, then the directory is scanned whole:
//! what changed is upserted and the rule set reloaded. Deleting `NAME.wasm`
//! disables the rule `NAME` (its rows stay, so re-adding the file brings it
//! back). Which rules came from the directory is remembered in `settings`,
//! so rules installed through the API are never touched by a scan.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use serde::Deserialize;
use tandem_guest::Config;

use super::Node;
use crate::store::StoreError;
use crate::store::rules::{self, RuleRow};

/// Quiet time before a burst of file events is acted on.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

const SETTINGS_KEY: &str = "rules_dir.files";

/// `NAME.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RuleToml {
    signals: Vec<String>,
    enabled: Option<bool>,
    deadline: Option<String>,
    config: Option<toml::Table>,
}

/// One rule found in the directory.
#[derive(Debug)]
struct Found {
    name: String,
    wasm: Vec<u8>,
    rule: RuleRow,
}

fn valid_rule_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

fn read_rule(dir: &Path, name: &str) -> Result<Found, String> {
    let wasm_path = dir.join(format!("{name}.wasm"));
    let wasm = std::fs::read(&wasm_path).map_err(|e| format!("{}: {e}", wasm_path.display()))?;
    let toml_path = dir.join(format!("{name}.toml"));
    let meta: RuleToml = match std::fs::read_to_string(&toml_path) {
        Ok(text) => toml::from_str(&text).map_err(|e| format!("{}: {e}", toml_path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => RuleToml::default(),
        Err(e) => return Err(format!("{}: {e}", toml_path.display())),
    };
    let deadline_ms = match &meta.deadline {
        None => None,
        Some(d) => Some(
            crate::config::parse_duration(d)
                .filter(|d| !d.is_zero() && *d <= Duration::from_secs(60))
                .ok_or_else(|| {
                    format!(
                        "{}: deadline {d:?}: a duration up to 60s, e.g. \"50ms\"",
                        toml_path.display()
                    )
                })?
                .as_millis() as u64,
        ),
    };
    let config: Config = match meta.config {
        None => Config::new(),
        Some(table) => toml::Value::Table(table)
            .try_into()
            .map_err(|e| format!("{}: [config]: {e}", toml_path.display()))?,
    };
    Ok(Found {
        name: name.to_owned(),
        rule: RuleRow {
            name: name.to_owned(),
            script: name.to_owned(),
            enabled: meta.enabled.unwrap_or(true),
            signals: meta.signals,
            deadline_ms,
            config,
            updated_at: 0,
        },
        wasm,
    })
}

/// Scan `dir` and bring the tables in line with it. Returns whether
/// anything changed. Unreadable or invalid files are logged and skipped
/// (their rule keeps its last good version).
pub async fn sync_dir(node: &Arc<Node>, dir: &Path) -> Result<bool, StoreError> {
    let mut found = Vec::new();
    let mut present = BTreeSet::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(dir = %dir.display(), "cannot read the rules directory: {e}");
            return Ok(false);
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("wasm") {
            continue;
        }
        let Some(name) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
            continue;
        };
        if !valid_rule_name(&name) {
            tracing::warn!(file = %path.display(), "ignored: rule names use letters, digits, `-`, `_` and `.`");
            continue;
        }
        present.insert(name.clone());
        match read_rule(dir, &name) {
            Ok(f) => found.push(f),
            Err(e) => tracing::error!(rule = %name, "rules directory: {e}"),
        }
    }
    node.store()
        .write(move |c| {
            let tx = c.transaction()?;
            let before: BTreeSet<String> = crate::store::setting::<String>(&tx, SETTINGS_KEY)?
                .and_then(|v| serde_json::from_str(&v).ok())
                .unwrap_or_default();
            let mut changed = false;
            for f in &found {
                let sha = hex::encode(crate::engine::sha256(&f.wasm));
                let current: Option<String> = tx
                    .query_row(
                        "SELECT sha256 FROM signal_script WHERE name = ?1",
                        [&f.name],
                        |r| r.get(0),
                    )
                    .ok();
                if current.as_deref() != Some(sha.as_str()) {
                    rules::upsert_script(&tx, &f.name, &f.wasm)?;
                    changed = true;
                }
                let existing = rules::get_rule(&tx, &f.name)?;
                let same = existing.as_ref().is_some_and(|r| {
                    r.script == f.rule.script
                        && r.enabled == f.rule.enabled
                        && r.signals == f.rule.signals
                        && r.deadline_ms == f.rule.deadline_ms
                        && r.config == f.rule.config
                });
                if !same {
                    rules::upsert_rule(&tx, &f.rule)?;
                    changed = true;
                }
            }
            for gone in before.difference(&present) {
                if let Some(mut r) = rules::get_rule(&tx, gone)?
                    && r.enabled
                {
                    r.enabled = false;
                    rules::upsert_rule(&tx, &r)?;
                    tracing::info!(rule = %gone, "rule file removed: rule disabled");
                    changed = true;
                }
            }
            let list = serde_json::to_string(&present).unwrap_or_else(|_| "[]".into());
            crate::store::set_setting(&tx, SETTINGS_KEY, list)?;
            tx.commit()?;
            Ok(changed)
        })
        .await
}

/// Watch `dir` until `shutdown`: scan once at start, then after every
/// debounced burst of changes, reloading when something changed.
pub async fn run(node: Arc<Node>, dir: PathBuf, shutdown: impl std::future::Future<Output = ()>) {
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tracing::error!(dir = %dir.display(), "cannot create the rules directory: {e}");
        return;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = tx.send(());
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::error!("cannot watch the rules directory: {e}");
            return;
        }
    };
    if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::error!(dir = %dir.display(), "cannot watch the rules directory: {e}");
        return;
    }
    tracing::info!(dir = %dir.display(), "watching the rules directory");
    tokio::pin!(shutdown);
    loop {
        match sync_dir(&node, &dir).await {
            Ok(true) => {
                if let Err(e) = node.reload().await {
                    tracing::error!("reload after a rules directory change: {e}");
                }
            }
            Ok(false) => {}
            Err(e) => tracing::error!("rules directory: {e}"),
        }
        tokio::select! {
            _ = &mut shutdown => return,
            got = rx.recv() => if got.is_none() { return },
        }
        // Debounce: wait until the burst is quiet.
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                more = tokio::time::timeout(DEBOUNCE, rx.recv()) => match more {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                },
            }
        }
    }
}
