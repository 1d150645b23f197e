//! The failover driver: one task that owns the [`Machine`], feeds it the
//! check timer, link events and operator commands, and carries out its
//! effects in order.
//!
//! Effects are done one after the other, each awaited: FS is durable before
//! the gate opens, the gate is closed (in-flight rules finished) before FS=2
//! is stored, and FS=2 is stored before the hand-over is sent. If storing FS
//! fails, the remaining effects of that step are skipped and the error is
//! logged: a node that cannot persist FS does not take over.

use std::sync::Arc;
use std::time::Instant;

use tandem_guest::Value;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;

use super::link::{self, Body, Hello, LinkError, Session};
use super::machine::{
    Command, Effect, Failback, Fs, Input, Machine, Message, PairRole, PeerStatus, Settings,
};
use crate::config::FailoverConfig;
use crate::node::{Node, SignalInput};
use crate::shutdown::Listener;
use crate::store::{copyback, exec, failover as log, now_ms};

/// The peer as last heard.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerView {
    pub node: String,
    pub sync_types: Vec<String>,
    pub sync_generation: u64,
    pub fs: u8,
    pub epoch: u64,
    pub ready: bool,
    pub version: String,
    pub admin: Option<String>,
}

/// What the rest of the node (status pages, ingest replies) sees.
#[derive(Debug, Clone, serde::Serialize)]
pub struct View {
    pub role: PairRole,
    pub fs: u8,
    pub epoch: u64,
    /// Rules run here now.
    pub active: bool,
    pub fenced: bool,
    pub ready: bool,
    pub link_up: bool,
    pub peer_name: String,
    pub peer_link: Option<String>,
    pub peer_admin: Option<String>,
    pub peer: Option<PeerView>,
    /// Wall-clock ms of the last status heard from the peer.
    pub last_heartbeat: Option<i64>,
    pub failback: &'static str,
    pub failover_open: bool,
    /// The peer's last execution number this node has stored.
    pub absorbed_seq: u64,
    /// The last execution number of this node the peer acknowledged.
    pub peer_absorbed_seq: u64,
    /// Why FS could not be stored, while that lasts (the node stays or
    /// falls back to standby and tries again at every check).
    pub persist_error: Option<String>,
}

type Reply = oneshot::Sender<Result<&'static str, &'static str>>;

/// Refused link connections are logged at most this often.
static LINK_REFUSALS: crate::escape::LogLimiter =
    crate::escape::LogLimiter::new(std::time::Duration::from_secs(1));

/// How long executed keys gather before they go to the standby.
const STREAM_BATCH: std::time::Duration = std::time::Duration::from_millis(20);
/// Keys per `Keys` frame (well under the frame cap).
const KEYS_PER_FRAME: u32 = 2000;

/// The handle the admin API and the server hold.
#[derive(Debug, Clone)]
pub struct Handle {
    view: watch::Receiver<View>,
    commands: mpsc::Sender<(Command, Reply)>,
}

impl Handle {
    /// The current view.
    pub fn view(&self) -> View {
        self.view.borrow().clone()
    }

    /// Run an operator command; `Err` says why it was refused.
    pub async fn command(&self, c: Command) -> Result<&'static str, &'static str> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send((c, tx))
            .await
            .map_err(|_| "failover is shutting down")?;
        rx.await.map_err(|_| "failover is shutting down")?
    }

    /// Wait until `pred` holds for the view (tests, the CLI).
    pub async fn wait_for(&self, pred: impl Fn(&View) -> bool) {
        let mut rx = self.view.clone();
        let _ = rx.wait_for(|v| pred(v)).await;
    }
}

enum LinkEvent {
    Up {
        id: u64,
        peer: Box<Hello>,
        tx: mpsc::Sender<(u64, Body)>,
        abort: AbortHandle,
    },
    Msg {
        id: u64,
        msg: Message,
    },
    Keys {
        id: u64,
        keys: Vec<(u64, String)>,
    },
    KeysAck {
        id: u64,
        upto: u64,
    },
    CopyBack {
        id: u64,
        upto: i64,
        events: Vec<copyback::CopiedEvent>,
        notifications: Vec<copyback::CopiedNotification>,
    },
    CopyBackAck {
        id: u64,
        upto: i64,
    },
    Down {
        id: u64,
        error: LinkError,
    },
}

struct Conn {
    id: u64,
    tx: mpsc::Sender<(u64, Body)>,
    abort: AbortHandle,
}

