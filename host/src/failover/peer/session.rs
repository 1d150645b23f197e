//! Link sessions: the secondary's acceptor, and one task per session
//! that runs the writer and the reader together, so that whichever fails
//! first takes the link down.

use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use super::*;

/// Run one session until either direction fails: the writer and the
/// reader run in one task, and whichever ends first takes the link down
/// (reported as `Down` with its error), so a link that can no longer send
/// is never kept "up" by a reader that still reads. The driver's `Up`
/// arrives before any frame the reader passes on.
pub(super) async fn run_session(id: u64, session: Session, events: mpsc::Sender<LinkEvent>) {
    let Session {
        peer,
        sender,
        receiver,
    } = session;
    let (tx, rx) = mpsc::channel::<(u64, Body)>(1024);
    let (go, start) = oneshot::channel::<()>();
    let task = tokio::spawn({
        let events = events.clone();
        async move {
            if start.await.is_err() {
                return;
            }
            let error = tokio::select! {
                e = write_loop(sender, rx) => e,
                e = read_loop(id, receiver, &events) => e,
            };
            let _ = events.send(LinkEvent::Down { id, error }).await;
        }
    });
    let up = LinkEvent::Up {
        id,
        peer: Box::new(peer),
        tx,
        abort: task.abort_handle(),
    };
    if events.send(up).await.is_err() {
        task.abort();
        return;
    }
    let _ = go.send(());
    let _ = task.await;
}

/// Send what the driver queues; the first failed send ends the session.
async fn write_loop(mut sender: link::Sender, mut rx: mpsc::Receiver<(u64, Body)>) -> LinkError {
    while let Some((epoch, body)) = rx.recv().await {
        if let Err(e) = sender.send(epoch, body).await {
            return e;
        }
    }
    // The driver dropped this connection.
    LinkError::Closed
}

/// Pass frames to the driver until one cannot be read.
async fn read_loop(
    id: u64,
    mut receiver: link::Receiver,
    events: &mpsc::Sender<LinkEvent>,
) -> LinkError {
    loop {
        let ev = match receiver.recv().await {
            Ok(Body::Machine(msg)) => LinkEvent::Msg { id, msg },
            Ok(Body::Keys(keys)) => LinkEvent::Keys { id, keys },
            Ok(Body::KeysAck(upto)) => LinkEvent::KeysAck { id, upto },
            Ok(Body::CopyBack {
                upto,
                events,
                notifications,
            }) => LinkEvent::CopyBack {
                id,
                upto,
                events: events.into_iter().map(Into::into).collect(),
                notifications: notifications.into_iter().map(Into::into).collect(),
            },
            Ok(Body::CopyBackAck(upto)) => LinkEvent::CopyBackAck { id, upto },
            Ok(Body::Raise(signal)) => LinkEvent::Raise {
                id,
                signal: signal.into(),
            },
            Ok(Body::Hello(_)) => {
                return LinkError::Garbage("a second hello in one session".into());
            }
            Err(error) => return error,
        };
        if events.send(ev).await.is_err() {
            return LinkError::Closed;
        }
    }
}

pub(super) struct Acceptor {
    pub(super) node: Arc<Node>,
    pub(super) cfg: FailoverConfig,
    pub(super) view: watch::Receiver<View>,
    pub(super) events: mpsc::Sender<LinkEvent>,
    pub(super) started: Instant,
}

/// Link handshakes in progress at once on the secondary's listener.
const MAX_HANDSHAKES: usize = 8;

impl Acceptor {
    pub(super) async fn run(self, listener: TcpListener, stop: Listener) {
        let stop = stop.wait();
        tokio::pin!(stop);
        let mut id = 1u64 << 32;
        let mut backoff = crate::net::AcceptBackoff::default();
        // Unauthenticated handshakes in progress at once: more are closed
        // at once, so idle connections cannot pile up before the secret
        // is checked.
        let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        loop {
            let accepted = tokio::select! {
                _ = &mut stop => return,
                a = listener.accept() => a,
            };
            let (stream, from) = match accepted {
                Ok(a) => {
                    backoff.reset();
                    a
                }
                // Out of descriptors (or another passing error): wait
                // rather than spin, and say so once in a while.
                Err(e) => {
                    backoff.wait("link", &e).await;
                    continue;
                }
            };
            let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                self.node.metrics().link_rejected("busy");
                drop(stream);
                continue;
            };
            id += 1;
            let mine = hello(&self.node, &self.cfg, &self.view.borrow(), self.started);
            let (node, secret, events) = (
                self.node.clone(),
                self.cfg.secret.clone(),
                self.events.clone(),
            );
            tokio::spawn(async move {
                let accepted = link::accept(stream, secret.as_bytes(), &mine).await;
                drop(permit);
                match accepted {
                    Ok(session) => run_session(id, session, events).await,
                    Err(e) => {
                        node.metrics().link_rejected(e.kind());
                        if LINK_REFUSALS.allow() {
                            tracing::warn!(%from, "link refused: {e} (refusals are logged at most once a second; tandem_link_rejected_total counts them all)");
                        }
                    }
                }
            });
        }
    }
}
