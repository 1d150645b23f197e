//! The cluster driver: one task per node that talks to etcd.
//!
//! Each round (a third of the lease TTL) it sends a keepalive, then a
//! linearizable read of `members/` and `owners/`; the keepalive is
//! credited (the fencing deadline moves to its SEND time + TTL - margin)
//! only when that read shows every group held open here as {me, my lease}.
//! Watch events on the cluster's prefix trigger the same read at once, so
//! a dead owner's key deletion is acted on without waiting for a round.
//! A timer at the deadline fences the node: every gate closes. After every
//! read, [`model::decide`] says per group what to do: take over
//! (create-only, staggered by rank), open, close, revoke a dead
//! incarnation's lease, or hand back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, PutOptions, Txn, TxnOp, WatchOptions,
    WatchStream,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::executed;
use super::keepalive::{self, Event, Lease, View, bounded};
use super::keys::Keys;
use super::model::{self, Member, Owner, OwnerValue, Situation, Step};
use super::{ClusterError, Command, FenceView, MemberView, OwnerView, Status, Tenure};
use crate::clock::boottime_ns;
use crate::config::{ClusterConfig, Failback};
use crate::node::{Node, SignalInput};
use crate::shutdown::Listener;
use crate::store::now_ms;

/// A group fenced while open here: reopened only if its key is unchanged.
#[derive(Debug)]
struct Fenced {
    since_ms: i64,
    reason: String,
    held: Vec<(String, Owner)>,
}

