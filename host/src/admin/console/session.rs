//! Console sessions (DESIGN.md §9): a signed cookie, a CSRF token bound to
//! it, and sign-out.
//!
//! The cookie is `EXPIRES.NONCE.MAC`: the expiry (unix seconds), 16
//! random bytes, and an HMAC-SHA256 over both with a key kept in the data
//! directory (`console.key`, 32 random bytes, made at first use, mode
//! 0600), so sessions survive a restart and no session table is needed.
//! The CSRF token of a session is an HMAC of its nonce under the same key:
//! a page from this node carries it; a form posted from elsewhere cannot.
//! Sign-out remembers the nonce as revoked until the session would have
//! expired, here and in the store (the console reloads them at start), so
//! a signed-out cookie stays refused across a restart.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The session cookie's name.
pub const COOKIE: &str = "tandem_session";
/// How long a session lasts.
pub const LIFETIME: Duration = Duration::from_secs(8 * 3600);

type HmacSha256 = Hmac<Sha256>;

/// Why the session key cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("console key {path}: {source}")]
    Key {
        path: String,
        source: std::io::Error,
    },
    #[error("console key {0}: not 32 bytes; delete it to make a new one (signs everyone out)")]
    BadKey(String),
    #[error("no randomness: {0}")]
    Random(String),
}

/// The signing key and the revoked sessions.
pub struct Sessions {
    key: [u8; 32],
    revoked: Mutex<HashMap<[u8; 16], u64>>,
}

/// A valid session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    nonce: [u8; 16],
    pub expires: u64,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Session {
    /// The session's id (its nonce, hex): what the store keeps of a
    /// signed-out session.
    pub fn id(&self) -> String {
        hex::encode(self.nonce)
    }
}

/// Now, in unix seconds.
pub fn now_secs() -> u64 {
    unix_now()
}

