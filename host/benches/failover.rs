//! Failover benchmarks (`make bench`): two real nodes in-process (real
//! SQLite files, the real link over loopback TCP, the real failover-notify
//! rule), lab timings: check 100 ms, timeout 1 s, heartbeat every 2 checks.
//!
//! - `failover/detect_to_notify_minus_timeout`: from the primary's death
//!   (its server stopped: no more heartbeats) to the FAILOVER-ON rule's
//!   notification in the secondary's outbox, minus the configured timeout.
//!   Target: at most check_interval + 50 ms.
//! - `failover/handback`: from an operator's failback request on the
//!   standby primary to the primary active (FAILOVER-OFF and its rules, gate
//!   closed, FS=2 stored, hand-over, FS=1 stored, gate open).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use criterion::Criterion;
use support::{Running, start};
use tandem_host::config::Config;
use tandem_host::failover::machine::Command;
use tandem_host::node::Node;

const TIMEOUT: Duration = Duration::from_millis(1000);

fn config(dir: &std::path::Path, role: &str, link: &str, failback: &str) -> Config {
    let (name, key) = if role == "primary" {
        ("dev4120", "peer")
    } else {
        ("wat4120", "listen")
    };
    let rules = dir.join("rules");
    let text = format!(
        "[node]\nname = \"{name}\"\ndata_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"t\"\n\
         [rules]\ndir = \"{}\"\n[failover]\nrole = \"{role}\"\nprimary = \"dev4120\"\nsecondary = \"wat4120\"\n\
         {key} = \"{link}\"\nsecret = \"bench-pair-secret-0123456789abcdef\"\nstartup_delay = \"200ms\"\ntimeout = \"1s\"\ncheck_interval = \"100ms\"\n\
         failback = \"{failback}\"\ntable_sync_types = [\"contact\"]\n[failover.advanced]\nlab_timings = true\n[[sinks]]\nname = \"log\"\nkind = \"log\"\n",
        dir.join(name).display(),
        rules.display()
    );
    Config::parse(&text).unwrap()
}

/// A fresh pair, P active and Ready in S's eyes.
fn pair(
    rt: &tokio::runtime::Runtime,
    failback: &str,
) -> (tempfile::TempDir, Running, Running, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    std::fs::copy(
        support::wasm_dir().join("failover_notify.wasm"),
        dir.path().join("rules/failover_notify.wasm"),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let link = format!("127.0.0.1:{port}");
    let s = start(rt, config(dir.path(), "secondary", &link, failback));
    let p = start(rt, config(dir.path(), "primary", &link, failback));
    rt.block_on(
        s.failover()
            .wait_for(|v| v.link_up && v.peer.as_ref().is_some_and(|p| p.ready && p.fs == 1)),
    );
    (dir, p, s, link)
}

fn queued(n: &Node) -> u64 {
    n.metrics()
        .notification_count(tandem_host::metrics::NotificationStatus::Queued)
}

fn failover(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("failover");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(30))
        .warm_up_time(Duration::from_millis(1));
    g.bench_function("detect_to_notify_minus_timeout", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (_dir, p, s, _) = pair(&rt, "auto");
                let before = queued(&s.node);
                let killed = Instant::now();
                let _ = p.stop.send(());
                while queued(&s.node) == before {
                    std::thread::sleep(Duration::from_micros(500));
                }
                total += killed.elapsed().saturating_sub(TIMEOUT);
                let _ = s.stop.send(());
                drop(p.node);
            }
            total
        })
    });
    g.bench_function("handback", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (_dir, p, s, _) = pair(&rt, "manual");
                rt.block_on(async {
                    assert!(p.failover().command(Command::Switchover).await.is_ok());
                    s.failover().wait_for(|v| v.active).await;
                    p.failover()
                        .wait_for(|v| !v.active && v.peer.as_ref().is_some_and(|x| x.fs == 1))
                        .await;
                });
                let t = Instant::now();
                rt.block_on(async {
                    assert!(p.failover().command(Command::Failback).await.is_ok());
                    p.failover().wait_for(|v| v.active).await;
                });
                total += t.elapsed();
                let _ = s.stop.send(());
                let _ = p.stop.send(());
            }
            total
        })
    });
    g.finish();
}

