//! A borrowed view of a signal over the bytes the host sent: the name, key
//! and source are `&str` into the input buffer, and a field is found when
//! it is asked for, without building a map or allocating anything.
//!
//! The input is the msgpack map of [`Signal`](crate::Signal) (ABI v1,
//! `docs/abi.md`). [`SignalView::parse`] reads the top level once and
//! keeps the fields' map as a byte slice; each typed accessor walks that
//! slice to the field it wants, skipping the others.
//!
//! Typed accessors say exactly what was wrong: a field that is absent is
//! `Ok(None)`; a field of another type is an error naming the field, the
//! type asked for and the type found. A string `"12"` is not an integer,
//! and a number is not a string.

use std::fmt;

use crate::wire::{Fields, Signal, Value};

/// Nesting deeper than this in a field's value is refused (a hostile or
/// broken payload cannot exhaust the guest's stack).
const MAX_DEPTH: usize = 64;

/// Why the input is not a signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewError(String);

impl fmt::Display for ViewError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ViewError {}

fn bad(what: impl Into<String>) -> ViewError {
    ViewError(what.into())
}

/// A field that is there, but not of the type asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's name.
    pub field: String,
    /// What the accessor wanted: `a string`, `an integer`, `a number`,
    /// `a boolean`.
    pub expected: &'static str,
    /// What the field holds (`a string`, `nil`, `an array`...).
    pub found: &'static str,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "field `{}` is {}, not {}",
            self.field, self.found, self.expected
        )
    }
}

impl std::error::Error for FieldError {}

impl From<FieldError> for crate::Error {
    fn from(e: FieldError) -> Self {
        crate::Error::new(e.to_string())
    }
}

/// A signal as the host sent it, borrowed from the input buffer.
#[derive(Debug, Clone, Copy)]
pub struct SignalView<'a> {
    /// Assigned by the node that received the signal.
    pub id: u64,
    /// The sender's idempotency key.
    pub key: &'a str,
    /// `[A-Z0-9][A-Z0-9_-]*`, e.g. `DOOR-1-OPEN`.
    pub name: &'a str,
    /// Who sent it.
    pub source: &'a str,
    /// When it happened, ms since the Unix epoch.
    pub time: i64,
    /// True when a node that has just taken over runs a signal it stored.
    pub replayed: bool,
    /// The whole input (for [`SignalView::to_signal`]).
    input: &'a [u8],
    /// The fields' map, from its header on (empty: no fields).
    fields: &'a [u8],
}

/// The fields' map ended before a read found what it looked for.
#[derive(Debug, Clone, Copy)]
struct Malformed;

/// Whether `marker` starts a msgpack map.
fn is_map(marker: &u8) -> bool {
    matches!(marker, 0x80..=0x8f | 0xde | 0xdf)
}

/// One msgpack value, read but not copied.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Raw<'a> {
    Nil,
    Bool(bool),
    Int(i64),
    /// An unsigned integer above `i64::MAX`.
    BigUint(u64),
    Float(f64),
    /// A string's bytes, not yet checked as UTF-8 (skipping one never
    /// checks it; reading one does).
    Str(&'a [u8]),
    Bin,
    Array,
    Map,
    Ext,
}

impl Raw<'_> {
    fn type_name(&self) -> &'static str {
        match self {
            Raw::Nil => "nil",
            Raw::Bool(_) => "a boolean",
            Raw::Int(_) | Raw::BigUint(_) => "an integer",
            Raw::Float(_) => "a float",
            Raw::Str(_) => "a string",
            Raw::Bin => "binary",
            Raw::Array => "an array",
            Raw::Map => "a map",
            Raw::Ext => "an extension value",
        }
    }
}

