//! The daily table sync at `table_sync_time` (HH:MM in `[node] timezone`,
//! default the system's), as pure functions of an injected clock.
//!
//! The schedule is a series of instants, one a day. A run is due when the
//! latest scheduled instant at or before now is later than the last one
//! done: so a time missed while the node was down runs once, when the
//! node next checks (and the sync's own preconditions wait for both nodes
//! to be Ready). Daylight saving: a local time that does not exist that day
//! (spring forward) runs at the first instant after the gap; one that
//! exists twice (fall back) runs at the first.

use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, civil};

/// The scheduled instant on `date` in `tz`.
fn on(date: civil::Date, at: civil::Time, tz: &TimeZone) -> Option<Timestamp> {
    // `to_zoned` resolves gaps forward and folds to the earlier instant.
    date.to_datetime(at)
        .to_zoned(tz.clone())
        .ok()
        .map(|z| z.timestamp())
}

/// The latest scheduled instant at or before `now`.
pub fn latest(now: Timestamp, at: civil::Time, tz: &TimeZone) -> Option<Timestamp> {
    let today = now.to_zoned(tz.clone()).date();
    let t = on(today, at, tz)?;
    if t <= now {
        Some(t)
    } else {
        on(today.checked_sub(1.day()).ok()?, at, tz)
    }
}

/// The run due at `now`, if any: the latest scheduled instant, when it is
/// after `last_done`.
pub fn due(
    now: Timestamp,
    last_done: Option<Timestamp>,
    at: civil::Time,
    tz: &TimeZone,
) -> Option<Timestamp> {
    let t = latest(now, at, tz)?;
    match last_done {
        Some(done) if done >= t => None,
        _ => Some(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_time, zone};

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn once_a_day_and_a_missed_time_runs_once() {
        let tz = zone(Some("Europe/Berlin")).unwrap();
        let at = parse_time("03:30").unwrap();
        // 03:30 Berlin in winter is 02:30 UTC.
        assert_eq!(
            due(
                ts("2026-01-10T02:29:00Z"),
                Some(ts("2026-01-09T02:30:00Z")),
                at,
                &tz
            ),
            None
        );
        let t = due(
            ts("2026-01-10T02:30:00Z"),
            Some(ts("2026-01-09T02:30:00Z")),
            at,
            &tz,
        )
        .unwrap();
        assert_eq!(t, ts("2026-01-10T02:30:00Z"));
        assert_eq!(
            due(ts("2026-01-10T09:00:00Z"), Some(t), at, &tz),
            None,
            "done for today"
        );
        // Down for three days: the missed time runs once.
        let t = due(
            ts("2026-01-13T12:00:00Z"),
            Some(ts("2026-01-10T02:30:00Z")),
            at,
            &tz,
        )
        .unwrap();
        assert_eq!(t, ts("2026-01-13T02:30:00Z"));
        assert_eq!(due(ts("2026-01-13T12:01:00Z"), Some(t), at, &tz), None);
    }

    #[test]
    fn daylight_saving_gaps_and_folds() {
        let tz = zone(Some("Europe/Berlin")).unwrap();
        // 2026-03-29: 02:00 -> 03:00 local. 02:30 does not exist: it runs
        // at 03:30 CEST = 01:30 UTC.
        let at = parse_time("02:30").unwrap();
        assert_eq!(
            latest(ts("2026-03-29T12:00:00Z"), at, &tz),
            Some(ts("2026-03-29T01:30:00Z"))
        );
        // 2026-10-25: 03:00 -> 02:00 local; 02:30 happens twice: the first.
        assert_eq!(
            latest(ts("2026-10-25T12:00:00Z"), at, &tz),
            Some(ts("2026-10-25T00:30:00Z"))
        );
        // Summer time: 03:30 CEST is 01:30 UTC.
        let at = parse_time("03:30").unwrap();
        assert_eq!(
            latest(ts("2026-07-01T12:00:00Z"), at, &tz),
            Some(ts("2026-07-01T01:30:00Z"))
        );
    }

    #[test]
    fn times_and_zones_are_validated() {
        assert!(parse_time("24:00").is_none());
        assert!(parse_time("7").is_none());
        assert_eq!(parse_time("07:05"), civil::Time::new(7, 5, 0, 0).ok());
        assert!(zone(Some("Mars/Olympus")).is_err());
    }
}
