//! Delivery: send the outbox through the configured sinks.
//!
//! One worker loop per node, running whatever the node's failover state.
//! It wakes when ingest queues rows, when the next retry is due, and at
//! least every second. Each due row goes to its sink:
//! - `log`: one log line, then `sent`;
//! - `webhook`: `POST` of the notification JSON with `Idempotency-Key: <id>`.
//!   2xx is `sent`; a network error, 5xx or 429 is retried with exponential
//!   backoff until `max_attempts`; any other status fails at once.
//!
//! A row older than its sink's `max_age` is marked `expired`, not sent. A
//! row that finally fails raises `NOTIFY-FAILED` (fields id, rule, to,
//! channel, error) so rules can escalate another way.

use std::sync::Arc;
use std::time::Duration;

use tandem_guest::Value;

use super::{Node, SignalInput};
use crate::config::{SinkConfig, SinkKind};
use crate::metrics::NotificationStatus;
use crate::store::now_ms;
use crate::store::outbox::{self, Delivery, NotificationView};

/// Rows taken per round.
const BATCH: u32 = 64;
/// First retry delay; doubles per attempt up to [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long one webhook request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The delay before retry number `attempt` (1-based).
pub fn backoff(attempt: u32) -> Duration {
    BASE_BACKOFF
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

/// The webhook body.
fn body(n: &NotificationView) -> serde_json::Value {
    serde_json::json!({
        "id": n.id,
        "rule": n.rule,
        "node": n.node,
        "to": n.to,
        "channel": n.channel,
        "subject": n.subject,
        "body": n.body,
        "signal": n.signal,
    })
}

/// Run the delivery loop until `shutdown` resolves.
pub async fn run(node: Arc<Node>, shutdown: impl std::future::Future<Output = ()>) {
    let client = match reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("delivery disabled: cannot build the HTTP client: {e}");
            return;
        }
    };
    tokio::pin!(shutdown);
    loop {
        let wait = match round(&node, &client).await {
            Ok(Some(next)) => Duration::from_millis((next - now_ms()).clamp(0, 1000) as u64),
            Ok(None) => Duration::from_secs(1),
            Err(e) => {
                tracing::error!("delivery: {e}");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            _ = &mut shutdown => return,
            _ = node.delivery_woken() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Deliver what is due; returns when the next pending row is due.
async fn round(
    node: &Arc<Node>,
    client: &reqwest::Client,
) -> Result<Option<i64>, crate::store::StoreError> {
    loop {
        let due = node
            .store()
            .read(move |c| outbox::due(c, now_ms(), BATCH))
            .await?;
        if due.is_empty() {
            return node.store().read(outbox::next_due).await;
        }
        let mut sends = tokio::task::JoinSet::new();
        for n in due {
            let Some(sink) = node
                .config()
                .sinks
                .iter()
                .find(|s| s.name == n.sink)
                .cloned()
            else {
                record(
                    node,
                    &n,
                    Delivery::Failed {
                        error: format!("sink `{}` is no longer configured", n.sink),
                    },
                )
                .await?;
                continue;
            };
            let client = client.clone();
            sends.spawn(async move {
                let result = attempt(&client, &sink, &n).await;
                (n, result)
            });
        }
        while let Some(joined) = sends.join_next().await {
            let Ok((n, result)) = joined else { continue };
            record(node, &n, result).await?;
        }
    }
}

/// One attempt at one row.
async fn attempt(client: &reqwest::Client, sink: &SinkConfig, n: &NotificationView) -> Delivery {
    let age = now_ms() - n.created_at;
    if age > sink.max_age.as_millis() as i64 {
        return Delivery::Expired;
    }
    let attempt_no = n.attempts + 1;
    let retry_or_fail = |error: String| {
        if attempt_no >= sink.max_attempts {
            Delivery::Failed {
                error: format!("{error} (gave up after {attempt_no} attempts)"),
            }
        } else {
            Delivery::Retry {
                next_at: now_ms() + backoff(attempt_no).as_millis() as i64,
                error,
            }
        }
    };
    match &sink.kind {
        SinkKind::Log => {
            tracing::info!(target: "tandem::notify", id = %n.id, rule = %n.rule, to = %n.to, channel = %n.channel, subject = %n.subject, "{}", n.body);
            Delivery::Sent
        }
        SinkKind::Webhook { url } => {
            let response = client
                .post(url)
                .header("Idempotency-Key", &n.id)
                .json(&body(n))
                .send()
                .await;
            match response {
                Ok(r) if r.status().is_success() => Delivery::Sent,
                Ok(r) if r.status().is_server_error() || r.status().as_u16() == 429 => {
                    retry_or_fail(format!("{url} answered {}", r.status()))
                }
                Ok(r) => Delivery::Failed {
                    error: format!("{url} answered {}", r.status()),
                },
                Err(e) => retry_or_fail(format!("{url}: {e}")),
            }
        }
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
            if let Err(e) = node.ingest(vec![failed], true).await {
                tracing::error!(id = %n.id, "could not raise NOTIFY-FAILED: {e}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(4), Duration::from_millis(800));
        assert_eq!(backoff(40), MAX_BACKOFF);
    }
}
