//! The failover state machine: a pure function `(state, input) -> effects`,
//! no I/O, no clock. [`super::peer`] feeds it timer ticks, link events,
//! peer messages and operator commands, and carries out the effects in the
//! order given (persist before open, close before persist, and so on).
//!
//! The rules, from DESIGN.md §4 and the model in `models/FAILOVER-MODEL.md`:
//! - The secondary takes over when it is Ready, has not heard the primary
//!   for `timeout`, and either the primary's last status said Ready or it
//!   has not heard the primary since its own start: persist FS=1 and
//!   epoch+1, open the gate, raise FAILOVER-ON.
//! - Handback (failback or switchover): the giver (if it is the secondary,
//!   after raising FAILOVER-OFF) closes its gate (waiting for in-flight
//!   rules), persists FS=2, and only then sends the hand-over; the receiver
//!   persists FS=1, then opens its gate.
//! - A node restarted with FS=1 stays fenced (gate closed) until it hears
//!   the peer standby or one check passes without hearing it.
//! - An active primary that hears an active secondary steps down; the
//!   secondary then hands back normally.
//! - A standby primary that hears a standby secondary activates; one that
//!   hears nothing for `primary_grace` activates alone.
//! - Both ends adopt the higher epoch they hear.

use serde::{Deserialize, Serialize};

/// FS=1: rules execute here. FS=2: signals are stored, rules do not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fs {
    Active = 1,
    Standby = 2,
}

impl Fs {
    /// The number DESIGN.md uses (1 or 2).
    pub fn number(self) -> u8 {
        self as u8
    }

    /// From the stored number; anything but 1 is standby.
    pub fn from_number(n: i64) -> Fs {
        if n == 1 { Fs::Active } else { Fs::Standby }
    }
}

pub use crate::config::{Failback, PairRole};

/// The timings and policy (all durations in ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub role: PairRole,
    pub startup_delay: u64,
    pub timeout: u64,
    pub check_interval: u64,
    pub heartbeat_every: u32,
    pub failback: Failback,
    pub failback_after: u32,
    pub primary_grace: u64,
    /// How old a pending signal may be and still be replayed at a takeover.
    pub replay_window: u64,
}

/// What a node tells its peer about itself (hello and heartbeats).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub fs: Fs,
    pub epoch: u64,
    pub ready: bool,
    /// Its gate is closed although FS=1 (restarted, waiting to hear us).
    pub fenced: bool,
}

/// Operator commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Let the secondary hand back now (manual failback).
    Failback,
    /// Hand the active role to the other node, whichever it is.
    Switchover,
}

/// What happens to the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// The check timer fired.
    Tick,
    /// A link session was established and the peer's hello read.
    LinkUp(PeerStatus),
    /// The link is gone.
    LinkDown,
    /// A heartbeat from the peer.
    Heartbeat(PeerStatus),
    /// The peer handed the active role to us (epoch it had).
    HandOver { epoch: u64 },
    /// The peer asks us to hand over (its operator ran failback or
    /// switchover there).
    HandOverRequest,
    /// An operator command on this node.
    Command(Command),
}

/// A message to the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Our status (also the heartbeat).
    Status(PeerStatus),
    /// We closed our gate and persisted FS=2: you are active now.
    HandOver { epoch: u64 },
    /// Please hand over to us.
    HandOverRequest,
}

/// Why a FAILOVER-ON was raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reason {
    HeartbeatTimeout,
    NeverHeard,
    Switchover,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::HeartbeatTimeout => "heartbeat timeout",
            Reason::NeverHeard => "primary not heard since start",
            Reason::Switchover => "switchover",
        }
    }
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Durably store FS and epoch; later effects wait for it.
    Persist {
        fs: Fs,
        epoch: u64,
    },
    OpenGate,
    /// Close the gate, waiting for every in-flight rule to finish.
    CloseGate,
    /// Raise FAILOVER-ON. `down_since` is the monotonic ms the primary was
    /// last heard (or this node started).
    RaiseOn {
        reason: Reason,
        epoch: u64,
        down_since: u64,
    },
    /// Raise FAILOVER-OFF and let its rules finish.
    RaiseOff {
        epoch: u64,
    },
    Send(Message),
    /// The primary should dial the secondary.
    Connect,
    /// A failover period starts (secondary) / ends.
    FailoverStarted {
        reason: Reason,
    },
    FailoverEnded,
    /// The answer to an operator command.
    Reply(Result<&'static str, &'static str>),
    /// Run the signals stored while standby that the peer did not execute.
    /// `window` (ms): at a takeover, only those younger than it; `None` at a
    /// hand-over, where the peer's executed keys are all known.
    Replay {
        window: Option<u64>,
    },
}

