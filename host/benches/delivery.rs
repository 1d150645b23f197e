//! Delivery benchmarks (`make bench`): a real in-process node, a real
//! HTTPS receiver on loopback (a CA and certificate made here, trusted
//! through `ca_file`), the real panic-button rule.
//!
//! - `delivery/latency_1000_per_s`: signals ingested at 1,000/s, each one
//!   notification; from the ingest commit to the receiver's 2xx. Prints p50
//!   and p99. Target: p99 under 20 ms.
//! - `delivery/latency_1000_per_s_beside_a_hung_sink`: the same while a
//!   second sink's server accepts and never answers. Target: p99 at most
//!   1.2x the first.
//! - `delivery/throughput_5ms_receiver`: notifications/s through one sink,
//!   concurrency 4, to a receiver that answers in 5 ms. Target: >= 600/s.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::Criterion;
use hyper_util::rt::TokioIo;
use tandem_host::config::Config;
use tandem_host::node::SignalInput;

/// Arrival times by Idempotency-Key.
type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

/// An HTTPS receiver answering 200 after `delay`; returns its URL, the CA
/// PEM to trust, and where arrivals are recorded.
async fn receiver(delay: Duration) -> (String, String, Arrivals) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let tls = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            tokio_rustls::rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let arrivals: Arrivals = Arc::default();
    let seen = arrivals.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let at = Instant::now();
                            if let Some(k) = req
                                .headers()
                                .get("idempotency-key")
                                .and_then(|v| v.to_str().ok())
                            {
                                seen.lock().unwrap().insert(k.to_owned(), at);
                            }
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(String::new()))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (format!("https://{addr}/notify"), ca.pem(), arrivals)
}

/// A server that accepts and never answers.
async fn hung() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    format!("http://{addr}/notify")
}

fn config(dir: &std::path::Path, sinks: &str) -> Config {
    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(rules.join("panic.wasm"), support::wasm("panic_button")).unwrap();
    Config::parse(&format!(
        "[node]\nname = \"n1\"\ndata_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"t\"\n\
         [rules]\ndir = \"{}\"\n{sinks}",
        dir.join("data").display(),
        rules.display()
    ))
    .unwrap()
}

fn webhook_sink(name: &str, url: &str, ca_file: Option<&std::path::Path>, extra: &str) -> String {
    let ca = ca_file.map_or(String::new(), |p| {
        format!("ca_file = \"{}\"\n", p.display())
    });
    format!("[[sinks]]\nname = \"{name}\"\nkind = \"webhook\"\nurl = \"{url}\"\n{ca}{extra}")
}

/// Ingest `n` signals at `rate` per second; the commit time of each key.
async fn send_at(
    node: &Arc<tandem_host::node::Node>,
    tag: &str,
    n: usize,
    rate: u32,
) -> HashMap<String, Instant> {
    let mut commits = HashMap::new();
    let period = Duration::from_secs(1) / rate;
    let mut tick = tokio::time::interval(period);
    for i in 0..n {
        tick.tick().await;
        let key = format!("{tag}-{i}");
        let accepted = node
            .ingest(
                vec![SignalInput {
                    name: "PANIC-1".into(),
                    key: Some(key.clone()),
                    ..SignalInput::default()
                }],
                false,
            )
            .await
            .unwrap();
        commits.insert(key, Instant::now());
        assert!(accepted[0].executed);
    }
    commits
}

/// The notification id of the one notification each key makes.
fn id_of(key: &str) -> String {
    tandem_host::node::notification_id(key, "panic", 0, "group:security")
}

/// Latencies (commit to arrival) of `commits` at `arrivals`, waiting for
/// them all; sorted.
async fn latencies(commits: &HashMap<String, Instant>, arrivals: &Arrivals) -> Vec<Duration> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        {
            let got = arrivals.lock().unwrap();
            if commits.keys().all(|k| got.contains_key(&id_of(k))) {
                let mut l: Vec<Duration> = commits
                    .iter()
                    .map(|(k, at)| got[&id_of(k)].saturating_duration_since(*at))
                    .collect();
                l.sort();
                return l;
            }
        }
        assert!(Instant::now() < deadline, "deliveries missing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn delivery(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("delivery");
    g.sample_size(10);
    let mut p99s = Vec::new();
    for (label, with_hung) in [
        ("latency_1000_per_s", false),
        ("latency_1000_per_s_beside_a_hung_sink", true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (url, ca, arrivals) = rt.block_on(receiver(Duration::ZERO));
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca).unwrap();
        let mut sinks = webhook_sink("https", &url, Some(&ca_file), "");
        if with_hung {
            let hung_url = rt.block_on(hung());
            sinks += &webhook_sink("hung", &hung_url, None, "timeout = \"30s\"\n");
        }
        let running = support::start(&rt, config(dir.path(), &sinks));
        let node = running.node.clone();
        let mut round = 0;
        g.bench_function(label, |b| {
            b.iter_custom(|iters| {
                let mut mean = Duration::ZERO;
                for _ in 0..iters {
                    round += 1;
                    let commits = rt.block_on(send_at(&node, &format!("r{round}"), 1000, 1000));
                    let l = rt.block_on(latencies(&commits, &arrivals));
                    let (p50, p99) = (pct(&l, 0.5), pct(&l, 0.99));
                    println!(
                        "{label}: p50 {p50:?} p99 {p99:?} over {} notifications",
                        l.len()
                    );
                    p99s.push((label, p99));
                    mean += l.iter().sum::<Duration>() / l.len() as u32;
                }
                mean
            })
        });
        drop(running);
    }
    let worst = |label: &str| {
        p99s.iter()
            .filter(|(l, _)| *l == label)
            .map(|(_, d)| *d)
            .max()
            .unwrap_or_default()
    };
    println!(
        "p99 beside a hung sink / alone: {:.2}",
        worst("latency_1000_per_s_beside_a_hung_sink").as_secs_f64()
            / worst("latency_1000_per_s").as_secs_f64()
    );

    let dir = tempfile::tempdir().unwrap();
    let (url, ca, arrivals) = rt.block_on(receiver(Duration::from_millis(5)));
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    let running = support::start(
        &rt,
        config(
            dir.path(),
            &webhook_sink("https", &url, Some(&ca_file), "concurrency = 4\n"),
        ),
    );
    let node = running.node.clone();
    let mut round = 0;
    g.bench_function("throughput_5ms_receiver", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                round += 1;
                let n = 600;
                let t = Instant::now();
                let commits = rt.block_on(send_at(&node, &format!("t{round}"), n, 20_000));
                rt.block_on(latencies(&commits, &arrivals));
                let took = t.elapsed();
                println!(
                    "throughput_5ms_receiver: {n} notifications in {took:?}: {:.0}/s",
                    n as f64 / took.as_secs_f64()
                );
                total += took / n as u32;
            }
            total
        })
    });
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    delivery(&mut c);
    c.final_summary();
}
