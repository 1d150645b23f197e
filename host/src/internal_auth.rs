//! Signing and checking node-to-node calls (`/internal/v1/*`), and the
//! constant-time secret comparison every token check uses.
//!
//! A signed call carries, in headers:
//! - `x-tandem-timestamp` (ms since the Unix epoch) and `x-tandem-nonce`
//!   (16 to 64 hex digits);
//! - `x-tandem-content-sha256` and `x-tandem-content-length`: the body the
//!   sender is about to send, declared up front;
//! - `x-tandem-signature`: hex HMAC-SHA256 under the shared secret over
//!   [`SCHEME`], method, path, timestamp, nonce, content sha256 and
//!   content length, each followed by a newline.
//!
//! [`check`] verifies all of it from the headers alone, before a byte of
//! the body is read: an unsigned or forged request is refused before it can
//! touch the disk. The receiver then reads exactly the declared length and
//! checks that the bytes hash to the declared digest ([`BodyCheck`]). A
//! timestamp more than 5 minutes from the receiver's clock is refused, and
//! so is a nonce already seen inside that window; nonces are kept in the
//! store, so a restart does not reopen the window.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::store::{Store, StoreError, now_ms};

/// Names the signature's layout; a change of layout changes it.
pub const SCHEME: &str = "tandem-internal-v2";
/// Timestamps further than this from the receiver's clock are refused.
pub const MAX_SKEW_MS: i64 = 5 * 60 * 1000;

pub const TIMESTAMP: &str = "x-tandem-timestamp";
pub const NONCE: &str = "x-tandem-nonce";
pub const CONTENT_SHA256: &str = "x-tandem-content-sha256";
pub const CONTENT_LENGTH: &str = "x-tandem-content-length";
pub const SIGNATURE: &str = "x-tandem-signature";
/// The sender's node name (informational; not trusted for anything).
pub const NODE: &str = "x-tandem-node";

type HmacSha256 = Hmac<Sha256>;