/// The machine's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub settings: Settings,
    pub fs: Fs,
    pub epoch: u64,
    pub gate_open: bool,
    /// FS=1 restored at start, gate still closed.
    pub fenced: bool,
    /// Monotonic ms now (advanced by the driver before each input).
    pub now: u64,
    pub checks: u64,
    pub link_up: bool,
    /// The peer's latest status on the current link.
    pub peer: Option<PeerStatus>,
    pub heard_peer_since_start: bool,
    /// When the peer was last heard (monotonic ms).
    pub last_heard: Option<u64>,
    /// Whether the primary's last status said Ready (secondary's view).
    pub peer_was_ready: bool,
    /// Heartbeats in a row from a Ready standby primary (secondary, active).
    pub good_heartbeats: u32,
    /// A switchover to the secondary pinned failback to manual.
    pub pinned_manual: bool,
    /// An operator authorised failback; done once the primary is there.
    pub failback_requested: bool,
    /// The secondary's failover period is open.
    pub failover_open: bool,
    /// We handed over and the peer has not said it is active yet: a status
    /// of it that was in flight before the hand-over must not make us
    /// activate again.
    pub awaiting_peer: bool,
    /// The last FS write failed: the next check writes FS again.
    pub persist_failing: bool,
}

impl Machine {
    /// The machine at start, with the FS and epoch read from disk. A
    /// primary always starts standby and waits for the link or its grace; a
    /// node that stored FS=1 starts fenced.
    pub fn start(settings: Settings, stored_fs: Fs, epoch: u64) -> Machine {
        let fs = match settings.role {
            PairRole::Primary => Fs::Standby,
            PairRole::Secondary => stored_fs,
        };
        Machine {
            fenced: fs == Fs::Active,
            failover_open: fs == Fs::Active,
            settings,
            fs,
            epoch,
            gate_open: false,
            now: 0,
            checks: 0,
            link_up: false,
            peer: None,
            heard_peer_since_start: false,
            last_heard: None,
            peer_was_ready: false,
            good_heartbeats: 0,
            pinned_manual: false,
            failback_requested: false,
            awaiting_peer: false,
            persist_failing: false,
        }
    }

    /// A `Persist` effect of the step that started from `before` failed
    /// (writing `failed`), so the driver carried out none of that step's
    /// later effects. Go back to what the disk still holds, and never
    /// further than standby: an activation is undone whole (the gate was
    /// not opened), a step to standby stays standby (its gate is already
    /// closed) with the peer message it did not send forgotten. The next
    /// check writes FS again, and the standing rules try again from there.
    pub fn persist_failed(&mut self, before: Machine, failed: Fs) {
        let (now, checks) = (self.now, self.checks);
        *self = before;
        self.now = now;
        self.checks = checks;
        if failed == Fs::Standby {
            self.fs = Fs::Standby;
            self.gate_open = false;
            self.fenced = false;
        }
        self.persist_failing = true;
    }

    /// Whether this node's own uptime makes it Ready.
    pub fn ready(&self) -> bool {
        self.now >= self.settings.startup_delay
    }

    /// What we tell the peer.
    pub fn status(&self) -> PeerStatus {
        PeerStatus {
            fs: self.fs,
            epoch: self.epoch,
            ready: self.ready(),
            fenced: self.fenced,
        }
    }

    /// Whether rules run here now.
    pub fn active(&self) -> bool {
        self.fs == Fs::Active && self.gate_open
    }

    fn failback_mode(&self) -> Failback {
        if self.pinned_manual {
            Failback::Manual
        } else {
            self.settings.failback
        }
    }

