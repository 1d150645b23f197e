//! The `signal_rule` and `signal_script` tables: every way of installing a
//! rule (rules directory, admin API, table sync) ends here.

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use tandem_guest::Config;

use super::{StoreError, now_ms};

/// A `signal_rule` row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleRow {
    pub name: String,
    pub script: String,
    pub enabled: bool,
    /// Patterns; empty = the module's declared defaults.
    pub signals: Vec<String>,
    pub deadline_ms: Option<u64>,
    pub config: Config,
    pub updated_at: i64,
    /// The rule's group (DESIGN.md §7); `default` when it names none.
    #[serde(default = "default_group")]
    pub group: String,
}

fn default_group() -> String {
    crate::config::DEFAULT_GROUP.to_owned()
}

/// A rule row with its script: the sha256 as stored, and the bytes unless
/// the caller already has that module.
#[derive(Debug, Clone)]
pub struct RuleWithScript {
    pub rule: RuleRow,
    /// The script's sha256 (hex); `None` if the script is missing.
    pub sha256: Option<String>,
    /// The bytes; `None` when `have(sha256)` said they are not needed, or
    /// the script is missing.
    pub wasm: Option<Vec<u8>>,
}

impl RuleRow {
    /// Whether `other` defines the same rule (everything but `updated_at`).
    pub fn same_definition(&self, other: &RuleRow) -> bool {
        self.name == other.name
            && self.script == other.script
            && self.enabled == other.enabled
            && self.signals == other.signals
            && self.deadline_ms == other.deadline_ms
            && self.config == other.config
            && self.group == other.group
    }
}

/// The hex sha256 of a script's bytes, as `signal_script.sha256` holds it.
pub fn sha256_hex(wasm: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(wasm))
}

/// A script's stored sha256 (hex), if the script exists.
pub fn script_sha(conn: &Connection, name: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT sha256 FROM signal_script WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .optional()?)
}

fn json<T: Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Invalid(e.to_string()))
}

/// Insert or replace a script; returns its sha256 (hex).
pub fn upsert_script(conn: &Connection, name: &str, wasm: &[u8]) -> Result<String, StoreError> {
    let sha = sha256_hex(wasm);
    conn.execute(
        "INSERT INTO signal_script (name, wasm, sha256, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (name) DO UPDATE SET wasm = excluded.wasm, sha256 = excluded.sha256,
             updated_at = excluded.updated_at",
        params![name, wasm, sha, now_ms()],
    )?;
    Ok(sha)
}

/// Insert or replace a rule row (its `updated_at` is set to now).
pub fn upsert_rule(conn: &Connection, rule: &RuleRow) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO signal_rule (name, script, enabled, signals, deadline_ms, config, updated_at, grp)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (name) DO UPDATE SET script = excluded.script, enabled = excluded.enabled,
             signals = excluded.signals, deadline_ms = excluded.deadline_ms,
             config = excluded.config, updated_at = excluded.updated_at, grp = excluded.grp",
        params![
            rule.name,
            rule.script,
            rule.enabled,
            json(&rule.signals)?,
            rule.deadline_ms.map(|d| d as i64),
            json(&rule.config)?,
            now_ms(),
            rule.group
        ],
    )?;
    Ok(())
}

/// Delete a rule row; `false` if there was none.
pub fn delete_rule(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    Ok(conn.execute("DELETE FROM signal_rule WHERE name = ?1", [name])? > 0)
}

fn row_to_rule(r: &rusqlite::Row<'_>) -> rusqlite::Result<(RuleRow, String, String)> {
    Ok((
        RuleRow {
            name: r.get(0)?,
            script: r.get(1)?,
            enabled: r.get(2)?,
            signals: Vec::new(),
            deadline_ms: r.get::<_, Option<i64>>(4)?.map(|d| d.max(0) as u64),
            config: Config::new(),
            updated_at: r.get(6)?,
            group: r.get(7)?,
        },
        r.get(3)?,
        r.get(5)?,
    ))
}

fn finish(row: (RuleRow, String, String)) -> Result<RuleRow, StoreError> {
    let (mut rule, signals, config) = row;
    rule.signals = serde_json::from_str(&signals)
        .map_err(|e| StoreError::Invalid(format!("rule `{}`: signals: {e}", rule.name)))?;
    rule.config = serde_json::from_str(&config)
        .map_err(|e| StoreError::Invalid(format!("rule `{}`: config: {e}", rule.name)))?;
    Ok(rule)
}

