//! [`Ctx`]: what a rule acts through. Each action is written once, as the
//! msgpack map the host reads, straight into one buffer the SDK reuses
//! from call to call: no `Action` value, no `String` per field, no
//! allocation once the buffer has grown to the rule's usual output.
//!
//! The buffer holds the call's actions back to back, each behind a 4-byte
//! little-endian length; the SDK hands each one to the host's `emit`
//! import after the rule returns. What the host receives is exactly what
//! ABI v1 has always carried (docs/abi.md, "Actions"), so hosts and rules
//! built before this writer keep working with it.

use std::fmt;

use rmp::encode as mp;

use crate::abi;
use crate::wire::{self, Action, Level, Notify, Value};

/// Where [`Ctx::now`] reads the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// The host's clock (the `now_ms` import); natively, the system clock.
    Host,
    /// A fixed time, for tests.
    Fixed(i64),
}

/// What a rule uses to act: collects its actions for one signal.
pub struct Ctx {
    /// `[len: u32 LE][msgpack map]` per action.
    out: Vec<u8>,
    clock: Clock,
}

impl fmt::Debug for Ctx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ctx")
            .field("actions", &self.encoded().count())
            .field("clock", &self.clock)
            .finish()
    }
}

/// Bytes of the length in front of each action.
const LEN: usize = 4;

impl Ctx {
    /// A context that reads the time from `clock`.
    pub fn new(clock: Clock) -> Self {
        Self::with_buffer(clock, Vec::new())
    }

    /// A context writing into `buffer` (cleared first), so a caller can
    /// reuse one allocation across calls; [`Ctx::into_buffer`] gives it back.
    pub fn with_buffer(clock: Clock, mut buffer: Vec<u8>) -> Self {
        buffer.clear();
        Ctx { out: buffer, clock }
    }

    /// The buffer, for the next [`Ctx::with_buffer`].
    pub fn into_buffer(self) -> Vec<u8> {
        self.out
    }

    /// Notify `to` (`person:NAME`, `group:NAME` or an address) on the
    /// default channel.
    pub fn notify(&mut self, to: impl AsRef<str>, subject: impl AsRef<str>, body: impl AsRef<str>) {
        self.notify_on(Notify::DEFAULT_CHANNEL, to, subject, body);
    }

    /// Notify `to` on `channel` (the sinks whose `channels` match it take
    /// it, e.g. `"sms"` or `"email"`).
    pub fn notify_on(
        &mut self,
        channel: impl AsRef<str>,
        to: impl AsRef<str>,
        subject: impl AsRef<str>,
        body: impl AsRef<str>,
    ) {
        let start = self.begin();
        let o = &mut self.out;
        map_len(o, 5);
        pair(o, "type", "notify");
        pair(o, "to", to.as_ref());
        pair(o, "channel", channel.as_ref());
        pair(o, "subject", subject.as_ref());
        pair(o, "body", body.as_ref());
        self.end(start);
    }

    /// Raise a new signal with `fields`. It is dispatched to the matching
    /// rules after this call, with a key derived from this signal's key,
    /// this rule and the action's index, so every node derives the same
    /// key. For fields of mixed types, use [`Ctx::raise_signal`].
    pub fn raise<K, V>(&mut self, name: impl AsRef<str>, fields: impl IntoIterator<Item = (K, V)>)
    where
        K: AsRef<str>,
        V: FieldValue,
    {
        let mut r = self.raise_signal(name);
        for (k, v) in fields {
            r = r.field(k, v);
        }
    }

