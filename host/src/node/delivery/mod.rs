//! Delivery: send the outbox through the configured sinks.
//!
//! Every sink has its own worker, queue and limits, so a sink that hangs
//! or refuses every request never changes another sink's latency. A
//! worker keeps up to `concurrency` deliveries in flight and starts the
//! next due row the moment one finishes: there is no batch barrier, so a
//! slow request delays nothing behind it beyond the concurrency limit.
//! Workers run whatever the node's failover state; they wake when ingest
//! queues rows, when their next retry is due, and at least every second.
//!
//! - `log`: one log line, then `sent`;
//! - `webhook` ([`webhook`]): HTTP(S) POST with `Idempotency-Key: <id>`;
//! - `email` ([`email`]): SMTP, `Message-ID` from the notification id.
//!
//! A retryable failure (network, timeout, 5xx, 429; a transient SMTP
//! reply) is tried again after an exponential backoff with jitter, or
//! after the `Retry-After` of a 429 or 503, until `max_attempts`. A row
//! older than its sink's `max_age` is marked `expired`, not sent. A row
//! that finally fails raises `NOTIFY-FAILED` (fields id, rule, to,
//! channel, error) on the active node: a standby hands it over the link.

pub mod email;
pub mod webhook;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tandem_guest::Value;

use super::{Node, SignalInput};
use crate::config::{SinkConfig, SinkKind};
use crate::metrics::NotificationStatus;
use crate::store::now_ms;
use crate::store::outbox::{self, Delivery, NotificationView};

/// First retry delay; doubles per attempt up to [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Due rows a worker fetches ahead of its free slots.
const PREFETCH: usize = 64;
/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The delay before retry number `attempt` (1-based), without jitter.
pub fn backoff(attempt: u32) -> Duration {
    BASE_BACKOFF
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

/// [`backoff`] with "equal jitter": half of it fixed, half random, so
/// many rows failing together do not retry together.
pub fn backoff_with_jitter(attempt: u32, random: u32) -> Duration {
    let d = backoff(attempt);
    let half = d / 2;
    half + half.mul_f64(f64::from(random) / f64::from(u32::MAX))
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    u32::from_le_bytes(b)
}

/// What one attempt came to, before it is turned into a [`Delivery`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Sent,
    /// Worth trying again; after `after` if the receiver said so.
    Retry {
        error: String,
        after: Option<Duration>,
    },
    /// Final.
    Failed(String),
}

/// Turn an attempt into what the outbox records.
fn settle(sink: &SinkConfig, n: &NotificationView, attempt: Attempt, now: i64) -> Delivery {
    let attempt_no = n.attempts + 1;
    match attempt {
        Attempt::Sent => Delivery::Sent,
        Attempt::Failed(error) => Delivery::Failed { error },
        Attempt::Retry { error, .. } if attempt_no >= sink.max_attempts => Delivery::Failed {
            error: format!("{error} (gave up after {attempt_no} attempts)"),
        },
        Attempt::Retry { error, after } => {
            let wait = after
                .map(|a| a.min(MAX_RETRY_AFTER))
                .unwrap_or_else(|| backoff_with_jitter(attempt_no, random_u32()));
            Delivery::Retry {
                next_at: now + wait.as_millis() as i64,
                error,
            }
        }
    }
}

/// A `Retry-After` value: seconds, or an HTTP date.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

pub use crate::http_client::error_chain;

/// How a sink sends; built once per worker.
enum Sender {
    Log,
    Webhook(webhook::Webhook),
    Email(Box<email::Email>),
}

impl Sender {
    fn new(sink: &SinkConfig) -> Result<Sender, String> {
        Ok(match &sink.kind {
            SinkKind::Log => Sender::Log,
            SinkKind::Webhook(w) => Sender::Webhook(webhook::Webhook::new(sink, w)?),
            SinkKind::Email(e) => Sender::Email(Box::new(email::Email::new(sink, e)?)),
        })
    }

    async fn send(&self, n: &NotificationView) -> Attempt {
        match self {
            Sender::Log => {
                tracing::info!(target: "tandem::notify", id = %n.id, rule = %n.rule, to = %n.to, channel = %n.channel, subject = %n.subject, "{}", n.body);
                Attempt::Sent
            }
            Sender::Webhook(w) => w.send(n).await,
            Sender::Email(e) => e.send(n).await,
        }
    }
}

/// Run every sink's worker until `shutdown` resolves.
pub async fn run(node: Arc<Node>, shutdown: impl std::future::Future<Output = ()>) {
    let known: Vec<String> = node.config().sinks.iter().map(|s| s.name.clone()).collect();
    let failed = node
        .store()
        .write(move |c| {
            let names: Vec<&str> = known.iter().map(String::as_str).collect();
            outbox::fail_unknown_sinks(c, &names, now_ms())
        })
        .await;
    match failed {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            rows = n,
            "pending notifications of sinks no longer configured: failed"
        ),
        Err(e) => tracing::error!("delivery: {e}"),
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut workers = tokio::task::JoinSet::new();
    for sink in node.config().sinks.clone() {
        match Sender::new(&sink) {
            Ok(sender) => {
                workers.spawn(worker(node.clone(), sink, sender, stop_rx.clone()));
            }
            Err(e) => tracing::error!(sink = %sink.name, "sink disabled: {e}"),
        }
    }
    shutdown.await;
    let _ = stop_tx.send(true);
    while workers.join_next().await.is_some() {}
}