/// How a group came to be opened here: what the opening replays.
#[derive(Debug, Clone)]
enum Opening {
    /// This node created the key: replay from `down_since - window`,
    /// flagged replayed, and raise FAILOVER-ON or FAILOVER-OFF (with the
    /// node it moved from) when that is what the move is.
    TakeOver {
        raise: Option<(&'static str, String)>,
        down_since: i64,
    },
    /// A giver put the key for this node: read the giver's executed keys
    /// at the move's revision, then replay every pending row.
    Handed,
    /// Unfenced with the key unchanged: replay every pending row.
    Reopen,
}

struct Driver {
    node: Arc<Node>,
    cfg: ClusterConfig,
    me: String,
    keys: Keys,
    client: Option<Client>,
    /// The lease, as the keepalive task granted it.
    lease_rx: watch::Receiver<Lease>,
    lease_tx: Option<watch::Sender<Lease>>,
    /// The keepalive task's reports (once it runs).
    events: Option<mpsc::Receiver<Event>>,
    watch: Option<WatchStream>,
    /// The lease the members key was put under, and the generation it
    /// says this node holds.
    member_lease: Option<i64>,
    member_generation: u64,
    digest_ok: Option<bool>,
    members: BTreeMap<String, Member>,
    owners: BTreeMap<String, Owner>,
    publisher: Option<(String, i64)>,
    /// Groups open here, with their key as opened.
    open: BTreeMap<String, Owner>,
    fenced: Option<Fenced>,
    takeover_at: BTreeMap<String, Instant>,
    /// When this node last saw each group owned (ms), and by whom.
    last_owned: BTreeMap<String, (i64, String)>,
    /// The SEND time of the last credited keepalive (boottime ns).
    credited_sent: Option<u64>,
    last_error: Option<String>,
    status: watch::Sender<Status>,
    started_ms: i64,
    stop: Listener,
    tenures: std::collections::VecDeque<Tenure>,
    /// The etcd revision of the newest view taken (or of this node's own
    /// last write).
    view_revision: i64,
    /// Whether the executed-key tasks run.
    executed_started: bool,
    /// (when, etcd revision) of views taken: an owner prunes its groups'
    /// batches created before the revision it saw `replay_window` ago.
    rev_samples: std::collections::VecDeque<(Instant, i64)>,
    /// Gaps in this node's history of executed keys (revisions).
    gaps: Vec<i64>,
    /// The pruning of executed batches, while it runs.
    prune_task: Option<tokio::task::JoinHandle<()>>,
    /// The executed-batch value format every configured node reads, as
    /// the last view showed it ([`model::batch_format`]).
    batch_format: watch::Sender<u32>,
}

/// Start the driver task.
pub(super) fn start(
    node: Arc<Node>,
    cfg: ClusterConfig,
    status: watch::Sender<Status>,
    cmds: mpsc::Receiver<Command>,
    stop: Listener,
) -> tokio::task::JoinHandle<()> {
    let me = node.config().node.name.clone();
    let started_ms = node.started_at_ms();
    let (lease_tx, lease_rx) = watch::channel(None);
    let d = Driver {
        keys: Keys::new(cfg.prefix()),
        node,
        cfg,
        me,
        client: None,
        lease_rx,
        lease_tx: Some(lease_tx),
        events: None,
        watch: None,
        member_lease: None,
        member_generation: 0,
        digest_ok: None,
        members: BTreeMap::new(),
        owners: BTreeMap::new(),
        publisher: None,
        open: BTreeMap::new(),
        fenced: None,
        takeover_at: BTreeMap::new(),
        last_owned: BTreeMap::new(),
        credited_sent: None,
        last_error: None,
        status,
        started_ms,
        stop: stop.clone(),
        tenures: std::collections::VecDeque::new(),
        view_revision: 0,
        executed_started: false,
        rev_samples: std::collections::VecDeque::new(),
        gaps: Vec::new(),
        prune_task: None,
        batch_format: watch::Sender::new(1),
    };
    tokio::spawn(d.run(cmds, stop))
}

async fn next_event(e: &mut Option<mpsc::Receiver<Event>>) -> Option<Event> {
    match e {
        Some(e) => e.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_watch(
    w: &mut Option<WatchStream>,
) -> Result<Option<etcd_client::WatchResponse>, etcd_client::Error> {
    match w {
        Some(w) => w.message().await,
        None => std::future::pending().await,
    }
}

fn etcd_err(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Etcd(e.to_string())
}

impl Driver {
    fn slot(&self) -> Duration {
        self.cfg.lease_ttl / 3
    }

    /// Every etcd call is bounded by this.
    fn op_timeout(&self) -> Duration {
        (self.cfg.lease_ttl / 3).max(Duration::from_millis(300))
    }

    fn lease(&self) -> Option<i64> {
        self.lease_rx.borrow().map(|(id, _)| id)
    }

    fn member_put(&self) -> bool {
        self.member_lease.is_some()
            && self.member_lease == self.lease()
            && self.member_generation == self.node.sync_generation()
    }

    fn ready(&self) -> bool {
        self.node.uptime() >= self.cfg.startup_delay
    }

    fn my_groups(&self) -> Vec<(String, Vec<String>)> {
        self.cfg
            .groups
            .iter()
            .filter(|(_, nodes)| nodes.contains(&self.me))
            .map(|(g, n)| (g.clone(), n.clone()))
            .collect()
    }

    async fn call<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, ClusterError> {
        bounded(self.node.metrics(), self.op_timeout(), what, f).await
    }

    /// A transaction, tried again on another endpoint while the operation
    /// timeout lasts (a retry after a lost answer fails its compare, which
    /// the callers read as "someone else moved first" and re-read).
    async fn txn_retried(
        &self,
        what: &str,
        c: &Client,
        txn: Txn,
    ) -> Result<etcd_client::TxnResponse, ClusterError> {
        keepalive::retried(self.node.metrics(), self.op_timeout(), what, || {
            let (mut c, txn) = (c.clone(), txn.clone());
            async move { c.txn(txn).await }
        })
        .await
    }

    async fn run(mut self, mut cmds: mpsc::Receiver<Command>, stop: Listener) {
        let stop = stop.wait();
        tokio::pin!(stop);
        let mut next_round = Instant::now();
        loop {
            self.publish();
            let deadline_at = self.deadline_instant();
            let takeover_due = self.takeover_at.values().min().copied();
            let watching = self.watch.is_some();
            let listening = self.events.is_some();
            tokio::select! {
                ev = next_event(&mut self.events), if listening => match ev {
                    Some(ev) => self.on_event(ev).await,
                    None => self.events = None,
                },
                _ = &mut stop => break,
                _ = tokio::time::sleep_until(next_round) => {
                    next_round = Instant::now() + self.slot();
                    if let Err(e) = self.round().await {
                        self.note_error(e);
                    }
                }
                _ = tokio::time::sleep_until(deadline_at.unwrap_or(next_round)), if deadline_at.is_some() => {
                    if !self.node.gate().within_deadline() && self.fenced.is_none() {
                        let why = format!(
                            "no keepalive credited within the lease ({}){}",
                            humantime::format_duration(self.cfg.lease_ttl),
                            self.last_error.as_deref().map(|e| format!("; last etcd error: {e}")).unwrap_or_default()
                        );
                        self.fence(why).await;
                    }
                }
                _ = tokio::time::sleep_until(takeover_due.unwrap_or(next_round)), if takeover_due.is_some() => {
                    if let Err(e) = self.takeovers_due().await {
                        self.note_error(e);
                    }
                }
                msg = next_watch(&mut self.watch), if watching => {
                    match msg {
                        Ok(Some(resp)) if !resp.canceled() => {
                            let relevant = resp.events().iter().any(|e| {
                                e.kv().is_some_and(|kv| {
                                    kv.key().starts_with(self.keys.owners().as_bytes())
                                        || kv.key().starts_with(self.keys.members().as_bytes())
                                        || (e.event_type() == EventType::Delete)
                                })
                            });
                            if relevant && let Err(e) = self.refresh().await {
                                self.note_error(e);
                            }
                        }
                        Ok(_) => self.watch = None,
                        Err(e) => {
                            self.watch = None;
                            self.note_error(etcd_err(e));
                        }
                    }
                }
                cmd = cmds.recv() => match cmd {
                    Some(Command::Move { group, to, pin, reply }) => {
                        let r = self.command_move(&group, to, pin).await;
                        let _ = reply.send(r);
                    }
                    Some(Command::Publisher { node, reply }) => {
                        let r = self.command_publisher(&node).await;
                        let _ = reply.send(r);
                    }
                    None => {}
                },
            }
        }
        // Leaving: close every gate, give the groups up at once (revoking
        // the lease deletes the keys), so the next nodes need not wait for
        // the lease to run out.
        self.close_all().await;
        if let (Some(mut c), Some(lease)) = (self.client.clone(), self.lease()) {
            let _ = tokio::time::timeout(self.op_timeout(), c.lease_revoke(lease)).await;
        }
        self.publish();
    }

    fn note_error(&mut self, e: ClusterError) {
        let text = e.to_string();
        if self.last_error.as_deref() != Some(text.as_str()) {
            tracing::warn!(node = %self.me, "cluster: {text}");
        }
        self.last_error = Some(text);
    }

    fn deadline_instant(&self) -> Option<Instant> {
        let d = self.node.gate().deadline()?;
        let now = boottime_ns();
        Some(Instant::now() + Duration::from_nanos(d.saturating_sub(now)))
    }

    /// One round: connect if needed, the digest, the lease, a keepalive,
    /// the confirming read, the members key, the watch; then decide.
    async fn round(&mut self) -> Result<(), ClusterError> {
        let client = match &self.client {
            Some(c) => c.clone(),
            None => {
                let opts = ConnectOptions::new()
                    .with_connect_timeout(self.op_timeout())
                    .with_timeout(self.op_timeout());
                let c = self
                    .call(
                        "connect",
                        Client::connect(self.cfg.etcd.clone(), Some(opts)),
                    )
                    .await?;
                self.client = Some(c.clone());
                self.node
                    .set_publisher_check(Arc::new(super::publish::EtcdPublisher {
                        client: c.clone(),
                        keys: self.keys.clone(),
                        metrics: self.node.metrics_arc(),
                        timeout: self.op_timeout(),
                    }));
                c
            }
        };
        if self.digest_ok.is_none() {
            self.check_digest(client.clone()).await?;
        }
        if self.digest_ok != Some(true) {
            return Ok(());
        }
        if let Some(lease_tx) = self.lease_tx.take() {
            // The keepalive task owns the lease from here on.
            let (tx, rx) = mpsc::channel(16);
            self.events = Some(rx);
            tokio::spawn(keepalive::run(
                client.clone(),
                keepalive::Settings {
                    me: self.me.clone(),
                    keys: self.keys.clone(),
                    ttl: self.cfg.lease_ttl,
                    margin: self.cfg.fence_margin,
                    op_timeout: self.op_timeout(),
                },
                self.node.gate().clone(),
                self.node.metrics_arc(),
                lease_tx,
                tx,
                self.stop.clone(),
            ));
        }
        if !self.executed_started {
            self.executed_started = true;
            tokio::spawn(executed::publish_loop(
                self.node.clone(),
                client.clone(),
                self.keys.clone(),
                self.batch_format.subscribe(),
                self.stop.clone(),
            ));
            tokio::spawn(executed::watch_loop(
                self.node.clone(),
                client.clone(),
                self.keys.clone(),
                self.stop.clone(),
            ));
        }
        if self.ready() && self.lease().is_some() && !self.member_put() {
            self.put_member(client.clone()).await?;
        }
        self.prune_batches(&client).await;
        if let Ok(g) = self
            .node
            .store()
            .read(|c| crate::store::groups::gaps(c, 20))
            .await
        {
            self.node.metrics().cluster_gaps.set(g.len() as i64);
            self.gaps = g;
        }
        if self.publisher.is_none() && self.member_put() {
            self.create_publisher(client.clone()).await?;
        }
        if self.watch.is_none() {
            let mut c = client.clone();
            let w = self
                .call(
                    "watch",
                    c.watch(
                        self.keys.prefix().to_owned(),
                        Some(WatchOptions::new().with_prefix()),
                    ),
                )
                .await?;
            self.watch = Some(w);
            // After every watch (re)start: re-read, then decide.
            self.refresh().await?;
        }
        self.decide_all().await;
        self.last_error = None;
        Ok(())
    }

    async fn check_digest(&mut self, mut c: Client) -> Result<(), ClusterError> {
        let key = self.keys.digest();
        let mine = self.cfg.groups_digest();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), mine.clone(), None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let resp = self.call("groups digest", c.txn(txn)).await?;
        if resp.succeeded() {
            self.digest_ok = Some(true);
            return Ok(());
        }
        let theirs = resp
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                etcd_client::TxnOpResponse::Get(g) => g
                    .kvs()
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                _ => None,
            })
            .unwrap_or_default();
        let ok = theirs == mine;
        if !ok {
            tracing::error!(
                node = %self.me,
                mine = %mine,
                etcd = %theirs,
                "cluster: this node's [cluster.groups] differ from the cluster's: it joins no group until they match (answering 503)"
            );
            self.last_error = Some(format!(
                "groups digest {mine} differs from the cluster's {theirs}"
            ));
        }
        self.digest_ok = Some(ok);
        Ok(())
    }

