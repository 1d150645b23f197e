//! Table sync benchmarks (`make bench`): a real primary and secondary in one
//! process (real SQLite files, the link, signed HTTP on loopback), contact
//! rows synced end to end: export, compress, POST, import, reload.
//!
//! - `sync/100k_contact_rows`: target under 2 s.
//! - After the criterion run, 1M rows once, with the process's peak RSS
//!   growth (both nodes live in this process): target under 20 s and
//!   100 MiB.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

use std::time::{Duration, Instant};

use criterion::Criterion;
use tandem_host::config::Config;
use tandem_host::node::Node;

fn config(dir: &std::path::Path, role: &str, link: &str) -> Config {
    let (name, key) = if role == "primary" {
        ("dev4120", "peer")
    } else {
        ("wat4120", "listen")
    };
    let text = format!(
        "[node]\nname = \"{name}\"\ndata_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"t\"\n\
         [failover]\nrole = \"{role}\"\nprimary = \"dev4120\"\nsecondary = \"wat4120\"\n{key} = \"{link}\"\n\
         secret = \"bench-pair-secret-0123456789abcdef\"\nstartup_delay = \"100ms\"\ntimeout = \"1s\"\ncheck_interval = \"100ms\"\n\
         table_sync_types = [\"contact\"]\n[failover.advanced]\nlab_timings = true\n",
        dir.join(name).display()
    );
    Config::parse(&text).unwrap()
}

fn fill(node: &Node, rows: usize) {
    node.store()
        .write_blocking(|c| {
            let tx = c.transaction()?;
            tx.execute("DELETE FROM person", [])?;
            {
                let mut stmt = tx.prepare(
                    "INSERT INTO person (id, name, address, addresses) VALUES (?1, ?2, ?3, ?4)",
                )?;
                for i in 0..rows {
                    stmt.execute(rusqlite::params![
                        i as i64,
                        format!("person-{i:07}"),
                        format!("person{i}@example.org"),
                        format!("{{\"sms\": \"+4912345{i:07}\"}}")
                    ])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .unwrap();
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_owned)
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let link = format!("127.0.0.1:{port}");
    let secondary = support::start(&rt, config(dir.path(), "secondary", &link));
    let primary = support::start(&rt, config(dir.path(), "primary", &link));
    let (s_handle, p_handle, p) = (secondary.failover(), primary.failover(), &primary.node);
    rt.block_on(
        s_handle.wait_for(|v| v.link_up && v.ready && v.peer.as_ref().is_some_and(|p| p.ready)),
    );
    rt.block_on(p_handle.wait_for(|v| v.ready && v.peer.as_ref().is_some_and(|p| p.ready)));
    fill(p, 100_000);
    let mut g = c.benchmark_group("sync");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .warm_up_time(Duration::from_millis(1));
    g.throughput(criterion::Throughput::Elements(100_000));
    let mut last = None;
    g.bench_function("100k_contact_rows", |b| {
        b.iter(|| {
            let r = rt
                .block_on(tandem_host::sync::push::sync_now(p, p_handle, false))
                .unwrap();
            assert_eq!(r.rows["person"], 100_000);
            last = Some(r);
        })
    });
    g.finish();
    if let Some(r) = last {
        println!(
            "100k rows: {} bytes raw, {} compressed (ratio {:.1})",
            r.bytes_raw,
            r.bytes_compressed,
            r.bytes_raw as f64 / r.bytes_compressed.max(1) as f64
        );
    }
    fill(p, 1_000_000);
    let before = peak_rss_kib();
    let t = Instant::now();
    let r = rt
        .block_on(tandem_host::sync::push::sync_now(p, p_handle, false))
        .unwrap();
    let took = t.elapsed();
    let growth = peak_rss_kib().saturating_sub(before);
    println!(
        "1M rows: {took:?}, {} bytes raw, {} compressed (ratio {:.1}), peak RSS growth {} MiB (both nodes)",
        r.bytes_raw,
        r.bytes_compressed,
        r.bytes_raw as f64 / r.bytes_compressed.max(1) as f64,
        growth / 1024
    );
    c.final_summary();
}
