//! Sample rule: tell the on-call group when the primary went offline and
//! when it is back.
//!
//! Subscribes to `FAILOVER-ON` and `FAILOVER-OFF`, which only the secondary
//! raises. Config (all optional):
//! - `to`: recipient, default `group:oncall`;
//! - `channel`: default `default`.
//!
//! FAILOVER-ON carries `reason`, `epoch`, `primary` and `down_since` (ms
//! since the Unix epoch); FAILOVER-OFF carries `primary` and `epoch`. In a
//! cluster both also carry `group`, `from` and `to`: the message then names
//! the group and the two nodes.

use tandem_guest::time::format_utc;
use tandem_guest::{Config, Ctx, Error, Notify, Rule, SignalView, export_rule};

/// The rule's state: only its config.
#[derive(Debug)]
pub struct FailoverNotify {
    to: String,
    channel: String,
}

impl Rule for FailoverNotify {
    const SIGNALS: &'static [&'static str] = &["FAILOVER-ON", "FAILOVER-OFF"];
    const CONFIG_KEYS: &'static [&'static str] = &["to", "channel"];

    fn init(config: &Config) -> Result<Self, Error> {
        Ok(FailoverNotify {
            to: config.str_or("to", "group:oncall")?.to_owned(),
            channel: config
                .str_or("channel", Notify::DEFAULT_CHANNEL)?
                .to_owned(),
        })
    }

    fn on_signal(&mut self, signal: &SignalView<'_>, ctx: &mut Ctx) -> Result<(), Error> {
        let primary = signal.str_field("primary")?.unwrap_or("primary server");
        let since = || -> Result<String, Error> {
            Ok(signal
                .i64_field("down_since")?
                .map_or_else(|| "an unknown time".to_owned(), format_utc))
        };
        if let Some(group) = signal.str_field("group")? {
            // A cluster's group moved between two nodes.
            let from = signal.str_field("from")?.unwrap_or("its node");
            let to = signal.str_field("to")?.unwrap_or("another node");
            let reason = signal.str_field("reason")?.unwrap_or("takeover");
            let (subject, body) = match signal.name {
                "FAILOVER-ON" => (
                    format!("group {group}: {from} offline, {to} took over"),
                    format!(
                        "group {group} moved from {from} to {to} ({reason}); {from} not seen since {}",
                        since()?
                    ),
                ),
                "FAILOVER-OFF" => (
                    format!("group {group}: back on {to}"),
                    format!("group {group} moved back from {from} to {to} ({reason})"),
                ),
                _ => return Ok(()),
            };
            ctx.notify_on(&self.channel, &self.to, subject, body);
            return Ok(());
        }
        let (subject, body) = match signal.name {
            "FAILOVER-ON" => {
                let since = since()?;
                let reason = signal.str_field("reason")?.unwrap_or("heartbeat timeout");
                (
                    format!("{primary} offline, secondary active"),
                    format!(
                        "primary server {primary} offline since {since} ({reason}); the secondary has taken over"
                    ),
                )
            }
            "FAILOVER-OFF" => (
                format!("{primary} back online"),
                format!(
                    "primary server {primary} is back and active again; the secondary is standby"
                ),
            ),
            _ => return Ok(()),
        };
        ctx.notify_on(&self.channel, &self.to, subject, body);
        Ok(())
    }
}

export_rule!(FailoverNotify);

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_guest::Signal;
    use tandem_guest::testing::Harness;

    fn on() -> Signal {
        Signal::new("FAILOVER-ON")
            .with_field("primary", "dev4120")
            .with_field("reason", "heartbeat timeout")
            .with_field("epoch", 4)
            .with_field("down_since", 1_763_780_000_000_i64)
    }

    #[test]
    fn failover_on_notifies_oncall_with_the_time() {
        let mut h = Harness::<FailoverNotify>::new(&Config::new()).unwrap();
        let n = h.notifications(&on()).unwrap();
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].to, "group:oncall");
        assert_eq!(n[0].subject, "dev4120 offline, secondary active");
        assert!(
            n[0].body.contains("offline since 2025-11-22 02:53:20 UTC"),
            "{}",
            n[0].body
        );
    }

    #[test]
    fn failover_off_says_the_primary_is_back() {
        let mut h = Harness::<FailoverNotify>::new(&Config::new().with("to", "group:it")).unwrap();
        let n = h
            .notifications(&Signal::new("FAILOVER-OFF").with_field("primary", "dev4120"))
            .unwrap();
        assert_eq!(n[0].to, "group:it");
        assert!(n[0].body.contains("is back"), "{}", n[0].body);
    }

    #[test]
    fn a_cluster_group_names_the_group_and_both_nodes() {
        let mut h = Harness::<FailoverNotify>::new(&Config::new()).unwrap();
        let on = Signal::new("FAILOVER-ON")
            .with_field("group", "elementary")
            .with_field("from", "school-1")
            .with_field("to", "office")
            .with_field("reason", "takeover")
            .with_field("down_since", 1_763_780_000_000_i64);
        let n = h.notifications(&on).unwrap();
        assert_eq!(
            n[0].subject,
            "group elementary: school-1 offline, office took over"
        );
        assert!(
            n[0].body.contains("since 2025-11-22 02:53:20 UTC"),
            "{}",
            n[0].body
        );
        let off = Signal::new("FAILOVER-OFF")
            .with_field("group", "elementary")
            .with_field("from", "office")
            .with_field("to", "school-1");
        let n = h.notifications(&off).unwrap();
        assert_eq!(n[0].subject, "group elementary: back on school-1");
    }

    #[test]
    fn other_signals_and_missing_fields_are_handled() {
        let mut h = Harness::<FailoverNotify>::new(&Config::new()).unwrap();
        assert!(h.signal(&Signal::new("DOOR-1-OPEN")).unwrap().is_empty());
        let n = h.notifications(&Signal::new("FAILOVER-ON")).unwrap();
        assert!(n[0].body.contains("an unknown time"), "{}", n[0].body);
    }
}