    /// Raise a new signal, adding its fields one by one, of any mix of
    /// types; the action is complete when the builder is dropped:
    ///
    /// ```
    /// # use tandem_guest::{Clock, Ctx};
    /// # let mut ctx = Ctx::new(Clock::Fixed(0));
    /// ctx.raise_signal("ALARM-STORM")
    ///     .field("zone", "north")
    ///     .field("count", 12)
    ///     .field("rate", 2.5)
    ///     .field("silent", false);
    /// ```
    ///
    /// A key given twice is sent twice; the host keeps the last.
    pub fn raise_signal(&mut self, name: impl AsRef<str>) -> RaiseBuilder<'_> {
        let start = self.begin();
        let o = &mut self.out;
        map_len(o, 3);
        pair(o, "type", "raise");
        pair(o, "name", name.as_ref());
        str(o, "fields");
        let count_at = o.len();
        // map32 with its count patched when the builder is dropped.
        o.extend_from_slice(&[0xdf, 0, 0, 0, 0]);
        RaiseBuilder {
            ctx: self,
            start,
            count_at,
            count: 0,
        }
    }

    /// Add a line to the event's outcome in the event log (a `log`
    /// action). It does not go to the node's own log output.
    pub fn log(&mut self, level: Level, message: impl AsRef<str>) {
        let start = self.begin();
        let o = &mut self.out;
        map_len(o, 3);
        pair(o, "type", "log");
        str(o, "level");
        str(o, level.name());
        pair(o, "message", message.as_ref());
        self.end(start);
    }

    /// Ask for a [`TIMER`](crate::names::TIMER) signal after `after`,
    /// delivered to this rule alone (whatever its patterns), so "60 s of
    /// quiet" needs no next signal. A rule has one timer: a later call
    /// replaces it. It fires only while this node executes the rule (not
    /// on a standby), is lost with the instance (a trap, a reload, a
    /// failover), and is at most a day ([`crate::names::MAX_TIMER_MS`];
    /// longer is refused with the run). The TIMER signal's `time` is when
    /// it was due, its `source` the rule, its key unique to it. Needs a
    /// host from 2026-12 on; an older one refuses the action.
    pub fn set_timer(&mut self, after: std::time::Duration) {
        let start = self.begin();
        let o = &mut self.out;
        map_len(o, 2);
        pair(o, "type", "timer");
        str(o, "after_ms");
        let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        let _ = mp::write_uint(o, ms);
        self.end(start);
    }

    /// Any action, as a value (e.g. one built elsewhere and kept).
    pub fn emit(&mut self, action: Action) {
        let start = self.begin();
        // Encoding our own types into a Vec cannot fail; were serde to fail
        // anyway, the half-written action is taken back, not sent.
        if rmp_serde::encode::write_named(&mut self.out, &action).is_ok() {
            self.end(start);
        } else {
            self.out.truncate(start);
        }
    }

    /// The current time in milliseconds since the Unix epoch. Prefer
    /// `signal.time` for anything that must be the same on replay.
    pub fn now(&self) -> i64 {
        match self.clock {
            Clock::Fixed(t) => t,
            Clock::Host => abi::host_now_ms(),
        }
    }

    /// The actions so far, each as the msgpack map the host receives.
    pub fn encoded(&self) -> Encoded<'_> {
        Encoded { rest: &self.out }
    }

    /// The actions so far, decoded (for tests; a rule never needs this).
    pub fn actions(&self) -> Vec<Action> {
        self.encoded()
            .filter_map(|bytes| wire::decode(bytes).ok())
            .collect()
    }

    /// Take the actions, decoded, leaving the context empty.
    pub fn take_actions(&mut self) -> Vec<Action> {
        let actions = self.actions();
        self.out.clear();
        actions
    }

    /// Start an action: room for its length.
    fn begin(&mut self) -> usize {
        let start = self.out.len();
        self.out.extend_from_slice(&[0; LEN]);
        start
    }

    /// Finish the action begun at `start`: write its length.
    fn end(&mut self, start: usize) {
        let len = self.out.len() - start - LEN;
        // An action longer than 4 GiB cannot be built in a 32-bit guest;
        // natively, saturating makes `encoded` stop rather than misread.
        let len = u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes();
        self.out[start..start + LEN].copy_from_slice(&len);
    }
}

