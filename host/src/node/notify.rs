//! Notifications: turn a dispatch's notify actions into outbox rows, one
//! per recipient (groups expand to their members) and matching sink, each
//! with an id derived from (signal key, rule, action index, recipient).

use tandem_guest::{Action, Signal};

use super::*;

/// Queue every notify action of an outcome; returns how many rows.
pub(super) fn queue_notifications(
    tx: &rusqlite::Transaction<'_>,
    node: &str,
    sinks: &[SinkConfig],
    dispatched: &Signal,
    o: &Outcome,
    now: i64,
) -> Result<u64, StoreError> {
    let mut queued = 0;
    // The JSON of each signal (dispatched or raised) that notified, built
    // once however many rules and actions notify for it.
    let mut signal_jsons: Vec<Option<String>> = Vec::new();
    for run in &o.runs {
        for (index, action) in run.actions.iter().enumerate() {
            let Action::Notify(n) = action else { continue };
            if signal_jsons.len() <= run.origin {
                signal_jsons.resize(run.origin + 1, None);
            }
            let signal = o.signal_of(run, dispatched);
            let signal_json = signal_jsons[run.origin].get_or_insert_with(|| {
                serde_json::to_string(signal).unwrap_or_else(|_| "{}".into())
            });
            // Recipients resolve by the address kind a sink needs: an
            // email sink takes each person's `email` address (or their
            // default one); other sinks the address for the channel.
            let mut resolved: Vec<(&str, Vec<String>)> = Vec::new();
            for sink in sinks.iter().filter(|s| s.matcher.matches(&n.channel)) {
                let kind = match sink.kind {
                    crate::config::SinkKind::Email(_) => "email",
                    _ => n.channel.as_str(),
                };
                if !resolved.iter().any(|(k, _)| *k == kind) {
                    let recipients = match outbox::resolve(tx, &n.to, kind)? {
                        Some(r) => r,
                        None => {
                            tracing::warn!(rule = %run.rule, to = %n.to, "unknown or empty recipient: one notification addressed to it as is");
                            vec![n.to.clone()]
                        }
                    };
                    resolved.push((kind, recipients));
                }
                let recipients = resolved
                    .iter()
                    .find(|(k, _)| *k == kind)
                    .map(|(_, r)| r.as_slice())
                    .unwrap_or_default();
                for to in recipients {
                    let row = NewNotification {
                        id: notification_id(&signal.key, &run.rule, index, to),
                        sink: sink.name.clone(),
                        event_id: dispatched.id,
                        rule: run.rule.to_string(),
                        node: node.to_owned(),
                        to: to.clone(),
                        channel: n.channel.clone(),
                        subject: n.subject.clone(),
                        body: n.body.clone(),
                        signal: signal_json.clone(),
                        created_at: now,
                        epoch: (run.epoch > 0).then_some(run.epoch),
                    };
                    if outbox::insert(tx, &row)? {
                        queued += 1;
                    }
                }
            }
        }
    }
    Ok(queued)
}
