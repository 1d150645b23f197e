//! Signal names and patterns: the one definition host and guest share.
//!
//! The host checks every name and pattern with these (`tandem_host`'s
//! `engine::names` adds the host's own rules on top); a rule's `SIGNALS`
//! are checked by [`check_signals`] while the rule compiles, so a pattern
//! the node would refuse fails the build instead.

/// The signal a timer delivers ([`crate::Ctx::set_timer`]): raised by the
/// host only, to the rule that set the timer alone.
pub const TIMER: &str = "TIMER";

/// Longest timer a rule may set, in ms (a day).
pub const MAX_TIMER_MS: u64 = 24 * 3600 * 1000;

/// Patterns one rule may subscribe to.
pub const MAX_PATTERNS: usize = 256;
/// Characters of one pattern.
pub const MAX_PATTERN_LEN: usize = 128;
/// `*` in one pattern.
pub const MAX_STARS: usize = 8;

/// What a pattern may be, as the node says it.
pub const PATTERN_RULE: &str =
    "use A-Z, 0-9, `_`, `-` and `*`, starting with a letter, a digit or `*`";

/// Whether `pattern` has the syntax of a signal pattern:
/// `[A-Z0-9*][A-Z0-9_*-]*` (limits apart).
pub const fn valid_pattern(pattern: &str) -> bool {
    let b = pattern.as_bytes();
    if b.is_empty() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let ok = c.is_ascii_uppercase()
            || c.is_ascii_digit()
            || c == b'*'
            || (i > 0 && (c == b'_' || c == b'-'));
        if !ok {
            return false;
        }
        i += 1;
    }
    true
}

/// The `*` in `pattern`.
pub const fn stars(pattern: &str) -> usize {
    let b = pattern.as_bytes();
    let (mut i, mut n) = (0, 0);
    while i < b.len() {
        if b[i] == b'*' {
            n += 1;
        }
        i += 1;
    }
    n
}

/// Check a rule's `SIGNALS` at compile time (`export_rule!` calls it in a
/// `const`): a pattern the node would refuse stops the build with what is
/// allowed. This does not compile:
///
/// ```compile_fail
/// use tandem_guest::{export_rule, Config, Ctx, Error, Rule, SignalView};
/// struct Door;
/// impl Rule for Door {
///     const SIGNALS: &'static [&'static str] = &["door-*-open"];
///     fn init(_: &Config) -> Result<Self, Error> { Ok(Door) }
///     fn on_signal(&mut self, _: &SignalView<'_>, _: &mut Ctx) -> Result<(), Error> { Ok(()) }
/// }
/// export_rule!(Door);
/// ```
///
/// and says: ``Rule::SIGNALS: invalid signal pattern: use A-Z, 0-9, `_`,
/// `-` and `*`, starting with a letter, a digit or `*` (e.g.
/// "DOOR-*-OPEN")``.
pub const fn check_signals(patterns: &[&str]) {
    if patterns.len() > MAX_PATTERNS {
        panic!("Rule::SIGNALS: a rule may have at most 256 signal patterns");
    }
    let mut i = 0;
    while i < patterns.len() {
        let p = patterns[i];
        if p.len() > MAX_PATTERN_LEN {
            panic!("Rule::SIGNALS: a signal pattern may have at most 128 characters");
        }
        if !valid_pattern(p) {
            panic!(
                "Rule::SIGNALS: invalid signal pattern: use A-Z, 0-9, `_`, `-` and `*`, starting with a letter, a digit or `*` (e.g. \"DOOR-*-OPEN\")"
            );
        }
        if stars(p) > MAX_STARS {
            panic!("Rule::SIGNALS: a signal pattern may have at most 8 `*`");
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        for ok in ["DOOR-1-OPEN", "*", "DOOR-*", "*-OPEN", "A_B", "9"] {
            assert!(valid_pattern(ok), "{ok}");
        }
        for bad in ["", "door-*", "-A", "_A", "A B", "A.B", "É"] {
            assert!(!valid_pattern(bad), "{bad}");
        }
        assert_eq!(stars("*-*-*"), 3);
        check_signals(&["DOOR-*", "TICK"]);
        const _: () = check_signals(&["SENSOR-*"]);
    }

    #[test]
    #[should_panic(expected = "invalid signal pattern")]
    fn a_bad_pattern_panics_with_what_is_allowed() {
        check_signals(&["door-open"]);
    }

    #[test]
    #[should_panic(expected = "at most 8")]
    fn too_many_stars() {
        check_signals(&["*-*-*-*-*-*-*-*-*"]);
    }
}