    /// A report of the keepalive task.
    async fn on_event(&mut self, ev: Event) {
        if self.member_lease.is_some() && self.member_lease != self.lease() {
            // The lease changed under us (a LeaseLost report may have
            // been dropped while the driver was busy).
            self.lease_lost().await;
        }
        match ev {
            Event::Round { view, credited } => {
                self.apply_view(view);
                if let Some(sent) = credited {
                    self.credited_sent = Some(sent);
                    if self.fenced.is_some() {
                        self.unfence().await;
                    }
                }
                if self.ready()
                    && self.lease().is_some()
                    && !self.member_put()
                    && let Some(c) = self.client.clone()
                    && let Err(e) = self.put_member(c).await
                {
                    self.note_error(e);
                }
                self.decide_all().await;
            }
            Event::LeaseLost => self.lease_lost().await,
            Event::Error(e) => self.note_error(e),
        }
    }

    async fn lease_lost(&mut self) {
        tracing::warn!(node = %self.me, "cluster: the lease expired");
        self.member_lease = None;
        if self.fenced.is_none() && !self.open.is_empty() {
            self.fence("the lease expired: its owner keys are gone".into())
                .await;
        }
        // Nothing held can reopen: the keys went with the lease.
        if let Some(f) = self.fenced.as_mut() {
            f.held.clear();
        }
    }

