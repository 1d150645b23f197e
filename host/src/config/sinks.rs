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
}

/// Where a sink sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkKind {
    Webhook { url: String },
    Log,
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
    }
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
        let kind = match s.kind.as_str() {
            "webhook" => {
                let url = s.url.ok_or_else(|| {
                    invalid(
                        &key("url"),
                        "(missing)",
                        "an http:// URL for a webhook sink",
                    )
                })?;
                if !url.starts_with("http://") {
                    return Err(invalid(
                        &key("url"),
                        format!("{url:?}"),
                        "an http:// URL (TLS is not built in yet: terminate it in a local proxy)",
                    ));
                }
                SinkKind::Webhook { url }
            }
            "log" => SinkKind::Log,
            other => {
                return Err(invalid(
                    &key("kind"),
                    format!("{other:?}"),
                    "\"webhook\" or \"log\"",
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
}
