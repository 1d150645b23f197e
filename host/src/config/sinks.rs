//! `[[sinks]]`: where notifications go, validated.

use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};

use super::raw::RawSink;
use super::units::duration;
use super::{ConfigError, invalid};

/// A `[[sinks]]` entry.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub name: String,
    pub kind: SinkKind,
    /// Channel patterns as written (`*` globs); default `["*"]`.
    pub channels: Vec<String>,
    /// The same patterns, compiled once.
    pub matcher: ChannelMatcher,
    /// Older notifications are marked expired, not sent.
    pub max_age: Duration,
    /// Attempts before a retryable failure is final.
    pub max_attempts: u32,
    /// Deliveries in flight at once (default 4).
    pub concurrency: u32,
    /// How long a connection may take (default 5 s).
    pub connect_timeout: Duration,
    /// How long one delivery may take (default 10 s).
    pub timeout: Duration,
}

/// Where a sink sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkKind {
    Webhook(WebhookSink),
    Email(EmailSink),
    Log,
}

/// A webhook's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookFormat {
    /// The notification JSON of DESIGN.md §2.
    Tandem,
    /// `{"text": "SUBJECT: BODY"}` (Slack, Mattermost, Rocket.Chat).
    Slack,
}

/// `kind = "webhook"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSink {
    pub url: String,
    /// PEM certificates trusted besides the system's roots (`ca_file`).
    pub ca_pem: Option<Vec<u8>>,
    /// Extra headers, `env:NAME` values resolved.
    pub headers: Vec<(String, String)>,
    pub format: WebhookFormat,
}

/// How an email sink talks to its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS (required).
    StartTls,
    /// TLS from the first byte (SMTPS).
    Tls,
    /// No TLS (a relay on the same host or network).
    None,
}

/// `kind = "email"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailSink {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub username: Option<String>,
    pub password: Option<String>,
    pub from: String,
    /// PEM certificates trusted besides the system's roots (`ca_file`).
    pub ca_pem: Option<Vec<u8>>,
}

/// Channel patterns compiled into one set: `*` matches any run of
/// characters.
#[derive(Debug, Clone)]
pub struct ChannelMatcher(GlobSet);

impl ChannelMatcher {
    /// Compile `patterns`; the error names the bad one.
    pub fn new(patterns: &[String]) -> Result<ChannelMatcher, String> {
        let mut set = GlobSetBuilder::new();
        for p in patterns {
            let glob = globset::GlobBuilder::new(p)
                .literal_separator(false)
                .backslash_escape(false)
                .build()
                .map_err(|e| format!("channel pattern {p:?}: {e}"))?;
            set.add(glob);
        }
        set.build()
            .map(ChannelMatcher)
            .map_err(|e| format!("channel patterns: {e}"))
    }

    /// Whether `channel` matches any pattern.
    pub fn matches(&self, channel: &str) -> bool {
        self.0.is_match(channel)
    }
}

impl Default for ChannelMatcher {
    fn default() -> Self {
        let mut set = GlobSetBuilder::new();
        if let Ok(g) = Glob::new("*") {
            set.add(g);
        }
        ChannelMatcher(set.build().unwrap_or_else(|_| GlobSet::empty()))
    }
}

/// The default when no sink is configured: every notification to the log.
fn log_sink() -> SinkConfig {
    SinkConfig {
        name: "log".to_owned(),
        kind: SinkKind::Log,
        channels: vec!["*".to_owned()],
        matcher: ChannelMatcher::default(),
        max_age: Duration::from_secs(3600),
        max_attempts: 1,
        concurrency: 1,
        connect_timeout: Duration::from_secs(5),
        timeout: Duration::from_secs(10),
    }
}

/// A value that may name an environment variable: `env:NAME`.
fn env_or(key: &str, value: String) -> Result<String, ConfigError> {
    match value.strip_prefix("env:") {
        None => Ok(value),
        Some(var) => std::env::var(var)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                invalid(
                    key,
                    format!("{value:?}"),
                    format!(
                        "the environment variable `{var}` to be set (it is not, or it is empty)"
                    ),
                )
            }),
    }
}

/// The PEM file at `ca_file`, read now so a missing file is refused at
/// start.
pub(super) fn ca_pem(key: &str, ca_file: Option<String>) -> Result<Option<Vec<u8>>, ConfigError> {
    let Some(path) = ca_file else { return Ok(None) };
    let pem = std::fs::read(&path).map_err(|e| {
        invalid(
            key,
            format!("{path:?}"),
            format!("a readable PEM file of CA certificates ({e})"),
        )
    })?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem);
    if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") || certs.is_err() {
        return Err(invalid(
            key,
            format!("{path:?}"),
            "a PEM file of CA certificates that load (`-----BEGIN CERTIFICATE-----` blocks)",
        ));
    }
    Ok(Some(pem))
}

