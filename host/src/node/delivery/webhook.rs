//! `kind = "webhook"`: an HTTP(S) POST per notification.
//!
//! TLS is rustls, trusting the system's root certificates and the sink's
//! `ca_file`; there is no switch to accept any certificate. A certificate
//! that does not verify is a delivery failure whose error names the host
//! and why. 2xx is sent; a network error, a timeout, 5xx or 429 is tried
//! again (429 and 503 after their `Retry-After`); any other status fails
//! at once.

use super::{Attempt, error_chain, parse_retry_after};
use crate::config::{SinkConfig, WebhookFormat, WebhookSink};
use crate::http_client::client;
use crate::store::outbox::NotificationView;

/// One webhook sink's client, built once.
#[derive(Debug)]
pub struct Webhook {
    url: String,
    host: String,
    format: WebhookFormat,
    client: reqwest::Client,
}

impl Webhook {
    pub fn new(sink: &SinkConfig, w: &WebhookSink) -> Result<Webhook, String> {
        let host = reqwest::Url::parse(&w.url)
            .ok()
            .and_then(|u| {
                u.host_str()
                    .map(|h| format!("{h}:{}", u.port_or_known_default().unwrap_or(0)))
            })
            .unwrap_or_else(|| w.url.clone());
        Ok(Webhook {
            url: w.url.clone(),
            host,
            format: w.format,
            client: client(
                sink.connect_timeout,
                sink.timeout,
                w.ca_pem.as_deref(),
                &w.headers,
            )?,
        })
    }

    fn body(&self, n: &NotificationView) -> serde_json::Value {
        match self.format {
            WebhookFormat::Tandem => serde_json::json!({
                "id": n.id,
                "rule": n.rule,
                "node": n.node,
                "to": n.to,
                "channel": n.channel,
                "subject": n.subject,
                "body": n.body,
                "signal": n.signal,
            }),
            WebhookFormat::Slack => serde_json::json!({
                "text": format!("{}: {}", n.subject, n.body),
            }),
        }
    }

    pub async fn send(&self, n: &NotificationView) -> Attempt {
        let response = self
            .client
            .post(&self.url)
            .header("Idempotency-Key", &n.id)
            .json(&self.body(n))
            .send()
            .await;
        let r = match response {
            Ok(r) => r,
            Err(e) => {
                let error = format!("{}: {}", self.host, error_chain(&e));
                // A certificate that does not verify will not verify on
                // the next try either: a final failure, saying why.
                return if is_certificate_error(&error) {
                    Attempt::Failed(error)
                } else {
                    Attempt::Retry { error, after: None }
                };
            }
        };
        let status = r.status();
        if status.is_success() {
            return Attempt::Sent;
        }
        let error = format!("{} answered {status}", self.url);
        let code = status.as_u16();
        if code == 429 || code == 503 {
            let after = r
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
            Attempt::Retry { error, after }
        } else if status.is_server_error() {
            Attempt::Retry { error, after: None }
        } else {
            Attempt::Failed(error)
        }
    }
}

/// Whether a connection error is a certificate the client does not trust
/// (rustls names these "invalid peer certificate").
fn is_certificate_error(error: &str) -> bool {
    error.contains("invalid peer certificate")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_error_is_recognised() {
        assert!(is_certificate_error(
            "127.0.0.1:443: error sending request: client error (Connect): invalid peer certificate: UnknownIssuer"
        ));
        assert!(!is_certificate_error("127.0.0.1:443: connection refused"));
    }
}