    /// Feed one input at monotonic time `now`; returns the effects.
    pub fn step(&mut self, now: u64, input: Input) -> Vec<Effect> {
        self.now = self.now.max(now);
        let mut fx = Vec::new();
        match input {
            Input::Tick => {
                self.checks += 1;
                if self.persist_failing {
                    // Try again; a failure sets it again.
                    self.persist_failing = false;
                    fx.push(Effect::Persist {
                        fs: self.fs,
                        epoch: self.epoch,
                    });
                }
                if self.settings.role == PairRole::Primary && !self.link_up {
                    fx.push(Effect::Connect);
                }
                let hb = u64::from(self.settings.heartbeat_every.max(1));
                if self.link_up && self.checks.is_multiple_of(hb) {
                    fx.push(Effect::Send(Message::Status(self.status())));
                }
            }
            Input::LinkUp(peer) => {
                self.link_up = true;
                self.hear(peer, &mut fx);
                // Our hello-side status goes out at once.
                fx.push(Effect::Send(Message::Status(self.status())));
            }
            Input::LinkDown => {
                self.link_up = false;
                self.awaiting_peer = false;
                self.peer = None;
                self.good_heartbeats = 0;
            }
            Input::Heartbeat(peer) => {
                self.hear(peer, &mut fx);
                if self.settings.role == PairRole::Secondary
                    && self.fs == Fs::Active
                    && self.gate_open
                    && peer.fs == Fs::Standby
                    && peer.ready
                {
                    self.good_heartbeats = self.good_heartbeats.saturating_add(1);
                } else {
                    self.good_heartbeats = 0;
                }
            }
            Input::HandOver { epoch } => self.receive_hand_over(epoch, &mut fx),
            Input::HandOverRequest => {
                if self.fs == Fs::Active && self.gate_open && self.link_up {
                    self.hand_over(&mut fx);
                }
            }
            Input::Command(cmd) => self.command(cmd, &mut fx),
        }
        self.evaluate(&mut fx);
        fx
    }

    /// Record a peer status: epoch adoption, fencing, step-down.
    fn hear(&mut self, peer: PeerStatus, fx: &mut Vec<Effect>) {
        if peer.fs == Fs::Active {
            self.awaiting_peer = false;
        }
        self.peer = Some(peer);
        self.heard_peer_since_start = true;
        self.last_heard = Some(self.now);
        if self.settings.role == PairRole::Secondary {
            self.peer_was_ready = peer.ready;
        }
        if peer.epoch > self.epoch {
            self.epoch = peer.epoch;
            fx.push(Effect::Persist {
                fs: self.fs,
                epoch: self.epoch,
            });
        }
    }

    fn command(&mut self, cmd: Command, fx: &mut Vec<Effect>) {
        let peer_standby = self.peer.is_some_and(|p| p.fs == Fs::Standby);
        let peer_active = self.peer.is_some_and(|p| p.fs == Fs::Active);
        let reply = match cmd {
            Command::Failback => match self.settings.role {
                PairRole::Secondary if self.fs == Fs::Active => {
                    self.failback_requested = true;
                    if self.link_up && peer_standby {
                        Ok("failback started")
                    } else {
                        Ok("failback authorised: it happens when the primary is connected")
                    }
                }
                PairRole::Primary if self.fs == Fs::Standby && self.link_up && peer_active => {
                    fx.push(Effect::Send(Message::HandOverRequest));
                    Ok("failback requested from the secondary")
                }
                _ => Err(
                    "nothing to fail back: the secondary is not active (or the primary cannot reach it)",
                ),
            },
            Command::Switchover => {
                if !self.link_up {
                    Err("switchover refused: the peer is not connected")
                } else if self.active() && peer_standby {
                    self.hand_over(fx);
                    Ok("switchover done: the peer is active")
                } else if self.fs == Fs::Standby && peer_active {
                    fx.push(Effect::Send(Message::HandOverRequest));
                    Ok("switchover requested from the active peer")
                } else {
                    Err("switchover refused: it needs one active and one standby node")
                }
            }
        };
        fx.push(Effect::Reply(reply));
    }

    /// Become active: store FS=1 (and the epoch) first, then open the gate.
    fn activate(&mut self, fx: &mut Vec<Effect>) {
        self.fs = Fs::Active;
        self.fenced = false;
        fx.push(Effect::Persist {
            fs: Fs::Active,
            epoch: self.epoch,
        });
        self.gate_open = true;
        fx.push(Effect::OpenGate);
    }

    /// Give the active role to the peer (we are active, it is standby).
    fn hand_over(&mut self, fx: &mut Vec<Effect>) {
        if self.settings.role == PairRole::Secondary {
            fx.push(Effect::RaiseOff { epoch: self.epoch });
        }
        fx.push(Effect::CloseGate);
        self.gate_open = false;
        self.fs = Fs::Standby;
        fx.push(Effect::Persist {
            fs: Fs::Standby,
            epoch: self.epoch,
        });
        fx.push(Effect::Send(Message::HandOver { epoch: self.epoch }));
        if self.settings.role == PairRole::Secondary {
            fx.push(Effect::FailoverEnded);
            self.failover_open = false;
            self.pinned_manual = false;
        }
        self.good_heartbeats = 0;
        self.failback_requested = false;
        self.awaiting_peer = true;
        // The peer becomes active: don't act on its stale standby status.
        self.peer = self.peer.map(|p| PeerStatus {
            fs: Fs::Active,
            ..p
        });
    }

