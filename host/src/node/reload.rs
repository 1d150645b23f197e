//! Reload: read `signal_rule` and `signal_script`, compile what changed
//! outside the rule set's lock (unchanged modules come from the cache),
//! and swap the new set in between two signals. Quarantine stored in the
//! database is applied again after every reload.

use std::sync::Arc;
use std::time::Duration;

use super::*;

impl Node {
    /// Reload the rule set from the store (see the module docs).
    pub async fn reload(self: &Arc<Self>) -> Result<ReloadSummary, NodeError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let node = self.clone();
        let summary = tokio::task::spawn_blocking(move || node.reload_blocking())
            .await
            .map_err(|e| NodeError::Task(e.to_string()))??;
        self.metrics.reloads.inc_by(1);
        self.metrics
            .reload_failures
            .inc_by(summary.errors.len() as u64);
        for e in &summary.errors {
            tracing::error!("reload: {e}");
        }
        if !summary.loaded.is_empty() || !summary.removed.is_empty() {
            tracing::info!(loaded = ?summary.loaded, removed = ?summary.removed, kept = summary.kept.len(), "rules reloaded");
        }
        *self.last_reload.lock().unwrap_or_else(|p| p.into_inner()) = summary.clone();
        Ok(summary)
    }

    fn reload_blocking(&self) -> Result<ReloadSummary, NodeError> {
        // Modules still loaded are found by their stored sha256: their bytes
        // are not even read.
        let rows = self.store.read_blocking(|c| {
            rules::rules_with_scripts(c, |sha| self.cached_script(sha).is_some())
        })?;
        let mut errors = Vec::new();
        let groups = self.config.rule_groups();
        let mut specs = Vec::with_capacity(rows.len());
        let mut keep = Vec::new();
        // Compile outside the rule set's lock: signals keep flowing.
        for row in rows {
            let r = row.rule;
            if !groups.contains(&r.group) {
                // A group the config lacks: refused, naming what exists.
                if r.enabled {
                    errors.push(format!(
                        "rule `{}`: group {:?} is not configured; the groups are {groups:?}",
                        r.name, r.group
                    ));
                }
                continue;
            }
            let script = match (
                row.sha256.as_deref().and_then(|s| self.cached_script(s)),
                row.wasm,
            ) {
                (Some(script), _) => Ok(script),
                (None, Some(wasm)) => self.engine.compile(&r.name, &wasm),
                (None, None) => Err(EngineError::Malformed {
                    rule: r.name.clone(),
                    reason: format!("its script `{}` does not exist", r.script),
                }),
            };
            match script {
                Ok(script) => specs.push(RuleSpec {
                    name: r.name,
                    script,
                    signals: r.signals,
                    config: r.config,
                    deadline: r.deadline_ms.map(Duration::from_millis),
                    enabled: r.enabled,
                    group: r.group.as_str().into(),
                }),
                Err(e) => {
                    // The previous version keeps running, unless the row
                    // now disables the rule.
                    if r.enabled {
                        errors.push(e.to_string());
                    }
                    keep.push((r.name, r.enabled));
                }
            }
        }
        // Quarantine outlives restarts and reloads, until an operator
        // resets the rule.
        let stored_quarantine = self.store.read_blocking(rules::quarantined)?;
        let mut rules = self.lock_rules();
        specs.extend(keep.iter().filter_map(|(name, enabled)| {
            let mut spec = rules.spec(name)?;
            spec.enabled = *enabled;
            Some(spec)
        }));
        let report = rules.install(specs);
        for (name, why) in stored_quarantine {
            rules.restore_quarantine(&name, &why);
        }
        drop(rules);
        errors.extend(report.failed.iter().map(|(e, kept)| {
            if *kept {
                format!("{e} (the previous version keeps running)")
            } else {
                e.to_string()
            }
        }));
        Ok(ReloadSummary {
            loaded: report.loaded,
            kept: report.kept,
            removed: report.removed,
            errors,
        })
    }

    /// A loaded module by its hex sha256.
    fn cached_script(&self, sha_hex: &str) -> Option<Arc<crate::engine::Script>> {
        let sha: crate::engine::Sha256Digest = hex::decode(sha_hex).ok()?.try_into().ok()?;
        self.engine.cached(&sha)
    }
}
