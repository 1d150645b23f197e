//! The snapshot format: a zstd stream of length-prefixed msgpack records.
//!
//! ```text
//! Header { format: "tandem-snapshot", version: 1, generation, types, source,
//!          software, created_at, force }
//! Table  { name, columns }          -- then its rows, in primary-key order
//! Row    { values }
//! ...
//! End    { tables, rows }
//! ```
//!
//! Records are `u32` big-endian length + msgpack, so a snapshot is written
//! and read row by row: neither side ever holds the whole database.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

/// The format name in every header.
pub const FORMAT: &str = "tandem-snapshot";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
/// The largest single record.
pub const MAX_RECORD: usize = 64 << 20;

/// Why a snapshot could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a valid snapshot: {0}")]
    Invalid(String),
    #[error("the snapshot decompresses to more than {0} bytes")]
    TooLarge(u64),
}

/// A SQL value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SqlValue {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(#[serde(with = "serde_blob")] Vec<u8>),
}

mod serde_blob {
    use serde::{Deserializer, Serializer, de};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_any(V)
    }
}

impl SqlValue {
    /// From a SQLite value.
    pub fn from_ref(v: rusqlite::types::ValueRef<'_>) -> SqlValue {
        use rusqlite::types::ValueRef;
        match v {
            ValueRef::Null => SqlValue::Null,
            ValueRef::Integer(i) => SqlValue::Integer(i),
            ValueRef::Real(f) => SqlValue::Real(f),
            ValueRef::Text(t) => SqlValue::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => SqlValue::Blob(b.to_vec()),
        }
    }
}

impl rusqlite::ToSql for SqlValue {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            SqlValue::Null => ValueRef::Null,
            SqlValue::Integer(i) => ValueRef::Integer(*i),
            SqlValue::Real(f) => ValueRef::Real(*f),
            SqlValue::Text(t) => ValueRef::Text(t.as_bytes()),
            SqlValue::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

/// The first record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub version: u32,
    pub generation: u64,
    pub types: Vec<String>,
    pub source: String,
    pub software: String,
    pub created_at: i64,
    /// Allow emptying a table the receiver has rows in.
    pub force: bool,
}

/// A record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Record {
    Header(Header),
    Table { name: String, columns: Vec<String> },
    Row(Vec<SqlValue>),
    End { tables: u32, rows: u64 },
}

/// Writes records into a zstd stream.
pub struct Writer<W: Write> {
    out: zstd::Encoder<'static, W>,
    raw: u64,
}

impl<W: Write> std::fmt::Debug for Writer<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("raw", &self.raw).finish()
    }
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Result<Self, SnapshotError> {
        Ok(Writer {
            out: zstd::Encoder::new(out, 3)?,
            raw: 0,
        })
    }

    pub fn write(&mut self, r: &Record) -> Result<(), SnapshotError> {
        let bytes = rmp_serde::to_vec(r).map_err(|e| SnapshotError::Invalid(e.to_string()))?;
        self.out.write_all(&(bytes.len() as u32).to_be_bytes())?;
        self.out.write_all(&bytes)?;
        self.raw += 4 + bytes.len() as u64;
        Ok(())
    }

    /// Finish the stream; returns the inner writer and the raw byte count.
    pub fn finish(self) -> Result<(W, u64), SnapshotError> {
        Ok((self.out.finish()?, self.raw))
    }
}

/// Reads records from a zstd stream, refusing to decompress more than
/// `cap` bytes (a zstd bomb stops there, without filling memory or disk).
pub struct Reader<R: Read> {
    input: zstd::Decoder<'static, std::io::BufReader<R>>,
    read: u64,
    cap: u64,
}

impl<R: Read> std::fmt::Debug for Reader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader").field("read", &self.read).finish()
    }
}

impl<R: Read> Reader<R> {
    pub fn new(input: R, cap: u64) -> Result<Self, SnapshotError> {
        Ok(Reader {
            input: zstd::Decoder::new(input)?,
            read: 0,
            cap,
        })
    }

    fn fill(&mut self, buf: &mut [u8]) -> Result<bool, SnapshotError> {
        let mut at = 0;
        while at < buf.len() {
            let n = self
                .input
                .read(&mut buf[at..])
                .map_err(|e| SnapshotError::Invalid(format!("bad zstd stream: {e}")))?;
            if n == 0 {
                if at == 0 {
                    return Ok(false);
                }
                return Err(SnapshotError::Invalid("truncated snapshot".into()));
            }
            at += n;
            self.read += n as u64;
            if self.read > self.cap {
                return Err(SnapshotError::TooLarge(self.cap));
            }
        }
        Ok(true)
    }

    /// The next record; `None` at the end of the stream.
    pub fn next_record(&mut self) -> Result<Option<Record>, SnapshotError> {
        let mut len = [0u8; 4];
        if !self.fill(&mut len)? {
            return Ok(None);
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_RECORD {
            return Err(SnapshotError::Invalid(format!("a record of {len} bytes")));
        }
        let mut buf = vec![0u8; len];
        if !self.fill(&mut buf)? && len > 0 {
            return Err(SnapshotError::Invalid("truncated snapshot".into()));
        }
        rmp_serde::from_slice(&buf)
            .map(Some)
            .map_err(|e| SnapshotError::Invalid(format!("bad record: {e}")))
    }

    /// Bytes decompressed so far.
    pub fn raw_bytes(&self) -> u64 {
        self.read
    }
}