    fn receive_hand_over(&mut self, epoch: u64, fx: &mut Vec<Effect>) {
        if self.fs == Fs::Active && self.gate_open {
            return;
        }
        self.epoch = self.epoch.max(epoch);
        if self.settings.role == PairRole::Secondary {
            // A switchover to the secondary is a (planned) takeover.
            self.epoch += 1;
            self.pinned_manual = true;
            self.failover_open = true;
        }
        // FS is durable first: nothing else happens if it cannot be.
        self.activate(fx);
        if self.settings.role == PairRole::Secondary {
            fx.push(Effect::FailoverStarted {
                reason: Reason::Switchover,
            });
            fx.push(Effect::RaiseOn {
                reason: Reason::Switchover,
                epoch: self.epoch,
                down_since: self.now,
            });
        }
        fx.push(Effect::Replay { window: None });
        self.peer = self.peer.map(|p| PeerStatus {
            fs: Fs::Standby,
            ..p
        });
    }

    /// The standing rules, checked after every input.
    fn evaluate(&mut self, fx: &mut Vec<Effect>) {
        match self.settings.role {
            PairRole::Secondary => self.evaluate_secondary(fx),
            PairRole::Primary => self.evaluate_primary(fx),
        }
    }

    fn evaluate_secondary(&mut self, fx: &mut Vec<Effect>) {
        let s = &self.settings;
        if self.fs == Fs::Active && self.fenced {
            // Restarted with FS=1: wait to hear the primary standby, or one
            // check without hearing it at all.
            let hears_standby = self.link_up && self.peer.is_some_and(|p| p.fs == Fs::Standby);
            if hears_standby || (self.checks >= 1 && !self.heard_peer_since_start) {
                self.fenced = false;
                self.gate_open = true;
                fx.push(Effect::OpenGate);
                fx.push(Effect::Replay {
                    window: Some(s.replay_window),
                });
            }
            return;
        }
        if self.fs == Fs::Standby {
            let baseline = self.last_heard.unwrap_or(0);
            let silent = self.now.saturating_sub(baseline) >= s.timeout;
            let primary_ok = self.peer_was_ready || !self.heard_peer_since_start;
            if self.ready() && silent && primary_ok {
                let reason = if self.heard_peer_since_start {
                    Reason::HeartbeatTimeout
                } else {
                    Reason::NeverHeard
                };
                self.epoch += 1;
                self.activate(fx);
                self.failover_open = true;
                fx.push(Effect::FailoverStarted { reason });
                fx.push(Effect::RaiseOn {
                    reason,
                    epoch: self.epoch,
                    down_since: baseline,
                });
                fx.push(Effect::Replay {
                    window: Some(self.settings.replay_window),
                });
                self.good_heartbeats = 0;
            }
            return;
        }
        // Active and unfenced: hand back when failback allows.
        let primary_standby = self.link_up && self.peer.is_some_and(|p| p.fs == Fs::Standby);
        if !primary_standby {
            return;
        }
        let due = match self.failback_mode() {
            Failback::Auto => self.good_heartbeats >= s.failback_after.max(1),
            Failback::Manual => self.failback_requested,
        };
        if due {
            self.hand_over(fx);
        }
    }

    fn evaluate_primary(&mut self, fx: &mut Vec<Effect>) {
        if self.fs == Fs::Active {
            // A healed partition (or grace): step down for the normal
            // handback.
            if self.link_up && self.peer.is_some_and(|p| p.fs == Fs::Active) {
                fx.push(Effect::CloseGate);
                self.gate_open = false;
                self.fs = Fs::Standby;
                fx.push(Effect::Persist {
                    fs: Fs::Standby,
                    epoch: self.epoch,
                });
                fx.push(Effect::Send(Message::Status(self.status())));
            }
            return;
        }
        let peer_standby =
            self.link_up && !self.awaiting_peer && self.peer.is_some_and(|p| p.fs == Fs::Standby);
        let alone_too_long = !self.link_up
            && self.now.saturating_sub(self.last_heard.unwrap_or(0)) >= self.settings.primary_grace;
        if peer_standby || alone_too_long {
            self.activate(fx);
            // Alone, the primary cannot know what the secondary ran last:
            // as at a takeover, only recent signals. With a standby peer
            // linked, its executed keys arrived before this point.
            fx.push(Effect::Replay {
                window: alone_too_long.then_some(self.settings.replay_window),
            });
            if self.link_up {
                fx.push(Effect::Send(Message::Status(self.status())));
            }
        }
    }
}

#[cfg(test)]
mod tests;
