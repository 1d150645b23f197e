//! Sample rule (stateful): a door held open too long.
//!
//! `DOOR-<id>-OPEN` starts a timer for door `<id>`; `DOOR-<id>-CLOSE` clears
//! it. Once `seconds` have passed, the rule raises `DOOR-HELD-OPEN` (fields
//! `door`, `opened_at`, `seconds`) and notifies security, once per opening.
//! It asks the node for a `TIMER` when the next open door is due
//! (`ctx.set_timer`), so no other signal is needed; a `TICK`, or any door
//! signal, checks the doors too (a host without timers).
//!
//! Time is the signal's own `time` (or the host clock when a signal has
//! none), so a replayed signal is judged by when it happened.
//!
//! Config (all optional): `seconds` (default 60; fractions allowed, from 0,
//! at once, to a day), `to` (default `group:security`), `channel` (default
//! `default`).
//!
//! The timers live in instance memory: they survive reloads of other rules,
//! not a failover (the other node starts with no open doors).

use std::collections::BTreeMap;

use tandem_guest::time::format_utc;
use tandem_guest::{Config, Ctx, Error, Notify, Rule, SignalView, Value, export_rule};

/// The signal this rule raises.
pub const HELD_OPEN: &str = "DOOR-HELD-OPEN";

#[derive(Debug)]
struct Timer {
    opened_at: i64,
    alerted: bool,
}

/// Open doors, by door id.
#[derive(Debug)]
pub struct DoorHeldOpen {
    limit_ms: i64,
    to: String,
    channel: String,
    open: BTreeMap<String, Timer>,
}

impl DoorHeldOpen {
    /// How many doors are open right now.
    pub fn open_doors(&self) -> usize {
        self.open.len()
    }
}

/// `DOOR-12-OPEN` -> (`12`, true); `DOOR-12-CLOSE` -> (`12`, false).
fn parse_door(name: &str) -> Option<(&str, bool)> {
    let rest = name.strip_prefix("DOOR-")?;
    if let Some(id) = rest.strip_suffix("-OPEN") {
        Some((id, true))
    } else {
        rest.strip_suffix("-CLOSE").map(|id| (id, false))
    }
}

impl Rule for DoorHeldOpen {
    const SIGNALS: &'static [&'static str] = &["DOOR-*-OPEN", "DOOR-*-CLOSE", "TICK"];
    const CONFIG_KEYS: &'static [&'static str] = &["seconds", "to", "channel"];

    fn init(config: &Config) -> Result<Self, Error> {
        let seconds = config.f64_or("seconds", 60.0)?;
        if !(0.0..=86_400.0).contains(&seconds) {
            return Err(Error::new(format!(
                "config `seconds` must be from 0 to 86400, got {seconds}"
            )));
        }
        Ok(DoorHeldOpen {
            limit_ms: (seconds * 1000.0).round() as i64,
            to: config.str_or("to", "group:security")?.to_owned(),
            channel: config
                .str_or("channel", Notify::DEFAULT_CHANNEL)?
                .to_owned(),
            open: BTreeMap::new(),
        })
    }

    fn on_signal(&mut self, signal: &SignalView<'_>, ctx: &mut Ctx) -> Result<(), Error> {
        let now = if signal.time > 0 {
            signal.time
        } else {
            ctx.now()
        };
        // Our own DOOR-HELD-OPEN matches DOOR-*-OPEN: it is not a door.
        if signal.name != HELD_OPEN {
            match parse_door(signal.name) {
                Some((door, true)) => {
                    self.open.entry(door.to_owned()).or_insert(Timer {
                        opened_at: now,
                        alerted: false,
                    });
                }
                Some((door, false)) => {
                    self.open.remove(door);
                }
                None => {}
            }
        }
        // Whole seconds as an integer, as before fractions were allowed.
        let seconds = if self.limit_ms % 1000 == 0 {
            Value::Int(self.limit_ms / 1000)
        } else {
            Value::Float(self.limit_ms as f64 / 1000.0)
        };
        for (door, timer) in &mut self.open {
            if timer.alerted || now - timer.opened_at < self.limit_ms {
                continue;
            }
            timer.alerted = true;
            ctx.raise(
                HELD_OPEN,
                [
                    ("door", Value::from(door.as_str())),
                    ("opened_at", Value::Int(timer.opened_at)),
                    ("seconds", seconds.clone()),
                ],
            );
            ctx.notify_on(
                &self.channel,
                &self.to,
                format!("Door {door} held open"),
                format!(
                    "door {door} has been open since {} (more than {seconds} s)",
                    format_utc(timer.opened_at)
                ),
            );
        }
        // Wake up when the next open door is due.
        if let Some(due) = self
            .open
            .values()
            .filter(|t| !t.alerted)
            .map(|t| t.opened_at + self.limit_ms)
            .min()
        {
            let after = u64::try_from(due - now).unwrap_or(0);
            ctx.set_timer(std::time::Duration::from_millis(after));
        }
        Ok(())
    }
}

