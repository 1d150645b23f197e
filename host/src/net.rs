//! Listening sockets that hold up under pressure.
//!
//! - [`AcceptBackoff`]: an accept loop that backs off when the process is
//!   out of descriptors instead of spinning, and says so at most once a
//!   second.
//! - [`serve`]: the admin listener. A client must send its request headers
//!   within `header_timeout` and its whole request within
//!   `request_timeout` (the internal sync upload gets [`UPLOAD_TIMEOUT`]);
//!   a keep-alive connection idle for `idle_timeout` is closed. At most
//!   `max_connections` are open at once (fewer when the descriptor limit
//!   is low: [`RESERVED_FDS`] stay free for delivery, the link and the
//!   database). At the cap, a new connection takes the place of the one
//!   idle longest (half-open slowloris connections first), so `/status`
//!   and ingest still answer while an attacker holds connections open.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::escape::LogLimiter;

/// The first pause after a failed `accept`; doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(10);
const MAX_PAUSE: Duration = Duration::from_secs(1);

static ACCEPT_ERRORS: LogLimiter = LogLimiter::new(Duration::from_secs(1));

/// The pause of an accept loop after errors.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    pause: Option<Duration>,
}

impl AcceptBackoff {
    /// An accept succeeded.
    pub fn reset(&mut self) {
        self.pause = None;
    }

    /// An accept on `listener` failed with `error`: wait before the next.
    pub async fn wait(&mut self, listener: &str, error: &std::io::Error) {
        let pause = self.next_pause();
        if ACCEPT_ERRORS.allow() {
            tracing::warn!(
                listener,
                pause_ms = pause.as_millis() as u64,
                "cannot accept a connection: {error} (out of file descriptors?)"
            );
        }
        tokio::time::sleep(pause).await;
    }

    fn next_pause(&mut self) -> Duration {
        let p = self.pause.map_or(FIRST_PAUSE, |p| (p * 2).min(MAX_PAUSE));
        self.pause = Some(p);
        p
    }
}

/// Descriptors kept free for everything but admin connections.
pub const RESERVED_FDS: u64 = 128;
/// The time limit of the internal snapshot upload (up to 256 MiB).
pub const UPLOAD_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a graceful shutdown waits for open requests.
const DRAIN: Duration = Duration::from_secs(5);

/// The admin listener's limits (`[admin]` in the config).
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    pub header_timeout: Duration,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: u32,
    /// A path whose requests get [`UPLOAD_TIMEOUT`] (the internal
    /// snapshot upload).
    pub upload_path: Option<&'static str>,
}

/// The process's soft limit on open descriptors, if it can be read.
pub fn fd_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one plain struct we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (rc == 0).then_some(lim.rlim_cur)
}

/// The connection cap in force: the configured one, lowered so that
/// [`RESERVED_FDS`] stay free under the descriptor limit.
pub fn connection_cap(configured: u32, fd_limit: Option<u64>) -> usize {
    let configured = configured as usize;
    match fd_limit {
        Some(n) => configured.min(n.saturating_sub(RESERVED_FDS).max(4) as usize),
        None => configured,
    }
}

/// One open connection as the accept loop sees it.
#[derive(Debug)]
struct Conn {
    /// Requests being served.
    busy: Arc<AtomicUsize>,
    /// When it last started or finished a request (ms since the loop
    /// began); its open time until then.
    last_active: Arc<AtomicU64>,
    abort: tokio::task::AbortHandle,
}

/// The open connections, by number.
#[derive(Debug, Default)]
struct Conns {
    open: Mutex<HashMap<u64, Conn>>,
}

impl Conns {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Conn>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Close the connection idle longest to make room; `false` when every
    /// connection is serving a request.
    fn shed_one(&self) -> bool {
        let mut open = self.lock();
        let victim = open
            .iter()
            .filter(|(_, c)| c.busy.load(Ordering::Relaxed) == 0)
            .min_by_key(|(_, c)| c.last_active.load(Ordering::Relaxed))
            .map(|(id, _)| *id);
        match victim.and_then(|id| open.remove(&id)) {
            Some(c) => {
                c.abort.abort();
                true
            }
            None => false,
        }
    }
}