    async fn put_member(&mut self, mut c: Client) -> Result<(), ClusterError> {
        let Some(lease) = self.lease() else {
            return Ok(());
        };
        let generation = self.node.sync_generation();
        let m = Member {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            advertise: self.cfg.advertise.clone(),
            ready: true,
            lease,
            generation,
            batch_format: executed::BATCH_FORMAT,
        };
        let value = serde_json::to_vec(&m).map_err(|e| ClusterError::Refused(e.to_string()))?;
        self.call(
            "members key",
            c.put(
                self.keys.member(&self.me),
                value,
                Some(PutOptions::new().with_lease(lease)),
            ),
        )
        .await?;
        let first = self.member_lease != Some(lease);
        self.member_lease = Some(lease);
        self.member_generation = generation;
        if first {
            tracing::info!(node = %self.me, "cluster: Ready, members key put");
        }
        Ok(())
    }

    /// A linearizable read of `members/`, `owners/` and `publisher`.
    async fn read_view(&mut self, c: Client) -> Result<(), ClusterError> {
        let view =
            keepalive::read_view(c, &self.keys, self.node.metrics(), self.op_timeout()).await?;
        self.apply_view(view);
        Ok(())
    }

    /// Take a view, unless it is older than one already taken (a
    /// keepalive report queued while the driver moved a key must not undo
    /// what it knows).
    fn apply_view(&mut self, view: View) {
        if view.revision < self.view_revision {
            return;
        }
        self.view_revision = view.revision;
        let now = Instant::now();
        self.rev_samples.push_back((now, view.revision));
        while self
            .rev_samples
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > self.cfg.replay_window * 2)
        {
            self.rev_samples.pop_front();
        }
        self.members = view.members;
        let format = model::batch_format(&self.cfg.nodes(), &self.members);
        self.batch_format
            .send_if_modified(|f| std::mem::replace(f, format) != format);
        self.owners = view.owners;
        self.publisher = view.publisher;
        self.node.set_publisher(self.publisher.clone());
        let now = now_ms();
        for (g, o) in &self.owners {
            self.last_owned
                .insert(g.clone(), (now, o.value.node.clone()));
        }
        self.node.set_group_owners(
            self.owners
                .iter()
                .map(|(g, o)| (g.clone(), o.value.node.clone()))
                .collect(),
        );
    }

    /// Re-read the view and decide (on watch events).
    async fn refresh(&mut self) -> Result<(), ClusterError> {
        let Some(c) = self.client.clone() else {
            return Ok(());
        };
        self.read_view(c).await?;
        self.decide_all().await;
        Ok(())
    }

    async fn decide_all(&mut self) {
        if self.digest_ok != Some(true) {
            return;
        }
        for (group, list) in self.my_groups() {
            let open_here = self.open.contains_key(&group);
            let step = model::decide(Situation {
                list: &list,
                me: &self.me,
                lease: self.lease(),
                ready: self.ready() && self.member_put(),
                members: &self.members,
                owner: self.owners.get(&group),
                open_here,
                auto_failback: self.cfg.failback == Failback::Auto,
            });
            if !matches!(step, Step::TakeOver { .. }) {
                self.takeover_at.remove(&group);
            }
            // A fenced node changes nothing but what unfencing decides.
            if self.fenced.is_some() && !matches!(step, Step::Close | Step::Nothing) {
                continue;
            }
            let result = match step {
                Step::Nothing => Ok(()),
                Step::TakeOver { slots } => {
                    let at = Instant::now() + self.slot() * slots as u32;
                    self.takeover_at.entry(group.clone()).or_insert(at);
                    Ok(())
                }
                Step::Open => {
                    if let Some(o) = self.owners.get(&group).cloned() {
                        self.open_group(&group, o, Opening::Handed).await;
                    }
                    Ok(())
                }
                Step::Close => {
                    self.close_group(&group).await;
                    Ok(())
                }
                Step::RevokeStale { lease } => match self.client.clone() {
                    Some(mut c) => self
                        .call("revoke a dead incarnation's lease", c.lease_revoke(lease))
                        .await
                        .map(drop),
                    None => Ok(()),
                },
                Step::HandBack { to } => self.hand_over(&group, &to, false, "failback").await,
            };
            if let Err(e) = result {
                self.note_error(e);
            }
        }
    }

    /// The owner's job: delete its groups' executed batches created before
    /// the revision it observed `replay_window` ago, in a task of its own
    /// (one at a time) so the driver never waits for it.
    async fn prune_batches(&mut self, client: &Client) {
        if self.prune_task.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let now = Instant::now();
        let Some(below) = self
            .rev_samples
            .iter()
            .rev()
            .find(|(at, _)| now.duration_since(*at) >= self.cfg.replay_window)
            .map(|(_, rev)| *rev)
        else {
            return;
        };
        let groups: Vec<String> = self.open.keys().cloned().collect();
        let (node, client, keys, t) = (
            self.node.clone(),
            client.clone(),
            self.keys.clone(),
            self.op_timeout(),
        );
        self.prune_task = Some(tokio::spawn(async move {
            for g in groups {
                if let Err(e) = executed::prune(&node, &client, &keys, &g, below, t).await {
                    tracing::warn!(group = %g, "cluster: pruning executed batches: {e}");
                }
            }
        }));
    }

    fn down_since(&self, group: &str) -> i64 {
        self.last_owned
            .get(group)
            .map_or(self.started_ms, |(at, _)| *at)
    }

    async fn takeovers_due(&mut self) -> Result<(), ClusterError> {
        let now = Instant::now();
        let due: Vec<String> = self
            .takeover_at
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(g, _)| g.clone())
            .collect();
        for g in due {
            self.takeover_at.remove(&g);
            self.take_over(&g).await?;
        }
        Ok(())
    }

    /// Create `owners/G` if it is still absent (create-only).
    async fn take_over(&mut self, group: &str) -> Result<(), ClusterError> {
        let (Some(c), Some(lease)) = (self.client.clone(), self.lease()) else {
            return Ok(());
        };
        if self.fenced.is_some() || !self.node.gate().within_deadline() {
            return Ok(());
        }
        let value = OwnerValue {
            node: self.me.clone(),
            lease,
            pinned: false,
            handed_at: None,
        };
        let bytes = serde_json::to_vec(&value).map_err(|e| ClusterError::Refused(e.to_string()))?;
        let key = self.keys.owner(group);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                bytes,
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let resp = self.txn_retried("take over", &c, txn).await?;
        if !resp.succeeded() {
            return self.refresh().await;
        }
        let epoch = resp.header().map_or(0, |h| h.revision());
        self.view_revision = self.view_revision.max(epoch);
        let owner = Owner {
            value,
            mod_revision: epoch,
        };
        self.owners.insert(group.to_owned(), owner.clone());
        let down_since = self.down_since(group);
        let first = self
            .cfg
            .groups
            .get(group)
            .and_then(|l| l.first())
            .cloned()
            .unwrap_or_default();
        let previous = self
            .last_owned
            .get(group)
            .map(|(_, n)| n.clone())
            .filter(|n| *n != self.me);
        tracing::warn!(node = %self.me, group, epoch, from = ?previous, "cluster: took over the group");
        self.open_group(
            group,
            owner,
            Opening::TakeOver {
                // The group's first node is where it belongs: a takeover
                // by anyone else is a failover away from it (FAILOVER-ON);
                // the first node taking it back from a dead owner ends one
                // (FAILOVER-OFF); the first node taking it at a cold start
                // is no failover at all.
                raise: if self.me != first {
                    Some(("FAILOVER-ON", previous.unwrap_or(first)))
                } else {
                    previous.map(|p| ("FAILOVER-OFF", p))
                },
                down_since,
            },
        )
        .await;
        Ok(())
    }

    /// Open `group` here under `owner`, replay what the opening calls
    /// for, and (at a takeover) raise FAILOVER-ON.
    async fn open_group(&mut self, group: &str, owner: Owner, how: Opening) {
        let epoch = owner.mod_revision;
        // The keys others executed for the group, before the gate opens: a
        // taker reads them at the move's revision (the giver's last ones
        // travelled in the move), a node taking over reads what is there.
        let read_at = match &how {
            Opening::Handed => Some(owner.mod_revision),
            Opening::TakeOver { .. } => Some(0),
            Opening::Reopen => None,
        };
        if let (Some(rev), Some(c)) = (read_at, self.client.clone()) {
            let t = self.op_timeout();
            let mut r = executed::read_all(&self.node, &c, &self.keys, Some(group), rev, t).await;
            if r.is_err() && rev > 0 {
                // Compacted past the move: what is there now is a superset.
                r = executed::read_all(&self.node, &c, &self.keys, Some(group), 0, t).await;
            }
            if let Err(e) = r {
                tracing::warn!(
                    group,
                    "cluster: cannot read the group's executed keys before opening it: {e}"
                );
            }
        }
        self.gate_open(group, owner);
        let (since, flag_before) = match &how {
            Opening::TakeOver { raise, down_since } => {
                if matches!(raise, Some(("FAILOVER-ON", _))) {
                    let me = self.me.clone();
                    let g = group.to_owned();
                    let mode = match self.cfg.failback {
                        Failback::Auto => "auto",
                        Failback::Manual => "manual",
                    };
                    let _ = self
                        .node
                        .store()
                        .write(move |c| {
                            crate::store::failover::start_group(
                                c,
                                &me,
                                &g,
                                "takeover",
                                mode,
                                now_ms(),
                            )
                        })
                        .await;
                }
                if let Some((name, from)) = raise {
                    self.raise(
                        name,
                        format!("{name}/{group}/{epoch}"),
                        &[
                            ("group", group.into()),
                            ("from", from.clone().into()),
                            ("to", self.me.clone().into()),
                            ("primary", from.clone().into()),
                            ("reason", "takeover".into()),
                            ("epoch", epoch.into()),
                            ("down_since", (*down_since).into()),
                        ],
                    )
                    .await;
                }
                // At least once: flagged `replayed`.
                (
                    crate::node::replay_since(*down_since, self.cfg.replay_window),
                    i64::MAX,
                )
            }
            // Every pending row, with no window: the giver's executed keys
            // are tombstones here now. Rows received before this node's
            // last gap in its history may have run elsewhere unseen:
            // flagged `replayed`.
            Opening::Handed => {
                let gap = self
                    .node
                    .store()
                    .read(crate::store::groups::last_gap)
                    .await
                    .ok()
                    .flatten()
                    .map_or(i64::MIN, |(_, at, _)| at);
                (i64::MIN, gap)
            }
            // Everything pending for the group, with no window: while it
            // was open here nothing was kept for it but a batch the
            // fencing deadline refused at its commit, and nobody else can
            // have run what arrived since.
            Opening::Reopen => (i64::MIN, i64::MIN),
        };
        tracing::info!(node = %self.me, group, epoch, "cluster: group open here");
        match self
            .node
            .replay_group(group.to_owned(), since, flag_before)
            .await
        {
            Ok(s) if s.executed + s.covered + s.stale > 0 => {
                tracing::info!(
                    group,
                    executed = s.executed,
                    covered = s.covered,
                    dropped = s.stale,
                    "cluster: replayed the group's pending signals"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::error!(group, "cluster: replay failed: {e}"),
        }
    }

    /// Open `group`'s gate here under `owner`'s epoch, and record it.
    fn gate_open(&mut self, group: &str, owner: Owner) {
        let epoch = owner.mod_revision;
        self.node.gate().open_group(group, epoch as u64);
        self.note_open(group, epoch);
        self.open.insert(group.to_owned(), owner);
        self.node
            .metrics()
            .cluster_owned_groups
            .set(self.open.len() as i64);
    }

    fn note_open(&mut self, group: &str, epoch: i64) {
        if self.tenures.len() >= 100 {
            self.tenures.pop_front();
        }
        self.tenures.push_back(Tenure {
            group: group.to_owned(),
            epoch,
            opened_ns: boottime_ns(),
            closed_ns: None,
        });
    }

    async fn close_group(&mut self, group: &str) {
        if self.open.remove(group).is_none() {
            return;
        }
        let gate = self.node.gate().clone();
        let g = group.to_owned();
        let _ = tokio::task::spawn_blocking(move || gate.close_group(&g)).await;
        let closed = match self.node.gate().deadline() {
            Some(d) => d.min(boottime_ns()),
            None => boottime_ns(),
        };
        if let Some(t) = self
            .tenures
            .iter_mut()
            .rev()
            .find(|t| t.group == group && t.closed_ns.is_none())
        {
            t.closed_ns = Some(closed);
        }
        self.node
            .metrics()
            .cluster_owned_groups
            .set(self.open.len() as i64);
        tracing::info!(node = %self.me, group, "cluster: group closed here");
    }

    async fn close_all(&mut self) {
        let groups: Vec<String> = self.open.keys().cloned().collect();
        for g in groups {
            self.close_group(&g).await;
        }
    }

    async fn raise(&self, name: &str, key: String, fields: &[(&str, serde_json::Value)]) {
        let mut f = tandem_guest::Fields::new();
        for (k, v) in fields {
            if let Ok(v) = serde_json::from_value(v.clone()) {
                f.insert((*k).to_owned(), v);
            }
        }
        self.node
            .raise_on_active(SignalInput {
                name: name.to_owned(),
                source: Some(format!("tandem/{}", self.me)),
                key: Some(key),
                time: None,
                fields: f,
            })
            .await;
    }

    /// Past the deadline: close every gate and keep what was held, to
    /// reopen what is unchanged once a keepalive is credited again.
    async fn fence(&mut self, reason: String) {
        tracing::error!(node = %self.me, "cluster: FENCED: {reason}");
        let held: Vec<(String, Owner)> = self
            .open
            .iter()
            .map(|(g, o)| (g.clone(), o.clone()))
            .collect();
        self.close_all().await;
        self.takeover_at.clear();
        self.fenced = Some(Fenced {
            since_ms: now_ms(),
            reason,
            held,
        });
        self.node.metrics().cluster_fenced.set(1);
    }

    /// A keepalive was credited again: reopen each held group whose key
    /// is unchanged, replaying what arrived since the fence.
    async fn unfence(&mut self) {
        let Some(f) = self.fenced.take() else { return };
        self.node.metrics().cluster_fenced.set(0);
        tracing::warn!(node = %self.me, "cluster: unfenced: a keepalive was credited again");
        for (g, held) in f.held {
            if model::may_reopen(&held, self.owners.get(&g)) {
                self.open_group(&g, held, Opening::Reopen).await;
            }
        }
    }

    /// Hand `group`, owned here, to `to`: FAILOVER-OFF, close the gate
    /// (running rules finish), then one transaction that moves the key if
    /// it is unchanged. If it fails, reopen with FAILOVER-ON
    /// (`handback_failed`).
    async fn hand_over(
        &mut self,
        group: &str,
        to: &str,
        pin: bool,
        reason: &str,
    ) -> Result<(), ClusterError> {
        let Some(owner) = self.open.get(group).cloned() else {
            return Err(ClusterError::Refused(format!(
                "this node does not own group {group:?}"
            )));
        };
        let Some(taker) = self.members.get(to).filter(|m| m.ready).cloned() else {
            return Err(ClusterError::Refused(format!(
                "{to:?} is not a Ready member"
            )));
        };
        let Some(c) = self.client.clone() else {
            return Err(ClusterError::Etcd("not connected".into()));
        };
        let epoch = owner.mod_revision;
        tracing::info!(node = %self.me, group, to, reason, "cluster: handing the group over");
        // FAILOVER-OFF when the group goes back to its first node, and
        // FAILOVER-ON when a switchover moves it away from there: the
        // signals always say whether the group is home.
        let home = self.cfg.groups.get(group).and_then(|l| l.first());
        let name = if home.is_some_and(|h| h == to) {
            "FAILOVER-OFF"
        } else {
            "FAILOVER-ON"
        };
        self.raise(
            name,
            format!("{name}/{group}/{epoch}/{reason}"),
            &[
                ("group", group.into()),
                ("from", self.me.clone().into()),
                ("to", to.into()),
                ("primary", self.me.clone().into()),
                ("reason", reason.into()),
                ("epoch", epoch.into()),
                ("down_since", now_ms().into()),
            ],
        )
        .await;
        self.close_group(group).await;
        let closed_at = now_ms();
        if !self.cfg.handback_delay.is_zero() {
            tokio::time::sleep(self.cfg.handback_delay).await;
        }
        let current =
            serde_json::to_vec(&owner.value).map_err(|e| ClusterError::Refused(e.to_string()))?;
        let next = OwnerValue {
            node: to.to_owned(),
            lease: taker.lease,
            pinned: pin,
            handed_at: Some(closed_at),
        };
        let next = serde_json::to_vec(&next).map_err(|e| ClusterError::Refused(e.to_string()))?;
        let key = self.keys.owner(group);
        // The giver's executed keys not yet published travel in the move
        // itself: the taker reads them at the move's revision.
        let format = *self.batch_format.borrow();
        let mut batches =
            match executed::take_unpublished(&self.node, &self.keys, group, format).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(
                        group,
                        "cluster: cannot read the unpublished executed keys: {e}"
                    );
                    Vec::new()
                }
            };
        // All but the last batch are put first (the gate is closed: no
        // new ones come), so the move transaction stays small.
        let last = batches.pop();
        for (k, v) in batches {
            let put = keepalive::retried(
                self.node.metrics(),
                self.op_timeout(),
                "put executed keys",
                || {
                    let (mut c, k, v) = (c.clone(), k.clone(), v.clone());
                    async move { c.put(k, v, None).await }
                },
            )
            .await;
            if let Err(e) = put {
                self.note_error(e);
            }
        }
        let batches: Vec<_> = last.into_iter().collect();
        let mut ops = vec![TxnOp::put(
            key.clone(),
            next,
            Some(PutOptions::new().with_lease(taker.lease)),
        )];
        for (k, v) in batches {
            ops.push(TxnOp::put(k, v, None));
        }
        let txn = Txn::new()
            .when([
                Compare::value(key.clone(), CompareOp::Equal, current),
                Compare::mod_revision(key.clone(), CompareOp::Equal, owner.mod_revision),
            ])
            .and_then(ops);
        let moved = match self.txn_retried("hand over", &c, txn).await {
            Ok(r) => {
                if r.succeeded() {
                    // Views older than the move must not reopen the group.
                    let rev = r.header().map_or(0, |h| h.revision());
                    self.view_revision = self.view_revision.max(rev);
                    self.owners.remove(group);
                }
                r.succeeded()
            }
            Err(e) => {
                self.note_error(e);
                false
            }
        };
        if moved {
            let (me, g) = (self.me.clone(), group.to_owned());
            let _ = self
                .node
                .store()
                .write(move |c| crate::store::failover::end_group(c, &me, &g, now_ms()))
                .await;
            tracing::info!(node = %self.me, group, to, "cluster: group handed over");
            // The watch brings the new owner key; read it now for /status.
            return self.read_view(c).await;
        }
        // The taker's lease ended (or the key changed): if the key is
        // still ours, reopen at the same epoch.
        self.read_view(c.clone()).await?;
        if self.owners.get(group) == Some(&owner) && self.node.gate().within_deadline() {
            self.gate_open(group, owner);
            tracing::warn!(node = %self.me, group, to, "cluster: handback failed: the group stays here");
            self.raise(
                "FAILOVER-ON",
                format!("FAILOVER-ON/{group}/{epoch}/handback_failed/{closed_at}"),
                &[
                    ("group", group.into()),
                    ("from", to.into()),
                    ("to", self.me.clone().into()),
                    ("primary", to.into()),
                    ("reason", "handback_failed".into()),
                    ("epoch", epoch.into()),
                    ("down_since", closed_at.into()),
                ],
            )
            .await;
            let _ = self
                .node
                .replay_group(group.to_owned(), i64::MIN, i64::MIN)
                .await;
            return Err(ClusterError::Refused(format!(
                "handback to {to:?} failed (its lease ended?): group {group:?} stays here"
            )));
        }
        Err(ClusterError::Refused(format!(
            "group {group:?} changed hands meanwhile"
        )))
    }

    async fn command_move(
        &mut self,
        group: &str,
        to: Option<String>,
        pin: bool,
    ) -> Result<String, ClusterError> {
        let list = self
            .cfg
            .groups
            .get(group)
            .cloned()
            .ok_or_else(|| ClusterError::NoGroup(group.to_owned()))?;
        let to = match to {
            Some(t) => t,
            None => model::wanted_owner(&list, &self.members)
                .map(str::to_owned)
                .ok_or_else(|| ClusterError::Refused(format!("no Ready node of {group:?}")))?,
        };
        if !list.contains(&to) {
            return Err(ClusterError::Refused(format!(
                "{to:?} is not in group {group:?} ({list:?})"
            )));
        }
        if to == self.me {
            // Already here: a switchover to the owner only pins or unpins.
            let Some(owner) = self.open.get(group).cloned() else {
                return Err(ClusterError::Refused(format!(
                    "this node does not own group {group:?}"
                )));
            };
            if owner.value.pinned != pin {
                self.repin(group, owner, pin).await?;
            }
            return Ok(to);
        }
        self.hand_over(group, &to, pin, if pin { "switchover" } else { "failback" })
            .await?;
        Ok(to)
    }

    /// Rewrite this node's own owner key with another `pinned`, keeping
    /// the gate open (the epoch moves to the new mod revision).
    async fn repin(&mut self, group: &str, owner: Owner, pin: bool) -> Result<(), ClusterError> {
        let Some(mut c) = self.client.clone() else {
            return Err(ClusterError::Etcd("not connected".into()));
        };
        let key = self.keys.owner(group);
        let mut value = owner.value.clone();
        value.pinned = pin;
        let bytes = serde_json::to_vec(&value).map_err(|e| ClusterError::Refused(e.to_string()))?;
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                owner.mod_revision,
            )])
            .and_then([TxnOp::put(
                key,
                bytes,
                Some(PutOptions::new().with_lease(owner.value.lease)),
            )]);
        let r = self.call("pin", c.txn(txn)).await?;
        if !r.succeeded() {
            return Err(ClusterError::Refused("the owner key changed".into()));
        }
        let rev = r.header().map_or(owner.mod_revision, |h| h.revision());
        self.view_revision = self.view_revision.max(rev);
        let o = Owner {
            value,
            mod_revision: rev,
        };
        self.node.gate().open_group(group, rev as u64);
        self.open.insert(group.to_owned(), o.clone());
        self.owners.insert(group.to_owned(), o);
        Ok(())
    }

    /// `default`'s first node creates the publisher key, naming itself,
    /// if there is none (create-only: a key someone moved is kept).
    async fn create_publisher(&mut self, c: Client) -> Result<(), ClusterError> {
        let first = self
            .cfg
            .groups
            .get(crate::config::DEFAULT_GROUP)
            .and_then(|l| l.first());
        if first != Some(&self.me) {
            return Ok(());
        }
        let key = self.keys.publisher();
        let value = serde_json::json!({ "node": self.me }).to_string();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, None)]);
        let r = self
            .txn_retried("create the publisher key", &c, txn)
            .await?;
        if r.succeeded() {
            let rev = r.header().map_or(0, |h| h.revision());
            self.publisher = Some((self.me.clone(), rev));
            self.node.set_publisher(self.publisher.clone());
            tracing::info!(node = %self.me, "cluster: this node publishes the synced tables");
        }
        Ok(())
    }

    async fn command_publisher(&mut self, node: &str) -> Result<String, ClusterError> {
        if !self.cfg.nodes().iter().any(|n| n == node) {
            return Err(ClusterError::Refused(format!(
                "{node:?} is not a node of any group"
            )));
        }
        let Some(target) = self.members.get(node) else {
            return Err(ClusterError::Refused(format!(
                "{node:?} is not a Ready member"
            )));
        };
        let latest = self
            .members
            .values()
            .map(|m| m.generation)
            .max()
            .unwrap_or(0);
        if target.generation < latest {
            return Err(ClusterError::Refused(format!(
                "{node:?} holds table generation {}, the latest is {latest}: let it catch up first",
                target.generation
            )));
        }
        let Some(mut c) = self.client.clone() else {
            return Err(ClusterError::Etcd("not connected".into()));
        };
        let value = serde_json::json!({ "node": node }).to_string();
        let r = self
            .call("publisher", c.put(self.keys.publisher(), value, None))
            .await?;
        let rev = r.header().map_or(0, |h| h.revision());
        self.publisher = Some((node.to_owned(), rev));
        self.node.set_publisher(self.publisher.clone());
        Ok(node.to_owned())
    }

    fn publish(&self) {
        let now = boottime_ns();
        let deadline_in_ms = self.node.gate().deadline().map(|d| {
            (d as i128 - now as i128).clamp(i64::MIN as i128, i64::MAX as i128) as i64 / 1_000_000
        });
        let age = self
            .credited_sent
            .map(|s| now.saturating_sub(s) / 1_000_000);
        if let Some(a) = age {
            self.node
                .metrics()
                .cluster_keepalive_age_ms
                .set(a.min(i64::MAX as u64) as i64);
        }
        let status = Status {
            cluster: self.cfg.name.clone(),
            node: self.me.clone(),
            etcd: self.cfg.etcd.clone(),
            ready: self.ready(),
            digest_ok: self.digest_ok == Some(true),
            lease: self.lease().map(|l| format!("{l:x}")),
            owned: self.open.keys().cloned().collect(),
            fenced: self.fenced.as_ref().map(|f| FenceView {
                since: f.since_ms,
                reason: f.reason.clone(),
            }),
            deadline_in_ms,
            keepalive_age_ms: age,
            members: self
                .members
                .iter()
                .map(|(n, m)| MemberView {
                    node: n.clone(),
                    advertise: m.advertise.clone(),
                    ready: m.ready,
                    version: m.version.clone(),
                    lease: format!("{:x}", m.lease),
                    generation: m.generation,
                    batch_format: m.batch_format,
                })
                .collect(),
            owners: self
                .cfg
                .groups
                .iter()
                .map(|(g, nodes)| {
                    let o = self.owners.get(g);
                    OwnerView {
                        group: g.clone(),
                        node: o.map(|o| o.value.node.clone()),
                        epoch: o.map(|o| o.mod_revision),
                        pinned: o.is_some_and(|o| o.value.pinned),
                        nodes: nodes.clone(),
                    }
                })
                .collect(),
            publisher: self.publisher.as_ref().map(|(n, _)| n.clone()),
            gaps: self.gaps.clone(),
            last_error: self.last_error.clone(),
            tenures: self.tenures.iter().cloned().collect(),
        };
        self.status.send_replace(status);
    }
}
