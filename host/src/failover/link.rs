//! The link between the two nodes: TCP, length-prefixed msgpack frames,
//! mutual HMAC-SHA256 authentication, a MAC on every frame.
//!
//! Wire format, all frames `u32` big-endian length + msgpack body, at most
//! [`MAX_FRAME`] bytes:
//!
//! 1. client (primary) -> `ClientHello { proto, nonce_c }`
//! 2. server (secondary) -> `ServerHello { proto, nonce_s, mac_s }`,
//!    `mac_s = HMAC(secret, "tandem-link server" | nonce_c | nonce_s)`
//! 3. client -> `ClientAuth { mac_c }`,
//!    `mac_c = HMAC(secret, "tandem-link client" | nonce_c | nonce_s)`
//!
//! Each side checks the other's MAC, so neither learns anything from a peer
//! without the secret. The session key is
//! `HMAC(secret, "tandem-link session" | nonce_c | nonce_s)`. Every later
//! frame is `Sealed { seq, body, mac }` with
//! `mac = HMAC(session, direction | seq | body)` and `seq` counting up from
//! 0 in each direction, so a frame cannot be altered, replayed, reordered
//! or reflected. The first sealed frame each way is a [`Hello`].

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::machine::{Fs, Message, PairRole};

/// Link protocol version; a peer with another major is refused.
pub const PROTOCOL: u32 = 1;
/// The largest frame accepted.
pub const MAX_FRAME: usize = 1 << 20;
/// How long the handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

type HmacSha256 = Hmac<Sha256>;

/// Why a link was refused or dropped. Each is logged and counted.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {len} bytes is over the {cap}-byte cap")]
    Oversized { len: usize, cap: usize },
    #[error("garbage on the link: {0}")]
    Garbage(String),
    #[error("the peer does not have the pair secret")]
    Auth,
    #[error("bad MAC on a frame (tampered, replayed or out of order)")]
    BadMac,
    #[error("wrong identity: {0}")]
    Identity(String),
    #[error("incompatible link protocol {theirs} (this node speaks {PROTOCOL})")]
    Protocol { theirs: u32 },
    #[error("frame with epoch {got}, older than {seen} already seen in this session")]
    OlderEpoch { got: u64, seen: u64 },
    #[error("handshake timed out")]
    Timeout,
    #[error("the peer closed the link")]
    Closed,
}

impl LinkError {
    /// A short name for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            LinkError::Io(_) | LinkError::Closed | LinkError::Timeout => "io",
            LinkError::Oversized { .. } => "oversized",
            LinkError::Garbage(_) => "garbage",
            LinkError::Auth => "auth",
            LinkError::BadMac => "bad_mac",
            LinkError::Identity(_) => "identity",
            LinkError::Protocol { .. } => "protocol",
            LinkError::OlderEpoch { .. } => "older_epoch",
        }
    }
}

/// What each node says about itself when a session opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub node: String,
    pub role: PairRole,
    /// The identity pair (primary, secondary).
    pub primary: String,
    pub secondary: String,
    pub version: String,
    pub link_protocol: u32,
    pub sync_types: Vec<String>,
    pub epoch: u64,
    pub fs: Fs,
    pub fenced: bool,
    pub uptime_ms: u64,
    pub ready: bool,
    /// Wall clock, ms since the Unix epoch.
    pub clock_ms: i64,
    /// Its admin URL, if known.
    pub admin: Option<String>,
    /// The last execution number of the *other* node it has recorded.
    pub absorbed_seq: u64,
    /// The last table-sync generation it imported or exported.
    #[serde(default)]
    pub sync_generation: u64,
    /// What it understands beyond link protocol 1's first frames (an old
    /// peer sends none): a frame of a feature is sent only to a peer that
    /// names it.
    #[serde(default)]
    pub features: Vec<String>,
}

/// The features this build names in its hello.
pub const FEATURES: &[&str] = &[FEATURE_RAISE];
/// The peer takes [`Body::Raise`]: a host signal to run where rules run.
pub const FEATURE_RAISE: &str = "raise";