/// Serve `app` on `listener` until `shutdown`, within `limits`. `refused`
/// is told each connection shed or refused (`"shed"`, `"limit"`).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    refused: impl Fn(&'static str) + Send + Sync + 'static,
    shutdown: impl Future<Output = ()>,
) {
    let cap = connection_cap(limits.max_connections, fd_limit());
    tracing::debug!(cap, "admin connection cap");
    let app = app.layer(axum::middleware::from_fn(
        move |req: Request, next: axum::middleware::Next| {
            let limit = if Some(req.uri().path()) == limits.upload_path {
                UPLOAD_TIMEOUT.max(limits.request_timeout)
            } else {
                limits.request_timeout
            };
            request_deadline(limit, req, next)
        },
    ));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let conns = Arc::new(Conns::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let mut backoff = AcceptBackoff::default();
    let mut next_id = 0u64;
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => a,
            // Reap finished connection tasks as they end.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let (stream, peer): (tokio::net::TcpStream, SocketAddr) = match accepted {
            Ok(a) => {
                backoff.reset();
                a
            }
            Err(e) => {
                backoff.wait("admin", &e).await;
                continue;
            }
        };
        if conns.lock().len() >= cap {
            if conns.shed_one() {
                refused("shed");
            } else {
                refused("limit");
                drop(stream);
                continue;
            }
        }
        let _ = stream.set_nodelay(true);
        next_id += 1;
        let id = next_id;
        let busy = Arc::new(AtomicUsize::new(0));
        let last_active = Arc::new(AtomicU64::new(started.elapsed().as_millis() as u64));
        let service = {
            let (app, busy, last) = (app.clone(), busy.clone(), last_active.clone());
            tower::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (app, busy, last) = (app.clone(), busy.clone(), last.clone());
                busy.fetch_add(1, Ordering::Relaxed);
                last.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                async move {
                    let r = app.oneshot(req.map(axum::body::Body::new)).await;
                    last.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                    busy.fetch_sub(1, Ordering::Relaxed);
                    r
                }
            })
        };
        let conn = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let (mut stop, idle) = (stop_rx.clone(), limits.idle_timeout);
        let (busy2, last2, conns2) = (busy.clone(), last_active.clone(), conns.clone());
        let handle = tasks.spawn(async move {
            tokio::pin!(conn);
            let mut check = tokio::time::interval(idle.min(Duration::from_secs(1)));
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, "admin connection: {e}");
                        }
                        break;
                    }
                    _ = stop.changed() => conn.as_mut().graceful_shutdown(),
                    _ = check.tick() => {
                        let quiet = started.elapsed().as_millis() as u64
                            - last2.load(Ordering::Relaxed).min(started.elapsed().as_millis() as u64);
                        if busy2.load(Ordering::Relaxed) == 0 && quiet >= idle.as_millis() as u64 {
                            break;
                        }
                    }
                }
            }
            conns2.lock().remove(&id);
        });
        conns.lock().insert(
            id,
            Conn {
                busy,
                last_active,
                abort: handle,
            },
        );
    }
    // Graceful: no new connections; open requests get a moment to finish.
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(DRAIN, async { while tasks.join_next().await.is_some() {} }).await;
    tasks.abort_all();
}

/// Answer 408 when a request (reading its body included) takes longer
/// than `limit`.
async fn request_deadline(limit: Duration, req: Request, next: axum::middleware::Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => (
            http::StatusCode::REQUEST_TIMEOUT,
            axum::Json(serde_json::json!({
                "error": format!("the request took longer than {limit:?}: send it faster, or raise [admin] request_timeout"),
                "code": "timeout",
            })),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_keeps_descriptors_in_reserve() {
        assert_eq!(connection_cap(256, Some(1024)), 256);
        assert_eq!(
            connection_cap(4096, Some(1024)),
            1024 - RESERVED_FDS as usize
        );
        assert_eq!(connection_cap(256, Some(200)), 72);
        assert_eq!(connection_cap(256, Some(10)), 4, "never below 4");
        assert_eq!(connection_cap(256, None), 256);
    }

    #[test]
    fn the_pause_doubles_to_a_cap_and_resets() {
        let mut b = AcceptBackoff::default();
        assert_eq!(b.next_pause(), FIRST_PAUSE);
        assert_eq!(b.next_pause(), FIRST_PAUSE * 2);
        for _ in 0..20 {
            b.next_pause();
        }
        assert_eq!(b.next_pause(), MAX_PAUSE);
        b.reset();
        assert_eq!(b.next_pause(), FIRST_PAUSE);
    }
}