struct Driver {
    node: Arc<Node>,
    cfg: FailoverConfig,
    machine: Machine,
    started: Instant,
    view_tx: watch::Sender<View>,
    events: mpsc::Sender<LinkEvent>,
    conn: Option<Conn>,
    connecting: bool,
    next_id: u64,
    peer_hello: Option<Hello>,
    last_heartbeat: Option<i64>,
    reply: Option<Reply>,
    /// The peer's last execution number stored here.
    absorbed: u64,
    /// Our last execution number the peer acknowledged.
    peer_absorbed: u64,
    /// Our last execution number sent on the current link.
    streamed: u64,
    /// A copy-back batch is on its way (up to this event id).
    copy_inflight: Option<(i64, Instant)>,
    /// When the last copy-back batch was acknowledged.
    copy_acked: Option<Instant>,
    /// Why the last FS write failed, until one succeeds.
    persist_error: Option<String>,
    /// The link was dropped outside a step (a frame could not be queued):
    /// the machine hears `LinkDown` after the current event.
    pending_down: bool,
}

fn settings(cfg: &FailoverConfig) -> Settings {
    let ms = |d: std::time::Duration| d.as_millis() as u64;
    Settings {
        role: cfg.role,
        startup_delay: ms(cfg.startup_delay),
        timeout: ms(cfg.timeout),
        check_interval: ms(cfg.check_interval),
        heartbeat_every: cfg.heartbeat_every,
        failback: cfg.failback,
        failback_after: cfg.failback_after,
        primary_grace: ms(cfg.primary_grace),
        replay_window: ms(cfg.replay_window),
    }
}

/// Start failover for `node`. The secondary's link listener is bound by the
/// caller (so its address can go into listen.json). Returns the handle; the
/// task runs until `stop`.
pub async fn start(
    node: Arc<Node>,
    cfg: FailoverConfig,
    listener: Option<TcpListener>,
    stop: Listener,
) -> Result<(Handle, tokio::task::JoinHandle<()>), crate::store::StoreError> {
    let stored = node.store().read(log::load_state).await?;
    let absorbed = node.store().read(exec::absorbed).await?;
    let (fs, epoch) = stored.map_or((Fs::Standby, 0), |(fs, e)| (Fs::from_number(fs), e));
    let machine = Machine::start(settings(&cfg), fs, epoch);
    if machine.fenced {
        tracing::warn!(
            "restarted with FS=1: rules stay suppressed until the primary is heard or one check passes"
        );
    }
    let (events_tx, events_rx) = mpsc::channel(1024);
    let (cmd_tx, cmd_rx) = mpsc::channel(16);
    let driver = Driver {
        node,
        cfg,
        machine,
        started: Instant::now(),
        view_tx: watch::channel(placeholder_view()).0,
        events: events_tx,
        conn: None,
        connecting: false,
        next_id: 0,
        peer_hello: None,
        last_heartbeat: None,
        reply: None,
        absorbed: 0,
        peer_absorbed: 0,
        streamed: 0,
        copy_inflight: None,
        copy_acked: None,
        persist_error: None,
        pending_down: false,
    };
    let mut driver = driver;
    driver.absorbed = absorbed;
    let view_rx = driver.view_tx.subscribe();
    driver.publish();
    if let Some(l) = listener {
        let hello_view = driver.view_tx.subscribe();
        let acceptor = Acceptor {
            node: driver.node.clone(),
            cfg: driver.cfg.clone(),
            view: hello_view,
            events: driver.events.clone(),
            started: driver.started,
        };
        tokio::spawn(acceptor.run(l, stop.clone()));
    }
    let task = tokio::spawn(driver.run(events_rx, cmd_rx, stop));
    Ok((
        Handle {
            view: view_rx,
            commands: cmd_tx,
        },
        task,
    ))
}

pub(crate) fn placeholder_view() -> View {
    View {
        role: PairRole::Primary,
        fs: 2,
        epoch: 0,
        active: false,
        fenced: false,
        ready: false,
        link_up: false,
        peer_name: String::new(),
        peer_link: None,
        peer_admin: None,
        peer: None,
        last_heartbeat: None,
        failback: "auto",
        failover_open: false,
        absorbed_seq: 0,
        peer_absorbed_seq: 0,
        persist_error: None,
    }
}

