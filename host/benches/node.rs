//! Node benchmarks (`make bench`): a real `server::run` on loopback with a
//! real SQLite file, driven over real HTTP; figures go to
//! docs/performance.md.
//!
//! - `ingest/batch_100`: durable ingest of batches of 100 signals, each
//!   running the threshold rule (no notification), one transaction each.
//! - `ingest/batch_100_notify_1pct`: the same with one reading in 100 above
//!   the threshold, so one notification per batch goes through the outbox
//!   and the log sink.
//! - `ingest/single`: one signal per POST; after the criterion run, 2,000
//!   more are timed one by one and p50/p99 printed.
//! - `reload/put_script_1_of_100`: PUT of a changed ~180 KB module while 100
//!   rules are installed, until the new version serves (the PUT answers
//!   after the reload); asserts exactly one compile per PUT.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use tandem_host::config::Config;
use tandem_host::node::Node;

/// Append a custom section so the module's sha256 changes but not its code.
fn variant(base: &[u8], n: u64) -> Vec<u8> {
    let name = b"bench";
    let payload = n.to_le_bytes();
    let size = 1 + name.len() + payload.len();
    let mut out = base.to_vec();
    out.push(0); // custom section id
    out.push(size as u8); // LEB128, < 128
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(&payload);
    out
}

struct Server {
    rt: tokio::runtime::Runtime,
    node: Arc<Node>,
    base: String,
    client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[node]\nname = \"bench\"\ndata_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"t\"\n[[sinks]]\nname = \"log\"\nkind = \"log\"\n",
            dir.path().display()
        );
        let config = Config::parse(&text).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        rt.spawn(async move {
            tandem_host::server::run(config, async { drop(stop_rx.await) }, move |node, _| {
                ready_tx.send(node.clone()).unwrap();
            })
            .await
            .unwrap();
        });
        let node = ready_rx.recv_timeout(Duration::from_secs(60)).unwrap();
        let base = node.admin_url().unwrap().to_owned();
        Server {
            rt,
            node,
            base,
            client: reqwest::Client::new(),
            stop: Some(stop_tx),
            _dir: dir,
        }
    }

    fn put_script(&self, name: &str, wasm: Vec<u8>) {
        let url = format!("{}/api/v1/scripts/{name}", self.base);
        let r = self
            .rt
            .block_on(self.client.put(url).bearer_auth("t").body(wasm).send())
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    fn put_rule(&self, name: &str, body: serde_json::Value) {
        let url = format!("{}/api/v1/rules/{name}", self.base);
        let r = self
            .rt
            .block_on(self.client.put(url).bearer_auth("t").json(&body).send())
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    async fn post(client: &reqwest::Client, url: &str, body: String) {
        let r = client
            .post(url)
            .bearer_auth("t")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn batch(n: usize, hot_every: Option<usize>, seq: &mut u64) -> String {
    let items: Vec<String> = (0..n)
        .map(|i| {
            *seq += 1;
            let value = if hot_every.is_some_and(|k| i % k == k - 1) {
                150
            } else {
                20
            };
            format!(
                r#"{{"name":"SENSOR-T","source":"s1","key":"b{seq}","fields":{{"value":{value}}}}}"#
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

fn ingest(c: &mut Criterion) {
    let server = Server::start();
    server.put_script("threshold", support::wasm("threshold"));
    server.put_rule(
        "threshold",
        serde_json::json!({"script": "threshold", "config": {"above": 100, "count": 1}}),
    );
    let url = format!("{}/api/v1/signals", server.base);
    let mut seq = 0;
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(100));
    g.bench_function("batch_100", |b| {
        b.iter(|| {
            let body = batch(100, None, &mut seq);
            server.rt.block_on(Server::post(&server.client, &url, body));
        })
    });
    // The 1% case really goes through the outbox: one batch queues one.
    let queued_before = server
        .node
        .metrics()
        .notification_count(tandem_host::metrics::NotificationStatus::Queued);
    server.rt.block_on(Server::post(
        &server.client,
        &url,
        batch(100, Some(100), &mut seq),
    ));
    let queued = server
        .node
        .metrics()
        .notification_count(tandem_host::metrics::NotificationStatus::Queued)
        - queued_before;
    assert_eq!(queued, 1, "one notification per batch of 100");
    g.bench_function("batch_100_notify_1pct", |b| {
        b.iter(|| {
            let body = batch(100, Some(100), &mut seq);
            server.rt.block_on(Server::post(&server.client, &url, body));
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("single", |b| {
        b.iter(|| {
            let body = batch(1, None, &mut seq);
            server.rt.block_on(Server::post(&server.client, &url, body));
        })
    });
    g.finish();

    let mut times: Vec<Duration> = (0..2000)
        .map(|_| {
            let body = batch(1, None, &mut seq);
            let t = Instant::now();
            server.rt.block_on(Server::post(&server.client, &url, body));
            t.elapsed()
        })
        .collect();
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    println!(
        "ingest/single latency over 2000 POSTs: p50 {:?}, p99 {:?}, max {:?}",
        pct(0.50),
        pct(0.99),
        times[times.len() - 1]
    );
}

fn reload(c: &mut Criterion) {
    let server = Server::start();
    let base = support::wasm("panic_button");
    // 100 rules, each its own script (distinct bytes, same code).
    for i in 0..100u64 {
        server.put_script(&format!("r{i:03}"), variant(&base, i));
    }
    assert_eq!(server.node.rule_status().len(), 100);
    let compiles = || {
        server
            .node
            .engine()
            .stats()
            .compiles
            .load(Ordering::Relaxed)
    };
    let mut n = 1000u64;
    let mut g = c.benchmark_group("reload");
    g.sample_size(20);
    g.bench_function("put_script_1_of_100", |b| {
        b.iter(|| {
            n += 1;
            let before = compiles();
            server.put_script("r050", variant(&base, n));
            assert_eq!(compiles() - before, 1, "only the changed module compiles");
        })
    });
    g.finish();
    println!("reload: module size {} bytes", base.len());
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(30)
        .configure_from_args();
    ingest(&mut c);
    reload(&mut c);
    c.final_summary();
}
