//! `kind = "email"`: SMTP through `lettre`, with STARTTLS, TLS from the
//! first byte, or none, and optional authentication.
//!
//! The notification's `to` is already an address: `person:ID` and
//! `group:NAME` were resolved to one row per member when the notification
//! was queued (DESIGN.md §2). A `to` that is not an email address fails at
//! once. The `Message-ID` is derived from the notification id, so a copy
//! sent again (after a restart, or by the other node) is recognisable. A
//! transient SMTP reply (4xx) or a network error is tried again; a
//! permanent one (5xx) fails.

use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::{Attempt, error_chain};
use crate::config::{EmailSink, SinkConfig, SmtpTls};
use crate::store::outbox::NotificationView;

/// One email sink's transport, built once.
pub struct Email {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    server: String,
    /// The whole exchange's limit (lettre's own covers the connect only).
    timeout: std::time::Duration,
}

impl std::fmt::Debug for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Email")
            .field("server", &self.server)
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

/// The `Message-ID` of notification `id`.
pub fn message_id(id: &str) -> String {
    format!("<{id}@tandem>")
}

impl Email {
    pub fn new(sink: &SinkConfig, e: &EmailSink) -> Result<Email, String> {
        let mut tls = TlsParameters::builder(e.host.clone());
        if let Some(pem) = &e.ca_pem {
            for block in pem_blocks(pem) {
                let cert = Certificate::from_pem(block.as_bytes())
                    .map_err(|err| format!("ca_file: {}", error_chain(&err)))?;
                tls = tls.add_root_certificate(cert);
            }
        }
        let params = || {
            tls.clone()
                .build_rustls()
                .map_err(|err| format!("TLS for {}: {}", e.host, error_chain(&err)))
        };
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(e.host.as_str())
            .port(e.port)
            .timeout(Some(sink.connect_timeout));
        b = match e.tls {
            SmtpTls::None => b.tls(Tls::None),
            SmtpTls::StartTls => b.tls(Tls::Required(params()?)),
            SmtpTls::Tls => b.tls(Tls::Wrapper(params()?)),
        };
        if let (Some(u), Some(p)) = (&e.username, &e.password) {
            b = b.credentials(Credentials::new(u.clone(), p.clone()));
        }
        Ok(Email {
            transport: b.build(),
            from: e
                .from
                .parse()
                .map_err(|err| format!("from {:?}: {err}", e.from))?,
            server: format!("{}:{}", e.host, e.port),
            timeout: sink.connect_timeout + sink.timeout,
        })
    }

    pub async fn send(&self, n: &NotificationView) -> Attempt {
        let to: Mailbox = match n.to.parse() {
            Ok(to) => to,
            Err(_) => {
                return Attempt::Failed(format!(
                    "`{}` is not an email address (a person or group without an email?)",
                    n.to
                ));
            }
        };
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(n.subject.as_str())
            .message_id(Some(message_id(&n.id)))
            .header(ContentType::TEXT_PLAIN)
            .body(n.body.clone());
        let message = match message {
            Ok(m) => m,
            Err(e) => return Attempt::Failed(format!("cannot build the message: {e}")),
        };
        let sent = tokio::time::timeout(self.timeout, self.transport.send(message)).await;
        let Ok(sent) = sent else {
            return Attempt::Retry {
                error: format!("{}: no answer within {:?}", self.server, self.timeout),
                after: None,
            };
        };
        match sent {
            Ok(_) => Attempt::Sent,
            Err(e) if e.is_permanent() => {
                Attempt::Failed(format!("{}: {}", self.server, error_chain(&e)))
            }
            Err(e) => Attempt::Retry {
                error: format!("{}: {}", self.server, error_chain(&e)),
                after: None,
            },
        }
    }
}

/// The `-----BEGIN CERTIFICATE-----` blocks of a PEM bundle.
fn pem_blocks(pem: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(pem);
    let mut out = Vec::new();
    let mut rest = text.as_ref();
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let Some(len) = rest[start..].find("-----END CERTIFICATE-----") else {
            break;
        };
        let end = start + len + "-----END CERTIFICATE-----".len();
        out.push(rest[start..end].to_owned());
        rest = &rest[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_id_follows_the_notification_id() {
        assert_eq!(message_id("abc123"), "<abc123@tandem>");
    }

    #[test]
    fn pem_bundles_split_into_certificates() {
        let one = "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n";
        let two = format!("junk\n{one}{one}");
        assert_eq!(pem_blocks(two.as_bytes()).len(), 2);
        assert!(pem_blocks(b"none").is_empty());
    }
}
