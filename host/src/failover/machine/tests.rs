//! The machine alone: DESIGN.md's 8-row table step by step, the model's
//! handback and fencing rules, and property tests over random event
//! sequences on a simulated pair.

use super::*;
use proptest::prelude::*;

const CHECK: u64 = 100;

fn settings(role: PairRole) -> Settings {
    Settings {
        role,
        startup_delay: 300,
        timeout: 1000,
        check_interval: CHECK,
        heartbeat_every: 2,
        failback: Failback::Auto,
        failback_after: 3,
        primary_grace: 1000,
        replay_window: 1400,
    }
}

/// Two machines, a link, and the messages in flight: the driver's job,
/// without I/O. Effects are applied in order; a crashed node loses its
/// volatile state and restarts from what it persisted.
#[derive(Debug, Clone)]
struct Pair {
    p: Machine,
    s: Machine,
    p_up: bool,
    s_up: bool,
    /// The network lets the link form.
    net: bool,
    /// Persisted (fs, epoch) per node.
    p_disk: (Fs, u64),
    s_disk: (Fs, u64),
    /// Each node's clock (its uptime starts at 0 on restart).
    p_clock: u64,
    s_clock: u64,
    /// FAILOVER-ON / OFF raised, in order ("ON"/"OFF").
    raised: Vec<&'static str>,
    /// Messages in flight: (to_primary, message).
    wire: std::collections::VecDeque<(bool, Message)>,
    max_epoch_seen: u64,
}

impl Pair {
    fn new() -> Pair {
        Pair {
            p: Machine::start(settings(PairRole::Primary), Fs::Standby, 0),
            s: Machine::start(settings(PairRole::Secondary), Fs::Standby, 0),
            p_up: true,
            s_up: true,
            net: true,
            p_disk: (Fs::Standby, 0),
            s_disk: (Fs::Standby, 0),
            p_clock: 0,
            s_clock: 0,
            raised: Vec::new(),
            wire: Default::default(),
            max_epoch_seen: 0,
        }
    }

    fn link_up(&self) -> bool {
        self.p.link_up && self.s.link_up
    }

    fn apply(&mut self, primary: bool, fx: Vec<Effect>) {
        for e in fx {
            match e {
                Effect::Persist { fs, epoch } => {
                    if primary {
                        self.p_disk = (fs, epoch)
                    } else {
                        self.s_disk = (fs, epoch)
                    }
                }
                Effect::RaiseOn { .. } => self.raised.push("ON"),
                Effect::RaiseOff { .. } => self.raised.push("OFF"),
                Effect::Send(m) if self.link_up() => self.wire.push_back((!primary, m)),
                Effect::Connect => self.connect(),
                _ => {}
            }
        }
        self.max_epoch_seen = self.max_epoch_seen.max(self.p.epoch).max(self.s.epoch);
    }

    fn connect(&mut self) {
        if self.p_up && self.s_up && self.net && !self.link_up() {
            let (ps, ss) = (self.p.status(), self.s.status());
            let fx = self.s.step(self.s_clock, Input::LinkUp(ps));
            let fp = self.p.step(self.p_clock, Input::LinkUp(ss));
            self.apply(false, fx);
            self.apply(true, fp);
        }
    }

    fn cut(&mut self) {
        self.wire.clear();
        if self.p.link_up {
            let f = self.p.step(self.p_clock, Input::LinkDown);
            self.apply(true, f);
        }
        if self.s.link_up {
            let f = self.s.step(self.s_clock, Input::LinkDown);
            self.apply(false, f);
        }
    }

    /// Deliver every message in flight.
    fn deliver(&mut self) {
        while let Some((to_primary, m)) = self.wire.pop_front() {
            let input = match m {
                Message::Status(st) => Input::Heartbeat(st),
                Message::HandOver { epoch } => Input::HandOver { epoch },
                Message::HandOverRequest => Input::HandOverRequest,
            };
            if to_primary && self.p_up {
                let f = self.p.step(self.p_clock, input);
                self.apply(true, f);
            } else if !to_primary && self.s_up {
                let f = self.s.step(self.s_clock, input);
                self.apply(false, f);
            }
        }
    }