fn webhook(key: &dyn Fn(&str) -> String, s: &mut RawSink) -> Result<SinkKind, ConfigError> {
    let url = s.url.take().ok_or_else(|| {
        invalid(
            &key("url"),
            "(missing)",
            "an http:// or https:// URL for a webhook sink",
        )
    })?;
    let parsed = reqwest::Url::parse(&url).ok().filter(|u| {
        matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty())
    });
    if parsed.is_none() {
        return Err(invalid(
            &key("url"),
            format!("{url:?}"),
            "an http:// or https:// URL with a host, e.g. \"https://hooks.example.org/notify\"",
        ));
    }
    let mut headers = Vec::new();
    for (name, value) in s.headers.take().unwrap_or_default() {
        let k = key(&format!("headers.{name}"));
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(invalid(&k, format!("{name:?}"), "a valid HTTP header name"));
        }
        let value = env_or(&k, value)?;
        if reqwest::header::HeaderValue::from_str(&value).is_err() {
            return Err(invalid(
                &k,
                "(hidden)",
                "a header value without control characters",
            ));
        }
        headers.push((name, value));
    }
    let format = match s.format.as_deref() {
        None | Some("tandem") => WebhookFormat::Tandem,
        Some("slack") => WebhookFormat::Slack,
        Some(other) => {
            return Err(invalid(
                &key("format"),
                format!("{other:?}"),
                "\"tandem\" (the notification JSON) or \"slack\" ({\"text\": ...})",
            ));
        }
    };
    Ok(SinkKind::Webhook(WebhookSink {
        url,
        ca_pem: ca_pem(&key("ca_file"), s.ca_file.take())?,
        headers,
        format,
    }))
}

fn email(key: &dyn Fn(&str) -> String, s: &mut RawSink) -> Result<SinkKind, ConfigError> {
    let host = s
        .host
        .take()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| invalid(&key("host"), "(missing)", "the SMTP server's host name"))?;
    let tls = match s.tls.as_deref() {
        None | Some("starttls") => SmtpTls::StartTls,
        Some("tls") => SmtpTls::Tls,
        Some("none") => SmtpTls::None,
        Some(other) => {
            return Err(invalid(
                &key("tls"),
                format!("{other:?}"),
                "\"starttls\" (default), \"tls\" or \"none\"",
            ));
        }
    };
    let port = s.port.unwrap_or(match tls {
        SmtpTls::StartTls => 587,
        SmtpTls::Tls => 465,
        SmtpTls::None => 25,
    });
    let from = s.from.take().ok_or_else(|| {
        invalid(
            &key("from"),
            "(missing)",
            "the sender, e.g. \"Tandem <tandem@example.org>\"",
        )
    })?;
    if from.parse::<lettre::message::Mailbox>().is_err() {
        return Err(invalid(
            &key("from"),
            format!("{from:?}"),
            "an email address, e.g. \"Tandem <tandem@example.org>\"",
        ));
    }
    let username = s
        .username
        .take()
        .map(|u| env_or(&key("username"), u))
        .transpose()?;
    let password = s
        .password
        .take()
        .map(|p| env_or(&key("password"), p))
        .transpose()?;
    if username.is_some() != password.is_some() {
        return Err(invalid(
            &key("password"),
            "(one of username and password)",
            "both username and password, or neither",
        ));
    }
    Ok(SinkKind::Email(EmailSink {
        host,
        port,
        tls,
        username,
        password,
        from,
        ca_pem: ca_pem(&key("ca_file"), s.ca_file.take())?,
    }))
}

