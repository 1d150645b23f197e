//! Sample rule: a panic button was pressed; tell security at once.
//!
//! Subscribes to `PANIC-*`. Config (all optional):
//! - `to`: recipient, default `group:security`;
//! - `channel`: default `default`.
//!
//! The message names the button (`source`) and where it is (the `location`
//! field), the two things a guard needs first.

use tandem_guest::{Config, Ctx, Error, Notify, Rule, SignalView, export_rule};

/// The rule's state: only its config.
#[derive(Debug)]
pub struct PanicButton {
    to: String,
    channel: String,
}

impl Rule for PanicButton {
    const SIGNALS: &'static [&'static str] = &["PANIC-*"];
    const CONFIG_KEYS: &'static [&'static str] = &["to", "channel"];

    fn init(config: &Config) -> Result<Self, Error> {
        Ok(PanicButton {
            to: config.str_or("to", "group:security")?.to_owned(),
            channel: config
                .str_or("channel", Notify::DEFAULT_CHANNEL)?
                .to_owned(),
        })
    }

    fn on_signal(&mut self, signal: &SignalView<'_>, ctx: &mut Ctx) -> Result<(), Error> {
        let source = if signal.source.is_empty() {
            "unknown button"
        } else {
            signal.source
        };
        let location = signal.str_field("location")?.unwrap_or("unknown location");
        let subject = format!("PANIC at {location}");
        let body = format!("{} from {source} at {location}", signal.name);
        ctx.notify_on(&self.channel, &self.to, subject, body);
        Ok(())
    }
}

export_rule!(PanicButton);

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_guest::Signal;
    use tandem_guest::testing::Harness;

    #[test]
    fn notifies_security_with_source_and_location() {
        let mut h = Harness::<PanicButton>::new(&Config::new()).unwrap();
        let n = h
            .notifications(
                &Signal::new("PANIC-1")
                    .with_source("button-7")
                    .with_field("location", "reception"),
            )
            .unwrap();
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].to, "group:security");
        assert_eq!(n[0].channel, "default");
        assert_eq!(n[0].subject, "PANIC at reception");
        assert!(n[0].body.contains("button-7"), "{}", n[0].body);
        assert!(n[0].body.contains("reception"), "{}", n[0].body);
    }

    #[test]
    fn config_overrides_recipient_and_channel() {
        let cfg = Config::new()
            .with("to", "person:guard")
            .with("channel", "sms");
        let mut h = Harness::<PanicButton>::new(&cfg).unwrap();
        let n = h.notifications(&Signal::new("PANIC-2")).unwrap();
        assert_eq!(
            (n[0].to.as_str(), n[0].channel.as_str()),
            ("person:guard", "sms")
        );
        assert!(n[0].body.contains("unknown button"));
    }

    #[test]
    fn a_bad_config_is_an_error_naming_the_key() {
        let err = Harness::<PanicButton>::new(&Config::new().with("to", 3)).unwrap_err();
        assert!(err.to_string().contains("`to`"), "{err}");
    }
}
