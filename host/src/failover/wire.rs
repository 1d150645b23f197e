//! Rows as the link carries them: the link's own structs, separate from
//! the store's, so a schema change cannot change the link protocol
//! silently. A change here is a change of the link protocol
//! ([`super::link::PROTOCOL`]).

use serde::{Deserialize, Serialize};

use crate::node::SignalInput;
use crate::store::copyback::{CopiedEvent, CopiedNotification};

/// An event row of the copy-back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEvent {
    pub id: i64,
    pub key: String,
    pub name: String,
    pub source: String,
    pub time: i64,
    pub received_at: i64,
    pub fields: String,
    pub status: String,
    pub replayed: bool,
    pub outcome: Option<String>,
}

/// A notification row of the copy-back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireNotification {
    pub id: String,
    pub sink: String,
    pub event_id: i64,
    pub rule: String,
    pub to: String,
    pub channel: String,
    pub subject: String,
    pub body: String,
    pub signal: String,
    pub status: String,
    pub attempts: u32,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_error: Option<String>,
}

impl From<&CopiedEvent> for WireEvent {
    fn from(e: &CopiedEvent) -> Self {
        WireEvent {
            id: e.id,
            key: e.key.clone(),
            name: e.name.clone(),
            source: e.source.clone(),
            time: e.time,
            received_at: e.received_at,
            fields: e.fields.clone(),
            status: e.status.clone(),
            replayed: e.replayed,
            outcome: e.outcome.clone(),
        }
    }
}

impl From<WireEvent> for CopiedEvent {
    fn from(e: WireEvent) -> Self {
        CopiedEvent {
            id: e.id,
            key: e.key,
            name: e.name,
            source: e.source,
            time: e.time,
            received_at: e.received_at,
            fields: e.fields,
            status: e.status,
            replayed: e.replayed,
            outcome: e.outcome,
        }
    }
}

impl From<&CopiedNotification> for WireNotification {
    fn from(n: &CopiedNotification) -> Self {
        WireNotification {
            id: n.id.clone(),
            sink: n.sink.clone(),
            event_id: n.event_id,
            rule: n.rule.clone(),
            to: n.to.clone(),
            channel: n.channel.clone(),
            subject: n.subject.clone(),
            body: n.body.clone(),
            signal: n.signal.clone(),
            status: n.status.clone(),
            attempts: n.attempts,
            created_at: n.created_at,
            updated_at: n.updated_at,
            last_error: n.last_error.clone(),
        }
    }
}

impl From<WireNotification> for CopiedNotification {
    fn from(n: WireNotification) -> Self {
        CopiedNotification {
            id: n.id,
            sink: n.sink,
            event_id: n.event_id,
            rule: n.rule,
            to: n.to,
            channel: n.channel,
            subject: n.subject,
            body: n.body,
            signal: n.signal,
            status: n.status,
            attempts: n.attempts,
            created_at: n.created_at,
            updated_at: n.updated_at,
            last_error: n.last_error,
        }
    }
}

/// A signal handed to the peer to run (a host signal raised on the
/// standby).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireSignal {
    pub name: String,
    pub source: Option<String>,
    pub key: Option<String>,
    pub time: Option<i64>,
    pub fields: tandem_guest::Fields,
}

impl From<SignalInput> for WireSignal {
    fn from(s: SignalInput) -> Self {
        WireSignal {
            name: s.name,
            source: s.source,
            key: s.key,
            time: s.time,
            fields: s.fields,
        }
    }
}

impl From<WireSignal> for SignalInput {
    fn from(s: WireSignal) -> Self {
        SignalInput {
            name: s.name,
            source: s.source,
            key: s.key,
            time: s.time,
            fields: s.fields,
        }
    }
}
