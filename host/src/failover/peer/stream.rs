//! What flows to the peer besides the machine's messages: executed keys
//! for the standby's tombstones, and the secondary's copy-back.

use std::time::Instant;

use super::*;

impl Driver {
    /// Send the keys executed here since the last ones sent on this link.
    pub(super) async fn stream(&mut self) {
        if self.conn.is_none() {
            return;
        }
        loop {
            let from = self.streamed;
            let keys = match self
                .node
                .store()
                .read(move |c| exec::after(c, from, KEYS_PER_FRAME))
                .await
            {
                Ok(k) => k,
                Err(e) => {
                    tracing::error!("reading executed keys: {e}");
                    return;
                }
            };
            let Some(&(last, _)) = keys.last() else {
                return;
            };
            self.streamed = last;
            let full = keys.len() as u32 == KEYS_PER_FRAME;
            self.send_body(Body::Keys(keys));
            if !full {
                return;
            }
        }
    }

    /// The secondary, standby and linked, copies its failover rows to the
    /// primary one batch at a time, from where the last acknowledged batch
    /// ended.
    pub(super) async fn copy_back(&mut self) {
        let m = &self.machine;
        if self.cfg.role != PairRole::Secondary
            || m.fs != Fs::Standby
            || !m.link_up
            || self.conn.is_none()
        {
            self.copy_inflight = None;
            return;
        }
        // A batch the peer never acknowledged (it could not store it) is
        // sent again: storing a batch twice changes nothing there.
        let ack_wait = (self.cfg.check_interval * 10).max(std::time::Duration::from_secs(2));
        if self
            .copy_inflight
            .is_some_and(|(_, sent)| sent.elapsed() > ack_wait)
        {
            tracing::warn!("copy-back: no acknowledgement, sending the batch again");
            self.copy_inflight = None;
        }
        if self.copy_inflight.is_some()
            || self
                .copy_acked
                .is_some_and(|t| t.elapsed() < self.cfg.copyback_delay)
        {
            return;
        }
        let (name, limit) = (
            self.node.config().node.name.clone(),
            self.cfg.copyback_batch,
        );
        let batch = self
            .node
            .store()
            .read(move |c| {
                let after = copyback::last_copied(c)?;
                copyback::batch(c, &name, after, limit)
            })
            .await;
        match batch {
            Ok((events, notifications)) => {
                let Some(upto) = events.last().map(|e| e.id) else {
                    return;
                };
                tracing::debug!(upto, events = events.len(), "copy-back batch sent");
                self.copy_inflight = Some((upto, Instant::now()));
                self.send_body(Body::CopyBack {
                    upto,
                    events: events.iter().map(Into::into).collect(),
                    notifications: notifications.iter().map(Into::into).collect(),
                });
            }
            Err(e) => tracing::error!("copy-back: {e}"),
        }
    }
}