/// The encoded actions of a [`Ctx`], in order.
#[derive(Debug, Clone)]
pub struct Encoded<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Encoded<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (len, rest) = self.rest.split_first_chunk::<LEN>()?;
        let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
        let (action, rest) = rest.split_at_checked(len)?;
        self.rest = rest;
        Some(action)
    }
}

/// A raise being built by [`Ctx::raise_signal`]; sent when dropped.
pub struct RaiseBuilder<'c> {
    ctx: &'c mut Ctx,
    start: usize,
    count_at: usize,
    count: u32,
}

impl fmt::Debug for RaiseBuilder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RaiseBuilder")
            .field("fields", &self.count)
            .finish()
    }
}

impl RaiseBuilder<'_> {
    /// Add a field: a string, an integer, a float, a bool or a [`Value`].
    pub fn field(mut self, key: impl AsRef<str>, value: impl FieldValue) -> Self {
        str(&mut self.ctx.out, key.as_ref());
        value.write(&mut self.ctx.out);
        self.count = self.count.saturating_add(1);
        self
    }
}

impl Drop for RaiseBuilder<'_> {
    fn drop(&mut self) {
        let at = self.count_at + 1;
        self.ctx.out[at..at + 4].copy_from_slice(&self.count.to_be_bytes());
        self.ctx.end(self.start);
    }
}

/// A value a rule can put in a raised signal's field, written straight to
/// the wire: `&str`, `String`, integers, floats, `bool`, [`Value`].
pub trait FieldValue {
    /// Append the value's msgpack encoding to `out`.
    fn write(&self, out: &mut Vec<u8>);
}

impl<T: FieldValue + ?Sized> FieldValue for &T {
    fn write(&self, out: &mut Vec<u8>) {
        (**self).write(out);
    }
}

impl FieldValue for str {
    fn write(&self, out: &mut Vec<u8>) {
        str(out, self);
    }
}

impl FieldValue for String {
    fn write(&self, out: &mut Vec<u8>) {
        str(out, self);
    }
}

impl FieldValue for bool {
    fn write(&self, out: &mut Vec<u8>) {
        let _ = mp::write_bool(out, *self);
    }
}

impl FieldValue for f64 {
    fn write(&self, out: &mut Vec<u8>) {
        let _ = mp::write_f64(out, *self);
    }
}

impl FieldValue for f32 {
    fn write(&self, out: &mut Vec<u8>) {
        let _ = mp::write_f64(out, f64::from(*self));
    }
}

macro_rules! int_field {
    ($($t:ty),*) => {$(
        impl FieldValue for $t {
            fn write(&self, out: &mut Vec<u8>) {
                let _ = mp::write_sint(out, i64::from(*self));
            }
        }
    )*};
}
int_field!(i8, i16, i32, i64, u8, u16, u32);

impl FieldValue for u64 {
    fn write(&self, out: &mut Vec<u8>) {
        let _ = mp::write_uint(out, *self);
    }
}

impl FieldValue for Value {
    fn write(&self, out: &mut Vec<u8>) {
        write_value(out, self);
    }
}

/// Append `v`'s msgpack encoding, as [`Value`]'s serde form would.
fn write_value(out: &mut Vec<u8>, v: &Value) {
    // Writes into a Vec cannot fail; the results are ignored for that reason.
    match v {
        Value::Nil => {
            let _ = mp::write_nil(out);
        }
        Value::Bool(b) => b.write(out),
        Value::Int(i) => i.write(out),
        Value::Float(f) => f.write(out),
        Value::Str(s) => str(out, s),
        Value::Bin(b) => {
            let _ = mp::write_bin(out, b);
        }
        Value::Array(items) => {
            let _ = mp::write_array_len(out, u32::try_from(items.len()).unwrap_or(u32::MAX));
            items.iter().for_each(|i| write_value(out, i));
        }
        Value::Map(map) => {
            map_len(out, map.len());
            for (k, v) in map {
                str(out, k);
                write_value(out, v);
            }
        }
    }
}

