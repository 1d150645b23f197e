//! The lease and its keepalives, in a task of their own: a slow replay, a
//! handback waiting for running rules, or a slow HTTP call in the driver
//! never delays a keepalive.
//!
//! Each round (a third of the TTL): send a keepalive, wait for its answer,
//! then a linearizable read of `members/`, `owners/` and `publisher`. The
//! keepalive is credited only if that read shows every group the gate
//! holds open as {me, my lease} ([`model::credit`]); then the gate's
//! fencing deadline moves to the keepalive's SEND time + granted TTL -
//! margin ([`model::deadline`]). A stream that missed an answer is
//! dropped, so a late answer is never taken for a later keepalive's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, GetOptions, LeaseKeepAliveStream, LeaseKeeper};
use tokio::sync::{mpsc, watch};

use super::ClusterError;
use super::keys::Keys;
use super::model::{self, Member, Owner, OwnerValue};
use crate::clock::boottime_ns;
use crate::engine::Gate;
use crate::metrics::Metrics;
use crate::shutdown::Listener;

/// What a linearizable read of the cluster's keys showed.
#[derive(Debug, Clone, Default)]
pub(super) struct View {
    pub(super) members: BTreeMap<String, Member>,
    pub(super) owners: BTreeMap<String, Owner>,
    /// The publisher and its key's mod revision.
    pub(super) publisher: Option<(String, i64)>,
    /// The etcd revision the read saw (of its last part): views are
    /// applied in this order only.
    pub(super) revision: i64,
}

/// What the keepalive task tells the driver.
#[derive(Debug)]
pub(super) enum Event {
    /// A keepalive was answered and the read after it done; `credited`
    /// is the keepalive's send time (boottime ns) when the deadline moved.
    Round { view: View, credited: Option<u64> },
    /// The lease is gone (expired or revoked): its keys went with it.
    LeaseLost,
    /// A round failed.
    Error(ClusterError),
}

/// The current lease: (id, TTL granted).
pub(super) type Lease = Option<(i64, Duration)>;

/// Bound an etcd call by `t`, counting failures.
pub(super) async fn bounded<T>(
    metrics: &Metrics,
    t: Duration,
    what: &str,
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, ClusterError> {
    match tokio::time::timeout(t, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            metrics.cluster_etcd_errors.inc();
            Err(ClusterError::Etcd(format!("{what}: {e}")))
        }
        Err(_) => {
            metrics.cluster_etcd_errors.inc();
            Err(ClusterError::Etcd(format!(
                "{what}: no answer within {t:?}"
            )))
        }
    }
}

/// [`bounded`], tried again while `t` lasts: with several etcd members the
/// client spreads calls over their endpoints, and one that is down fails
/// at once; the next try goes to another.
pub(super) async fn retried<T, F, Fut>(
    metrics: &Metrics,
    t: Duration,
    what: &str,
    mut f: F,
) -> Result<T, ClusterError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let until = tokio::time::Instant::now() + t;
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        match bounded(metrics, left, what, f()).await {
            Ok(v) => return Ok(v),
            Err(e) if left.is_zero() || tokio::time::Instant::now() + RETRY_PAUSE >= until => {
                return Err(e);
            }
            Err(_) => tokio::time::sleep(RETRY_PAUSE).await,
        }
    }
}

/// The pause between two tries of one etcd call.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// A linearizable read of `members/`, `owners/` and `publisher`.
pub(super) async fn read_view(
    c: Client,
    keys: &Keys,
    metrics: &Metrics,
    t: Duration,
) -> Result<View, ClusterError> {
    let get = |key: String, prefix: bool| {
        let c = c.clone();
        move || {
            let (mut c, key) = (c.clone(), key.clone());
            async move {
                c.get(key, prefix.then(|| GetOptions::new().with_prefix()))
                    .await
            }
        }
    };
    let members = retried(metrics, t, "read members", get(keys.members(), true)).await?;
    let owners = retried(metrics, t, "read owners", get(keys.owners(), true)).await?;
    let publisher = retried(metrics, t, "read publisher", get(keys.publisher(), false)).await?;
    let mp = keys.members();
    let op = keys.owners();
    let revision = [members.header(), owners.header(), publisher.header()]
        .iter()
        .flatten()
        .map(|h| h.revision())
        .min()
        .unwrap_or(0);
    Ok(View {
        revision,
        members: members
            .kvs()
            .iter()
            .filter_map(|kv| {
                let name = kv.key_str().ok()?.strip_prefix(mp.as_str())?.to_owned();
                Some((name, serde_json::from_slice(kv.value()).ok()?))
            })
            .collect(),
        owners: owners
            .kvs()
            .iter()
            .filter_map(|kv| {
                let group = kv.key_str().ok()?.strip_prefix(op.as_str())?.to_owned();
                let value: OwnerValue = serde_json::from_slice(kv.value()).ok()?;
                Some((
                    group,
                    Owner {
                        value,
                        mod_revision: kv.mod_revision(),
                    },
                ))
            })
            .collect(),
        publisher: publisher.kvs().first().and_then(|kv| {
            let node = serde_json::from_slice::<serde_json::Value>(kv.value())
                .ok()?
                .get("node")?
                .as_str()?
                .to_owned();
            Some((node, kv.mod_revision()))
        }),
    })
}