    /// One check interval on both live nodes, then the network.
    fn tick(&mut self) {
        self.p_clock += CHECK;
        self.s_clock += CHECK;
        if self.p_up {
            let f = self.p.step(self.p_clock, Input::Tick);
            self.apply(true, f);
        }
        if self.s_up {
            let f = self.s.step(self.s_clock, Input::Tick);
            self.apply(false, f);
        }
        self.deliver();
    }

    fn ticks(&mut self, n: usize) {
        for _ in 0..n {
            self.tick();
        }
    }

    fn stop(&mut self, primary: bool) {
        self.cut();
        if primary {
            self.p_up = false;
        } else {
            self.s_up = false;
        }
    }

    fn resume(&mut self, primary: bool) {
        if primary {
            self.p_up = true;
            self.p_clock = 0;
            self.p = Machine::start(settings(PairRole::Primary), self.p_disk.0, self.p_disk.1);
        } else {
            self.s_up = true;
            self.s_clock = 0;
            self.s = Machine::start(settings(PairRole::Secondary), self.s_disk.0, self.s_disk.1);
        }
    }

    fn command(&mut self, primary: bool, c: Command) -> Result<&'static str, &'static str> {
        let f = if primary {
            self.p.step(self.p_clock, Input::Command(c))
        } else {
            self.s.step(self.s_clock, Input::Command(c))
        };
        let reply = f.iter().find_map(|e| match e {
            Effect::Reply(r) => Some(*r),
            _ => None,
        });
        self.apply(primary, f);
        self.deliver();
        reply.unwrap_or(Err("no reply"))
    }

    fn fs(&self) -> (Option<u8>, Option<u8>) {
        let show = |up: bool, m: &Machine| up.then(|| if m.active() { 1 } else { 2 });
        (show(self.p_up, &self.p), show(self.s_up, &self.s))
    }
}

// ------------------------------------------------------------ the table

#[test]
fn design_table_rows_1_to_8() {
    let mut pair = Pair::new();
    // 1: both started and running.
    pair.ticks(5);
    assert_eq!(pair.fs(), (Some(1), Some(2)), "row 1");
    // 2: secondary stopped.
    pair.stop(false);
    pair.ticks(20);
    assert_eq!(pair.fs(), (Some(1), None), "row 2");
    // 3: secondary resumes.
    pair.resume(false);
    pair.ticks(5);
    assert_eq!(pair.fs(), (Some(1), Some(2)), "row 3");
    // 4: primary stopped: standby until the timeout expires.
    pair.stop(true);
    pair.ticks(9);
    assert_eq!(pair.fs(), (None, Some(2)), "row 4");
    // 5: timeout expired.
    pair.ticks(3);
    assert_eq!(pair.fs(), (None, Some(1)), "row 5");
    assert_eq!(pair.raised, ["ON"]);
    assert_eq!(pair.s.epoch, 1);
    // 6: secondary also stopped.
    pair.stop(false);
    assert_eq!(pair.fs(), (None, None), "row 6");
    // 7: secondary resumes: FS=1 retained (after one check, fenced before).
    pair.resume(false);
    assert!(
        !pair.s.active() && pair.s.fs == Fs::Active,
        "fenced at first"
    );
    pair.tick();
    assert_eq!(pair.fs(), (None, Some(1)), "row 7");
    assert_eq!(pair.raised, ["ON"], "no second FAILOVER-ON");
    // 8: primary resumes: handback after failback_after heartbeats from a
    // Ready primary.
    pair.resume(true);
    pair.tick();
    assert_eq!(
        pair.fs(),
        (Some(2), Some(1)),
        "the primary waits for the ack"
    );
    pair.ticks(20);
    assert_eq!(pair.fs(), (Some(1), Some(2)), "row 8");
    assert_eq!(pair.raised, ["ON", "OFF"]);
    assert_eq!(pair.p.epoch, 1, "the primary adopted the higher epoch");
    assert_eq!(pair.p_disk, (Fs::Active, 1));
    assert_eq!(pair.s_disk, (Fs::Standby, 1));
}

