//! A secondary that cannot store FS=1 does not take over: it stays
//! standby (gate closed, `/status` 503), says why, and tries again at every
//! check until the write succeeds. The failure is injected into the real
//! store of a real in-process node.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tandem_host::config::Config;

fn config(dir: &std::path::Path) -> Config {
    Config::parse(&format!(
        r#"
[node]
name = "wat4120"
data_dir = "{}"
[admin]
listen = "127.0.0.1:0"
token = "admin"
[failover]
role = "secondary"
primary = "dev4120"
secondary = "wat4120"
listen = "127.0.0.1:0"
secret = "tandem-test-pair-secret-0123456789abcdef"
startup_delay = "1s"
timeout = "300ms"
check_interval = "50ms"
[failover.advanced]
lab_timings = true
"#,
        dir.display()
    ))
    .unwrap()
}

#[test]
fn a_takeover_that_cannot_persist_stays_standby_says_why_and_retries() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let cfg = config(dir.path());
    rt.spawn(async move {
        tandem_host::server::run(cfg, async { drop(stop_rx.await) }, move |node, handle| {
            // Before the node is Ready (startup_delay 1 s): no takeover yet.
            node.store().inject_write_failure(true);
            let handle = handle.cloned().unwrap();
            assert!(!handle.view().active, "took over before the test began");
            ready_tx.send((node.clone(), handle)).unwrap();
        })
        .await
        .unwrap();
    });
    let (node, handle) = ready_rx.recv_timeout(Duration::from_secs(60)).unwrap();
    let within = |secs| Duration::from_secs(secs);
    rt.block_on(async {
        tokio::time::timeout(within(20), handle.wait_for(|v| v.persist_error.is_some()))
            .await
            .expect("the failed write is reported");
    });
    let v = handle.view();
    assert!(!v.active, "not active without FS=1 on disk");
    assert_eq!(v.fs, 2);
    assert!(!node.gate().is_open(), "no rule runs");
    assert!(
        v.persist_error
            .as_deref()
            .is_some_and(|e| e.contains("FS=1")),
        "{:?}",
        v.persist_error
    );
    assert!(
        node.render_metrics(0, 0)
            .contains("tandem_persist_failing 1"),
        "the gauge says so"
    );
    // The disk heals: the next check writes FS=1 and the takeover goes on.
    node.store().inject_write_failure(false);
    rt.block_on(async {
        tokio::time::timeout(within(20), handle.wait_for(|v| v.active))
            .await
            .expect("active once FS can be stored");
    });
    assert!(handle.view().persist_error.is_none());
    assert!(node.gate().is_open());
    let stored = node
        .store()
        .read_blocking(tandem_host::store::failover::load_state)
        .unwrap();
    assert_eq!(stored.map(|(fs, _)| fs), Some(1), "FS=1 on disk");
    drop(stop_tx);
}