impl Sessions {
    /// Load the key from `data_dir/console.key`, making it if missing. The
    /// signing key is derived from it and the admin `token`, so a new
    /// token ends every session signed in with the old one.
    pub fn open(data_dir: &Path, token: Option<&str>) -> Result<Sessions, SessionError> {
        let path = data_dir.join("console.key");
        let io = |source| SessionError::Key {
            path: path.display().to_string(),
            source,
        };
        let key = match std::fs::read(&path) {
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut k = [0u8; 32];
                getrandom::fill(&mut k).map_err(|e| SessionError::Random(e.to_string()))?;
                write_private(&path, &k).map_err(io)?;
                k.to_vec()
            }
            Err(e) => return Err(io(e)),
        };
        let file: [u8; 32] = key
            .try_into()
            .map_err(|_| SessionError::BadKey(path.display().to_string()))?;
        let mut m = <HmacSha256 as Mac>::new_from_slice(&file)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        m.update(b"tandem console sessions");
        m.update(&Sha256::digest(token.unwrap_or_default().as_bytes()));
        let key: [u8; 32] = m.finalize().into_bytes().into();
        Ok(Sessions {
            key,
            revoked: Mutex::new(HashMap::new()),
        })
    }

    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut m = <HmacSha256 as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        for p in parts {
            m.update(&(p.len() as u64).to_be_bytes());
            m.update(p);
        }
        m.finalize().into_bytes().into()
    }

    /// A new session: its cookie value.
    pub fn create(&self) -> Result<(Session, String), SessionError> {
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).map_err(|e| SessionError::Random(e.to_string()))?;
        let s = Session {
            nonce,
            expires: unix_now() + LIFETIME.as_secs(),
        };
        Ok((s, self.cookie_value(&s)))
    }

    fn cookie_value(&self, s: &Session) -> String {
        let exp = s.expires.to_string();
        let mac = self.mac(&[b"session", exp.as_bytes(), &s.nonce]);
        format!("{exp}.{}.{}", hex::encode(s.nonce), hex::encode(mac))
    }

    /// The session of a cookie value, if it is ours, unexpired and not
    /// signed out.
    pub fn verify(&self, value: &str) -> Option<Session> {
        let mut it = value.splitn(3, '.');
        let (exp, nonce, mac) = (it.next()?, it.next()?, it.next()?);
        let expires: u64 = exp.parse().ok()?;
        let nonce: [u8; 16] = hex::decode(nonce).ok()?.try_into().ok()?;
        let given = hex::decode(mac).ok()?;
        let want = self.mac(&[b"session", exp.as_bytes(), &nonce]);
        if !crate::internal_auth::same_secret(&given, &want) || expires <= unix_now() {
            return None;
        }
        let revoked = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        if revoked.contains_key(&nonce) {
            return None;
        }
        Some(Session { nonce, expires })
    }

    /// The CSRF token of a session.
    pub fn csrf(&self, s: &Session) -> String {
        hex::encode(self.mac(&[b"csrf", &s.nonce]))
    }

    /// Whether `given` is the CSRF token of `s`.
    pub fn csrf_ok(&self, s: &Session, given: &str) -> bool {
        crate::internal_auth::same_secret(given.as_bytes(), self.csrf(s).as_bytes())
    }

    /// Take sessions signed out before (session id in hex, expiry), as
    /// the store keeps them; ids that are not ours are skipped.
    pub fn remember_revoked(&self, list: impl IntoIterator<Item = (String, u64)>) {
        let mut revoked = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        for (id, expires) in list {
            if let Some(nonce) = hex::decode(&id)
                .ok()
                .and_then(|n| <[u8; 16]>::try_from(n).ok())
            {
                revoked.insert(nonce, expires);
            }
        }
    }

    /// Sign a session out.
    pub fn revoke(&self, s: &Session) {
        let now = unix_now();
        let mut revoked = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        // Only unexpired sessions are kept, and each was made with the admin
        // token: the list is bounded by what operators sign in to.
        revoked.retain(|_, exp| *exp > now);
        revoked.insert(s.nonce, s.expires);
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_verifies_until_tampered_expired_or_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sessions::open(dir.path(), Some("t")).unwrap();
        let (session, cookie) = s.create().unwrap();
        assert_eq!(s.verify(&cookie), Some(session));
        // The key survives a reopen: so do sessions.
        assert_eq!(
            Sessions::open(dir.path(), Some("t"))
                .unwrap()
                .verify(&cookie),
            Some(session)
        );
        // A new admin token ends every session.
        assert_eq!(
            Sessions::open(dir.path(), Some("t2"))
                .unwrap()
                .verify(&cookie),
            None
        );
        // Another node's key, a changed expiry, garbage: refused.
        let other = tempfile::tempdir().unwrap();
        assert_eq!(
            Sessions::open(other.path(), Some("t"))
                .unwrap()
                .verify(&cookie),
            None
        );
        let (_, rest) = cookie.split_once('.').unwrap();
        assert_eq!(s.verify(&format!("99999999999.{rest}")), None);
        for bad in ["", "1.2.3", "x.y.z", "..", &cookie[..cookie.len() - 2]] {
            assert_eq!(s.verify(bad), None, "{bad}");
        }
        // An expired one, properly signed.
        let old = Session {
            nonce: [7; 16],
            expires: unix_now() - 1,
        };
        assert_eq!(s.verify(&s.cookie_value(&old)), None);
        // CSRF tokens are per session.
        let (second, _) = s.create().unwrap();
        assert!(s.csrf_ok(&session, &s.csrf(&session)));
        assert!(!s.csrf_ok(&session, &s.csrf(&second)));
        assert!(!s.csrf_ok(&session, ""));
        s.revoke(&session);
        assert_eq!(s.verify(&cookie), None);
        // What the store gives back at the next start is refused too.
        let fresh = Sessions::open(dir.path(), Some("t")).unwrap();
        assert_eq!(fresh.verify(&cookie), Some(session));
        fresh.remember_revoked([(session.id(), session.expires), ("zz".into(), 1)]);
        assert_eq!(fresh.verify(&cookie), None);
    }
}
