//! One shutdown signal handed to every task.
//!
//! [`Shutdown::new`] gives the trigger and a listener; clone the listener
//! into each task and await [`Listener::wait`] in its `select!`.

use tokio::sync::watch;

/// Fires the shutdown.
#[derive(Debug)]
pub struct Shutdown(watch::Sender<bool>);

/// Waits for the shutdown. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Listener(watch::Receiver<bool>);

impl Shutdown {
    /// A trigger and its first listener.
    pub fn new() -> (Shutdown, Listener) {
        let (tx, rx) = watch::channel(false);
        (Shutdown(tx), Listener(rx))
    }

    /// Tell every listener to stop.
    pub fn fire(&self) {
        let _ = self.0.send(true);
    }
}

impl Listener {
    /// Resolves once the shutdown fired (or its trigger is gone).
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn os_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
