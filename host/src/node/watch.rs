//! The rules directory (`[rules] dir`), watched with `notify`.
//!
//! `NAME.wasm`, optionally with `NAME.toml` (`signals = [...]`, `enabled`,
//! `deadline = "50ms"`, and a `[config]` table), becomes the script and the
//! rule `NAME`. Changes are debounced, then the directory is scanned whole.
//!
//! A file pair is installed only when its content changed: each pair's
//! fingerprint (sha256 of the wasm and the sidecar) is remembered in
//! `settings`, and a scan skips every pair whose fingerprint is the one it
//! installed last. So the last change wins: a rule changed through the
//! admin API keeps that change until its file's content changes, and a
//! file that changes overwrites what the API set for that rule. Reading a
//! file (which `inotify` reports too) never triggers a scan.
//!
//! A pair that cannot be installed (an unreadable file, a bad sidecar) is
//! logged once per change of its content, and its error is kept for
//! `/api/v1/status` until the pair is fixed or removed. Deleting
//! `NAME.wasm` disables the rule `NAME` (its rows stay, so re-adding the
//! file brings it back). Rules installed through the API are never touched
//! by a scan.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tandem_guest::Config;

use super::Node;
use crate::store::StoreError;
use crate::store::rules::{self, RuleRow};

/// Quiet time before a burst of file events is acted on.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// `settings` key: the fingerprint of each pair installed from the
/// directory (a JSON map name -> hex sha256).
const SETTINGS_KEY: &str = "rules_dir.files";

/// Why the directory cannot be watched.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot create the rules directory {dir}: {source}")]
    Create {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot watch the rules directory {dir}: {source}")]
    Watch { dir: PathBuf, source: notify::Error },
}

/// `NAME.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RuleToml {
    signals: Vec<String>,
    enabled: Option<bool>,
    deadline: Option<String>,
    config: Option<toml::Table>,
    /// The rule's group (DESIGN.md §7); `default` when absent.
    group: Option<String>,
}

/// One file pair as read from the directory.
#[derive(Debug)]
struct Pair {
    name: String,
    fingerprint: String,
    /// The rule to install, or why it cannot be.
    parsed: Result<(Vec<u8>, RuleRow), String>,
}

/// The sha256 of a pair's bytes (the sidecar's absence counts).
fn fingerprint(wasm: &[u8], toml: Option<&[u8]>) -> String {
    let mut h = Sha256::new();
    h.update((wasm.len() as u64).to_be_bytes());
    h.update(wasm);
    match toml {
        Some(t) => {
            h.update([1]);
            h.update(t);
        }
        None => h.update([0]),
    }
    hex::encode(h.finalize())
}

/// Read `NAME.wasm` and `NAME.toml`. `Err` when the wasm cannot be read at
/// all (no fingerprint to remember).
fn read_pair(dir: &Path, name: &str) -> Result<Pair, String> {
    let wasm_path = dir.join(format!("{name}.wasm"));
    let wasm = std::fs::read(&wasm_path).map_err(|e| format!("{}: {e}", wasm_path.display()))?;
    let toml_path = dir.join(format!("{name}.toml"));
    let toml = match std::fs::read(&toml_path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("{}: {e}", toml_path.display())),
    };
    let fingerprint = fingerprint(&wasm, toml.as_deref());
    let parsed = parse_sidecar(&toml_path, toml.as_deref(), name).map(|rule| (wasm, rule));
    Ok(Pair {
        name: name.to_owned(),
        fingerprint,
        parsed,
    })
}