/// Why a signed call was refused. Callers answer 401 for all but `Store`.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("unsigned internal call: header `{0}` is missing")]
    Missing(&'static str),
    #[error("malformed header `{0}`")]
    Malformed(&'static str),
    #[error("timestamp more than 5 minutes from this node's clock")]
    Skew,
    #[error("bad signature (not signed with the shared secret, or altered)")]
    Signature,
    #[error("nonce already seen (a replayed call)")]
    Replayed,
    #[error("the body does not match its signed length and sha256")]
    Body,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Compare two secrets in constant time (their hashes, so neither the
/// content nor the length leaks through timing).
pub fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let (a, b) = (Sha256::digest(given), Sha256::digest(expected));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// What the signed headers say about the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub sha256: [u8; 32],
    pub length: u64,
}

fn mac(
    secret: &[u8],
    method: &str,
    path: &str,
    timestamp: i64,
    nonce: &str,
    claim: &Claim,
) -> HmacSha256 {
    // HMAC takes keys of any length: this cannot fail.
    let mut m = <HmacSha256 as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    for part in [
        SCHEME,
        method,
        path,
        &timestamp.to_string(),
        nonce,
        &hex::encode(claim.sha256),
        &claim.length.to_string(),
    ] {
        m.update(part.as_bytes());
        m.update(b"\n");
    }
    m
}

/// The headers that sign a call of `method` on `path` whose body has the
/// given digest and length.
pub fn sign(
    secret: &[u8],
    node: &str,
    method: &str,
    path: &str,
    claim: Claim,
) -> Vec<(&'static str, String)> {
    let ts = now_ms();
    let mut nonce = [0u8; 16];
    // The OS random source failing is not something to go on without.
    if getrandom::fill(&mut nonce).is_err() {
        nonce = Sha256::digest(ts.to_be_bytes())[..16]
            .try_into()
            .unwrap_or([0; 16]);
    }
    let nonce = hex::encode(nonce);
    let sig = hex::encode(
        mac(secret, method, path, ts, &nonce, &claim)
            .finalize()
            .into_bytes(),
    );
    vec![
        (NODE, node.to_owned()),
        (TIMESTAMP, ts.to_string()),
        (NONCE, nonce),
        (CONTENT_SHA256, hex::encode(claim.sha256)),
        (CONTENT_LENGTH, claim.length.to_string()),
        (SIGNATURE, sig),
    ]
}

/// [`sign`] for a body in memory.
pub fn sign_body(
    secret: &[u8],
    node: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    let claim = Claim {
        sha256: Sha256::digest(body).into(),
        length: body.len() as u64,
    };
    sign(secret, node, method, path, claim)
}

fn header<'a>(headers: &'a http::HeaderMap, name: &'static str) -> Result<&'a str, AuthError> {
    headers
        .get(name)
        .ok_or(AuthError::Missing(name))?
        .to_str()
        .map_err(|_| AuthError::Malformed(name))
}

/// Verify a call from its headers (timestamp, signature, then nonce),
/// before its body is read. Returns what the body must be.
pub async fn check(
    store: &Store,
    secret: &[u8],
    method: &str,
    path: &str,
    headers: &http::HeaderMap,
) -> Result<Claim, AuthError> {
    let ts: i64 = header(headers, TIMESTAMP)?
        .parse()
        .map_err(|_| AuthError::Malformed(TIMESTAMP))?;
    let nonce = header(headers, NONCE)?;
    if !(16..=64).contains(&nonce.len()) || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(AuthError::Malformed(NONCE));
    }
    let sha256: [u8; 32] = hex::decode(header(headers, CONTENT_SHA256)?)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or(AuthError::Malformed(CONTENT_SHA256))?;
    let length: u64 = header(headers, CONTENT_LENGTH)?
        .parse()
        .map_err(|_| AuthError::Malformed(CONTENT_LENGTH))?;
    let sig = hex::decode(header(headers, SIGNATURE)?).map_err(|_| AuthError::Signature)?;
    let now = now_ms();
    if now.abs_diff(ts) > MAX_SKEW_MS as u64 {
        return Err(AuthError::Skew);
    }
    let claim = Claim { sha256, length };
    mac(secret, method, path, ts, nonce, &claim)
        .verify_slice(&sig)
        .map_err(|_| AuthError::Signature)?;
    // Only a verified call may write its nonce.
    let nonce = nonce.to_ascii_lowercase();
    let fresh = store
        .write(move |c| {
            c.prepare_cached("DELETE FROM internal_nonce WHERE at < ?1")?
                .execute([now - 2 * MAX_SKEW_MS])?;
            Ok(c.prepare_cached(
                "INSERT OR IGNORE INTO internal_nonce (nonce, at) VALUES (?1, ?2)",
            )?
            .execute(rusqlite::params![nonce, now])?
                == 1)
        })
        .await?;
    if !fresh {
        return Err(AuthError::Replayed);
    }
    Ok(claim)
}

/// Read a signed call's body whole, checked against its [`Claim`] as it
/// arrives (the caller has bounded `claim.length`).
pub async fn read_checked(claim: Claim, body: axum::body::Body) -> Result<Vec<u8>, AuthError> {
    use futures_util::StreamExt;
    let mut check = BodyCheck::new(claim);
    let mut bytes = Vec::with_capacity(claim.length as usize);
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| AuthError::Body)?;
        check.update(&chunk)?;
        bytes.extend_from_slice(&chunk);
    }
    check.finish()?;
    Ok(bytes)
}

/// Checks a body against its [`Claim`] as it streams in.
#[derive(Debug)]
pub struct BodyCheck {
    claim: Claim,
    hasher: Sha256,
    seen: u64,
}

impl BodyCheck {
    pub fn new(claim: Claim) -> BodyCheck {
        BodyCheck {
            claim,
            hasher: Sha256::new(),
            seen: 0,
        }
    }