pub(super) fn validate(raw: Vec<RawSink>) -> Result<Vec<SinkConfig>, ConfigError> {
    let mut sinks: Vec<SinkConfig> = Vec::new();
    for (i, s) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("sinks[{i}].{k}");
        if sinks.iter().any(|o| o.name == s.name) {
            return Err(invalid(
                &key("name"),
                format!("{:?}", s.name),
                "a name no other sink has",
            ));
        }
        let mut s = s;
        let kind = match s.kind.as_str() {
            "webhook" => webhook(&key, &mut s)?,
            "email" => email(&key, &mut s)?,
            "log" => SinkKind::Log,
            other => {
                return Err(invalid(
                    &key("kind"),
                    format!("{other:?}"),
                    "\"webhook\", \"email\" or \"log\"",
                ));
            }
        };
        let channels = s.channels.unwrap_or_else(|| vec!["*".to_owned()]);
        if channels.is_empty() {
            return Err(invalid(
                &key("channels"),
                "[]",
                "at least one channel pattern, or leave it out for [\"*\"]",
            ));
        }
        let matcher = ChannelMatcher::new(&channels)
            .map_err(|e| invalid(&key("channels"), format!("{channels:?}"), e))?;
        sinks.push(SinkConfig {
            name: s.name,
            kind,
            channels,
            matcher,
            max_age: duration(
                &key("max_age"),
                s.max_age.as_deref(),
                Duration::from_secs(3600),
                Duration::from_secs(1),
                Duration::from_secs(30 * 86_400),
            )?,
            max_attempts: super::units::count(&key("max_attempts"), s.max_attempts, 8, 1..=100)?,
            concurrency: super::units::count(&key("concurrency"), s.concurrency, 4, 1..=256)?,
            connect_timeout: duration(
                &key("connect_timeout"),
                s.connect_timeout.as_deref(),
                Duration::from_secs(5),
                Duration::from_millis(50),
                Duration::from_secs(120),
            )?,
            timeout: duration(
                &key("timeout"),
                s.timeout.as_deref(),
                Duration::from_secs(10),
                Duration::from_millis(50),
                Duration::from_secs(600),
            )?,
        });
    }
    if sinks.is_empty() {
        sinks.push(log_sink());
    }
    Ok(sinks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(patterns: &[&str]) -> ChannelMatcher {
        let owned: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        ChannelMatcher::new(&owned).expect("valid")
    }

    #[test]
    fn channel_globs() {
        assert!(m(&["*"]).matches("sms"));
        assert!(ChannelMatcher::default().matches("anything/at all"));
        assert!(m(&["sms"]).matches("sms"));
        assert!(!m(&["sms"]).matches("email"));
        assert!(m(&["page-*"]).matches("page-it"));
        assert!(m(&["*-it"]).matches("page-it"));
        assert!(m(&["a*b*c"]).matches("aXbYc"));
        assert!(!m(&["a*b*c"]).matches("aXcYb"));
        assert!(!m(&["ab*ba"]).matches("aba"));
        assert!(m(&["x", "page/*"]).matches("page/it"), "`/` is a character");
    }

    fn parse(text: &str) -> Result<Vec<SinkConfig>, String> {
        super::super::Config::parse(text)
            .map(|c| c.sinks)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn bad_sinks_are_refused_with_the_key_and_what_is_allowed() {
        let cases = [
            (
                "kind = \"webhook\"\nurl = \"ftp://x/y\"",
                "sinks[0].url",
                "https://",
            ),
            (
                "kind = \"webhook\"\nurl = \"https://\"",
                "sinks[0].url",
                "with a host",
            ),
            (
                "kind = \"webhook\"\nurl = \"https://x\"\nca_file = \"/nonexistent/ca.pem\"",
                "sinks[0].ca_file",
                "a readable PEM file",
            ),
            (
                "kind = \"webhook\"\nurl = \"https://x\"\nheaders = { Authorization = \"env:TANDEM_TEST_SURELY_UNSET\" }",
                "sinks[0].headers.Authorization",
                "TANDEM_TEST_SURELY_UNSET",
            ),
            (
                "kind = \"webhook\"\nurl = \"https://x\"\nformat = \"xml\"",
                "sinks[0].format",
                "slack",
            ),
            (
                "kind = \"email\"\nhost = \"smtp\"\nfrom = \"a@b\"\ntls = \"ssl\"",
                "sinks[0].tls",
                "starttls",
            ),
            (
                "kind = \"email\"\nhost = \"smtp\"",
                "sinks[0].from",
                "(missing)",
            ),
            (
                "kind = \"email\"\nhost = \"smtp\"\nfrom = \"not an address\"",
                "sinks[0].from",
                "an email address",
            ),
            (
                "kind = \"email\"\nhost = \"smtp\"\nfrom = \"a@b\"\nusername = \"u\"",
                "sinks[0].password",
                "both",
            ),
            (
                "kind = \"webhook\"\nurl = \"http://x\"\nconcurrency = 0",
                "sinks[0].concurrency",
                "from 1",
            ),
        ];
        for (body, key, allowed) in cases {
            let err = parse(&format!("[[sinks]]\nname = \"s\"\n{body}\n")).unwrap_err();
            assert!(err.contains(key) && err.contains(allowed), "{body}: {err}");
        }
    }

    #[test]
    fn good_sinks_get_their_defaults() {
        let sinks = parse(
            "[[sinks]]\nname = \"slack\"\nkind = \"webhook\"\nurl = \"https://hooks.example.org/x\"\n\
             format = \"slack\"\nheaders = { X-Team = \"ops\" }\n\
             [[sinks]]\nname = \"mail\"\nkind = \"email\"\nhost = \"smtp.example.org\"\nfrom = \"Tandem <t@example.org>\"\n",
        )
        .unwrap();
        let SinkKind::Webhook(w) = &sinks[0].kind else {
            panic!("webhook")
        };
        assert_eq!(w.format, WebhookFormat::Slack);
        assert_eq!(w.headers, vec![("X-Team".to_owned(), "ops".to_owned())]);
        assert_eq!(sinks[0].concurrency, 4);
        assert_eq!(sinks[0].connect_timeout, Duration::from_secs(5));
        assert_eq!(sinks[0].timeout, Duration::from_secs(10));
        let SinkKind::Email(e) = &sinks[1].kind else {
            panic!("email")
        };
        assert_eq!((e.port, e.tls), (587, SmtpTls::StartTls));
    }
}