#[test]
fn takeover_effects_are_ordered_persist_open_raise() {
    let mut s = Machine::start(settings(PairRole::Secondary), Fs::Standby, 4);
    let mut t = 0;
    let mut fx = Vec::new();
    while fx.is_empty() {
        t += CHECK;
        fx = s.step(t, Input::Tick);
    }
    assert_eq!(
        t, 1000,
        "after the timeout, counted from start when never heard"
    );
    assert_eq!(
        fx,
        vec![
            Effect::Persist {
                fs: Fs::Active,
                epoch: 5
            },
            Effect::OpenGate,
            Effect::FailoverStarted {
                reason: Reason::NeverHeard
            },
            Effect::RaiseOn {
                reason: Reason::NeverHeard,
                epoch: 5,
                down_since: 0
            },
            Effect::Replay { window: Some(1400) },
        ]
    );
}

#[test]
fn handback_effects_close_and_persist_before_the_ack() {
    let mut s = Machine::start(settings(PairRole::Secondary), Fs::Active, 3);
    s.step(100, Input::Tick); // unfenced after one quiet check
    assert!(s.active());
    let ready_standby = PeerStatus {
        fs: Fs::Standby,
        epoch: 0,
        ready: true,
        fenced: false,
    };
    s.step(200, Input::LinkUp(ready_standby));
    s.step(300, Input::Heartbeat(ready_standby));
    s.step(400, Input::Heartbeat(ready_standby));
    let fx = s.step(500, Input::Heartbeat(ready_standby));
    assert_eq!(
        fx,
        vec![
            Effect::RaiseOff { epoch: 3 },
            Effect::CloseGate,
            Effect::Persist {
                fs: Fs::Standby,
                epoch: 3
            },
            Effect::Send(Message::HandOver { epoch: 3 }),
            Effect::FailoverEnded,
        ]
    );
    let mut p = Machine::start(settings(PairRole::Primary), Fs::Standby, 0);
    p.step(
        100,
        Input::LinkUp(PeerStatus {
            fs: Fs::Active,
            epoch: 3,
            ready: true,
            fenced: false,
        }),
    );
    assert!(!p.active(), "standby while the secondary is active");
    let fx = p.step(200, Input::HandOver { epoch: 3 });
    assert_eq!(
        fx,
        vec![
            Effect::Persist {
                fs: Fs::Active,
                epoch: 3
            },
            Effect::OpenGate,
            Effect::Replay { window: None },
        ]
    );
}

#[test]
fn startup_delay_blocks_a_takeover() {
    let mut st = settings(PairRole::Secondary);
    st.startup_delay = 5000;
    let mut s = Machine::start(st, Fs::Standby, 0);
    for t in 1..=49 {
        assert!(
            s.step(t * CHECK, Input::Tick).is_empty(),
            "not Ready at {t}"
        );
    }
    assert!(
        !s.step(5000, Input::Tick).is_empty(),
        "Ready and silent: takes over"
    );
}

#[test]
fn a_primary_not_ready_at_its_last_heartbeat_is_not_taken_over_from() {
    let mut s = Machine::start(settings(PairRole::Secondary), Fs::Standby, 0);
    s.step(
        500,
        Input::LinkUp(PeerStatus {
            fs: Fs::Active,
            epoch: 0,
            ready: false,
            fenced: false,
        }),
    );
    s.step(600, Input::LinkDown);
    for t in 7..40 {
        assert!(s.step(t * CHECK, Input::Tick).is_empty());
    }
}

#[test]
fn auto_failback_does_not_ping_pong_with_a_crash_looping_primary() {
    let mut pair = Pair::new();
    pair.ticks(5);
    pair.stop(true);
    pair.ticks(15);
    assert_eq!(pair.fs(), (None, Some(1)));
    // The primary comes back for less than its startup delay, again and again.
    for _ in 0..10 {
        pair.resume(true);
        pair.ticks(2);
        pair.stop(true);
        pair.ticks(1);
    }
    assert_eq!(pair.fs(), (None, Some(1)));
    assert_eq!(pair.raised, ["ON"]);
}