fn parse_sidecar(path: &Path, toml: Option<&[u8]>, name: &str) -> Result<RuleRow, String> {
    let meta: RuleToml = match toml {
        None => RuleToml::default(),
        Some(bytes) => {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| format!("{}: not UTF-8 text", path.display()))?;
            toml::from_str(text).map_err(|e| format!("{}: {e}", path.display()))?
        }
    };
    let deadline_ms = match &meta.deadline {
        None => None,
        Some(d) => Some(
            crate::config::parse_duration(d)
                .filter(|d| !d.is_zero() && *d <= Duration::from_secs(60))
                .ok_or_else(|| {
                    format!(
                        "{}: deadline {d:?}: a duration up to 60s, e.g. \"50ms\"",
                        path.display()
                    )
                })?
                .as_millis() as u64,
        ),
    };
    let config: Config = match meta.config {
        None => Config::new(),
        Some(table) => toml::Value::Table(table)
            .try_into()
            .map_err(|e| format!("{}: [config]: {e}", path.display()))?,
    };
    Ok(RuleRow {
        name: name.to_owned(),
        script: name.to_owned(),
        enabled: meta.enabled.unwrap_or(true),
        signals: meta.signals,
        deadline_ms,
        config,
        updated_at: 0,
        group: meta
            .group
            .unwrap_or_else(|| crate::config::DEFAULT_GROUP.to_owned()),
    })
}

/// A pair as read, or (its rule name, why its wasm cannot be read).
type Read = Result<Pair, (String, String)>;

/// Every `NAME.wasm` in `dir` (blocking: file I/O).
fn read_dir(dir: &Path) -> Result<Vec<Read>, std::io::Error> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)?.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("wasm") {
            continue;
        }
        let Some(name) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
            continue;
        };
        if !crate::engine::names::valid_rule_name(&name) {
            tracing::warn!(file = %crate::escape::log_safe(&path.display().to_string()), "ignored: {}", crate::engine::names::RULE_NAME_RULE);
            continue;
        }
        out.push(read_pair(dir, &name).map_err(|e| (name, e)));
    }
    Ok(out)
}

/// Scan `dir` and install every pair whose content changed since it was
/// last installed. Returns whether a rule row or script changed.
pub async fn sync_dir(node: &Arc<Node>, dir: &Path) -> Result<bool, StoreError> {
    let d = dir.to_owned();
    let read = tokio::task::spawn_blocking(move || read_dir(&d))
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?;
    let pairs = match read {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(dir = %dir.display(), "cannot read the rules directory: {e}");
            return Ok(false);
        }
    };
    let node2 = node.clone();
    let (changed, errors) = node
        .store()
        .write(move |c| {
            let tx = c.transaction()?;
            let mut installed: BTreeMap<String, String> =
                crate::store::setting::<String>(&tx, SETTINGS_KEY)?
                    .and_then(|v| serde_json::from_str(&v).ok())
                    .unwrap_or_default();
            let mut present = std::collections::BTreeSet::new();
            let mut changed = false;
            // (rule, Some(error) | None when fixed): to report once.
            let mut errors = Vec::new();
            for pair in pairs {
                let pair = match pair {
                    Ok(p) => p,
                    Err((name, e)) => {
                        present.insert(name.clone());
                        errors.push((name, Some((String::new(), e))));
                        continue;
                    }
                };
                present.insert(pair.name.clone());
                if installed.get(&pair.name) == Some(&pair.fingerprint) {
                    errors.push((pair.name, None));
                    continue;
                }
                let (wasm, rule) = match pair.parsed {
                    Ok(ok) => ok,
                    Err(e) => {
                        errors.push((pair.name, Some((pair.fingerprint, e))));
                        continue;
                    }
                };
                let sha = rules::sha256_hex(&wasm);
                if rules::script_sha(&tx, &pair.name)?.as_deref() != Some(sha.as_str()) {
                    rules::upsert_script(&tx, &pair.name, &wasm)?;
                    changed = true;
                }
                if rules::get_rule(&tx, &pair.name)?.is_none_or(|r| !r.same_definition(&rule)) {
                    rules::upsert_rule(&tx, &rule)?;
                    changed = true;
                }
                installed.insert(pair.name.clone(), pair.fingerprint);
                errors.push((pair.name, None));
            }
            let gone: Vec<String> = installed
                .keys()
                .filter(|n| !present.contains(*n))
                .cloned()
                .collect();
            for name in gone {
                installed.remove(&name);
                errors.push((name.clone(), None));
                if let Some(mut r) = rules::get_rule(&tx, &name)?
                    && r.enabled
                {
                    r.enabled = false;
                    rules::upsert_rule(&tx, &r)?;
                    tracing::info!(rule = %name, "rule file removed: rule disabled");
                    changed = true;
                }
            }
            let list = serde_json::to_string(&installed).unwrap_or_else(|_| "{}".into());
            crate::store::set_setting(&tx, SETTINGS_KEY, list)?;
            tx.commit()?;
            Ok((changed, errors))
        })
        .await?;
    if changed {
        node2.note_tables_changed();
    }
    for (rule, error) in errors {
        match error {
            // Logged once per content: the same bad pair is not reported
            // again at the next scan.
            Some((fingerprint, e)) => {
                if node2.set_dir_error(&rule, Some((fingerprint, e.clone()))) {
                    tracing::error!(rule = %crate::escape::log_safe(&rule), "rules directory: {}", crate::escape::log_safe(&e));
                }
            }
            None => {
                node2.set_dir_error(&rule, None);
            }
        }
    }
    Ok(changed)
}