/// A cursor over msgpack bytes; every read is bounds-checked. Reads
/// answer `None` on anything malformed (kept small on purpose: the hot
/// path moves no error values); [`SignalView::parse`] says where.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, at: 0 }
    }

    #[inline]
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.buf.len())?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Some(s)
    }

    #[inline]
    fn byte(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    #[inline]
    fn be(&mut self, n: usize) -> Option<u64> {
        Some(
            self.take(n)?
                .iter()
                .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
        )
    }

    /// A length: `n` bytes, big-endian.
    #[inline]
    fn len(&mut self, n: usize) -> Option<usize> {
        usize::try_from(self.be(n)?).ok()
    }

    /// Read one value's head; a container's items are left for
    /// [`Reader::skip`]: returns (value, items to skip).
    fn head(&mut self) -> Option<(Raw<'a>, usize)> {
        let m = self.byte()?;
        Some(match m {
            0x00..=0x7f => (Raw::Int(i64::from(m)), 0),
            0xe0..=0xff => (Raw::Int(i64::from(m as i8)), 0),
            0x80..=0x8f => (Raw::Map, usize::from(m & 0x0f) * 2),
            0x90..=0x9f => (Raw::Array, usize::from(m & 0x0f)),
            0xa0..=0xbf => (Raw::Str(self.take(usize::from(m & 0x1f))?), 0),
            0xc0 => (Raw::Nil, 0),
            0xc2 => (Raw::Bool(false), 0),
            0xc3 => (Raw::Bool(true), 0),
            0xc4..=0xc6 => {
                let n = self.len(1 << (m - 0xc4))?;
                self.take(n)?;
                (Raw::Bin, 0)
            }
            0xc7..=0xc9 => {
                let n = self.len(1 << (m - 0xc7))?;
                // The type byte, then the data.
                self.take(1)?;
                self.take(n)?;
                (Raw::Ext, 0)
            }
            0xca => (Raw::Float(f64::from(f32::from_bits(self.be(4)? as u32))), 0),
            0xcb => (Raw::Float(f64::from_bits(self.be(8)?)), 0),
            0xcc..=0xcf => {
                let v = self.be(1 << (m - 0xcc))?;
                match i64::try_from(v) {
                    Ok(i) => (Raw::Int(i), 0),
                    Err(_) => (Raw::BigUint(v), 0),
                }
            }
            0xd0..=0xd3 => {
                let n = 1usize << (m - 0xd0);
                let v = self.be(n)?;
                // Sign-extend from n bytes.
                let shift = 64 - 8 * n as u32;
                (Raw::Int(((v << shift) as i64) >> shift), 0)
            }
            0xd4..=0xd8 => {
                self.take(1 + (1 << (m - 0xd4)))?;
                (Raw::Ext, 0)
            }
            0xd9..=0xdb => {
                let n = self.len(1 << (m - 0xd9))?;
                (Raw::Str(self.take(n)?), 0)
            }
            0xdc | 0xdd => (Raw::Array, self.len(if m == 0xdc { 2 } else { 4 })?),
            0xde | 0xdf => (
                Raw::Map,
                self.len(if m == 0xde { 2 } else { 4 })?.checked_mul(2)?,
            ),
            // 0xc1 is never used.
            _ => return None,
        })
    }

    /// Skip one whole value without decoding it; `depth` is the value's
    /// own nesting (0 at the top).
    fn skip(&mut self, depth: usize) -> Option<()> {
        let m = self.byte()?;
        // (bytes of payload, items inside)
        let (bytes, items) = match m {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => return Some(()),
            0x80..=0x8f => (0, usize::from(m & 0x0f) * 2),
            0x90..=0x9f => (0, usize::from(m & 0x0f)),
            0xa0..=0xbf => (usize::from(m & 0x1f), 0),
            0xc4..=0xc6 => (self.len(1 << (m - 0xc4))?, 0),
            // The type byte, then the data.
            0xc7..=0xc9 => (self.len(1 << (m - 0xc7))?.checked_add(1)?, 0),
            0xca => (4, 0),
            0xcb => (8, 0),
            0xcc..=0xcf => (1 << (m - 0xcc), 0),
            0xd0..=0xd3 => (1 << (m - 0xd0), 0),
            0xd4..=0xd8 => (1 + (1 << (m - 0xd4)), 0),
            0xd9..=0xdb => (self.len(1 << (m - 0xd9))?, 0),
            0xdc => (0, self.len(2)?),
            0xdd => (0, self.len(4)?),
            0xde => (0, self.len(2)?.checked_mul(2)?),
            0xdf => (0, self.len(4)?.checked_mul(2)?),
            // 0xc1 is never used.
            _ => return None,
        };
        self.take(bytes)?;
        if items > 0 {
            // Each item takes at least one byte: a count beyond what is
            // left is a lie, refused before looping over it.
            if depth >= MAX_DEPTH || items > self.buf.len() - self.at {
                return None;
            }
            for _ in 0..items {
                self.skip(depth + 1)?;
            }
        }
        Some(())
    }

    /// Read one value and skip what it contains.
    #[inline]
    fn value(&mut self) -> Option<Raw<'a>> {
        let start = self.at;
        let (v, inner) = self.head()?;
        if inner > 0 {
            self.at = start;
            self.skip(0)?;
        }
        Some(v)
    }

    fn map_len(&mut self) -> Option<usize> {
        match self.head()? {
            (Raw::Map, n) => Some(n / 2),
            _ => None,
        }
    }

    /// A map key's bytes (compared as bytes; never checked as UTF-8).
    #[inline]
    fn key(&mut self) -> Option<&'a [u8]> {
        let m = self.byte()?;
        let n = match m {
            0xa0..=0xbf => usize::from(m & 0x1f),
            0xd9..=0xdb => self.len(1 << (m - 0xd9))?,
            _ => return None,
        };
        self.take(n)
    }
}

