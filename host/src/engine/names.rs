//! The naming rules, in one place: signal names, signal patterns and their
//! limits, rule and script names, and the names only the host raises.
//!
//! Every way in (HTTP ingest, a rule's raise, a rule's patterns from the
//! admin API, the rules directory, a table sync or the module's own
//! `tandem.signals` section) is checked against these.

/// Signal names only the host raises: an outside signal or a rule's raise
/// with one of these prefixes is refused.
pub const HOST_ONLY_PREFIXES: [&str; 2] = ["FAILOVER-", "NOTIFY-"];

pub use tandem_guest::names::{MAX_PATTERN_LEN, MAX_PATTERNS, MAX_STARS};

/// Characters of a rule or script name.
pub const MAX_RULE_NAME: usize = 128;
/// What a rule or script name may be, for error messages.
pub const RULE_NAME_RULE: &str = "rule and script names are 1 to 128 characters: letters, digits, `-`, `_` and `.`, not starting with `.`";

/// Whether `pattern` has the syntax of a signal pattern:
/// `[A-Z0-9*][A-Z0-9_*-]*` (see [`check_patterns`] for the limits).
pub fn valid_pattern(pattern: &str) -> bool {
    tandem_guest::names::valid_pattern(pattern)
}

/// Whether `name` is a valid signal name: `[A-Z0-9][A-Z0-9_-]*`.
pub fn valid_name(name: &str) -> bool {
    !name.contains('*') && valid_pattern(name)
}

/// Signal names, exact, only the host raises: a timer's signal.
pub const HOST_ONLY_NAMES: [&str; 1] = [tandem_guest::names::TIMER];

/// The host-only prefix `name` starts with, or the host-only name it is,
/// if any.
pub fn host_only(name: &str) -> Option<&'static str> {
    HOST_ONLY_PREFIXES
        .iter()
        .find(|p| name.starts_with(*p))
        .or_else(|| HOST_ONLY_NAMES.iter().find(|n| **n == name))
        .copied()
}

/// Whether a rule may raise `name`: a valid signal name, not one only the
/// host raises. The error says why not.
pub fn check_raise_name(name: &str) -> Result<(), String> {
    if !valid_name(name) {
        return Err(format!(
            "raise of `{name}` refused: not a valid signal name"
        ));
    }
    if let Some(p) = host_only(name) {
        return Err(format!(
            "raise of `{name}` refused: `{p}` signals are raised by the host only"
        ));
    }
    Ok(())
}

/// Check one rule's patterns: syntax, count, length and stars. The error
/// says which limit and what is allowed.
pub fn check_patterns(patterns: &[String]) -> Result<(), String> {
    if patterns.len() > MAX_PATTERNS {
        return Err(format!(
            "{} signal patterns; a rule may have at most {MAX_PATTERNS}",
            patterns.len()
        ));
    }
    for p in patterns {
        if p.len() > MAX_PATTERN_LEN {
            return Err(format!(
                "a signal pattern of {} characters; at most {MAX_PATTERN_LEN} are allowed",
                p.len()
            ));
        }
        if !valid_pattern(p) {
            return Err(format!(
                "invalid signal pattern `{p}`: use A-Z, 0-9, `_`, `-` and `*`"
            ));
        }
        let stars = tandem_guest::names::stars(p);
        if stars > MAX_STARS {
            return Err(format!(
                "signal pattern `{p}` has {stars} `*`; at most {MAX_STARS} are allowed"
            ));
        }
    }
    Ok(())
}

/// Whether `name` is a valid rule or script name (see [`RULE_NAME_RULE`]):
/// safe as a file stem, a URL segment, a log field and an SQL literal.
pub fn valid_rule_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_RULE_NAME
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_patterns() {
        assert!(valid_name("FAILOVER-ON"));
        assert!(!valid_name("FAILOVER-*"));
        assert!(!valid_name("failover"));
        assert_eq!(host_only("FAILOVER-ON"), Some("FAILOVER-"));
        assert_eq!(host_only("NOTIFY-FAILED"), Some("NOTIFY-"));
        assert_eq!(host_only("DOOR-1"), None);
        assert_eq!(host_only("TIMER"), Some("TIMER"));
        assert_eq!(host_only("TIMER-1"), None);
    }

    #[test]
    fn pattern_limits_name_the_limit() {
        let many: Vec<String> = (0..=MAX_PATTERNS).map(|i| format!("P{i}")).collect();
        assert!(check_patterns(&many).unwrap_err().contains("at most 256"));
        assert!(check_patterns(&many[..MAX_PATTERNS]).is_ok());
        let long = vec!["A".repeat(MAX_PATTERN_LEN + 1)];
        assert!(check_patterns(&long).unwrap_err().contains("at most 128"));
        let stars = vec![format!("ZZ{}", "*A".repeat(MAX_STARS + 1))];
        assert!(
            check_patterns(&stars)
                .unwrap_err()
                .contains("has 9 `*`; at most 8 are allowed")
        );
        let ok = vec![format!("ZZ{}", "*A".repeat(MAX_STARS))];
        assert!(check_patterns(&ok).is_ok());
        let bad = vec!["door".to_owned()];
        assert!(
            check_patterns(&bad)
                .unwrap_err()
                .contains("invalid signal pattern")
        );
    }

    #[test]
    fn rule_names_are_safe_everywhere() {
        for good in ["k", "door-held-open", "panic_button", "v1.2"] {
            assert!(valid_rule_name(good), "{good}");
        }
        let long = "x".repeat(MAX_RULE_NAME + 1);
        for bad in [
            "",
            "../../etc/passwd",
            "a/b",
            "a\0b",
            "a\nb",
            "a\x1bb",
            "x'; DROP TABLE person; --",
            ".hidden",
            "..",
            long.as_str(),
        ] {
            assert!(!valid_rule_name(bad), "{bad:?}");
        }
    }
}
