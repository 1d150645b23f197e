//! The failover driver: one task that owns the [`Machine`], feeds it the
//! check timer, link events and operator commands, and carries out its
//! effects in order.
//!
//! Effects are done one after the other, each awaited: FS is durable before
//! the gate opens, the gate is closed (in-flight rules finished) before FS=2
//! is stored, and FS=2 is stored before the hand-over is sent. If storing FS
//! fails, the remaining effects of that step are skipped and the error is
//! logged: a node that cannot persist FS does not take over.

mod driver;
mod session;
use session::Acceptor;
mod stream;

use std::sync::Arc;
use std::time::Instant;

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
    /// The peer's wall clock minus this node's, in ms, when the link came
    /// up (DESIGN.md §4: pairs keep clocks in sync; over 1 s is logged).
    pub clock_skew_ms: i64,
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
    /// A host signal the peer raised for this node to run.
    Raise {
        id: u64,
        signal: SignalInput,
    },
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
    /// The peer's clock minus ours at the last link up.
    clock_skew_ms: i64,
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
    // Host signals raised here while standby go to the active node.
    let (forward_tx, forward_rx) = mpsc::channel(256);
    node.set_forwarder(forward_tx);
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
        clock_skew_ms: 0,
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
    let task = tokio::spawn(driver.run(events_rx, cmd_rx, forward_rx, stop));
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
        features: link::FEATURES.iter().map(|f| (*f).to_owned()).collect(),
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
