//! Shared by the benches: where the built sample rules are, and a node run
//! in-process on loopback.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use tandem_host::config::Config;
use tandem_host::failover::Handle;
use tandem_host::node::Node;

/// Where `make rules` leaves the sample rules (honours CARGO_TARGET_DIR).
pub fn wasm_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").into())
        .join("wasm32-unknown-unknown/release")
}

/// A sample rule's bytes, e.g. `failover_notify`.
pub fn wasm(crate_name: &str) -> Vec<u8> {
    let path = wasm_dir().join(format!("{crate_name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}; run `make rules`", path.display()))
}

/// A node started with `server::run` on `rt`; dropping `stop` (or sending
/// on it) stops it.
pub struct Running {
    pub node: Arc<Node>,
    pub handle: Option<Handle>,
    pub stop: tokio::sync::oneshot::Sender<()>,
}

impl Running {
    /// The failover handle of a pair member.
    pub fn failover(&self) -> &Handle {
        self.handle.as_ref().expect("a pair member")
    }
}

/// Start a node and wait until it listens.
pub fn start(rt: &tokio::runtime::Runtime, config: Config) -> Running {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    rt.spawn(async move {
        tandem_host::server::run(
            config,
            async { drop(stop_rx.await) },
            move |node, handle| {
                ready_tx.send((node.clone(), handle.cloned())).unwrap();
            },
        )
        .await
        .unwrap();
    });
    let (node, handle) = ready_rx.recv_timeout(Duration::from_secs(60)).unwrap();
    Running {
        node,
        handle,
        stop: stop_tx,
    }
}