#[test]
fn manual_failback_waits_for_the_operator() {
    let mut pair = Pair::new();
    pair.p.settings.failback = Failback::Manual;
    pair.s.settings.failback = Failback::Manual;
    pair.ticks(5);
    pair.stop(true);
    pair.ticks(15);
    let mut st = settings(PairRole::Primary);
    st.failback = Failback::Manual;
    pair.p_up = true;
    pair.p_clock = 0;
    pair.p = Machine::start(st, pair.p_disk.0, pair.p_disk.1);
    let mut sst = settings(PairRole::Secondary);
    sst.failback = Failback::Manual;
    pair.s.settings = sst;
    pair.ticks(30);
    assert_eq!(
        pair.fs(),
        (Some(2), Some(1)),
        "no failback without the operator"
    );
    assert_eq!(
        pair.command(true, Command::Failback),
        Ok("failback requested from the secondary")
    );
    pair.ticks(1);
    assert_eq!(pair.fs(), (Some(1), Some(2)));
    assert_eq!(pair.raised, ["ON", "OFF"]);
    assert!(
        pair.command(true, Command::Failback).is_err(),
        "nothing left to fail back"
    );
}

#[test]
fn switchover_both_ways_and_it_pins_manual() {
    let mut pair = Pair::new();
    pair.ticks(5);
    assert_eq!(pair.fs(), (Some(1), Some(2)));
    assert!(pair.command(true, Command::Switchover).is_ok());
    assert_eq!(pair.fs(), (Some(2), Some(1)));
    assert_eq!(pair.raised, ["ON"]);
    pair.ticks(30);
    assert_eq!(
        pair.fs(),
        (Some(2), Some(1)),
        "pinned to manual: no auto failback"
    );
    // And back, asked from the standby primary's side.
    assert!(pair.command(true, Command::Switchover).is_ok());
    pair.ticks(1);
    assert_eq!(pair.fs(), (Some(1), Some(2)));
    assert_eq!(pair.raised, ["ON", "OFF"]);
    pair.stop(false);
    assert!(pair.command(true, Command::Switchover).is_err(), "no peer");
}

#[test]
fn a_grace_active_primary_steps_down_for_a_restarted_active_secondary() {
    // The model's 9-step I1 trace: P restarts standby, S takes over and
    // crashes, P activates by grace, S restarts with FS=1, the link forms.
    let mut pair = Pair::new();
    pair.ticks(5);
    pair.stop(true);
    pair.resume(true);
    pair.stop(true); // P down long enough for S's timeout
    pair.ticks(15);
    assert_eq!(pair.fs(), (None, Some(1)));
    pair.stop(false);
    pair.resume(true);
    pair.ticks(12); // grace
    assert_eq!(pair.fs(), (Some(1), None));
    pair.resume(false);
    pair.connect();
    pair.deliver();
    assert!(
        !(pair.p.active() && pair.s.active()),
        "never both active with the link up"
    );
    pair.ticks(30);
    assert_eq!(pair.fs(), (Some(1), Some(2)));
    assert_eq!(pair.raised, ["ON", "OFF"]);
}

#[test]
fn a_healed_partition_leaves_one_active_and_raises_off_once() {
    let mut pair = Pair::new();
    pair.ticks(5);
    pair.net = false;
    pair.cut();
    pair.ticks(15);
    assert_eq!(
        pair.fs(),
        (Some(1), Some(1)),
        "both active in a partition, as documented"
    );
    pair.net = true;
    pair.ticks(1);
    assert!(!(pair.p.active() && pair.s.active() && pair.link_up()));
    pair.ticks(30);
    assert_eq!(pair.fs(), (Some(1), Some(2)));
    assert_eq!(pair.raised, ["ON", "OFF"]);
}

#[test]
fn a_status_in_flight_before_a_switchover_does_not_reactivate_the_giver() {
    let mut p = Machine::start(settings(PairRole::Primary), Fs::Standby, 0);
    let standby = PeerStatus {
        fs: Fs::Standby,
        epoch: 0,
        ready: true,
        fenced: false,
    };
    p.step(100, Input::LinkUp(standby));
    assert!(p.active());
    let fx = p.step(200, Input::Command(Command::Switchover));
    assert!(fx.contains(&Effect::Send(Message::HandOver { epoch: 0 })));
    // The secondary's heartbeat sent before it got the hand-over arrives.
    let fx = p.step(250, Input::Heartbeat(standby));
    assert!(!p.active(), "{fx:?}");
    assert!(!fx.contains(&Effect::OpenGate));
    // Once the secondary says it is active, everything is normal again.
    p.step(
        300,
        Input::Heartbeat(PeerStatus {
            fs: Fs::Active,
            epoch: 1,
            ready: true,
            fenced: false,
        }),
    );
    assert!(!p.awaiting_peer);
}

