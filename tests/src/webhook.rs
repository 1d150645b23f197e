//! A webhook receiver on loopback, plain or over TLS: records every
//! request with its headers and when it came, answers with the statuses it
//! is told to (200 once the script is used up), with a `Retry-After` when
//! told. And [`Hang`]: a receiver that accepts connections and never
//! answers.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub idempotency_key: Option<String>,
    pub body: serde_json::Value,
    /// The status it was answered with.
    pub answered: u16,
    /// Every header, names lowercased.
    pub headers: Vec<(String, String)>,
    /// When it arrived.
    pub at: Instant,
}

#[derive(Debug, Default)]
struct Shared {
    got: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<u16>>,
    /// Sent with 429 and 503 answers.
    retry_after: Mutex<Option<String>>,
    changed: Condvar,
}

/// The receiver. Stops accepting when dropped (the thread ends with the
/// test process).
#[derive(Debug)]
pub struct Webhook {
    addr: String,
    shared: Arc<Shared>,
    scheme: &'static str,
}

impl Webhook {
    /// Start on a free port.
    pub fn start() -> Webhook {
        Self::start_on("127.0.0.1:0")
    }

    /// Start on `addr` (to come back on a known port).
    pub fn start_on(addr: &str) -> Webhook {
        Self::listen(addr, None)
    }

    /// Start on a free port, over TLS with `tls` (see [`crate::tls`]).
    pub fn start_tls(tls: Arc<rustls::ServerConfig>) -> Webhook {
        Self::listen("127.0.0.1:0", Some(tls))
    }

    fn listen(addr: &str, tls: Option<Arc<rustls::ServerConfig>>) -> Webhook {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let addr = listener.local_addr().expect("addr").to_string();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (s, tls) = (s.clone(), tls.clone());
                std::thread::spawn(move || match tls {
                    None => serve(stream, &s),
                    Some(config) => {
                        let Ok(conn) = rustls::ServerConnection::new(config) else {
                            return;
                        };
                        serve(rustls::StreamOwned::new(conn, stream), &s);
                    }
                });
            }
        });
        Webhook {
            addr,
            shared,
            scheme,
        }
    }

    /// `http://ADDR/notify` (or `https://`).
    pub fn url(&self) -> String {
        format!("{}://{}/notify", self.scheme, self.addr)
    }

    /// Answer 429 and 503 with `Retry-After: VALUE`.
    pub fn retry_after(&self, value: &str) {
        *self.shared.retry_after.lock().expect("lock") = Some(value.to_owned());
    }

    /// The `host:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Answer the next requests with these statuses; `0` never answers
    /// (the request hangs, recorded with `answered: 0`).
    pub fn answer_with(&self, statuses: &[u16]) {
        self.shared.script.lock().expect("lock").extend(statuses);
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.got.lock().expect("lock").clone()
    }

    /// Wait until `pred` holds for what was received, or panic after
    /// `limit`.
    pub fn wait_until(&self, limit: Duration, pred: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + limit;
        let mut got = self.shared.got.lock().expect("lock");
        loop {
            if pred(&got) {
                return got.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "webhook: condition not met within {limit:?}; received {:#?}",
                    *got
                );
            }
            got = self.shared.changed.wait_timeout(got, left).expect("wait").0;
        }
    }

    /// Wait for at least `n` successful (2xx-answered) deliveries.
    pub fn wait_for_delivered(&self, n: usize, limit: Duration) -> Vec<Received> {
        self.wait_until(limit, |got| {
            got.iter()
                .filter(|r| (200..300).contains(&r.answered))
                .count()
                >= n
        })
    }
}

fn serve<S: Read + Write>(stream: S, shared: &Shared) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let (mut length, mut key, mut headers) = (0usize, None, Vec::new());
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((name, value)) = h.split_once(':') {
                let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_owned());
                match name.as_str() {
                    "content-length" => length = value.parse().unwrap_or(0),
                    "idempotency-key" => key = Some(value.clone()),
                    _ => {}
                }
                headers.push((name, value));
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let at = Instant::now();
        let status = shared
            .script
            .lock()
            .expect("lock")
            .pop_front()
            .unwrap_or(200);
        if status == 0 {
            shared.got.lock().expect("lock").push(Received {
                idempotency_key: key,
                body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
                answered: 0,
                headers,
                at,
            });
            shared.changed.notify_all();
            // Hold the connection open, unanswered, for the test's life.
            loop {
                std::thread::park();
            }
        }
        let retry = match (status, shared.retry_after.lock().expect("lock").clone()) {
            (429 | 503, Some(v)) => format!("Retry-After: {v}\r\n"),
            _ => String::new(),
        };
        let answer = format!("HTTP/1.1 {status} X\r\n{retry}Content-Length: 0\r\n\r\n");
        let _ = reader.get_mut().write_all(answer.as_bytes());
        let _ = reader.get_mut().flush();
        shared.got.lock().expect("lock").push(Received {
            idempotency_key: key,
            body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
            answered: status,
            headers,
            at,
        });
        shared.changed.notify_all();
    }
}

/// A receiver that accepts connections and never answers (a sink whose
/// server hangs). Holds what it accepted until dropped.
#[derive(Debug)]
pub struct Hang {
    addr: String,
    held: Arc<Mutex<Vec<TcpStream>>>,
}

impl Hang {
    pub fn start() -> Hang {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let held = Arc::new(Mutex::new(Vec::new()));
        let h = held.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                h.lock().expect("lock").push(stream);
            }
        });
        Hang { addr, held }
    }

    /// `http://ADDR/notify`.
    pub fn url(&self) -> String {
        format!("http://{}/notify", self.addr)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.held.lock().expect("lock").len()
    }
}