/// What travels in a sealed frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Body {
    Hello(Box<Hello>),
    Machine(Message),
    /// Keys the sender executed, with their execution numbers.
    Keys(Vec<(u64, String)>),
    /// The sender stored the peer's keys up to this number.
    KeysAck(u64),
    /// Copy-back rows, up to this event id of the sender.
    CopyBack {
        upto: i64,
        events: Vec<super::wire::WireEvent>,
        notifications: Vec<super::wire::WireNotification>,
    },
    /// The sender stored copy-back rows up to this event id of the peer.
    CopyBackAck(i64),
    /// A host signal (NOTIFY-FAILED) raised on the standby, for the active
    /// node to run (only to a peer naming [`FEATURE_RAISE`]).
    Raise(super::wire::WireSignal),
}

#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    epoch: u64,
    body: Body,
}

#[derive(Debug, Serialize, Deserialize)]
struct ClientHello {
    proto: u32,
    #[serde(with = "serde_bytes_array")]
    nonce: [u8; 32],
}

#[derive(Debug, Serialize, Deserialize)]
struct ServerHello {
    proto: u32,
    #[serde(with = "serde_bytes_array")]
    nonce: [u8; 32],
    mac: Vec<u8>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ClientAuth {
    mac: Vec<u8>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Sealed {
    seq: u64,
    body: Vec<u8>,
    mac: Vec<u8>,
}

/// A 32-byte nonce as msgpack bin.
mod serde_bytes_array {
    use serde::de::{self, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = [u8; 32];
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("32 bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<[u8; 32], E> {
                v.try_into()
                    .map_err(|_| E::custom("nonce must be 32 bytes"))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<[u8; 32], A::Error> {
                let mut out = [0u8; 32];
                for b in &mut out {
                    *b = seq
                        .next_element()?
                        .ok_or_else(|| de::Error::custom("nonce must be 32 bytes"))?;
                }
                Ok(out)
            }
        }
        d.deserialize_any(V)
    }
}

fn mac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail.
    let mut m = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return Vec::new(),
    };
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().to_vec()
}

fn verify(key: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
    let Ok(mut m) = HmacSha256::new_from_slice(key) else {
        return false;
    };
    for p in parts {
        m.update(p);
    }
    m.verify_slice(tag).is_ok()
}

fn nonce() -> Result<[u8; 32], LinkError> {
    let mut n = [0u8; 32];
    getrandom::fill(&mut n).map_err(|e| LinkError::Io(std::io::Error::other(e.to_string())))?;
    Ok(n)
}

/// The largest frame before both ends proved they hold the secret (the
/// handshake's frames are a few dozen bytes).
const HANDSHAKE_FRAME: usize = 1024;

async fn read_frame(r: &mut OwnedReadHalf) -> Result<Vec<u8>, LinkError> {
    read_frame_capped(r, MAX_FRAME).await
}