#[test]
fn epochs_are_adopted_upward_only() {
    let mut m = Machine::start(settings(PairRole::Primary), Fs::Standby, 7);
    let fx = m.step(
        100,
        Input::LinkUp(PeerStatus {
            fs: Fs::Standby,
            epoch: 9,
            ready: true,
            fenced: false,
        }),
    );
    assert_eq!(m.epoch, 9);
    assert!(fx.contains(&Effect::Persist {
        fs: Fs::Standby,
        epoch: 9
    }));
    m.step(
        200,
        Input::Heartbeat(PeerStatus {
            fs: Fs::Standby,
            epoch: 2,
            ready: true,
            fenced: false,
        }),
    );
    assert_eq!(m.epoch, 9);
}

// ------------------------------------------------------------ properties

#[derive(Debug, Clone, Copy)]
enum Event {
    Tick,
    Ticks(u8),
    Stop(bool),
    Resume(bool),
    Partition,
    Heal,
    Switchover(bool),
    Failback(bool),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => Just(Event::Tick),
        3 => (1u8..25).prop_map(Event::Ticks),
        1 => any::<bool>().prop_map(Event::Stop),
        1 => any::<bool>().prop_map(Event::Resume),
        1 => Just(Event::Partition),
        1 => Just(Event::Heal),
        1 => any::<bool>().prop_map(Event::Switchover),
        1 => any::<bool>().prop_map(Event::Failback),
    ]
}

fn check(pair: &Pair, last_epochs: &mut (u64, u64)) -> Result<(), TestCaseError> {
    if pair.link_up() && pair.wire.is_empty() {
        prop_assert!(
            !(pair.p.active() && pair.s.active()),
            "two active nodes with the link up: {pair:#?}"
        );
        prop_assert!(
            !(pair.p.fs == Fs::Active
                && pair.s.fs == Fs::Active
                && pair.p.gate_open
                && pair.s.gate_open),
            "both FS=1 and open with the link up"
        );
    }
    for w in pair.raised.windows(2) {
        prop_assert_ne!(
            w[0],
            w[1],
            "FAILOVER-ON and OFF must alternate: {:?}",
            pair.raised
        );
    }
    if let Some(first) = pair.raised.first() {
        prop_assert_eq!(*first, "ON");
    }
    prop_assert!(
        pair.p_disk.1 >= last_epochs.0 && pair.s_disk.1 >= last_epochs.1,
        "an epoch went down"
    );
    *last_epochs = (pair.p_disk.1, pair.s_disk.1);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn random_event_sequences_keep_the_invariants(events in proptest::collection::vec(event(), 1..60)) {
        let mut pair = Pair::new();
        let mut epochs = (0, 0);
        for e in events {
            match e {
                Event::Tick => pair.tick(),
                Event::Ticks(n) => {
                    for _ in 0..n {
                        pair.tick();
                        check(&pair, &mut epochs)?;
                    }
                }
                Event::Stop(p) => {
                    if if p { pair.p_up } else { pair.s_up } {
                        pair.stop(p)
                    }
                }
                Event::Resume(p) => {
                    if !(if p { pair.p_up } else { pair.s_up }) {
                        pair.resume(p)
                    }
                }
                Event::Partition => {
                    pair.net = false;
                    pair.cut();
                }
                Event::Heal => pair.net = true,
                Event::Switchover(p) => {
                    if if p { pair.p_up } else { pair.s_up } {
                        let _ = pair.command(p, Command::Switchover);
                    }
                }
                Event::Failback(p) => {
                    if if p { pair.p_up } else { pair.s_up } {
                        let _ = pair.command(p, Command::Failback);
                    }
                }
            }
            check(&pair, &mut epochs)?;
        }
        // Liveness: with both up and the network healed, the pair settles
        // with exactly one active node.
        if !pair.p_up { pair.resume(true); }
        if !pair.s_up { pair.resume(false); }
        pair.net = true;
        pair.ticks(80);
        let (p, s) = (pair.p.active(), pair.s.active());
        prop_assert!(p ^ s, "exactly one active after settling: p={} s={} {:#?}", p, s, pair);
    }
}