/// Whether a file event can change what a scan installs (reading a file,
/// which inotify reports as an access, cannot).
fn relevant(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Any | EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
    )
}

/// A watched rules directory: created and watched by [`Watch::start`],
/// scanned once there, then run by [`Watch::run`].
#[derive(Debug)]
pub struct Watch {
    node: Arc<Node>,
    dir: PathBuf,
    _watcher: RecommendedWatcher,
    events: tokio::sync::mpsc::UnboundedReceiver<()>,
}

impl Watch {
    /// Create the directory, start watching it, then scan it once (so no
    /// change between the scan and the watch is missed).
    pub async fn start(node: Arc<Node>, dir: PathBuf) -> Result<Watch, WatchError> {
        let d = dir.clone();
        tokio::task::spawn_blocking(move || std::fs::create_dir_all(&d))
            .await
            .map_err(|e| WatchError::Create {
                dir: dir.clone(),
                source: std::io::Error::other(e.to_string()),
            })?
            .map_err(|source| WatchError::Create {
                dir: dir.clone(),
                source,
            })?;
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|e| relevant(&e.kind)) {
                    let _ = tx.send(());
                }
            })
            .map_err(|source| WatchError::Watch {
                dir: dir.clone(),
                source,
            })?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|source| WatchError::Watch {
                dir: dir.clone(),
                source,
            })?;
        tracing::info!(dir = %dir.display(), "watching the rules directory");
        if let Err(e) = sync_dir(&node, &dir).await {
            tracing::error!("rules directory: {e}");
        }
        Ok(Watch {
            node,
            dir,
            _watcher: watcher,
            events,
        })
    }

    /// After every debounced burst of changes, scan and reload when
    /// something changed; until `shutdown`.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                got = self.events.recv() => if got.is_none() { return },
            }
            // Debounce: wait until the burst is quiet.
            loop {
                tokio::select! {
                    _ = &mut shutdown => return,
                    more = tokio::time::timeout(DEBOUNCE, self.events.recv()) => match more {
                        Ok(Some(())) => continue,
                        Ok(None) => return,
                        Err(_) => break,
                    },
                }
            }
            match sync_dir(&self.node, &self.dir).await {
                Ok(true) => {
                    if let Err(e) = self.node.reload().await {
                        tracing::error!("reload after a rules directory change: {e}");
                    }
                }
                Ok(false) => {}
                Err(e) => tracing::error!("rules directory: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_covers_both_files_and_the_sidecars_absence() {
        let a = fingerprint(b"wasm", None);
        assert_eq!(a, fingerprint(b"wasm", None));
        assert_ne!(a, fingerprint(b"wasm", Some(b"")));
        assert_ne!(a, fingerprint(b"wasn", None));
        assert_ne!(
            fingerprint(b"ab", Some(b"c")),
            fingerprint(b"a", Some(b"bc"))
        );
    }

    #[test]
    fn reading_a_file_is_not_a_change() {
        use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
        assert!(!relevant(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!relevant(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(relevant(&EventKind::Create(CreateKind::File)));
        assert!(relevant(&EventKind::Modify(ModifyKind::Any)));
    }
}
