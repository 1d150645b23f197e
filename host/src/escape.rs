//! Text from outside (rule names, file names, guest log lines, peer
//! messages) made safe to print: control characters are escaped, so a
//! newline or an escape sequence cannot forge a log line or drive the
//! operator's terminal. And [`LogLimiter`], so a flood of one kind of
//! line cannot fill the disk.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Lets a repeated log line through at most once per interval (the
/// metric beside it still counts every case).
#[derive(Debug)]
pub struct LogLimiter {
    interval_ms: u64,
    last_ms: AtomicU64,
}

impl LogLimiter {
    pub const fn new(interval: Duration) -> LogLimiter {
        LogLimiter {
            interval_ms: interval.as_millis() as u64,
            last_ms: AtomicU64::new(0),
        }
    }

    /// Whether to log now.
    pub fn allow(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let last = self.last_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= self.interval_ms
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// `text` with every control character escaped (`\n`, `\u{1b}`...), and
/// borrowed when there is none.
pub fn log_safe(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limiter_lets_one_through_per_interval() {
        let l = LogLimiter::new(Duration::from_secs(3600));
        assert!(l.allow());
        assert!(!l.allow());
        assert!(!l.allow());
    }

    #[test]
    fn control_characters_cannot_forge_a_line() {
        assert!(matches!(log_safe("plain text é"), Cow::Borrowed(_)));
        assert_eq!(
            log_safe("x\nINFO forged"),
            "x\\nINFO forged",
            "a newline stays on one line"
        );
        assert_eq!(log_safe("\u{1b}[2J"), "\\u{1b}[2J");
        assert_eq!(log_safe("a\0b\r"), "a\\u{0}b\\r");
    }
}