const RULE_COLUMNS: &str = "name, script, enabled, signals, deadline_ms, config, updated_at, grp";

/// Every rule row, by name.
pub fn list_rules(conn: &Connection) -> Result<Vec<RuleRow>, StoreError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {RULE_COLUMNS} FROM signal_rule ORDER BY name"
    ))?;
    let rows = stmt.query_map([], row_to_rule)?;
    rows.map(|r| finish(r?)).collect()
}

/// One rule row.
pub fn get_rule(conn: &Connection, name: &str) -> Result<Option<RuleRow>, StoreError> {
    conn.query_row(
        &format!("SELECT {RULE_COLUMNS} FROM signal_rule WHERE name = ?1"),
        [name],
        row_to_rule,
    )
    .optional()?
    .map(finish)
    .transpose()
}

/// Whether a script exists.
pub fn script_exists(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM signal_script WHERE name = ?1",
            [name],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// Every rule with its script. Bytes are read only for scripts whose
/// sha256 `have` does not know (so a reload reads just what changed).
pub fn rules_with_scripts(
    conn: &Connection,
    have: impl Fn(&str) -> bool,
) -> Result<Vec<RuleWithScript>, StoreError> {
    let rules = list_rules(conn)?;
    let mut sha_stmt = conn.prepare_cached("SELECT sha256 FROM signal_script WHERE name = ?1")?;
    let mut wasm_stmt = conn.prepare_cached("SELECT wasm FROM signal_script WHERE name = ?1")?;
    rules
        .into_iter()
        .map(|rule| {
            let sha256: Option<String> = sha_stmt
                .query_row([&rule.script], |r| r.get(0))
                .optional()?;
            let wasm = match &sha256 {
                Some(sha) if !have(sha) => wasm_stmt
                    .query_row([&rule.script], |r| r.get(0))
                    .optional()?,
                _ => None,
            };
            Ok(RuleWithScript { rule, sha256, wasm })
        })
        .collect()
}

/// Store that `name` is quarantined on this node, and why.
pub fn save_quarantine(conn: &Connection, name: &str, why: &str) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO rule_quarantine (name, since, reason) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET since = excluded.since, reason = excluded.reason",
    )?
    .execute(params![name, now_ms(), why])?;
    Ok(())
}

/// An operator reset `name`: forget its quarantine; `true` if there was
/// one stored.
pub fn clear_quarantine(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    Ok(conn.execute("DELETE FROM rule_quarantine WHERE name = ?1", [name])? > 0)
}

/// Every quarantined rule: (name, why).
pub fn quarantined(conn: &Connection) -> Result<Vec<(String, String)>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT name, reason FROM rule_quarantine ORDER BY name")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn rules_round_trip_and_join_their_scripts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .write_blocking(|c| {
                let sha = upsert_script(c, "s", b"\0asm")?;
                assert_eq!(sha.len(), 64);
                upsert_rule(
                    c,
                    &RuleRow {
                        name: "r".into(),
                        script: "s".into(),
                        enabled: true,
                        signals: vec!["PANIC-*".into()],
                        deadline_ms: Some(20),
                        group: "default".into(),
                        config: Config::new().with("to", "group:x").with("n", 3),
                        updated_at: 0,
                    },
                )
            })
            .unwrap();
        let got = store
            .read_blocking(|c| rules_with_scripts(c, |_| false))
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].wasm.as_deref(), Some(&b"\0asm"[..]));
        let sha = got[0].sha256.clone().unwrap();
        let known = store
            .read_blocking(|c| rules_with_scripts(c, |s| s == sha))
            .unwrap();
        assert_eq!(known[0].wasm, None, "bytes of a known module are not read");
        assert_eq!(got[0].rule.signals, ["PANIC-*"]);
        assert_eq!(got[0].rule.deadline_ms, Some(20));
        assert_eq!(
            got[0].rule.config.get("n").and_then(|v| v.as_i64()),
            Some(3)
        );
        assert!(store.write_blocking(|c| delete_rule(c, "r")).unwrap());
        assert!(!store.write_blocking(|c| delete_rule(c, "r")).unwrap());
        assert!(store.read_blocking(|c| get_rule(c, "r")).unwrap().is_none());
    }
}