/// A secondary node (gate closed, no failover driver) holding `n` pending
/// signals that each match the panic-button rule.
fn pending_node(rt: &tokio::runtime::Runtime, n: usize) -> (tempfile::TempDir, Arc<Node>) {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "secondary", "127.0.0.1:0", "auto");
    let node = Node::open(config, tandem_host::engine::Gate::new(false)).unwrap();
    let wasm = std::fs::read(support::wasm_dir().join("panic_button.wasm")).unwrap();
    node.store()
        .write_blocking(|c| {
            tandem_host::store::rules::upsert_script(c, "panic", &wasm)?;
            tandem_host::store::rules::upsert_rule(
                c,
                &tandem_host::store::rules::RuleRow {
                    name: "panic".into(),
                    script: "panic".into(),
                    enabled: true,
                    signals: vec!["K-*".into()],
                    deadline_ms: None,
                    config: Default::default(),
                    updated_at: 0,
                    group: "default".into(),
                },
            )
        })
        .unwrap();
    rt.block_on(node.reload()).unwrap();
    let mut seq = 0;
    for _ in 0..n / 500 {
        let batch = (0..500)
            .map(|_| {
                seq += 1;
                tandem_host::node::SignalInput {
                    name: "K-1".into(),
                    key: Some(format!("k{seq}")),
                    ..Default::default()
                }
            })
            .collect();
        let acc = rt.block_on(node.ingest(batch, false)).unwrap();
        assert!(!acc[0].executed);
    }
    (dir, node)
}

fn replay(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("replay");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .warm_up_time(Duration::from_millis(1));
    g.throughput(criterion::Throughput::Elements(10_000));
    for (id, window) in [
        ("handback_10k", None),
        ("takeover_10k", Some(Duration::from_secs(3600))),
    ] {
        g.bench_function(id, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (_dir, node) = pending_node(&rt, 10_000);
                    node.gate().open();
                    let t = Instant::now();
                    let done = rt.block_on(node.replay_pending(window)).unwrap();
                    total += t.elapsed();
                    assert_eq!(done.executed, 10_000);
                }
                total
            })
        });
    }
    g.finish();
}

/// The executed-key stream's lag while the primary executes 5,000 signals
/// a second (batches of 50 every 10 ms): from a batch's commit on the
/// primary to its last key stored on the secondary.
fn stream_lag(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (_dir, p, s, _) = pair(&rt, "auto");
    let load = p.node.clone();
    let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (lag_tx, lag_rx) = std::sync::mpsc::channel::<Duration>();
    let r = running.clone();
    let watch = s.failover().clone();
    let sender = rt.spawn(async move {
        let mut n = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while r.load(Ordering::Relaxed) {
            tick.tick().await;
            let batch = (0..50)
                .map(|_| {
                    n += 1;
                    tandem_host::node::SignalInput {
                        name: "LOAD-1".into(),
                        key: Some(format!("l{n}")),
                        ..Default::default()
                    }
                })
                .collect();
            if load.ingest(batch, false).await.is_err() {
                continue;
            }
            let committed = Instant::now();
            let seq = *load.executions().borrow();
            let (watch, lag_tx) = (watch.clone(), lag_tx.clone());
            tokio::spawn(async move {
                watch.wait_for(|v| v.absorbed_seq >= seq).await;
                let _ = lag_tx.send(committed.elapsed());
            });
        }
    });
    // Let the stream settle before measuring.
    std::thread::sleep(Duration::from_millis(500));
    while lag_rx.try_recv().is_ok() {}
    let mut g = c.benchmark_group("stream");
    g.sample_size(30)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_millis(500));
    g.bench_function("key_lag_at_5k_per_s", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| lag_rx.recv().unwrap()).sum())
    });
    g.finish();
    running.store(false, Ordering::Relaxed);
    let _ = rt.block_on(sender);
    let _ = p.stop.send(());
    let _ = s.stop.send(());
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    replay(&mut c);
    stream_lag(&mut c);
    failover(&mut c);
    c.final_summary();
}
