//! The wire types shared by rules and the host: the ONE definition of
//! [`Signal`], [`Value`], [`Action`] and the rule [`Config`].
//!
//! Everything here crosses the guest boundary as a msgpack *map* (rmp-serde's
//! `to_vec_named`), never as a positional array, so a field added in a later
//! version is simply ignored by an older decoder and a missing field takes its
//! default. A rule built today keeps decoding signals sent by a newer host.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The fields of a signal or a raised signal: string keys to values.
pub type Fields = BTreeMap<String, Value>;

/// A dynamically typed value: what a signal field or a config entry holds.
///
/// It maps one to one onto msgpack (and JSON, on the host's HTTP side):
/// nil, bool, integer, float, string, binary, array and map. Integers above
/// `i64::MAX` decode as floats.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Value {
    /// msgpack nil, JSON null.
    #[default]
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bin(Vec<u8>),
    Array(Vec<Value>),
    Map(BTreeMap<String, Value>),
}

impl Value {
    /// The string, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is an integer (floats are not truncated).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The number as a float: integers convert, and so do strings that parse
    /// as a number (sensors often report `"21.5"`).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            Value::Str(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// The boolean, if this is a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// Whether this is nil.
    pub fn is_nil(&self) -> bool {
        matches!(self, Value::Nil)
    }
}

/// Human-readable rendering for messages: strings without quotes, nil as
/// empty, containers in a JSON-like form.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Nil => Ok(()),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Str(s) => f.write_str(s),
            Value::Bin(b) => write!(f, "<{} bytes>", b.len()),
            Value::Array(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
            Value::Map(map) => {
                f.write_str("{")?;
                for (i, (k, v)) in map.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{k}: {v}")?;
                }
                f.write_str("}")
            }
        }
    }
}

macro_rules! value_from {
    ($($t:ty => $variant:ident as $conv:ty),* $(,)?) => {
        $(impl From<$t> for Value {
            fn from(v: $t) -> Self {
                Value::$variant(<$conv>::from(v))
            }
        })*
    };
}