/// One sink: up to `concurrency` deliveries in flight, refilled as each
/// ends.
async fn worker(
    node: Arc<Node>,
    sink: SinkConfig,
    sender: Sender,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let sink = Arc::new(sink);
    let sender = Arc::new(sender);
    let slots = sink.concurrency as usize;
    let mut wakes = node.delivery_wakes();
    // Due rows fetched ahead, and every id fetched or in flight: a slot
    // that frees takes the next row at once, without a query between.
    let mut queue: std::collections::VecDeque<NotificationView> = Default::default();
    let mut known: HashSet<String> = HashSet::new();
    let mut in_flight = 0usize;
    let mut tasks = tokio::task::JoinSet::new();
    // A task says here when its request is over, before it records the
    // result: `concurrency` counts requests in flight, not store writes.
    let (freed_tx, mut freed) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut next_due = None;
    let mut stale = true;
    loop {
        if stale && queue.len() < slots * 4 {
            stale = false;
            let name = sink.name.clone();
            let limit = (PREFETCH + known.len()) as u32;
            let due = node
                .store()
                .read(move |c| {
                    let due = outbox::due_for(c, &name, now_ms(), limit)?;
                    let next = outbox::next_due_for(c, &name)?;
                    Ok((due, next))
                })
                .await;
            match due {
                Ok((due, next)) => {
                    next_due = next;
                    for n in due {
                        if known.insert(n.id.clone()) {
                            queue.push_back(n);
                        }
                    }
                }
                Err(e) => tracing::error!(sink = %sink.name, "delivery: {e}"),
            }
        }
        while in_flight < slots {
            let Some(n) = queue.pop_front() else { break };
            in_flight += 1;
            let (node, sink, sender) = (node.clone(), sink.clone(), sender.clone());
            let freed_tx = freed_tx.clone();
            tasks.spawn(async move {
                deliver(&node, &sink, &sender, &n, &freed_tx).await;
                n.id
            });
        }
        let wait = match next_due {
            Some(at) if queue.is_empty() && in_flight < slots => {
                Duration::from_millis((at - now_ms()).clamp(0, 1000) as u64)
            }
            _ => Duration::from_secs(1),
        };
        tokio::select! {
            _ = stop.changed() => break,
            Some(()) = freed.recv() => {
                in_flight -= 1;
            }
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Ok(id) = done {
                    known.remove(&id);
                }
                stale |= queue.is_empty();
            }
            _ = wakes.changed() => stale = true,
            _ = tokio::time::sleep(wait) => stale = true,
        }
    }
    // Rows still in flight stay pending: they are sent after a restart,
    // under the same Idempotency-Key.
    tasks.abort_all();
}

/// One attempt at one row, and its record; `freed` hears when the
/// request itself is over.
async fn deliver(
    node: &Arc<Node>,
    sink: &SinkConfig,
    sender: &Sender,
    n: &NotificationView,
    freed: &tokio::sync::mpsc::UnboundedSender<()>,
) {
    // Says "freed" when dropped, so even a panicking attempt frees its slot.
    struct Slot<'a>(&'a tokio::sync::mpsc::UnboundedSender<()>);
    impl Drop for Slot<'_> {
        fn drop(&mut self) {
            let _ = self.0.send(());
        }
    }
    let slot = Slot(freed);
    let now = now_ms();
    let result = if now - n.created_at > sink.max_age.as_millis() as i64 {
        Delivery::Expired
    } else {
        let attempt = sender.send(n).await;
        settle(sink, n, attempt, now_ms())
    };
    drop(slot);
    if let Err(e) = record(node, n, result).await {
        tracing::error!(id = %n.id, sink = %n.sink, "cannot record a delivery: {e}");
    }
}

/// Store an attempt's result; a final failure raises NOTIFY-FAILED.
async fn record(
    node: &Arc<Node>,
    n: &NotificationView,
    result: Delivery,
) -> Result<(), crate::store::StoreError> {
    let (id, sink, r) = (n.id.clone(), n.sink.clone(), result.clone());
    node.store()
        .write(move |c| outbox::record(c, &id, &sink, &r, now_ms()))
        .await?;
    let m = node.metrics();
    match &result {
        Delivery::Sent => m.notifications(NotificationStatus::Sent, 1),
        Delivery::Retry { error, .. } => {
            m.notifications(NotificationStatus::Retried, 1);
            tracing::warn!(id = %n.id, sink = %n.sink, "delivery will be retried: {error}");
        }
        Delivery::Expired => {
            m.notifications(NotificationStatus::Expired, 1);
            tracing::warn!(id = %n.id, sink = %n.sink, "notification expired before it could be sent");
        }
        Delivery::Failed { error } => {
            m.notifications(NotificationStatus::Failed, 1);
            tracing::error!(id = %n.id, sink = %n.sink, "delivery failed: {error}");
            let failed = SignalInput {
                name: "NOTIFY-FAILED".into(),
                source: Some(node.config().node.name.clone()),
                key: Some(format!("notify-failed:{}:{}", n.id, n.sink)),
                time: None,
                fields: [
                    ("id", Value::from(n.id.as_str())),
                    ("rule", Value::from(n.rule.as_str())),
                    ("to", Value::from(n.to.as_str())),
                    ("channel", Value::from(n.channel.as_str())),
                    ("error", Value::from(error.as_str())),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            };
            node.raise_on_active(failed).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_jitters_within_half() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(4), Duration::from_millis(800));
        assert_eq!(backoff(40), MAX_BACKOFF);
        assert_eq!(backoff_with_jitter(4, 0), Duration::from_millis(400));
        assert_eq!(backoff_with_jitter(4, u32::MAX), Duration::from_millis(800));
        let mid = backoff_with_jitter(4, u32::MAX / 2);
        assert!(mid > Duration::from_millis(500) && mid < Duration::from_millis(700));
    }

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(parse_retry_after("1", now), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