/// The keepalive task's settings.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) me: String,
    pub(super) keys: Keys,
    pub(super) ttl: Duration,
    pub(super) margin: Duration,
    pub(super) op_timeout: Duration,
}

/// Grant a lease, keep it alive, credit keepalives; until `stop`.
pub(super) async fn run(
    client: Client,
    s: Settings,
    gate: Gate,
    metrics: Arc<Metrics>,
    lease_tx: watch::Sender<Lease>,
    events: mpsc::Sender<Event>,
    stop: Listener,
) {
    let stop = stop.wait();
    tokio::pin!(stop);
    let period = s.ttl / 3;
    let mut keeper: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
    let mut next = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        next = tokio::time::Instant::now() + period;
        let event = round(&client, &s, &gate, &metrics, &lease_tx, &mut keeper).await;
        // Never wait for a busy driver: a report it has no room for is
        // superseded by the next round's (a lost lease also shows in the
        // lease channel, which the driver reads).
        if let Err(mpsc::error::TrySendError::Closed(_)) = events.try_send(event) {
            return;
        }
    }
}

/// Whether etcd said the lease does not exist (expired or revoked): the
/// client reports it as text ("lease not found", etcd's ErrLeaseNotFound),
/// not as a code of its own.
fn lease_gone(e: &ClusterError) -> bool {
    matches!(e, ClusterError::Etcd(m) if m.contains("lease not found"))
}

/// One keepalive on the stream (opened if needed): its SEND time and the
/// answer.
async fn keepalive_once(
    client: &Client,
    id: i64,
    t: Duration,
    keeper: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
) -> Result<(u64, etcd_client::LeaseKeepAliveResponse), ClusterError> {
    let started = tokio::time::Instant::now();
    if keeper.is_none() {
        let mut c = client.clone();
        let k = tokio::time::timeout(t, c.lease_keep_alive(id))
            .await
            .map_err(|_| ClusterError::Etcd(format!("keepalive stream: no answer within {t:?}")))?
            .map_err(|e| ClusterError::Etcd(format!("keepalive stream: {e}")))?;
        *keeper = Some(k);
    }
    let Some((k, stream)) = keeper.as_mut() else {
        return Err(ClusterError::Etcd("no keepalive stream".into()));
    };
    let left = t.saturating_sub(started.elapsed());
    let sent = boottime_ns();
    let answer = tokio::time::timeout(left, async {
        k.keep_alive().await?;
        stream.message().await
    })
    .await
    .map_err(|_| ClusterError::Etcd(format!("keepalive: no answer within {t:?}")))?
    .map_err(|e| ClusterError::Etcd(format!("keepalive: {e}")))?
    .ok_or_else(|| ClusterError::Etcd("keepalive stream ended".into()))?;
    Ok((sent, answer))
}

async fn round(
    client: &Client,
    s: &Settings,
    gate: &Gate,
    metrics: &Metrics,
    lease_tx: &watch::Sender<Lease>,
    keeper: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
) -> Event {
    let t = s.op_timeout;
    let lease = *lease_tx.borrow();
    let (id, granted) = match lease {
        Some(l) => l,
        None => {
            let mut c = client.clone();
            let ttl = s.ttl.as_secs().max(1) as i64;
            match bounded(metrics, t, "lease grant", c.lease_grant(ttl, None)).await {
                Ok(g) => {
                    let l = (g.id(), Duration::from_secs(g.ttl().max(1) as u64));
                    tracing::info!(node = %s.me, lease = %format!("{:x}", g.id()), ttl = g.ttl(), "cluster: lease granted");
                    *keeper = None;
                    lease_tx.send_replace(Some(l));
                    l
                }
                Err(e) => return Event::Error(e),
            }
        }
    };
    // Up to three tries within the round: a stream on a member that went
    // down fails at once, and the next one goes to another member.
    let mut tries = 0;
    let until = tokio::time::Instant::now() + t;
    let (sent, answer) = loop {
        tries += 1;
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        let attempt = keepalive_once(client, id, left, keeper).await;
        match attempt {
            Ok(done) => break done,
            Err(e) if lease_gone(&e) => {
                *keeper = None;
                lease_tx.send_replace(None);
                return Event::LeaseLost;
            }
            Err(e) => {
                // A stream that missed an answer is dropped, so a late
                // answer is never taken for a later keepalive's.
                *keeper = None;
                metrics.cluster_etcd_errors.inc();
                if tries >= 3 || tokio::time::Instant::now() >= until {
                    return Event::Error(e);
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    };
    if answer.ttl() <= 0 {
        *keeper = None;
        lease_tx.send_replace(None);
        return Event::LeaseLost;
    }
    let ttl = Duration::from_secs(answer.ttl() as u64).min(granted.max(Duration::from_secs(1)));
    let view = match read_view(client.clone(), &s.keys, metrics, t).await {
        Ok(v) => v,
        Err(e) => return Event::Error(e),
    };
    let open: Vec<String> = gate.open_groups().keys().map(|g| g.to_string()).collect();
    let credited = model::credit(&open, &view.owners, &s.me, id);
    if credited {
        gate.set_deadline(Some(model::deadline(sent, ttl, s.margin)));
    }
    Event::Round {
        view,
        credited: credited.then_some(sent),
    }
}