value_from! {
    bool => Bool as bool,
    i8 => Int as i64,
    i16 => Int as i64,
    i32 => Int as i64,
    i64 => Int as i64,
    u8 => Int as i64,
    u16 => Int as i64,
    u32 => Int as i64,
    f32 => Float as f64,
    f64 => Float as f64,
    String => Str as String,
    &str => Str as String,
    Vec<Value> => Array as Vec<Value>,
    BTreeMap<String, Value> => Map as BTreeMap<String, Value>,
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Nil => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::Float(x) => s.serialize_f64(*x),
            Value::Str(v) => s.serialize_str(v),
            Value::Bin(v) => s.serialize_bytes(v),
            Value::Array(v) => v.serialize(s),
            Value::Map(v) => v.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a msgpack value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Nil)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Nil)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Bin(v.to_vec()))
    }
    fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Value, E> {
        Ok(Value::Bin(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(v) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = BTreeMap::new();
        while let Some((k, v)) = map.next_entry::<MapKey, Value>()? {
            out.insert(k.0, v);
        }
        Ok(Value::Map(out))
    }
}

/// A map key: strings as they are, integers and booleans as their text, so a
/// msgpack map with non-string keys still decodes.
struct MapKey(String);

impl<'de> Deserialize<'de> for MapKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = MapKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string map key")
            }
            fn visit_str<E>(self, v: &str) -> Result<MapKey, E> {
                Ok(MapKey(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<MapKey, E> {
                Ok(MapKey(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<MapKey, E> {
                Ok(MapKey(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<MapKey, E> {
                Ok(MapKey(v.to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<MapKey, E> {
                Ok(MapKey(v.to_string()))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<MapKey, E> {
                std::str::from_utf8(v)
                    .map(|s| MapKey(s.to_owned()))
                    .map_err(|_| E::custom("map key is not UTF-8"))
            }
        }
        d.deserialize_any(KeyVisitor)
    }
}

/// An event: a door opened, a button pressed, the primary went offline.
///
/// Every field has a default, so only `name` is needed to build one.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Signal {
    /// Assigned by the node that received the signal; unique on that node.
    pub id: u64,
    /// The sender's idempotency key. A device reporting to both nodes of a
    /// pair sends the same key to each.
    pub key: String,
    /// `[A-Z0-9][A-Z0-9_-]*`, e.g. `DOOR-1-OPEN`.
    pub name: String,
    /// Who sent it (a device, a PBX, a rule that raised it).
    pub source: String,
    /// When it happened, in milliseconds since the Unix epoch. A replayed
    /// signal keeps its original time.
    pub time: i64,
    /// True when a node that has just taken over runs a signal it stored
    /// while standby: the dead primary may already have acted on it.
    pub replayed: bool,
    /// Free-form payload. Last on the wire, so a guest reads the fields
    /// only when a rule asks for one.
    pub fields: Fields,
}

impl Signal {
    /// A signal with this name and nothing else set.
    pub fn new(name: impl Into<String>) -> Self {
        Signal {
            name: name.into(),
            ..Signal::default()
        }
    }

    /// Builder: set a field.
    pub fn with_field(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.fields.insert(key.into(), value.into());
        self
    }

    /// Builder: set the source.
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }

    /// Builder: set the time (ms since the Unix epoch).
    pub fn with_time(mut self, time_ms: i64) -> Self {
        self.time = time_ms;
        self
    }

    /// Builder: set the idempotency key.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = key.into();
        self
    }

    /// A field's value.
    pub fn field(&self, key: &str) -> Option<&Value> {
        self.fields.get(key)
    }

    /// A field's value if it is a string.
    pub fn str_field(&self, key: &str) -> Option<&str> {
        self.field(key).and_then(Value::as_str)
    }
}

/// What a rule asks the host to do. Encoded as a map with a `"type"` field.
///
/// Decoding goes through a flat map of every field (no buffering of the
/// whole map as serde's internally tagged enums do), so it costs one pass.
/// An unknown `"type"` is an error naming it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", try_from = "RawAction<'_>")]
pub enum Action {
    Notify(Notify),
    Raise(Raise),
    Log(Log),
    /// Since 2026-12: a host before it refuses the action as an unknown
    /// type (docs/abi.md).
    Timer(Timer),
}

/// Every field any action has, for decoding [`Action`] in one pass.
#[derive(Deserialize, Default)]
#[serde(default)]
struct RawAction<'a> {
    /// Borrowed from the input when it can be (msgpack from a slice); a
    /// decoder that cannot lend gets an owned copy.
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    to: String,
    channel: String,
    subject: String,
    body: String,
    name: String,
    fields: Fields,
    level: Level,
    message: String,
    after_ms: u64,
}

impl TryFrom<RawAction<'_>> for Action {
    type Error = String;

    fn try_from(raw: RawAction<'_>) -> Result<Self, Self::Error> {
        Ok(match &*raw.kind {
            "notify" => Action::Notify(Notify {
                to: raw.to,
                channel: if raw.channel.is_empty() {
                    Notify::DEFAULT_CHANNEL.to_owned()
                } else {
                    raw.channel
                },
                subject: raw.subject,
                body: raw.body,
            }),
            "raise" => Action::Raise(Raise {
                name: raw.name,
                fields: raw.fields,
            }),
            "log" => Action::Log(Log {
                level: raw.level,
                message: raw.message,
            }),
            "timer" => Action::Timer(Timer {
                after_ms: raw.after_ms,
            }),
            other => return Err(format!("unknown action type `{other}`")),
        })
    }
}

/// Send a notification.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Notify {
    /// `person:NAME`, `group:NAME`, or a literal address.
    pub to: String,
    /// Which sinks take it (`[[sinks]] channels`); `"default"` if unset.
    pub channel: String,
    pub subject: String,
    pub body: String,
}

impl Notify {
    /// The channel a notification goes to when the rule names none.
    pub const DEFAULT_CHANNEL: &'static str = "default";

    /// A notification on the default channel.
    pub fn new(to: impl Into<String>, subject: impl Into<String>, body: impl Into<String>) -> Self {
        Notify {
            to: to.into(),
            channel: Self::DEFAULT_CHANNEL.to_owned(),
            subject: subject.into(),
            body: body.into(),
        }
    }

    /// Builder: the channel (e.g. `"sms"`, `"email"`).
    pub fn on_channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = channel.into();
        self
    }
}

/// Raise a new signal, dispatched to the rules after this one finishes.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Raise {
    pub name: String,
    pub fields: Fields,
}

/// Deliver a [`TIMER`](crate::names::TIMER) signal to this rule alone,
/// `after_ms` from now, while its node executes it; a later timer of the
/// same rule replaces it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Timer {
    pub after_ms: u64,
}

/// A line for the node's event log and its log output.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Log {
    pub level: Level,
    pub message: String,
}