/// Step `m`, and when the effect list's first `Persist` fails, do what the
/// driver does: skip the rest and call `persist_failed`.
fn step_failing_persist(m: &mut Machine, now: u64, input: Input) -> Vec<Effect> {
    let before = m.clone();
    let fx = m.step(now, input);
    let mut done = Vec::new();
    for e in fx {
        if let Effect::Persist { fs, .. } = e {
            m.persist_failed(before, fs);
            return done;
        }
        done.push(e);
    }
    done
}

#[test]
fn a_takeover_that_cannot_persist_stays_standby_and_retries_at_the_next_check() {
    let mut s = Machine::start(settings(PairRole::Secondary), Fs::Standby, 4);
    let mut t = 0;
    while !s.persist_failing {
        t += CHECK;
        let carried_out = step_failing_persist(&mut s, t, Input::Tick);
        assert!(carried_out.is_empty(), "nothing before the failed write");
        assert!(t <= 2000, "the takeover came");
    }
    assert_eq!(s.fs, Fs::Standby, "not active without FS=1 on disk");
    assert!(!s.gate_open && !s.active());
    assert_eq!(s.epoch, 4, "the epoch is what the disk holds");
    assert!(!s.failover_open, "no failover started");
    let fx = s.step(t + CHECK, Input::Tick);
    assert!(!s.persist_failing);
    assert_eq!(
        fx[..3],
        [
            Effect::Persist {
                fs: Fs::Standby,
                epoch: 4
            },
            Effect::Persist {
                fs: Fs::Active,
                epoch: 5
            },
            Effect::OpenGate,
        ],
        "the write is tried again, then the takeover"
    );
    assert!(s.active());
}

#[test]
fn a_hand_over_that_cannot_persist_standby_stays_standby_without_sending() {
    let mut s = Machine::start(settings(PairRole::Secondary), Fs::Active, 3);
    s.step(100, Input::Tick);
    assert!(s.active());
    let ready_standby = PeerStatus {
        fs: Fs::Standby,
        epoch: 0,
        ready: true,
        fenced: false,
    };
    s.step(200, Input::LinkUp(ready_standby));
    s.step(300, Input::Heartbeat(ready_standby));
    s.step(400, Input::Heartbeat(ready_standby));
    let carried_out = step_failing_persist(&mut s, 500, Input::Heartbeat(ready_standby));
    assert_eq!(
        carried_out,
        vec![Effect::RaiseOff { epoch: 3 }, Effect::CloseGate],
        "the hand-over stopped at the failed write: nothing was sent"
    );
    assert_eq!(s.fs, Fs::Standby, "its gate is closed: it stays standby");
    assert!(!s.active());
    assert!(!s.awaiting_peer, "the hand-over was not sent");
    assert_eq!(s.peer.map(|p| p.fs), Some(Fs::Standby));
    assert!(s.failover_open, "the failover did not end");
    let fx = s.step(600, Input::Tick);
    assert_eq!(
        fx.first(),
        Some(&Effect::Persist {
            fs: Fs::Standby,
            epoch: 3
        }),
        "the write is tried again at the next check"
    );
}

#[test]
fn a_switchover_to_the_secondary_persists_before_it_logs_the_failover() {
    let mut s = Machine::start(settings(PairRole::Secondary), Fs::Standby, 2);
    s.step(
        100,
        Input::LinkUp(PeerStatus {
            fs: Fs::Active,
            epoch: 2,
            ready: true,
            fenced: false,
        }),
    );
    let fx = s.step(200, Input::HandOver { epoch: 2 });
    let persist = fx.iter().position(|e| matches!(e, Effect::Persist { .. }));
    let started = fx
        .iter()
        .position(|e| matches!(e, Effect::FailoverStarted { .. }));
    assert!(persist < started, "{fx:?}");
}
