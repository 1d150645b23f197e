//! Values with units as the config writes them: durations (`"150ms"`),
//! sizes (`"32MiB"`), times of day (`"02:30"`), time zones and secrets,
//! each parsed and range-checked with an error naming key and value.

use std::time::Duration;

use jiff::civil;
use jiff::tz::TimeZone;

use super::{ConfigError, invalid};

/// Parse a duration such as `150ms`, `20s`, `2m`, `1h`, `30d`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    humantime::parse_duration(s.trim()).ok()
}

/// Parse a size such as `32MiB`, `1GiB`, `512KiB`, `1000` (bytes).
pub fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num.parse().ok()?;
    let mult: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Parse a time of day, `HH:MM`.
pub fn parse_time(s: &str) -> Option<civil::Time> {
    let (h, m) = s.trim().split_once(':')?;
    if h.len() > 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (i8, i8) = (h.parse().ok()?, m.parse().ok()?);
    civil::Time::new(h, m, 0, 0).ok()
}

/// The time zone: the configured IANA name, or the system's.
pub fn zone(name: Option<&str>) -> Result<TimeZone, String> {
    match name {
        None => Ok(TimeZone::system()),
        Some(n) => TimeZone::get(n)
            .map_err(|e| format!("an IANA time zone name such as \"Europe/Berlin\" ({e})")),
    }
}

/// An optional duration in `[min, max]`, `default` when absent.
pub(super) fn duration(
    key: &str,
    raw: Option<&str>,
    default: Duration,
    min: Duration,
    max: Duration,
) -> Result<Duration, ConfigError> {
    let Some(text) = raw else { return Ok(default) };
    let d = parse_duration(text).ok_or_else(|| {
        invalid(
            key,
            format!("{text:?}"),
            "a duration such as \"150ms\", \"20s\", \"2m\", \"30d\"",
        )
    })?;
    if d < min || d > max {
        return Err(invalid(
            key,
            format!("{text:?}"),
            format!(
                "between {} and {}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        ));
    }
    Ok(d)
}

/// An optional size of at least `min` bytes, `default` when absent.
pub(super) fn size(
    key: &str,
    raw: Option<&str>,
    default: usize,
    min: usize,
) -> Result<usize, ConfigError> {
    let Some(text) = raw else { return Ok(default) };
    let n = parse_size(text).ok_or_else(|| {
        invalid(
            key,
            format!("{text:?}"),
            "a size such as \"32MiB\" or \"1GiB\"",
        )
    })?;
    if n < min {
        return Err(invalid(
            key,
            format!("{text:?}"),
            format!("at least {min} bytes"),
        ));
    }
    Ok(n)
}

/// An optional count in `range`, `default` when absent.
pub(super) fn count(
    key: &str,
    raw: Option<u32>,
    default: u32,
    range: std::ops::RangeInclusive<u32>,
) -> Result<u32, ConfigError> {
    match raw {
        None => Ok(default),
        Some(n) if range.contains(&n) => Ok(n),
        Some(n) => Err(invalid(
            key,
            n,
            format!("from {} to {}", range.start(), range.end()),
        )),
    }
}

/// A secret from the environment variable `env` (when set and not empty)
/// or the file. A secret written empty in the file is refused: it would
/// silently turn the check it guards off.
pub(super) fn secret(
    key: &str,
    env: &str,
    file: Option<String>,
) -> Result<Option<String>, ConfigError> {
    if let Some(v) = std::env::var(env).ok().filter(|s| !s.is_empty()) {
        return Ok(Some(v));
    }
    match file {
        Some(s) if s.trim().is_empty() => Err(invalid(
            key,
            "\"\"",
            format!("a non-empty secret (or leave the key out; {env} also sets it)"),
        )),
        other => Ok(other),
    }
}

/// `startup_delay` of a pair or cluster member: 2 minutes by default, 10 s
/// to 30 min (from 0 with lab timings).
pub(super) fn startup_delay(
    key: &str,
    raw: Option<&str>,
    lab: bool,
) -> Result<Duration, ConfigError> {
    duration(
        key,
        raw,
        Duration::from_secs(120),
        if lab {
            Duration::ZERO
        } else {
            Duration::from_secs(10)
        },
        Duration::from_secs(1800),
    )
}

/// A lab-only pause (tests use it to kill a node mid-way): 0 when absent,
/// refused without `lab_timings`, up to `max`.
pub(super) fn lab_delay(
    key: &str,
    raw: Option<&str>,
    lab: bool,
    max: Duration,
) -> Result<Duration, ConfigError> {
    match raw {
        None => Ok(Duration::ZERO),
        Some(_) if !lab => Err(invalid(key, "(set)", "only with lab_timings = true")),
        Some(d) => duration(key, Some(d), Duration::ZERO, Duration::ZERO, max),
    }
}

/// Table types to sync (`all` when absent), each a known one.
pub(super) fn sync_types(key: &str, raw: Option<Vec<String>>) -> Result<Vec<String>, ConfigError> {
    let types = raw.unwrap_or_else(|| vec!["all".to_owned()]);
    for t in &types {
        if !["rule", "contact", "device", "pbx", "text", "all"].contains(&t.as_str()) {
            return Err(invalid(
                key,
                format!("{t:?}"),
                "rule, contact, device, pbx, text or all",
            ));
        }
    }
    Ok(types)
}

/// The shortest shared secret accepted (the link's handshake lets a
/// connecting party test guesses offline, so it must not be guessable).
pub const MIN_SHARED_SECRET: usize = 32;

/// Refuse a shared secret that is short or plainly not random. `tandem
/// secret new` prints one that passes.
pub(super) fn strong_secret(key: &str, env: &str, s: &str) -> Result<(), ConfigError> {
    let distinct = s.bytes().collect::<std::collections::BTreeSet<_>>().len();
    if s.len() < MIN_SHARED_SECRET || distinct < 8 {
        return Err(invalid(
            key,
            format!("({} bytes, {distinct} distinct)", s.len()),
            format!(
                "a random secret of at least {MIN_SHARED_SECRET} bytes (or {env}); \
                 `tandem secret new` makes one"
            ),
        ));
    }
    Ok(())
}

/// A new random shared secret: 32 random bytes as 64 hex digits.
pub fn new_secret() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_durations_and_times() {
        assert_eq!(parse_size("32MiB"), Some(32 << 20));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("7"), Some(7));
        assert_eq!(parse_size("MiB"), None);
        assert_eq!(parse_duration("150ms"), Some(Duration::from_millis(150)));
        assert_eq!(
            parse_duration("30d"),
            Some(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(parse_time("02:30"), civil::Time::new(2, 30, 0, 0).ok());
        assert_eq!(parse_time("2:30"), civil::Time::new(2, 30, 0, 0).ok());
        for bad in ["24:00", "12:60", "noon", "12", "12:3", "-1:00", ""] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn secrets() {
        assert!(strong_secret("k", "E", "a").is_err());
        assert!(strong_secret("k", "E", " ").is_err());
        assert!(strong_secret("k", "E", &"a".repeat(40)).is_err());
        assert!(strong_secret("k", "E", "pair-secret").is_err());
        let s = new_secret().expect("random");
        assert_eq!(s.len(), 64);
        strong_secret("k", "E", &s).expect("a new secret passes");
        assert_ne!(s, new_secret().expect("random"));
        assert!(matches!(
            secret("k", "TANDEM_TEST_UNSET_VARIABLE", Some(String::new())),
            Err(ConfigError::Invalid { .. })
        ));
        assert_eq!(
            secret("k", "TANDEM_TEST_UNSET_VARIABLE", None).expect("absent"),
            None
        );
    }
}