async fn read_frame_capped(r: &mut OwnedReadHalf, cap: usize) -> Result<Vec<u8>, LinkError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(LinkError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > cap {
        return Err(LinkError::Oversized { len, cap });
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame(w: &mut OwnedWriteHalf, body: &[u8]) -> Result<(), LinkError> {
    if body.len() > MAX_FRAME {
        return Err(LinkError::Oversized {
            len: body.len(),
            cap: MAX_FRAME,
        });
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    w.write_all(&out).await?;
    Ok(())
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, LinkError> {
    rmp_serde::to_vec_named(v).map_err(|e| LinkError::Garbage(e.to_string()))
}

fn decode<T: for<'a> Deserialize<'a>>(b: &[u8]) -> Result<T, LinkError> {
    rmp_serde::from_slice(b).map_err(|e| LinkError::Garbage(e.to_string()))
}

/// The receiving half of a session.
#[derive(Debug)]
pub struct Receiver {
    read: OwnedReadHalf,
    key: Vec<u8>,
    direction: u8,
    seq: u64,
    max_epoch: u64,
}

/// The sending half of a session.
#[derive(Debug)]
pub struct Sender {
    write: OwnedWriteHalf,
    key: Vec<u8>,
    direction: u8,
    seq: u64,
}

impl Sender {
    /// Seal and send one body under `epoch`.
    pub async fn send(&mut self, epoch: u64, body: Body) -> Result<(), LinkError> {
        let bytes = encode(&Envelope { epoch, body })?;
        let seq = self.seq;
        self.seq += 1;
        let tag = mac(&self.key, &[&[self.direction], &seq.to_be_bytes(), &bytes]);
        let sealed = encode(&Sealed {
            seq,
            body: bytes,
            mac: tag,
        })?;
        write_frame(&mut self.write, &sealed).await
    }
}

impl Receiver {
    /// Receive, verify and open one frame.
    pub async fn recv(&mut self) -> Result<Body, LinkError> {
        let raw = read_frame(&mut self.read).await?;
        let sealed: Sealed = decode(&raw)?;
        if sealed.seq != self.seq
            || !verify(
                &self.key,
                &[&[self.direction], &sealed.seq.to_be_bytes(), &sealed.body],
                &sealed.mac,
            )
        {
            return Err(LinkError::BadMac);
        }
        self.seq += 1;
        let env: Envelope = decode(&sealed.body)?;
        if env.epoch < self.max_epoch {
            return Err(LinkError::OlderEpoch {
                got: env.epoch,
                seen: self.max_epoch,
            });
        }
        self.max_epoch = env.epoch;
        Ok(env.body)
    }
}

/// An open session: the peer's hello and the two halves.
#[derive(Debug)]
pub struct Session {
    pub peer: Hello,
    pub sender: Sender,
    pub receiver: Receiver,
}

/// Check the peer's hello against ours.
fn check_hello(mine: &Hello, theirs: &Hello) -> Result<(), LinkError> {
    if theirs.link_protocol != PROTOCOL {
        return Err(LinkError::Protocol {
            theirs: theirs.link_protocol,
        });
    }
    if (theirs.primary.as_str(), theirs.secondary.as_str())
        != (mine.primary.as_str(), mine.secondary.as_str())
    {
        return Err(LinkError::Identity(format!(
            "peer's pair is ({}, {}), ours is ({}, {})",
            theirs.primary, theirs.secondary, mine.primary, mine.secondary
        )));
    }
    if theirs.role == mine.role {
        return Err(LinkError::Identity(format!(
            "peer `{}` has our role too",
            theirs.node
        )));
    }
    let expected = match mine.role {
        PairRole::Primary => &mine.secondary,
        PairRole::Secondary => &mine.primary,
    };
    if &theirs.node != expected {
        return Err(LinkError::Identity(format!(
            "peer says it is `{}`, expected `{expected}`",
            theirs.node
        )));
    }
    Ok(())
}

async fn finish(
    stream: TcpStream,
    key: Vec<u8>,
    client: bool,
    mine: &Hello,
) -> Result<Session, LinkError> {
    let (read, write) = stream.into_split();
    let (out_dir, in_dir) = if client { (b'c', b's') } else { (b's', b'c') };
    let mut sender = Sender {
        write,
        key: key.clone(),
        direction: out_dir,
        seq: 0,
    };
    let mut receiver = Receiver {
        read,
        key,
        direction: in_dir,
        seq: 0,
        max_epoch: 0,
    };
    sender
        .send(mine.epoch, Body::Hello(Box::new(mine.clone())))
        .await?;
    let Body::Hello(peer) = receiver.recv().await? else {
        return Err(LinkError::Garbage("the first frame was not a hello".into()));
    };
    check_hello(mine, &peer)?;
    // Both ends adopt the higher epoch: frames older than that are refused.
    receiver.max_epoch = receiver.max_epoch.max(mine.epoch);
    Ok(Session {
        peer: *peer,
        sender,
        receiver,
    })
}

/// Open a session as the client (the primary).
pub async fn connect(addr: &str, secret: &[u8], mine: &Hello) -> Result<Session, LinkError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (mut read, mut write) = stream.into_split();
        let nc = nonce()?;
        write_frame(
            &mut write,
            &encode(&ClientHello {
                proto: PROTOCOL,
                nonce: nc,
            })?,
        )
        .await?;
        let sh: ServerHello = decode(&read_frame_capped(&mut read, HANDSHAKE_FRAME).await?)?;
        if sh.proto != PROTOCOL {
            return Err(LinkError::Protocol { theirs: sh.proto });
        }
        // Answer before checking, so a server facing a wrong secret sees
        // (and counts) the refusal too; the answer reveals nothing but an
        // HMAC over two fresh nonces.
        let mc = mac(secret, &[b"tandem-link client", &nc, &sh.nonce]);
        write_frame(&mut write, &encode(&ClientAuth { mac: mc })?).await?;
        if !verify(secret, &[b"tandem-link server", &nc, &sh.nonce], &sh.mac) {
            return Err(LinkError::Auth);
        }
        let key = mac(secret, &[b"tandem-link session", &nc, &sh.nonce]);
        let stream = read
            .reunite(write)
            .map_err(|e| LinkError::Io(std::io::Error::other(e.to_string())))?;
        finish(stream, key, true, mine).await
    })
    .await
    .map_err(|_| LinkError::Timeout)?
}

/// Open a session as the server (the secondary) on an accepted stream.
pub async fn accept(stream: TcpStream, secret: &[u8], mine: &Hello) -> Result<Session, LinkError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        stream.set_nodelay(true)?;
        let (mut read, mut write) = stream.into_split();
        let ch: ClientHello = decode(&read_frame_capped(&mut read, HANDSHAKE_FRAME).await?)?;
        if ch.proto != PROTOCOL {
            return Err(LinkError::Protocol { theirs: ch.proto });
        }
        let ns = nonce()?;
        let ms = mac(secret, &[b"tandem-link server", &ch.nonce, &ns]);
        write_frame(
            &mut write,
            &encode(&ServerHello {
                proto: PROTOCOL,
                nonce: ns,
                mac: ms,
            })?,
        )
        .await?;
        let auth: ClientAuth = decode(&read_frame_capped(&mut read, HANDSHAKE_FRAME).await?)?;
        if !verify(secret, &[b"tandem-link client", &ch.nonce, &ns], &auth.mac) {
            return Err(LinkError::Auth);
        }
        let key = mac(secret, &[b"tandem-link session", &ch.nonce, &ns]);
        let stream = read
            .reunite(write)
            .map_err(|e| LinkError::Io(std::io::Error::other(e.to_string())))?;
        finish(stream, key, false, mine).await
    })
    .await
    .map_err(|_| LinkError::Timeout)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn hello(role: PairRole) -> Hello {
        Hello {
            node: if role == PairRole::Primary { "p" } else { "s" }.into(),
            role,
            primary: "p".into(),
            secondary: "s".into(),
            version: "0.1.0".into(),
            link_protocol: PROTOCOL,
            sync_types: vec!["all".into()],
            epoch: 3,
            fs: Fs::Standby,
            fenced: false,
            uptime_ms: 1,
            ready: true,
            clock_ms: 0,
            admin: None,
            absorbed_seq: 0,
            sync_generation: 0,
            features: vec![FEATURE_RAISE.into()],
        }
    }

    async fn pair(
        secret_c: &[u8],
        secret_s: &[u8],
        s_hello: Hello,
    ) -> (Result<Session, LinkError>, Result<Session, LinkError>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let secret_s = secret_s.to_vec();
        let server = tokio::spawn(async move {
            let (stream, _) = l.accept().await.unwrap();
            accept(stream, &secret_s, &s_hello).await
        });
        let client = connect(&addr, secret_c, &hello(PairRole::Primary)).await;
        (client, server.await.unwrap())
    }

    #[tokio::test]
    async fn a_session_carries_sealed_frames_both_ways() {
        let (c, s) = pair(b"k", b"k", hello(PairRole::Secondary)).await;
        let (mut c, mut s) = (c.unwrap(), s.unwrap());
        assert_eq!(c.peer.node, "s");
        assert_eq!(s.peer.node, "p");
        c.sender
            .send(3, Body::Machine(Message::HandOverRequest))
            .await
            .unwrap();
        assert_eq!(
            s.receiver.recv().await.unwrap(),
            Body::Machine(Message::HandOverRequest)
        );
        s.sender
            .send(4, Body::Machine(Message::HandOver { epoch: 4 }))
            .await
            .unwrap();
        assert_eq!(
            c.receiver.recv().await.unwrap(),
            Body::Machine(Message::HandOver { epoch: 4 })
        );
        // Older epoch within the session: refused.
        s.sender
            .send(2, Body::Machine(Message::HandOverRequest))
            .await
            .unwrap();
        assert!(matches!(
            c.receiver.recv().await,
            Err(LinkError::OlderEpoch { got: 2, seen: 4 })
        ));
    }

    #[tokio::test]
    async fn a_wrong_secret_is_refused_on_both_sides() {
        let (c, s) = pair(b"right", b"wrong", hello(PairRole::Secondary)).await;
        assert!(matches!(c, Err(LinkError::Auth)), "{c:?}");
        assert!(matches!(s, Err(LinkError::Auth)), "{s:?}");
    }

    #[tokio::test]
    async fn a_wrong_identity_is_refused() {
        let mut h = hello(PairRole::Secondary);
        h.secondary = "other".into();
        let (c, _) = pair(b"k", b"k", h).await;
        assert!(matches!(c, Err(LinkError::Identity(_))), "{c:?}");
        let mut h = hello(PairRole::Primary);
        h.node = "s".into();
        let (c, _) = pair(b"k", b"k", h).await;
        assert!(matches!(c, Err(LinkError::Identity(_))), "{c:?}");
    }

    /// What a secondary's `accept` says to a client that sends `bytes`.
    async fn accept_after(bytes: &[u8]) -> Result<Session, LinkError> {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = l.accept().await.unwrap();
            accept(stream, b"k", &hello(PairRole::Secondary)).await
        });
        let mut raw = TcpStream::connect(addr).await.unwrap();
        raw.write_all(bytes).await.unwrap();
        server.await.unwrap()
    }

    #[tokio::test]
    async fn garbage_oversized_and_tampered_frames_drop_the_session() {
        // Garbage before the handshake.
        let r = accept_after(&[0, 0, 0, 5, 1, 2, 3, 4, 5]).await;
        assert!(matches!(r, Err(LinkError::Garbage(_))), "{r:?}");
        let r = accept_after(&u32::MAX.to_be_bytes()).await;
        assert!(matches!(r, Err(LinkError::Oversized { .. })), "{r:?}");
        // Before the secret is proved, a frame is at most 1 KiB.
        let r = accept_after(&2048u32.to_be_bytes()).await;
        assert!(
            matches!(
                r,
                Err(LinkError::Oversized {
                    len: 2048,
                    cap: 1024
                })
            ),
            "{r:?}"
        );

        // A tampered sealed frame inside a session.
        let (c, s) = pair(b"k", b"k", hello(PairRole::Secondary)).await;
        let (c, mut s) = (c.unwrap(), s.unwrap());
        let mut w = c.sender.write;
        let body = encode(&Envelope {
            epoch: 3,
            body: Body::Machine(Message::HandOverRequest),
        })
        .unwrap();
        let forged = encode(&Sealed {
            seq: 1,
            body,
            mac: vec![0; 32],
        })
        .unwrap();
        write_frame(&mut w, &forged).await.unwrap();
        assert!(matches!(s.receiver.recv().await, Err(LinkError::BadMac)));
    }
}
