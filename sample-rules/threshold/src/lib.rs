//! Sample rule (stateful): a reading above a threshold too many times in a
//! row.
//!
//! Config (all optional):
//! - `signal`: only this signal name counts (default: every signal the rule
//!   subscribes to, `SENSOR-*` unless the rule row says otherwise);
//! - `field`: the reading's field (default `value`); numbers, and strings
//!   that parse as numbers;
//! - `above`: the threshold (default 100);
//! - `count`: how many consecutive readings above it (default 3);
//! - `to` (default `group:facilities`), `channel` (default `default`).
//!
//! Streaks are per `source`, so two sensors do not mix. It notifies once per
//! excursion: a reading at or below the threshold ends it. A signal without
//! the field (or with a non-numeric one) neither extends nor ends a streak.

use std::collections::BTreeMap;

use tandem_guest::{Config, Ctx, Error, Notify, Rule, SignalView, export_rule};

#[derive(Debug, Default)]
struct Streak {
    run: u64,
    notified: bool,
}

/// Streaks by source.
#[derive(Debug)]
pub struct Threshold {
    signal: Option<String>,
    field: String,
    above: f64,
    count: u64,
    to: String,
    channel: String,
    streaks: BTreeMap<String, Streak>,
}

impl Rule for Threshold {
    const SIGNALS: &'static [&'static str] = &["SENSOR-*"];
    const CONFIG_KEYS: &'static [&'static str] =
        &["count", "signal", "field", "above", "to", "channel"];

    fn init(config: &Config) -> Result<Self, Error> {
        let count = config.u64_or("count", 3)?;
        if count == 0 {
            return Err(Error::new("config `count` must be at least 1"));
        }
        let signal = config.str_or("signal", "")?;
        Ok(Threshold {
            signal: (!signal.is_empty()).then(|| signal.to_owned()),
            field: config.str_or("field", "value")?.to_owned(),
            above: config.f64_or("above", 100.0)?,
            count,
            to: config.str_or("to", "group:facilities")?.to_owned(),
            channel: config
                .str_or("channel", Notify::DEFAULT_CHANNEL)?
                .to_owned(),
            streaks: BTreeMap::new(),
        })
    }

    fn on_signal(&mut self, signal: &SignalView<'_>, ctx: &mut Ctx) -> Result<(), Error> {
        if self
            .signal
            .as_deref()
            .is_some_and(|want| want != signal.name)
        {
            return Ok(());
        }
        // A number, or a string holding one (sensors often send "21.5").
        let reading = match signal.f64_field(&self.field) {
            Ok(n) => n,
            Err(_) => signal
                .str_field(&self.field)
                .ok()
                .flatten()
                .and_then(|s| s.trim().parse().ok()),
        };
        let Some(reading) = reading else {
            return Ok(());
        };
        if reading <= self.above {
            // The excursion, if any, ends; a source never above has none.
            if let Some(streak) = self.streaks.get_mut(signal.source) {
                *streak = Streak::default();
            }
            return Ok(());
        }
        // A source seen before costs no allocation.
        if !self.streaks.contains_key(signal.source) {
            self.streaks
                .insert(signal.source.to_owned(), Streak::default());
        }
        let Some(streak) = self.streaks.get_mut(signal.source) else {
            return Ok(());
        };
        streak.run += 1;
        if streak.run >= self.count && !streak.notified {
            streak.notified = true;
            let who = if signal.source.is_empty() {
                signal.name
            } else {
                signal.source
            };
            ctx.notify_on(
                &self.channel,
                &self.to,
                format!("{who}: {} above {}", self.field, self.above),
                format!(
                    "{who} reported {} = {reading}, above {} for {} readings in a row",
                    self.field, self.above, streak.run
                ),
            );
        }
        Ok(())
    }
}

export_rule!(Threshold);

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_guest::Signal;
    use tandem_guest::testing::Harness;

    fn reading(source: &str, v: f64) -> Signal {
        Signal::new("SENSOR-TEMP")
            .with_source(source)
            .with_field("value", v)
    }

    fn count(h: &mut Harness<Threshold>, s: &Signal) -> usize {
        h.notifications(s).unwrap().len()
    }

    #[test]
    fn notifies_once_per_excursion() {
        let cfg = Config::new().with("above", 30).with("count", 3);
        let mut h = Harness::<Threshold>::new(&cfg).unwrap();
        assert_eq!(count(&mut h, &reading("t1", 31.0)), 0);
        assert_eq!(count(&mut h, &reading("t1", 32.0)), 0);
        assert_eq!(count(&mut h, &reading("t1", 33.0)), 1);
        assert_eq!(count(&mut h, &reading("t1", 34.0)), 0, "once per excursion");
        assert_eq!(
            count(&mut h, &reading("t1", 30.0)),
            0,
            "at the threshold ends it"
        );
        for _ in 0..2 {
            assert_eq!(count(&mut h, &reading("t1", 40.0)), 0);
        }
        assert_eq!(count(&mut h, &reading("t1", 40.0)), 1, "a new excursion");
    }

    #[test]
    fn streaks_are_per_source_and_need_consecutive_readings() {
        let cfg = Config::new().with("above", 30).with("count", 2);
        let mut h = Harness::<Threshold>::new(&cfg).unwrap();
        assert_eq!(count(&mut h, &reading("a", 31.0)), 0);
        assert_eq!(count(&mut h, &reading("b", 31.0)), 0);
        assert_eq!(count(&mut h, &reading("a", 29.0)), 0);
        assert_eq!(count(&mut h, &reading("a", 31.0)), 0);
        assert_eq!(count(&mut h, &reading("b", 31.0)), 1);
    }

    #[test]
    fn empty_config_has_sensible_defaults() {
        let mut h = Harness::<Threshold>::new(&Config::new()).unwrap();
        for _ in 0..2 {
            assert_eq!(count(&mut h, &reading("x", 101.0)), 0);
        }
        let n = h.notifications(&reading("x", 150.0)).unwrap();
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].to, "group:facilities");
        assert!(n[0].body.contains("150"), "{}", n[0].body);
    }

    #[test]
    fn signal_filter_field_and_string_readings() {
        let cfg = Config::new()
            .with("signal", "SENSOR-HUM")
            .with("field", "rh")
            .with("above", 80)
            .with("count", 1);
        let mut h = Harness::<Threshold>::new(&cfg).unwrap();
        let temp = Signal::new("SENSOR-TEMP").with_field("rh", 99);
        assert_eq!(count(&mut h, &temp), 0);
        let hum = Signal::new("SENSOR-HUM").with_field("rh", "85.5");
        assert_eq!(count(&mut h, &hum), 1);
        assert_eq!(count(&mut h, &Signal::new("SENSOR-HUM")), 0);
    }

    #[test]
    fn zero_count_is_refused() {
        let err = Harness::<Threshold>::new(&Config::new().with("count", 0)).unwrap_err();
        assert!(err.to_string().contains("count"), "{err}");
    }
}