/// Our hello, from the current view.
fn hello(node: &Node, cfg: &FailoverConfig, v: &View, started: Instant) -> Hello {
    Hello {
        node: node.config().node.name.clone(),
        role: cfg.role,
        primary: cfg.primary.clone(),
        secondary: cfg.secondary.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        link_protocol: link::PROTOCOL,
        sync_types: cfg.table_sync_types.clone(),
        epoch: v.epoch,
        fs: if v.fs == 1 { Fs::Active } else { Fs::Standby },
        fenced: v.fenced,
        uptime_ms: started.elapsed().as_millis() as u64,
        ready: v.ready,
        clock_ms: now_ms(),
        admin: node.admin_url().map(str::to_owned),
        absorbed_seq: v.absorbed_seq,
        sync_generation: node.sync_generation(),
    }
}

fn status_of(h: &Hello) -> PeerStatus {
    PeerStatus {
        fs: h.fs,
        epoch: h.epoch,
        ready: h.ready,
        fenced: h.fenced,
    }
}

/// Run one session until either direction fails: the writer and the
/// reader run in one task, and whichever ends first takes the link down
/// (reported as `Down` with its error), so a link that can no longer send
/// is never kept "up" by a reader that still reads. The driver's `Up`
/// arrives before any frame the reader passes on.
async fn run_session(id: u64, session: Session, events: mpsc::Sender<LinkEvent>) {
    let Session {
        peer,
        sender,
        receiver,
    } = session;
    let (tx, rx) = mpsc::channel::<(u64, Body)>(1024);
    let (go, start) = oneshot::channel::<()>();
    let task = tokio::spawn({
        let events = events.clone();
        async move {
            if start.await.is_err() {
                return;
            }
            let error = tokio::select! {
                e = write_loop(sender, rx) => e,
                e = read_loop(id, receiver, &events) => e,
            };
            let _ = events.send(LinkEvent::Down { id, error }).await;
        }
    });
    let up = LinkEvent::Up {
        id,
        peer: Box::new(peer),
        tx,
        abort: task.abort_handle(),
    };
    if events.send(up).await.is_err() {
        task.abort();
        return;
    }
    let _ = go.send(());
    let _ = task.await;
}

/// Send what the driver queues; the first failed send ends the session.
async fn write_loop(mut sender: link::Sender, mut rx: mpsc::Receiver<(u64, Body)>) -> LinkError {
    while let Some((epoch, body)) = rx.recv().await {
        if let Err(e) = sender.send(epoch, body).await {
            return e;
        }
    }
    // The driver dropped this connection.
    LinkError::Closed
}

/// Pass frames to the driver until one cannot be read.
async fn read_loop(
    id: u64,
    mut receiver: link::Receiver,
    events: &mpsc::Sender<LinkEvent>,
) -> LinkError {
    loop {
        let ev = match receiver.recv().await {
            Ok(Body::Machine(msg)) => LinkEvent::Msg { id, msg },
            Ok(Body::Keys(keys)) => LinkEvent::Keys { id, keys },
            Ok(Body::KeysAck(upto)) => LinkEvent::KeysAck { id, upto },
            Ok(Body::CopyBack {
                upto,
                events,
                notifications,
            }) => LinkEvent::CopyBack {
                id,
                upto,
                events: events.into_iter().map(Into::into).collect(),
                notifications: notifications.into_iter().map(Into::into).collect(),
            },
            Ok(Body::CopyBackAck(upto)) => LinkEvent::CopyBackAck { id, upto },
            Ok(Body::Hello(_)) => {
                return LinkError::Garbage("a second hello in one session".into());
            }
            Err(error) => return error,
        };
        if events.send(ev).await.is_err() {
            return LinkError::Closed;
        }
    }
}

struct Acceptor {
    node: Arc<Node>,
    cfg: FailoverConfig,
    view: watch::Receiver<View>,
    events: mpsc::Sender<LinkEvent>,
    started: Instant,
}