impl<'a> SignalView<'a> {
    /// Read the signal's top level from `input` (its fields are read on
    /// access). Unknown keys are skipped, as a newer host may send more.
    pub fn parse(input: &'a [u8]) -> Result<SignalView<'a>, ViewError> {
        let mut r = Reader::new(input);
        let malformed = |r: &Reader<'_>| {
            bad(format!(
                "not a signal: malformed msgpack at byte {} of {}",
                r.at,
                input.len()
            ))
        };
        let mut v = SignalView {
            id: 0,
            key: "",
            name: "",
            source: "",
            time: 0,
            replayed: false,
            input,
            fields: &[],
        };
        let n = r
            .map_len()
            .ok_or_else(|| bad("not a signal: a msgpack map was expected"))?;
        for i in 0..n {
            // Keys are compared as bytes: an unknown one is skipped
            // whatever it holds.
            let key = r.key().ok_or_else(|| malformed(&r))?;
            let start = r.at;
            if key == b"fields" && i + 1 == n && input.get(start).is_some_and(is_map) {
                // The host writes the fields last: they are walked only
                // when a rule reads them, each read bounds-checked, and a
                // malformed map is an error of the field read.
                v.fields = &input[start..];
                break;
            }
            let value = r.value().ok_or_else(|| malformed(&r))?;
            let wrong = |want: &str| {
                bad(format!(
                    "signal `{}` is {}, not {want}",
                    String::from_utf8_lossy(key),
                    value.type_name()
                ))
            };
            match key {
                b"id" => match value {
                    Raw::Int(i) => v.id = u64::try_from(i).map_err(|_| wrong("an id"))?,
                    Raw::BigUint(u) => v.id = u,
                    _ => return Err(wrong("an integer")),
                },
                b"key" | b"name" | b"source" => {
                    let Raw::Str(s) = value else {
                        return Err(wrong("a string"));
                    };
                    let s = std::str::from_utf8(s).map_err(|_| {
                        bad(format!(
                            "signal `{}` is not UTF-8",
                            String::from_utf8_lossy(key)
                        ))
                    })?;
                    match key {
                        b"key" => v.key = s,
                        b"name" => v.name = s,
                        _ => v.source = s,
                    }
                }
                b"time" => match value {
                    Raw::Int(i) => v.time = i,
                    _ => return Err(wrong("an integer")),
                },
                b"replayed" => match value {
                    Raw::Bool(b) => v.replayed = b,
                    _ => return Err(wrong("a boolean")),
                },
                b"fields" => match value {
                    Raw::Map => v.fields = &input[start..r.at],
                    Raw::Nil => {}
                    _ => return Err(wrong("a map")),
                },
                _ => {}
            }
        }
        Ok(v)
    }

