//! The driver's loop: timers, link events and operator commands in, the
//! machine's effects out, each awaited in order.

use std::time::Instant;

use tandem_guest::Value;
use tokio::sync::mpsc;

use super::session::run_session;
use super::*;

impl Driver {
    pub(super) fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Wall-clock ms of monotonic `mono`.
    pub(super) fn wall(&self, mono: u64) -> i64 {
        now_ms() - (self.now().saturating_sub(mono)) as i64
    }

    pub(super) fn publish(&self) {
        let m = &self.machine;
        let view = View {
            role: self.cfg.role,
            fs: m.fs.number(),
            epoch: m.epoch,
            active: m.active(),
            fenced: m.fenced,
            ready: m.ready(),
            link_up: m.link_up,
            peer_name: self.cfg.peer_name().to_owned(),
            peer_link: self.cfg.peer.clone(),
            peer_admin: self
                .cfg
                .peer_admin
                .clone()
                .or_else(|| self.peer_hello.as_ref().and_then(|h| h.admin.clone())),
            peer: self.peer_hello.as_ref().map(|h| PeerView {
                node: h.node.clone(),
                sync_types: h.sync_types.clone(),
                sync_generation: h.sync_generation,
                fs: m.peer.map_or(h.fs, |p| p.fs).number(),
                epoch: m.peer.map_or(h.epoch, |p| p.epoch),
                ready: m.peer.map_or(h.ready, |p| p.ready),
                version: h.version.clone(),
                admin: h.admin.clone(),
                clock_skew_ms: self.clock_skew_ms,
            }),
            last_heartbeat: self.last_heartbeat,
            failback: if m.pinned_manual || m.settings.failback == Failback::Manual {
                "manual"
            } else {
                "auto"
            },
            failover_open: m.failover_open,
            absorbed_seq: self.absorbed,
            peer_absorbed_seq: self.peer_absorbed,
            persist_error: self.persist_error.clone(),
        };
        self.view_tx.send_replace(view);
    }

