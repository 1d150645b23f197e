//! `[failover]`: a pair member's settings, validated (DESIGN.md §4).

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::raw::RawFailover;
use super::units::{
    duration, lab_delay, parse_time, secret, startup_delay, strong_secret, sync_types,
};
use super::{ConfigError, Role, invalid};

/// This node's place in the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PairRole {
    Primary,
    Secondary,
}

/// When a secondary hands back on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Failback {
    /// After `failback_after` heartbeats in a row from a Ready primary.
    Auto,
    /// Only when an operator asks.
    Manual,
}

impl Failback {
    /// `auto` (the default) or `manual`, from the key `key`.
    pub(super) fn parse(key: &str, raw: Option<&str>) -> Result<Failback, ConfigError> {
        match raw {
            None | Some("auto") => Ok(Failback::Auto),
            Some("manual") => Ok(Failback::Manual),
            Some(other) => Err(invalid(key, format!("{other:?}"), "\"auto\" or \"manual\"")),
        }
    }
}

/// `[failover]` of a pair member, validated.
#[derive(Debug, Clone)]
pub struct FailoverConfig {
    /// Primary or secondary (standalone nodes have none).
    pub role: PairRole,
    pub rank: u32,
    /// The identity pair: (primary's name, secondary's name).
    pub primary: String,
    pub secondary: String,
    /// The primary dials this (the secondary's link listener).
    pub peer: Option<String>,
    /// The secondary listens here.
    pub listen: Option<SocketAddr>,
    /// The peer's admin URL (named in standby replies; table sync and
    /// pull call it), `http://` or `https://`.
    pub peer_admin: Option<String>,
    /// PEM certificates trusted for an `https://` peer_admin besides the
    /// system's roots (`peer_ca_file`).
    pub peer_ca_pem: Option<Vec<u8>>,
    pub secret: String,
    pub startup_delay: Duration,
    pub timeout: Duration,
    pub check_interval: Duration,
    pub heartbeat_every: u32,
    pub failback: Failback,
    pub failback_after: u32,
    pub primary_grace: Duration,
    pub replay_window: Duration,
    /// The daily sync's time of day (in `[node] timezone`).
    pub table_sync_time: Option<jiff::civil::Time>,
    pub table_sync_types: Vec<String>,
    pub sync_on_change: bool,
    pub lab_timings: bool,
    /// Rows per copy-back frame (`[failover.advanced] copyback_batch`).
    pub copyback_batch: u32,
    /// Lab only: a pause between copy-back frames, so a test can kill a
    /// node in the middle (`[failover.advanced] copyback_delay`).
    pub copyback_delay: Duration,
    /// Lab only: a pause inside a table-sync import
    /// (`[failover.advanced] import_delay`).
    pub import_delay: Duration,
}

impl FailoverConfig {
    /// Whether tables of `table_type` (`rule`, `contact`...) are synced
    /// to this node, so they are read-only here.
    pub fn synced_here(&self, table_type: &str) -> bool {
        self.role == PairRole::Secondary
            && self
                .table_sync_types
                .iter()
                .any(|t| t == "all" || t == table_type)
    }

    /// The peer's node name.
    pub fn peer_name(&self) -> &str {
        match self.role {
            PairRole::Primary => &self.secondary,
            PairRole::Secondary => &self.primary,
        }
    }
}