    /// The raw value of field `name`, if the signal has it; `Err` if the
    /// fields' map is malformed before it is found.
    fn raw(&self, name: &str) -> Result<Option<Raw<'a>>, Malformed> {
        if self.fields.is_empty() {
            return Ok(None);
        }
        let mut r = Reader::new(self.fields);
        let n = r.map_len().ok_or(Malformed)?;
        for _ in 0..n {
            let key = r.key().ok_or(Malformed)?;
            if key == name.as_bytes() {
                return r.value().map(Some).ok_or(Malformed);
            }
            r.skip(0).ok_or(Malformed)?;
        }
        Ok(None)
    }

    /// [`SignalView::raw`] with a malformed map as a [`FieldError`].
    fn raw_or_error(
        &self,
        name: &str,
        expected: &'static str,
    ) -> Result<Option<Raw<'a>>, FieldError> {
        self.raw(name).map_err(|Malformed| FieldError {
            field: name.to_owned(),
            expected,
            found: "malformed msgpack",
        })
    }

    fn typed<T>(
        &self,
        name: &str,
        expected: &'static str,
        pick: impl Fn(Raw<'a>) -> Option<T>,
    ) -> Result<Option<T>, FieldError> {
        match self.raw_or_error(name, expected)? {
            None => Ok(None),
            Some(raw) => pick(raw).map(Some).ok_or_else(|| FieldError {
                field: name.to_owned(),
                expected,
                found: raw.type_name(),
            }),
        }
    }

    /// Whether the signal has field `name` (of any type, nil included).
    pub fn has_field(&self, name: &str) -> bool {
        self.raw(name).is_ok_and(|r| r.is_some())
    }

    /// Field `name` as a string, borrowed from the input: `Ok(None)` if
    /// absent, an error if it is not a string (a number is not one).
    pub fn str_field(&self, name: &str) -> Result<Option<&'a str>, FieldError> {
        match self.raw_or_error(name, "a string")? {
            None => Ok(None),
            Some(Raw::Str(s)) => std::str::from_utf8(s).map(Some).map_err(|_| FieldError {
                field: name.to_owned(),
                expected: "a string",
                found: "bytes that are not UTF-8",
            }),
            Some(other) => Err(FieldError {
                field: name.to_owned(),
                expected: "a string",
                found: other.type_name(),
            }),
        }
    }

    /// Field `name` as an integer: an error if it is anything else (a float,
    /// or a string such as `"12"`).
    pub fn i64_field(&self, name: &str) -> Result<Option<i64>, FieldError> {
        self.typed(name, "an integer", |r| match r {
            Raw::Int(i) => Some(i),
            _ => None,
        })
    }

    /// Field `name` as a number: an integer or a float (a string is not a
    /// number here).
    pub fn f64_field(&self, name: &str) -> Result<Option<f64>, FieldError> {
        self.typed(name, "a number", |r| match r {
            Raw::Int(i) => Some(i as f64),
            Raw::BigUint(u) => Some(u as f64),
            Raw::Float(f) => Some(f),
            _ => None,
        })
    }

    /// Field `name` as a boolean.
    pub fn bool_field(&self, name: &str) -> Result<Option<bool>, FieldError> {
        self.typed(name, "a boolean", |r| match r {
            Raw::Bool(b) => Some(b),
            _ => None,
        })
    }

    /// The owned signal (every field decoded): for code written against
    /// [`Signal`].
    pub fn to_signal(&self) -> Result<Signal, ViewError> {
        self.check_fields()?;
        crate::wire::decode(self.input).map_err(|e| bad(e.to_string()))
    }

    /// The fields, decoded into owned values.
    pub fn fields(&self) -> Result<Fields, ViewError> {
        if self.fields.is_empty() {
            return Ok(Fields::new());
        }
        self.check_fields()?;
        crate::wire::decode(self.fields).map_err(|e| bad(e.to_string()))
    }

    /// Walk the fields whole (bounded in depth and by the input's size)
    /// before serde decodes them: serde's recursion has no depth limit.
    fn check_fields(&self) -> Result<(), ViewError> {
        if self.fields.is_empty() {
            return Ok(());
        }
        Reader::new(self.fields)
            .skip(0)
            .ok_or_else(|| bad("the signal's fields are malformed msgpack"))
    }

    /// Field `name` decoded into an owned [`Value`] (any type).
    pub fn field(&self, name: &str) -> Option<Value> {
        self.fields().ok()?.remove(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire;

    fn encoded(s: &Signal) -> Vec<u8> {
        wire::encode(s).unwrap()
    }

    fn sample() -> Signal {
        Signal {
            id: 7,
            key: "k-1".into(),
            name: "SENSOR-3".into(),
            source: "probe".into(),
            time: 1_763_780_000_000,
            replayed: true,
            fields: Fields::new(),
        }
        .with_field("value", 21)
        .with_field("big", i64::MAX)
        .with_field("neg", -300_000)
        .with_field("ratio", 0.25)
        .with_field("label", "12")
        .with_field("on", true)
        .with_field("nothing", Value::Nil)
        .with_field(
            "nested",
            Value::Array(vec![Value::Map(
                [("x".to_owned(), Value::Bin(vec![1, 2, 3]))].into(),
            )]),
        )
        .with_field("after", "still found")
    }

    #[test]
    fn the_top_level_is_borrowed_and_fields_are_typed() {
        let bytes = encoded(&sample());
        let v = SignalView::parse(&bytes).unwrap();
        assert_eq!(
            (v.id, v.key, v.name, v.source, v.time, v.replayed),
            (7, "k-1", "SENSOR-3", "probe", 1_763_780_000_000, true)
        );
        assert_eq!(v.i64_field("value"), Ok(Some(21)));
        assert_eq!(v.i64_field("big"), Ok(Some(i64::MAX)));
        assert_eq!(v.i64_field("neg"), Ok(Some(-300_000)));
        assert_eq!(v.f64_field("value"), Ok(Some(21.0)));
        assert_eq!(v.f64_field("ratio"), Ok(Some(0.25)));
        assert_eq!(v.str_field("label"), Ok(Some("12")));
        assert_eq!(v.bool_field("on"), Ok(Some(true)));
        assert_eq!(
            v.str_field("after"),
            Ok(Some("still found")),
            "past a nested value"
        );
        assert_eq!(v.str_field("missing"), Ok(None));
        assert!(v.has_field("nothing") && !v.has_field("missing"));
        assert_eq!(v.to_signal().unwrap(), sample());
    }

    #[test]
    fn a_wrong_type_names_the_field_and_both_types() {
        let bytes = encoded(&sample());
        let v = SignalView::parse(&bytes).unwrap();
        let e = v.i64_field("label").unwrap_err();
        assert_eq!(e.to_string(), "field `label` is a string, not an integer");
        assert_eq!(
            v.str_field("value").unwrap_err().to_string(),
            "field `value` is an integer, not a string"
        );
        assert_eq!(v.i64_field("ratio").unwrap_err().found, "a float");
        assert_eq!(v.f64_field("label").unwrap_err().expected, "a number");
        assert_eq!(v.bool_field("nothing").unwrap_err().found, "nil");
        assert_eq!(v.str_field("nested").unwrap_err().found, "an array");
        // It converts into the rule's error, for `?`.
        let err: crate::Error = e.into();
        assert!(err.message().contains("label"));
    }

    #[test]
    fn every_msgpack_width_reads_as_the_owned_decoder_reads_it() {
        for i in [
            0i64,
            1,
            127,
            128,
            255,
            256,
            65_535,
            65_536,
            -1,
            -32,
            -33,
            -128,
            -129,
            -32_768,
            -32_769,
            i64::from(i32::MIN) - 1,
            i64::MIN,
            i64::MAX,
        ] {
            let s = Signal::new("N").with_field("v", i);
            let bytes = encoded(&s);
            assert_eq!(
                SignalView::parse(&bytes).unwrap().i64_field("v"),
                Ok(Some(i)),
                "{i}"
            );
        }
        let long = "x".repeat(70_000);
        let s = Signal::new("N").with_field("v", long.as_str());
        let bytes = encoded(&s);
        assert_eq!(
            SignalView::parse(&bytes).unwrap().str_field("v"),
            Ok(Some(long.as_str()))
        );
    }

    #[test]
    fn hostile_input_is_an_error_never_a_panic() {
        let good = encoded(&sample());
        // Every truncation of a valid signal.
        for n in 0..good.len() {
            if let Ok(v) = SignalView::parse(&good[..n]) {
                // A prefix that parses had its fields cut whole: lookups
                // still do not panic.
                let _ = v.str_field("after");
            }
        }
        for bytes in [
            &[0xc1][..],                                 // never used
            &[0x81, 0xa4, b'n', b'a', b'm', b'e', 0x05], // name is an integer
            &[0x81, 0x01, 0x02],                         // a key that is not a string
            &[0xdf, 0xff, 0xff, 0xff, 0xff],             // a map of 4G entries, no bytes
            &[
                0x81, 0xa6, b'f', b'i', b'e', b'l', b'd', b's', 0xdd, 0xff, 0xff, 0xff, 0xff,
            ],
            &[0x81, 0xa3, b'k', b'e', b'y', 0xa2, 0xff, 0xfe], // not UTF-8
        ] {
            assert!(SignalView::parse(bytes).is_err(), "{bytes:x?}");
        }
        // Arrays nested deeper than the limit.
        let mut deep = vec![
            0x81, 0xa6, b'f', b'i', b'e', b'l', b'd', b's', 0x81, 0xa1, b'x',
        ];
        deep.extend(std::iter::repeat_n(0x91, 1000));
        deep.push(0xc0);
        // Fields written last are walked only when read: the parse takes
        // them, and the read is the error, naming the field.
        let v = SignalView::parse(&deep).unwrap();
        let e = v.str_field("x").unwrap_err();
        assert_eq!((e.field.as_str(), e.found), ("x", "malformed msgpack"));
        assert!(!v.has_field("x"));
        assert!(v.fields().is_err() && v.to_signal().is_err());
        // Anywhere else, the parse walks them and refuses.
        let mut first = vec![0x82];
        first.extend_from_slice(&deep[1..]);
        first.extend_from_slice(&[0xa4, b'n', b'a', b'm', b'e', 0xa1, b'N']);
        assert!(SignalView::parse(&first).is_err());
        // A last map that lies about its size, or ends early.
        for fields in [
            &[0xdf, 0xff, 0xff, 0xff, 0xff][..],
            &[0x82, 0xa1, b'a', 0x01],
            &[0x81, 0xa1, b'a', 0xd9, 0x09, b'x'],
        ] {
            let mut bytes = vec![0x81, 0xa6, b'f', b'i', b'e', b'l', b'd', b's'];
            bytes.extend_from_slice(fields);
            let v = SignalView::parse(&bytes).unwrap();
            assert!(v.i64_field("b").is_err(), "{bytes:x?}");
            assert!(v.str_field("a").is_err() || fields[0] == 0x82, "{bytes:x?}");
        }
    }
}
