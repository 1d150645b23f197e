//! A minimal HTTP/1.1 client over std TCP, so the tests speak to the node
//! exactly as curl would, with nothing in between.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// An answer: status and body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    /// The body as JSON (panics with the body if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Like [`request`], but `None` when nothing listens there or the
/// exchange fails (a node killed in the middle of it).
pub fn try_request(
    method: &str,
    base: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> Option<Answer> {
    exchange(method, base, path, token, body).ok()
}

/// Send one request to `base` (`http://host:port`) and read the answer.
pub fn request(method: &str, base: &str, path: &str, token: Option<&str>, body: &[u8]) -> Answer {
    exchange(method, base, path, token, body)
        .unwrap_or_else(|e| panic!("{method} {base}{path}: {e}"))
}

fn exchange(
    method: &str,
    base: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> Result<Answer, String> {
    let addr = base.strip_prefix("http://").unwrap_or(base);
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .map_err(|e| format!("write head: {e}"))?;
    // A server may answer (413) before reading a huge body; ignore a reset.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line in {text:?}"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok(Answer { status, body })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub fn get(base: &str, path: &str, token: Option<&str>) -> Answer {
    request("GET", base, path, token, b"")
}

pub fn post(base: &str, path: &str, token: Option<&str>, body: &str) -> Answer {
    request("POST", base, path, token, body.as_bytes())
}