export_rule!(DoorHeldOpen);

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_guest::testing::Harness;
    use tandem_guest::{Action, Signal};

    const T0: i64 = 1_763_780_000_000;

    fn at(name: &str, t: i64) -> Signal {
        Signal::new(name).with_time(t)
    }

    fn harness(seconds: i64) -> Harness<DoorHeldOpen> {
        Harness::new(&Config::new().with("seconds", seconds)).unwrap()
    }

    /// The actions but the timer requests.
    fn alerts(h: &mut Harness<DoorHeldOpen>, s: &Signal) -> Result<Vec<Action>, Error> {
        Ok(h.signal(s)?
            .into_iter()
            .filter(|a| !matches!(a, Action::Timer(_)))
            .collect())
    }

    /// The timer the rule asked for, if any.
    fn timer(h: &mut Harness<DoorHeldOpen>, s: &Signal) -> Option<u64> {
        h.signal(s).unwrap().iter().find_map(|a| match a {
            Action::Timer(t) => Some(t.after_ms),
            _ => None,
        })
    }

    #[test]
    fn asks_for_a_timer_when_the_next_door_is_due() {
        let mut h = harness(30);
        assert_eq!(timer(&mut h, &at("DOOR-7-OPEN", T0)), Some(30_000));
        assert_eq!(timer(&mut h, &at("DOOR-8-OPEN", T0 + 10_000)), Some(20_000));
        // The TIMER itself (time: when it was due) alerts door 7 and asks
        // for door 8's.
        let actions = h.signal(&at("TIMER", T0 + 30_000)).unwrap();
        assert!(matches!(&actions[0], Action::Raise(r) if r.fields["door"] == Value::from("7")));
        assert!(matches!(actions.last(), Some(Action::Timer(t)) if t.after_ms == 10_000));
        let raised = h.raises(&at("TIMER", T0 + 40_000)).unwrap();
        assert_eq!(raised[0].fields["door"], Value::from("8"));
        // Nothing left to wait for.
        assert_eq!(timer(&mut h, &at("TIMER", T0 + 41_000)), None);
    }

    #[test]
    fn seconds_may_be_a_fraction_and_are_bounded() {
        let mut h = Harness::<DoorHeldOpen>::new(&Config::new().with("seconds", 0.25)).unwrap();
        assert_eq!(timer(&mut h, &at("DOOR-1-OPEN", T0)), Some(250));
        let raised = h.raises(&at("TIMER", T0 + 250)).unwrap();
        assert_eq!(raised[0].fields["seconds"], Value::Float(0.25));
        for bad in [-1.0, 100_000.0, f64::NAN] {
            let e = Harness::<DoorHeldOpen>::new(&Config::new().with("seconds", bad)).unwrap_err();
            assert!(e.message().contains("from 0 to 86400"), "{e}");
        }
        // 0: a door is held open at once, and no timer is needed.
        let mut h = Harness::<DoorHeldOpen>::new(&Config::new().with("seconds", 0)).unwrap();
        let actions = h.signal(&at("DOOR-1-OPEN", T0)).unwrap();
        assert!(matches!(&actions[0], Action::Raise(_)), "{actions:?}");
        assert!(!actions.iter().any(|a| matches!(a, Action::Timer(_))));
    }

    #[test]
    fn raises_and_notifies_once_after_the_limit() {
        let mut h = harness(30);
        assert!(alerts(&mut h, &at("DOOR-7-OPEN", T0)).unwrap().is_empty());
        assert!(alerts(&mut h, &at("TICK", T0 + 29_999)).unwrap().is_empty());
        let actions = alerts(&mut h, &at("TICK", T0 + 30_000)).unwrap();
        assert_eq!(actions.len(), 2, "{actions:?}");
        let Action::Raise(r) = &actions[0] else {
            panic!("expected a raise, got {actions:?}")
        };
        assert_eq!(r.name, HELD_OPEN);
        assert_eq!(r.fields.get("door"), Some(&Value::from("7")));
        let Action::Notify(n) = &actions[1] else {
            panic!("expected a notify")
        };
        assert_eq!(n.to, "group:security");
        assert!(n.subject.contains("Door 7"));
        // Once per opening.
        assert!(alerts(&mut h, &at("TICK", T0 + 90_000)).unwrap().is_empty());
    }

    #[test]
    fn closing_clears_the_timer() {
        let mut h = harness(30);
        alerts(&mut h, &at("DOOR-7-OPEN", T0)).unwrap();
        alerts(&mut h, &at("DOOR-7-CLOSE", T0 + 10_000)).unwrap();
        assert_eq!(h.rule().open_doors(), 0);
        assert!(alerts(&mut h, &at("TICK", T0 + 60_000)).unwrap().is_empty());
    }

    #[test]
    fn any_later_signal_triggers_the_check_and_doors_are_independent() {
        let mut h = harness(30);
        alerts(&mut h, &at("DOOR-1-OPEN", T0)).unwrap();
        alerts(&mut h, &at("DOOR-2-OPEN", T0 + 20_000)).unwrap();
        let a = alerts(&mut h, &at("DOOR-3-CLOSE", T0 + 31_000)).unwrap();
        assert_eq!(a.len(), 2, "only door 1 is due: {a:?}");
        let raised = h.raises(&at("TICK", T0 + 51_000)).unwrap();
        assert_eq!(raised.len(), 1, "door 2 is due: {raised:?}");
        assert_eq!(raised[0].fields.get("door"), Some(&Value::from("2")));
    }

    #[test]
    fn its_own_raise_is_not_taken_for_a_door() {
        let mut h = harness(30);
        assert!(alerts(&mut h, &at(HELD_OPEN, T0)).unwrap().is_empty());
        assert_eq!(h.rule().open_doors(), 0);
    }

    #[test]
    fn a_reopened_door_keeps_its_first_opening_time() {
        let mut h = harness(30);
        alerts(&mut h, &at("DOOR-1-OPEN", T0)).unwrap();
        alerts(&mut h, &at("DOOR-1-OPEN", T0 + 20_000)).unwrap();
        assert_eq!(alerts(&mut h, &at("TICK", T0 + 30_000)).unwrap().len(), 2);
    }

    #[test]
    fn defaults_to_sixty_seconds_and_uses_the_clock_without_a_time() {
        let mut h = Harness::<DoorHeldOpen>::new(&Config::new()).unwrap();
        h.set_now(T0);
        alerts(&mut h, &Signal::new("DOOR-1-OPEN")).unwrap();
        h.set_now(T0 + 59_000);
        assert!(alerts(&mut h, &Signal::new("TICK")).unwrap().is_empty());
        h.set_now(T0 + 60_000);
        assert_eq!(alerts(&mut h, &Signal::new("TICK")).unwrap().len(), 2);
    }
}