fn map_len(out: &mut Vec<u8>, len: usize) {
    let _ = mp::write_map_len(out, u32::try_from(len).unwrap_or(u32::MAX));
}

fn str(out: &mut Vec<u8>, s: &str) {
    let _ = mp::write_str(out, s);
}

fn pair(out: &mut Vec<u8>, key: &str, value: &str) {
    str(out, key);
    str(out, value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Log, Raise, Timer};

    fn ctx() -> Ctx {
        Ctx::new(Clock::Fixed(0))
    }

    #[test]
    fn each_writer_gives_the_action_serde_gives() {
        let mut c = ctx();
        c.notify("group:it", "subject", "body");
        c.notify_on("sms", "person:ann", "s", String::from("b"));
        c.log(Level::Warn, "careful");
        c.raise("ALARM", [("zone", "north"), ("floor", "2")]);
        c.set_timer(std::time::Duration::from_secs(60));
        c.emit(Action::Log(Log {
            level: Level::Debug,
            message: "as a value".into(),
        }));
        let got = c.actions();
        let want = vec![
            Action::Notify(Notify::new("group:it", "subject", "body")),
            Action::Notify(Notify::new("person:ann", "s", "b").on_channel("sms")),
            Action::Log(Log {
                level: Level::Warn,
                message: "careful".into(),
            }),
            Action::Raise(Raise {
                name: "ALARM".into(),
                fields: [
                    ("zone".to_owned(), Value::from("north")),
                    ("floor".to_owned(), Value::from("2")),
                ]
                .into(),
            }),
            Action::Timer(Timer { after_ms: 60_000 }),
            Action::Log(Log {
                level: Level::Debug,
                message: "as a value".into(),
            }),
        ];
        assert_eq!(got, want);
        assert_eq!(c.encoded().count(), 6, "every action decodes");
    }

    #[test]
    fn the_raise_builder_takes_mixed_types() {
        let mut c = ctx();
        let nested = Value::Array(vec![Value::Int(1), Value::Nil, Value::from("x")]);
        c.raise_signal("ALARM-STORM")
            .field("zone", "north")
            .field("count", 12)
            .field("big", u64::MAX)
            .field("rate", 2.5)
            .field("silent", false)
            .field("owned", String::from("o"))
            .field("nested", &nested);
        c.raise_signal("EMPTY");
        let actions = c.take_actions();
        let Action::Raise(r) = &actions[0] else {
            panic!("{actions:?}")
        };
        assert_eq!(r.name, "ALARM-STORM");
        assert_eq!(r.fields["zone"], Value::from("north"));
        assert_eq!(r.fields["count"], Value::Int(12));
        // Above i64::MAX, as the host decodes any msgpack integer.
        assert_eq!(r.fields["big"], Value::Float(u64::MAX as f64));
        assert_eq!(r.fields["rate"], Value::Float(2.5));
        assert_eq!(r.fields["silent"], Value::Bool(false));
        assert_eq!(r.fields["owned"], Value::from("o"));
        assert_eq!(r.fields["nested"], nested);
        assert_eq!(
            actions[1],
            Action::Raise(Raise {
                name: "EMPTY".into(),
                fields: Default::default()
            })
        );
        assert_eq!(c.encoded().count(), 0, "taken");
    }

    #[test]
    fn the_buffer_is_reused_and_cleared() {
        let mut c = ctx();
        c.notify("a", "b", "c");
        let buf = c.into_buffer();
        let cap = buf.capacity();
        let c = Ctx::with_buffer(Clock::Host, buf);
        assert_eq!(c.encoded().count(), 0);
        assert_eq!(c.into_buffer().capacity(), cap);
    }

    #[test]
    fn a_truncated_buffer_ends_the_iteration() {
        let mut c = ctx();
        c.notify("a", "b", "c");
        c.out.truncate(c.out.len() - 1);
        assert_eq!(c.encoded().count(), 0);
        c.out.truncate(2);
        assert_eq!(c.encoded().count(), 0);
    }
}