/// Log levels, numbered as the `log` import numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Error = 0,
    Warn = 1,
    #[default]
    Info = 2,
    Debug = 3,
    Trace = 4,
}

impl Level {
    /// The level's name on the wire (`"warn"`...).
    pub fn name(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        }
    }

    /// The level for an ABI level number; out-of-range numbers clamp to
    /// `Trace` (or `Error` for negatives).
    pub fn from_abi(level: i32) -> Level {
        match level {
            i32::MIN..=0 => Level::Error,
            1 => Level::Warn,
            2 => Level::Info,
            3 => Level::Debug,
            _ => Level::Trace,
        }
    }
}

/// A rule's configuration, handed to the guest once at instantiation: the
/// `config` of its `signal_rule` row (JSON over the API, a `[config]` table
/// in `NAME.toml`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Config(pub BTreeMap<String, Value>);

impl Config {
    /// An empty config: every sample rule works with it.
    pub fn new() -> Self {
        Config::default()
    }

    /// Builder: set an entry.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.0.insert(key.into(), value.into());
        self
    }

    /// An entry.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    /// A string entry, or `default` when missing. A present entry of the
    /// wrong type is an error naming the key.
    pub fn str_or<'a>(&'a self, key: &str, default: &'a str) -> Result<&'a str, crate::Error> {
        match self.get(key) {
            None | Some(Value::Nil) => Ok(default),
            Some(Value::Str(s)) => Ok(s),
            Some(other) => Err(crate::Error::new(format!(
                "config `{key}` must be a string, got {other:?}"
            ))),
        }
    }

    /// A number entry (integer or float), or `default` when missing.
    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64, crate::Error> {
        match self.get(key) {
            None | Some(Value::Nil) => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| {
                crate::Error::new(format!("config `{key}` must be a number, got {v:?}"))
            }),
        }
    }

    /// A non-negative integer entry, or `default` when missing.
    pub fn u64_or(&self, key: &str, default: u64) -> Result<u64, crate::Error> {
        match self.get(key) {
            None | Some(Value::Nil) => Ok(default),
            Some(Value::Int(i)) if *i >= 0 => Ok(*i as u64),
            Some(v) => Err(crate::Error::new(format!(
                "config `{key}` must be a non-negative integer, got {v:?}"
            ))),
        }
    }
}

/// Encode any wire type as a msgpack map (`to_vec_named`). The only encoder
/// used on either side of the boundary.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec_named(value)
}

/// Encode into an existing buffer (cleared first), reusing its allocation.
pub fn encode_into<T: Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    value: &T,
) -> Result<(), rmp_serde::encode::Error> {
    buf.clear();
    rmp_serde::encode::write_named(buf, value)
}