pub(super) fn validate(
    raw: RawFailover,
    role: Role,
    name: &str,
) -> Result<FailoverConfig, ConfigError> {
    let lab = raw.advanced.lab_timings;
    let ms = Duration::from_millis;
    let min = |prod: Duration| if lab { ms(50) } else { prod };
    let pair_role = if role == Role::Primary {
        PairRole::Primary
    } else {
        PairRole::Secondary
    };
    let primary = raw
        .primary
        .ok_or_else(|| invalid("failover.primary", "(missing)", "the primary's node name"))?;
    let secondary = raw.secondary.ok_or_else(|| {
        invalid(
            "failover.secondary",
            "(missing)",
            "the secondary's node name",
        )
    })?;
    if primary == secondary {
        return Err(invalid(
            "failover.secondary",
            format!("{secondary:?}"),
            "a name other than the primary's",
        ));
    }
    let own = if role == Role::Primary {
        &primary
    } else {
        &secondary
    };
    if own != name {
        return Err(invalid(
            if role == Role::Primary {
                "failover.primary"
            } else {
                "failover.secondary"
            },
            format!("{own:?}"),
            format!(
                "this node's own name ({name:?}), since its role is {}",
                role.as_str()
            ),
        ));
    }
    let rank = raw
        .rank
        .unwrap_or(if role == Role::Primary { 1 } else { 2 });
    let want = if role == Role::Primary { 1 } else { 2 };
    if rank != want {
        return Err(invalid(
            "failover.rank",
            rank,
            format!("{want} for a {}", role.as_str()),
        ));
    }
    let secret = secret("failover.secret", "TANDEM_PAIR_SECRET", raw.secret)?.ok_or_else(|| {
        invalid(
            "failover.secret",
            "(missing)",
            "the pair's shared secret (or TANDEM_PAIR_SECRET); `tandem secret new` makes one",
        )
    })?;
    strong_secret("failover.secret", "TANDEM_PAIR_SECRET", &secret)?;
    let check_interval = duration(
        "failover.check_interval",
        raw.check_interval.as_deref(),
        Duration::from_secs(20),
        min(Duration::from_secs(1)),
        Duration::from_secs(300),
    )?;
    let heartbeat_every = raw.heartbeat_every.unwrap_or(2);
    if !(1..=100).contains(&heartbeat_every) {
        return Err(invalid(
            "failover.heartbeat_every",
            heartbeat_every,
            "from 1 to 100 checks",
        ));
    }
    let period = check_interval * heartbeat_every;
    let timeout = duration(
        "failover.timeout",
        raw.timeout.as_deref(),
        Duration::from_secs(120),
        min(Duration::from_secs(120)),
        Duration::from_secs(1200),
    )?;
    if timeout < period * 3 {
        return Err(invalid(
            "failover.timeout",
            humantime::format_duration(timeout),
            format!(
                "at least 3 heartbeat periods ({} = check_interval x heartbeat_every x 3)",
                humantime::format_duration(period * 3)
            ),
        ));
    }
    let startup_delay = startup_delay("failover.startup_delay", raw.startup_delay.as_deref(), lab)?;
    let primary_grace = duration(
        "failover.primary_grace",
        raw.primary_grace.as_deref(),
        timeout,
        min(Duration::from_secs(120)),
        Duration::from_secs(3600),
    )?;
    let replay_window = duration(
        "failover.replay_window",
        raw.replay_window.as_deref(),
        timeout + period * 2,
        min(Duration::from_secs(1)),
        Duration::from_secs(7 * 86_400),
    )?;
    let failback = Failback::parse("failover.failback", raw.failback.as_deref())?;
    let failback_after = raw.failback_after.unwrap_or(3);
    if !(1..=1000).contains(&failback_after) {
        return Err(invalid(
            "failover.failback_after",
            failback_after,
            "from 1 to 1000 heartbeats",
        ));
    }
    let (peer, listen) = match role {
        Role::Primary => {
            let peer = raw.peer.ok_or_else(|| {
                invalid(
                    "failover.peer",
                    "(missing)",
                    "the secondary's link address, e.g. \"10.0.0.2:6511\"",
                )
            })?;
            (Some(peer), None)
        }
        _ => {
            let text = raw.listen.unwrap_or_else(|| "0.0.0.0:6511".to_owned());
            let addr = text.parse().map_err(|_| {
                invalid(
                    "failover.listen",
                    format!("{text:?}"),
                    "an address such as \"0.0.0.0:6511\"",
                )
            })?;
            (None, Some(addr))
        }
    };
    if let Some(url) = &raw.peer_admin
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        return Err(invalid(
            "failover.peer_admin",
            format!("{url:?}"),
            "the peer's admin URL, e.g. \"http://10.0.0.2:8080\"",
        ));
    }
    let table_sync_types = sync_types("failover.table_sync_types", raw.table_sync_types)?;
    Ok(FailoverConfig {
        role: pair_role,
        rank,
        primary,
        secondary,
        peer,
        listen,
        peer_admin: raw.peer_admin,
        peer_ca_pem: super::sinks::ca_pem("failover.peer_ca_file", raw.peer_ca_file)?,
        secret,
        startup_delay,
        timeout,
        check_interval,
        heartbeat_every,
        failback,
        failback_after,
        primary_grace,
        replay_window,
        table_sync_time: match raw.table_sync_time.as_deref() {
            None => None,
            Some(t) => Some(parse_time(t).ok_or_else(|| {
                invalid(
                    "failover.table_sync_time",
                    format!("{t:?}"),
                    "a time of day HH:MM, e.g. \"02:30\"",
                )
            })?),
        },
        table_sync_types,
        sync_on_change: raw.sync_on_change.unwrap_or(false),
        lab_timings: lab,
        copyback_batch: match raw.advanced.copyback_batch {
            None => 200,
            Some(n @ 1..=5000) => n,
            Some(n) => {
                return Err(invalid(
                    "failover.advanced.copyback_batch",
                    n,
                    "from 1 to 5000 rows",
                ));
            }
        },
        copyback_delay: lab_delay(
            "failover.advanced.copyback_delay",
            raw.advanced.copyback_delay.as_deref(),
            lab,
            Duration::from_secs(10),
        )?,
        import_delay: lab_delay(
            "failover.advanced.import_delay",
            raw.advanced.import_delay.as_deref(),
            lab,
            Duration::from_secs(60),
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use std::time::Duration;

    const PAIR: &str = r#"
[node]
name = "dev4120"
[failover]
role = "primary"
primary = "dev4120"
secondary = "wat4120"
peer = "127.0.0.1:6511"
peer_admin = "http://127.0.0.1:8082"
secret = "0123456789abcdef-pair-secret-0123456789abcdef"
startup_delay = "1s"
timeout = "1s"
check_interval = "100ms"
failback = "auto"
table_sync_types = ["rule", "contact"]
[failover.advanced]
lab_timings = true
"#;

    #[test]
    fn design_pair_example_is_valid() {
        let c = Config::parse(PAIR).unwrap();
        let f = c.failover.unwrap();
        assert_eq!(f.peer_name(), "wat4120");
        assert_eq!(f.check_interval, Duration::from_millis(100));
        assert_eq!(f.primary_grace, f.timeout, "grace defaults to the timeout");
        assert_eq!(
            f.replay_window,
            Duration::from_millis(1400),
            "timeout + 2 heartbeat periods"
        );
    }

    #[test]
    fn production_ranges_need_lab_timings_to_go_lower() {
        let err = Config::parse(&PAIR.replace("lab_timings = true", "lab_timings = false"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("failover.check_interval") && err.contains("between"),
            "{err}"
        );
        let err = Config::parse(&PAIR.replace("timeout = \"1s\"", "timeout = \"500ms\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least 3 heartbeat periods"), "{err}");
        let err = Config::parse(&PAIR.replace("primary = \"dev4120\"", "primary = \"other\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("this node's own name"), "{err}");
        let err = Config::parse(&PAIR.replace(
            "secret = \"0123456789abcdef-pair-secret-0123456789abcdef\"",
            "",
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("failover.secret"), "{err}");
        let err = Config::parse(&PAIR.replace("failback = \"auto\"", "failback = \"sometimes\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("failover.failback"), "{err}");
    }

    #[test]
    fn weak_secrets_and_bad_sync_times_are_refused_at_start() {
        let secret = "secret = \"0123456789abcdef-pair-secret-0123456789abcdef\"";
        let blank = Config::parse(&PAIR.replace(secret, "secret = \" \""))
            .unwrap_err()
            .to_string();
        assert!(blank.contains("failover.secret"), "{blank}");
        for weak in ["a", "pair-secret"] {
            let err = Config::parse(&PAIR.replace(secret, &format!("secret = {weak:?}")))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("failover.secret") && err.contains("tandem secret new"),
                "{weak:?}: {err}"
            );
        }
        let err = Config::parse(&format!("{PAIR}\n").replace(
            "failback = \"auto\"",
            "failback = \"auto\"\ntable_sync_time = \"25:00\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("failover.table_sync_time") && err.contains("HH:MM"),
            "{err}"
        );
        let ok = Config::parse(&PAIR.replace(
            "failback = \"auto\"",
            "failback = \"auto\"\ntable_sync_time = \"02:30\"",
        ))
        .unwrap();
        assert_eq!(
            ok.failover.unwrap().table_sync_time,
            jiff::civil::Time::new(2, 30, 0, 0).ok()
        );
    }
}