    pub(super) async fn run(
        mut self,
        mut events: mpsc::Receiver<LinkEvent>,
        mut commands: mpsc::Receiver<(Command, Reply)>,
        mut forwards: mpsc::Receiver<SignalInput>,
        stop: Listener,
    ) {
        // The first check comes one interval after start: "one check passes
        // without hearing the primary" must be a whole check.
        let period = self.cfg.check_interval;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stop = stop.wait();
        tokio::pin!(stop);
        let mut executions = self.node.executions();
        let mut stream_due: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = tick.tick() => {
                    self.step(Input::Tick).await;
                    self.stream().await;
                    self.copy_back().await;
                }
                // Batch what executes in the next few ms together, without
                // holding up anything else the driver has to do meanwhile.
                changed = executions.changed(), if stream_due.is_none() => {
                    if changed.is_ok() {
                        stream_due = Some(tokio::time::Instant::now() + STREAM_BATCH);
                    }
                }
                _ = tokio::time::sleep_until(stream_due.unwrap_or_else(tokio::time::Instant::now)), if stream_due.is_some() => {
                    stream_due = None;
                    self.stream().await;
                }
                Some(ev) = events.recv() => self.on_link(ev).await,
                Some(signal) = forwards.recv() => self.forward(signal).await,
                Some((cmd, reply)) = commands.recv() => {
                    self.reply = Some(reply);
                    self.step(Input::Command(cmd)).await;
                    if let Some(r) = self.reply.take() {
                        let _ = r.send(Err("no answer"));
                    }
                }
            }
            if std::mem::take(&mut self.pending_down) {
                self.step(Input::LinkDown).await;
            }
        }
        if let Some(c) = self.conn.take() {
            c.abort.abort();
        }
    }

    async fn on_link(&mut self, ev: LinkEvent) {
        match ev {
            LinkEvent::Up {
                id,
                peer,
                tx,
                abort,
            } => {
                if let Some(old) = self.conn.take() {
                    // A new connection replaces the old one; the old one's
                    // unread data is discarded with it.
                    old.abort.abort();
                    tracing::info!("a new link connection replaces the old one");
                    self.step(Input::LinkDown).await;
                }
                self.connecting = false;
                self.clock_skew_ms = peer.clock_ms - now_ms();
                let skew = self.clock_skew_ms.abs();
                if skew > 1000 {
                    tracing::warn!(peer = %peer.node, skew_ms = skew, "clock skew with the peer is over 1 s");
                }
                if peer.version != env!("CARGO_PKG_VERSION") {
                    tracing::info!(peer = %peer.node, version = %peer.version, "peer runs another version (rolling upgrade?)");
                }
                tracing::info!(peer = %peer.node, fs = peer.fs.number(), epoch = peer.epoch, "link up");
                let status = status_of(&peer);
                self.peer_absorbed = peer.absorbed_seq;
                self.streamed = peer.absorbed_seq;
                self.peer_hello = Some(*peer);
                self.last_heartbeat = Some(now_ms());
                self.conn = Some(Conn { id, tx, abort });
                self.step(Input::LinkUp(status)).await;
            }
            LinkEvent::Msg { id, msg } => {
                if self.conn.as_ref().is_none_or(|c| c.id != id) {
                    return;
                }
                let input = match msg {
                    Message::Status(s) => {
                        self.last_heartbeat = Some(now_ms());
                        Input::Heartbeat(s)
                    }
                    Message::HandOver { epoch } => Input::HandOver { epoch },
                    Message::HandOverRequest => Input::HandOverRequest,
                };
                self.step(input).await;
            }
            LinkEvent::Keys { id, keys } => {
                if self.conn.as_ref().is_none_or(|c| c.id != id) || keys.is_empty() {
                    return;
                }
                match self
                    .node
                    .store()
                    .write(move |c| exec::absorb(c, &keys))
                    .await
                {
                    Ok(upto) => {
                        self.absorbed = upto;
                        self.send_body(Body::KeysAck(upto));
                        self.publish();
                    }
                    Err(e) => tracing::error!("cannot store the peer's executed keys: {e}"),
                }
            }
            LinkEvent::KeysAck { id, upto } => {
                if self.conn.as_ref().is_some_and(|c| c.id == id) {
                    self.peer_absorbed = self.peer_absorbed.max(upto);
                    self.publish();
                }
            }
            LinkEvent::CopyBack {
                id,
                upto,
                events,
                notifications,
            } => {
                if self.conn.as_ref().is_none_or(|c| c.id != id) {
                    return;
                }
                let peer = self.cfg.peer_name().to_owned();
                tracing::debug!(upto, events = events.len(), "copy-back batch received");
                match self.node.import_copy(peer, events, notifications).await {
                    Ok(()) => self.send_body(Body::CopyBackAck(upto)),
                    Err(e) => tracing::error!("cannot store copied-back rows: {e}"),
                }
            }
            LinkEvent::Raise { id, signal } => {
                if self.conn.as_ref().is_none_or(|c| c.id != id) {
                    return;
                }
                tracing::info!(signal = %signal.name, "running a signal the peer raised while standby");
                if let Err(e) = self.node.ingest(vec![signal], true).await {
                    tracing::error!("could not take the peer's signal: {e}");
                }
            }
            LinkEvent::CopyBackAck { id, upto } => {
                if self.conn.as_ref().is_none_or(|c| c.id != id)
                    || self.copy_inflight.map(|(u, _)| u) != Some(upto)
                {
                    return;
                }
                if let Err(e) = self
                    .node
                    .store()
                    .write(move |c| copyback::set_last_copied(c, upto))
                    .await
                {
                    tracing::error!("copy-back progress: {e}");
                }
                self.copy_inflight = None;
                self.copy_acked = Some(Instant::now());
                if self.cfg.copyback_delay.is_zero() {
                    self.copy_back().await;
                }
            }
            LinkEvent::Down { id, error } => {
                if self.conn.as_ref().is_some_and(|c| c.id == id) {
                    self.conn = None;
                    if !matches!(error, LinkError::Closed | LinkError::Io(_)) {
                        self.node.metrics().link_rejected(error.kind());
                    }
                    tracing::warn!("link down: {error}");
                    self.step(Input::LinkDown).await;
                } else if id == self.next_id && self.connecting {
                    self.connecting = false;
                    if !matches!(error, LinkError::Io(_) | LinkError::Timeout) {
                        self.node.metrics().link_rejected(error.kind());
                        tracing::warn!("link refused: {error}");
                    } else {
                        tracing::debug!("cannot reach the secondary: {error}");
                    }
                }
            }
        }
    }

    async fn step(&mut self, input: Input) {
        let before = self.machine.clone();
        let effects = self.machine.step(self.now(), input);
        for effect in effects {
            if let Err(failed) = self.apply(effect).await {
                // The rest of the step is not carried out: back to what the
                // disk holds, at most standby; the next check tries again.
                self.machine.persist_failed(before, failed);
                break;
            }
        }
        self.publish();
    }

    /// Carry out one effect; `Err(fs)` when writing `fs` failed, which
    /// stops the rest of the step.
    async fn apply(&mut self, effect: Effect) -> Result<(), Fs> {
        match effect {
            Effect::Persist { fs, epoch } => {
                let n = fs.number();
                match self
                    .node
                    .store()
                    .write(move |c| log::save_state(c, n, epoch))
                    .await
                {
                    Ok(()) => {
                        if self.persist_error.take().is_some() {
                            tracing::info!(fs = n, epoch, "failover state stored again");
                        }
                        self.node.metrics().persist_failing.set(0);
                    }
                    Err(e) => {
                        let why = format!("cannot store FS={n} epoch={epoch}: {e}");
                        tracing::error!(
                            "{why}; staying standby (no rules run here) and trying again at the next check"
                        );
                        self.persist_error = Some(why);
                        self.node.metrics().persist_failing.set(1);
                        return Err(fs);
                    }
                }
            }
            // The view follows the gate at once: `/status` must not say
            // standby while rules already run (the rest of the step, a
            // FAILOVER-ON and a replay, can take a while).
            Effect::OpenGate => {
                self.node.gate().open();
                self.publish();
                tracing::info!(epoch = self.machine.epoch, "active: rules run on this node");
            }
            Effect::CloseGate => {
                let gate = self.node.gate().clone();
                let _ = tokio::task::spawn_blocking(move || gate.close()).await;
                self.publish();
                tracing::info!("standby: rules suppressed on this node");
            }
            Effect::RaiseOn {
                reason,
                epoch,
                down_since,
            } => {
                let fields = [
                    ("reason", Value::from(reason.as_str())),
                    ("epoch", Value::Int(epoch as i64)),
                    ("primary", Value::from(self.cfg.primary.as_str())),
                    ("down_since", Value::Int(self.wall(down_since))),
                ];
                tracing::warn!(
                    reason = reason.as_str(),
                    epoch,
                    "FAILOVER-ON: this secondary is now active"
                );
                self.raise("FAILOVER-ON", epoch, &fields).await;
            }
            Effect::RaiseOff { epoch } => {
                let fields = [
                    ("reason", Value::from("handback")),
                    ("epoch", Value::Int(epoch as i64)),
                    ("primary", Value::from(self.cfg.primary.as_str())),
                ];
                tracing::info!(epoch, "FAILOVER-OFF: handing back to the primary");
                self.raise("FAILOVER-OFF", epoch, &fields).await;
            }
            Effect::Send(m) => {
                if matches!(m, Message::HandOver { .. }) {
                    // The hand-over carries every key we executed that the
                    // peer has not stored: they go first on the same FIFO
                    // link, and the peer stores them before it activates.
                    self.streamed = self.peer_absorbed;
                    self.stream().await;
                }
                self.send_body(Body::Machine(m));
            }
            Effect::Replay { window } => {
                let window = window.map(std::time::Duration::from_millis);
                if let Err(e) = self.node.replay_pending(window).await {
                    tracing::error!("replay of pending signals failed: {e}");
                }
            }
            Effect::Connect => self.connect(),
            Effect::FailoverStarted { reason } => {
                let (name, mode) = (self.node.config().node.name.clone(), self.failback_mode());
                let at = now_ms();
                if let Err(e) = self
                    .node
                    .store()
                    .write(move |c| log::start(c, &name, reason.as_str(), mode, at))
                    .await
                {
                    tracing::error!("failover log: {e}");
                }
            }
            Effect::FailoverEnded => {
                let name = self.node.config().node.name.clone();
                let at = now_ms();
                if let Err(e) = self
                    .node
                    .store()
                    .write(move |c| log::end(c, &name, at))
                    .await
                {
                    tracing::error!("failover log: {e}");
                }
            }
            Effect::Reply(r) => {
                if let Some(tx) = self.reply.take() {
                    let _ = tx.send(r);
                }
            }
        }
        Ok(())
    }

    pub(super) fn send_body(&mut self, body: Body) {
        if let Some(c) = &self.conn
            && c.tx.try_send((self.machine.epoch, body)).is_err()
        {
            // A frame that cannot be queued is lost: the link is no longer
            // trustworthy. Drop it; the primary dials again at its next
            // check, and the hello resynchronises both ends.
            tracing::warn!("link send queue full or closed: dropping the link");
            if let Some(c) = self.conn.take() {
                c.abort.abort();
            }
            self.pending_down = true;
        }
    }

    fn failback_mode(&self) -> &'static str {
        if self.machine.pinned_manual || self.machine.settings.failback == Failback::Manual {
            "manual"
        } else {
            "auto"
        }
    }

    /// A host signal raised here while standby: to the active peer when
    /// it takes one, else stored here (it runs here at a takeover).
    async fn forward(&mut self, signal: SignalInput) {
        let takes = self.conn.is_some()
            && !self.machine.active()
            && self
                .peer_hello
                .as_ref()
                .is_some_and(|h| h.features.iter().any(|f| f == link::FEATURE_RAISE))
            && self.machine.peer.is_some_and(|p| p.fs == Fs::Active);
        if takes {
            tracing::info!(signal = %signal.name, "handing the signal to the active peer");
            self.send_body(Body::Raise(signal.into()));
            return;
        }
        if let Err(e) = self.node.ingest(vec![signal], true).await {
            tracing::error!("could not raise a host signal: {e}");
        }
    }

    async fn raise(&self, name: &str, epoch: u64, fields: &[(&str, Value)]) {
        let signal = SignalInput {
            name: name.to_owned(),
            source: Some(self.node.config().node.name.clone()),
            key: Some(format!("{name}:{epoch}")),
            time: None,
            fields: fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        };
        if let Err(e) = self.node.ingest(vec![signal], true).await {
            tracing::error!("could not raise {name}: {e}");
        }
    }

    fn connect(&mut self) {
        if self.connecting || self.conn.is_some() {
            return;
        }
        let Some(addr) = self.cfg.peer.clone() else {
            return;
        };
        self.connecting = true;
        self.next_id += 1;
        let id = self.next_id;
        let mine = hello(&self.node, &self.cfg, &self.view_tx.borrow(), self.started);
        let secret = self.cfg.secret.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            match link::connect(&addr, secret.as_bytes(), &mine).await {
                Ok(session) => run_session(id, session, events).await,
                Err(error) => {
                    let _ = events.send(LinkEvent::Down { id, error }).await;
                }
            }
        });
    }
}