/// Decode a wire type from msgpack. Unknown fields are ignored.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, rmp_serde::decode::Error> {
    rmp_serde::from_slice(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_round_trips_as_a_named_map() {
        let s = Signal::new("DOOR-1-OPEN")
            .with_source("door-1")
            .with_key("door-1#4711")
            .with_time(1_763_780_000_000)
            .with_field("zone", "north")
            .with_field("floor", 3)
            .with_field("temp", 21.5)
            .with_field("armed", true);
        let bytes = encode(&s).unwrap();
        // A map, not an array: the first byte is a fixmap marker.
        assert_eq!(bytes[0] & 0xf0, 0x80);
        assert_eq!(decode::<Signal>(&bytes).unwrap(), s);
    }

    #[test]
    fn unknown_fields_are_ignored_and_missing_ones_default() {
        #[derive(Serialize)]
        struct Future<'a> {
            name: &'a str,
            priority: u8,
            tags: Vec<&'a str>,
        }
        let bytes = encode(&Future {
            name: "X",
            priority: 9,
            tags: vec!["a"],
        })
        .unwrap();
        let s: Signal = decode(&bytes).unwrap();
        assert_eq!(s.name, "X");
        assert_eq!(s.key, "");
        assert!(!s.replayed);
    }

    #[test]
    fn actions_carry_a_type_tag() {
        let a = Action::Notify(Notify::new("group:it", "subj", "body"));
        let bytes = encode(&a).unwrap();
        let generic: Value = decode(&bytes).unwrap();
        let Value::Map(m) = generic else {
            panic!("not a map")
        };
        assert_eq!(m.get("type"), Some(&Value::from("notify")));
        assert_eq!(decode::<Action>(&bytes).unwrap(), a);

        let raise = Action::Raise(Raise {
            name: "X".into(),
            fields: Fields::from([("n".to_owned(), Value::Int(1))]),
        });
        assert_eq!(decode::<Action>(&encode(&raise).unwrap()).unwrap(), raise);
        let log = Action::Log(Log {
            level: Level::Warn,
            message: "m".into(),
        });
        assert_eq!(decode::<Action>(&encode(&log).unwrap()).unwrap(), log);
    }

    #[test]
    fn unknown_action_types_are_named_and_missing_channels_default() {
        #[derive(Serialize)]
        struct Raw<'a> {
            #[serde(rename = "type")]
            kind: &'a str,
            to: &'a str,
        }
        let err = decode::<Action>(
            &encode(&Raw {
                kind: "page",
                to: "x",
            })
            .unwrap(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("unknown action type `page`"),
            "{err}"
        );
        let a: Action = decode(
            &encode(&Raw {
                kind: "notify",
                to: "x",
            })
            .unwrap(),
        )
        .unwrap();
        assert_eq!(a, Action::Notify(Notify::new("x", "", "")));
    }

    #[test]
    fn big_unsigned_integers_become_floats() {
        let bytes = rmp_serde::to_vec(&u64::MAX).unwrap();
        assert_eq!(
            decode::<Value>(&bytes).unwrap(),
            Value::Float(u64::MAX as f64)
        );
    }

    #[test]
    fn config_getters_name_the_key_on_a_type_error() {
        let c = Config::new().with("group", 5).with("above", "21.5");
        assert_eq!(c.str_or("missing", "dflt").unwrap(), "dflt");
        let err = c.str_or("group", "x").unwrap_err();
        assert!(err.to_string().contains("`group`"), "{err}");
        assert_eq!(c.f64_or("above", 0.0).unwrap(), 21.5);
        assert!(c.u64_or("group", 1).is_ok());
    }

    #[test]
    fn display_is_plain_text() {
        assert_eq!(Value::from("north").to_string(), "north");
        assert_eq!(
            Value::Array(vec![1.into(), "a".into()]).to_string(),
            "[1, a]"
        );
    }
}