impl Acceptor {
    async fn run(self, listener: TcpListener, stop: Listener) {
        let stop = stop.wait();
        tokio::pin!(stop);
        let mut id = 1u64 << 32;
        let mut backoff = crate::net::AcceptBackoff::default();
        loop {
            let accepted = tokio::select! {
                _ = &mut stop => return,
                a = listener.accept() => a,
            };
            let (stream, from) = match accepted {
                Ok(a) => {
                    backoff.reset();
                    a
                }
                // Out of descriptors (or another passing error): wait
                // rather than spin, and say so once in a while.
                Err(e) => {
                    backoff.wait("link", &e).await;
                    continue;
                }
            };
            id += 1;
            let mine = hello(&self.node, &self.cfg, &self.view.borrow(), self.started);
            let (node, secret, events) = (
                self.node.clone(),
                self.cfg.secret.clone(),
                self.events.clone(),
            );
            tokio::spawn(async move {
                match link::accept(stream, secret.as_bytes(), &mine).await {
                    Ok(session) => run_session(id, session, events).await,
                    Err(e) => {
                        node.metrics().link_rejected(e.kind());
                        if LINK_REFUSALS.allow() {
                            tracing::warn!(%from, "link refused: {e} (refusals are logged at most once a second; tandem_link_rejected_total counts them all)");
                        }
                    }
                }
            });
        }
    }
}

impl Driver {
    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Wall-clock ms of monotonic `mono`.
    fn wall(&self, mono: u64) -> i64 {
        now_ms() - (self.now().saturating_sub(mono)) as i64
    }

    fn publish(&self) {
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

    async fn run(
        mut self,
        mut events: mpsc::Receiver<LinkEvent>,
        mut commands: mpsc::Receiver<(Command, Reply)>,
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
                let skew = (peer.clock_ms - now_ms()).abs();
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
            Effect::OpenGate => {
                self.node.gate().open();
                tracing::info!(epoch = self.machine.epoch, "active: rules run on this node");
            }
            Effect::CloseGate => {
                let gate = self.node.gate().clone();
                let _ = tokio::task::spawn_blocking(move || gate.close()).await;
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

    fn send_body(&mut self, body: Body) {
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

    /// Send the keys executed here since the last ones sent on this link.
    async fn stream(&mut self) {
        if self.conn.is_none() {
            return;
        }
        loop {
            let from = self.streamed;
            let keys = match self
                .node
                .store()
                .read(move |c| exec::after(c, from, KEYS_PER_FRAME))
                .await
            {
                Ok(k) => k,
                Err(e) => {
                    tracing::error!("reading executed keys: {e}");
                    return;
                }
            };
            let Some(&(last, _)) = keys.last() else {
                return;
            };
            self.streamed = last;
            let full = keys.len() as u32 == KEYS_PER_FRAME;
            self.send_body(Body::Keys(keys));
            if !full {
                return;
            }
        }
    }

    /// The secondary, standby and linked, copies its failover rows to the
    /// primary one batch at a time, from where the last acknowledged batch
    /// ended.
    async fn copy_back(&mut self) {
        let m = &self.machine;
        if self.cfg.role != PairRole::Secondary
            || m.fs != Fs::Standby
            || !m.link_up
            || self.conn.is_none()
        {
            self.copy_inflight = None;
            return;
        }
        // A batch the peer never acknowledged (it could not store it) is
        // sent again: storing a batch twice changes nothing there.
        let ack_wait = (self.cfg.check_interval * 10).max(std::time::Duration::from_secs(2));
        if self
            .copy_inflight
            .is_some_and(|(_, sent)| sent.elapsed() > ack_wait)
        {
            tracing::warn!("copy-back: no acknowledgement, sending the batch again");
            self.copy_inflight = None;
        }
        if self.copy_inflight.is_some()
            || self
                .copy_acked
                .is_some_and(|t| t.elapsed() < self.cfg.copyback_delay)
        {
            return;
        }
        let (name, limit) = (
            self.node.config().node.name.clone(),
            self.cfg.copyback_batch,
        );
        let batch = self
            .node
            .store()
            .read(move |c| {
                let after = copyback::last_copied(c)?;
                copyback::batch(c, &name, after, limit)
            })
            .await;
        match batch {
            Ok((events, notifications)) => {
                let Some(upto) = events.last().map(|e| e.id) else {
                    return;
                };
                tracing::debug!(upto, events = events.len(), "copy-back batch sent");
                self.copy_inflight = Some((upto, Instant::now()));
                self.send_body(Body::CopyBack {
                    upto,
                    events: events.iter().map(Into::into).collect(),
                    notifications: notifications.iter().map(Into::into).collect(),
                });
            }
            Err(e) => tracing::error!("copy-back: {e}"),
        }
    }

    fn failback_mode(&self) -> &'static str {
        if self.machine.pinned_manual || self.machine.settings.failback == Failback::Manual {
            "manual"
        } else {
            "auto"
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