    /// Take the next chunk; `Err` as soon as it runs past the declared
    /// length.
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), AuthError> {
        self.seen += chunk.len() as u64;
        if self.seen > self.claim.length {
            return Err(AuthError::Body);
        }
        self.hasher.update(chunk);
        Ok(())
    }

    /// The whole body arrived: its length and digest are the signed ones.
    pub fn finish(self) -> Result<(), AuthError> {
        if self.seen == self.claim.length && self.hasher.finalize()[..] == self.claim.sha256 {
            Ok(())
        } else {
            Err(AuthError::Body)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, String)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("header value"));
        }
        h
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        (dir, store)
    }

    #[tokio::test]
    async fn a_signed_call_passes_once_and_a_replay_is_refused() {
        let (_d, store) = store();
        let h = headers(&sign_body(
            b"secret",
            "p",
            "POST",
            "/internal/v1/sync",
            b"body",
        ));
        let claim = check(&store, b"secret", "POST", "/internal/v1/sync", &h)
            .await
            .expect("signed");
        assert_eq!(claim.length, 4);
        let again = check(&store, b"secret", "POST", "/internal/v1/sync", &h).await;
        assert!(matches!(again, Err(AuthError::Replayed)), "{again:?}");
    }

    #[tokio::test]
    async fn every_signed_part_matters() {
        let (_d, store) = store();
        let good = sign_body(b"secret", "p", "POST", "/internal/v1/sync", b"body");
        let h = headers(&good);
        let wrong_secret = check(&store, b"other", "POST", "/internal/v1/sync", &h).await;
        assert!(matches!(wrong_secret, Err(AuthError::Signature)));
        let wrong_path = check(&store, b"secret", "POST", "/internal/v1/x", &h).await;
        assert!(matches!(wrong_path, Err(AuthError::Signature)));
        let wrong_method = check(&store, b"secret", "GET", "/internal/v1/sync", &h).await;
        assert!(matches!(wrong_method, Err(AuthError::Signature)));
        for (name, value) in [
            (CONTENT_LENGTH, "5".to_owned()),
            (CONTENT_SHA256, hex::encode([7u8; 32])),
        ] {
            let mut h = headers(&good);
            h.insert(name, value.parse().expect("value"));
            let r = check(&store, b"secret", "POST", "/internal/v1/sync", &h).await;
            assert!(matches!(r, Err(AuthError::Signature)), "{name}: {r:?}");
        }
        let mut unsigned = headers(&good);
        unsigned.remove(SIGNATURE);
        let r = check(&store, b"secret", "POST", "/internal/v1/sync", &unsigned).await;
        assert!(matches!(r, Err(AuthError::Missing(SIGNATURE))), "{r:?}");
        let mut old = headers(&good);
        old.insert(
            TIMESTAMP,
            (now_ms() - MAX_SKEW_MS - 1000)
                .to_string()
                .parse()
                .expect("v"),
        );
        let r = check(&store, b"secret", "POST", "/internal/v1/sync", &old).await;
        assert!(matches!(r, Err(AuthError::Skew)), "{r:?}");
    }

    #[tokio::test]
    async fn nonces_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let h = headers(&sign_body(b"s", "p", "GET", "/internal/v1/snapshot", b""));
        {
            let store = Store::open(dir.path()).expect("store");
            check(&store, b"s", "GET", "/internal/v1/snapshot", &h)
                .await
                .expect("first");
        }
        let store = Store::open(dir.path()).expect("store again");
        let r = check(&store, b"s", "GET", "/internal/v1/snapshot", &h).await;
        assert!(matches!(r, Err(AuthError::Replayed)), "{r:?}");
    }

    #[test]
    fn the_body_must_be_the_signed_one() {
        let claim = Claim {
            sha256: Sha256::digest(b"hello").into(),
            length: 5,
        };
        let mut ok = BodyCheck::new(claim);
        ok.update(b"hel").expect("part");
        ok.update(b"lo").expect("rest");
        ok.finish().expect("same bytes");
        let mut longer = BodyCheck::new(claim);
        assert!(longer.update(b"hello!").is_err(), "past the length");
        let mut other = BodyCheck::new(claim);
        other.update(b"jello").expect("same length");
        assert!(other.finish().is_err(), "other bytes");
        let mut short = BodyCheck::new(claim);
        short.update(b"hell").expect("part");
        assert!(short.finish().is_err(), "cut short");
    }

    #[test]
    fn secrets_compare_by_content() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b"x"));
    }
}
