//! Sample rule (stateful): a door held open too long.
//!
//! `DOOR-<id>-OPEN` starts a timer for door `<id>`; `DOOR-<id>-CLOSE` clears
//! it. Once `seconds` have passed, the next signal the rule sees (a `TICK`,
//! or any door signal) raises `DOOR-HELD-OPEN` (fields `door`, `opened_at`,
//! `seconds`) and notifies security, once per opening.
//!
//! Time is the signal's own `time` (or the host clock when a signal has
//! none), so a replayed signal is judged by when it happened.
//!
//! Config (all optional): `seconds` (default 60), `to` (default
//! `group:security`), `channel` (default `default`).
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
        let seconds = config.u64_or("seconds", 60)?;
        Ok(DoorHeldOpen {
            limit_ms: i64::try_from(seconds.saturating_mul(1000)).unwrap_or(i64::MAX),
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
        let seconds = self.limit_ms / 1000;
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
                    ("seconds", Value::Int(seconds)),
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

    #[test]
    fn raises_and_notifies_once_after_the_limit() {
        let mut h = harness(30);
        assert!(h.signal(&at("DOOR-7-OPEN", T0)).unwrap().is_empty());
        assert!(h.signal(&at("TICK", T0 + 29_999)).unwrap().is_empty());
        let actions = h.signal(&at("TICK", T0 + 30_000)).unwrap();
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
        assert!(h.signal(&at("TICK", T0 + 90_000)).unwrap().is_empty());
    }

    #[test]
    fn closing_clears_the_timer() {
        let mut h = harness(30);
        h.signal(&at("DOOR-7-OPEN", T0)).unwrap();
        h.signal(&at("DOOR-7-CLOSE", T0 + 10_000)).unwrap();
        assert_eq!(h.rule().open_doors(), 0);
        assert!(h.signal(&at("TICK", T0 + 60_000)).unwrap().is_empty());
    }

    #[test]
    fn any_later_signal_triggers_the_check_and_doors_are_independent() {
        let mut h = harness(30);
        h.signal(&at("DOOR-1-OPEN", T0)).unwrap();
        h.signal(&at("DOOR-2-OPEN", T0 + 20_000)).unwrap();
        let a = h.signal(&at("DOOR-3-CLOSE", T0 + 31_000)).unwrap();
        assert_eq!(a.len(), 2, "only door 1 is due: {a:?}");
        let raised = h.raises(&at("TICK", T0 + 51_000)).unwrap();
        assert_eq!(raised.len(), 1, "door 2 is due: {raised:?}");
        assert_eq!(raised[0].fields.get("door"), Some(&Value::from("2")));
    }

    #[test]
    fn its_own_raise_is_not_taken_for_a_door() {
        let mut h = harness(30);
        assert!(h.signal(&at(HELD_OPEN, T0)).unwrap().is_empty());
        assert_eq!(h.rule().open_doors(), 0);
    }

    #[test]
    fn a_reopened_door_keeps_its_first_opening_time() {
        let mut h = harness(30);
        h.signal(&at("DOOR-1-OPEN", T0)).unwrap();
        h.signal(&at("DOOR-1-OPEN", T0 + 20_000)).unwrap();
        assert_eq!(h.signal(&at("TICK", T0 + 30_000)).unwrap().len(), 2);
    }

    #[test]
    fn defaults_to_sixty_seconds_and_uses_the_clock_without_a_time() {
        let mut h = Harness::<DoorHeldOpen>::new(&Config::new()).unwrap();
        h.set_now(T0);
        h.signal(&Signal::new("DOOR-1-OPEN")).unwrap();
        h.set_now(T0 + 59_000);
        assert!(h.signal(&Signal::new("TICK")).unwrap().is_empty());
        h.set_now(T0 + 60_000);
        assert_eq!(h.signal(&Signal::new("TICK")).unwrap().len(), 2);
    }
}
