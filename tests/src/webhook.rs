//! A webhook receiver on loopback: records every request, answers with the
//! statuses it is told to (200 once the script is used up).

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
}

#[derive(Debug, Default)]
struct Shared {
    got: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<u16>>,
    changed: Condvar,
}

/// The receiver. Stops accepting when dropped (the thread ends with the
/// test process).
#[derive(Debug)]
pub struct Webhook {
    addr: String,
    shared: Arc<Shared>,
}

impl Webhook {
    /// Start on a free port.
    pub fn start() -> Webhook {
        Self::start_on("127.0.0.1:0")
    }

    /// Start on `addr` (to come back on a known port).
    pub fn start_on(addr: &str) -> Webhook {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let addr = listener.local_addr().expect("addr").to_string();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || serve(stream, &s));
            }
        });
        Webhook { addr, shared }
    }

    /// `http://ADDR/notify`.
    pub fn url(&self) -> String {
        format!("http://{}/notify", self.addr)
    }

    /// The `host:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Answer the next requests with these statuses.
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
            got.iter().filter(|r| r.answered < 300).count() >= n
        })
    }
}

fn serve(stream: TcpStream, shared: &Shared) {
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let (mut length, mut key) = (0usize, None);
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
                match name.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap_or(0),
                    "idempotency-key" => key = Some(value.trim().to_owned()),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let status = shared
            .script
            .lock()
            .expect("lock")
            .pop_front()
            .unwrap_or(200);
        let answer = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
        let _ = writer.write_all(answer.as_bytes());
        shared.got.lock().expect("lock").push(Received {
            idempotency_key: key,
            body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
            answered: status,
        });
        shared.changed.notify_all();
    }
}
