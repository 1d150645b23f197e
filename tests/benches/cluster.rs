//! Cluster benchmarks (`make bench`): three real `tandem serve` processes
//! (the release binary, `TANDEM_BIN`), a real etcd on loopback, a real
//! webhook; lease_ttl 2 s (lab timings).
//!
//! - `cluster/kill_to_failover_on`: from kill -9 of a group's owner to the
//!   FAILOVER-ON notification (raised by the next node, run by the owner
//!   of `default`, delivered) arriving at the webhook. Subtract lease_ttl
//!   for the figure (target: at most 200 ms); the lease ends
//!   between lease_ttl - lease_ttl/3 and lease_ttl after the kill,
//!   depending on when the last keepalive went out.
//! - `cluster/handback`: from `POST /api/v1/cluster/failback` on the
//!   group's current owner to `GET /status?group=G` answering 200 on the
//!   group's first node (FAILOVER-OFF, running rules finished, gate
//!   closed, the key moved in one transaction, the taker's watch fires,
//!   its gate opens).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use criterion::Criterion;
use tandem_tests::cluster::{Cluster, Opts, WAIT, start_cluster};
use tandem_tests::http::{get, post};

const HOME: [(&str, &str); 3] = [
    ("default", "office"),
    ("elementary", "elementary"),
    ("highschool", "highschool"),
];

fn failover_on_after(c: &Cluster, since: Instant) -> Option<Instant> {
    c.hook
        .received()
        .iter()
        .find(|r| {
            r.at >= since
                && r.answered < 300
                && r.body["signal"]["name"] == "FAILOVER-ON"
                && r.body["signal"]["fields"]["group"] == "elementary"
        })
        .map(|r| r.at)
}

fn cluster(c: &mut Criterion) {
    let mut g = c.benchmark_group("cluster");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(60))
        .warm_up_time(Duration::from_millis(1));
    let mut k = start_cluster(Opts::default());
    k.wait_owners(&HOME, WAIT);
    g.bench_function("kill_to_failover_on", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let killed = Instant::now();
                k.node_mut("elementary").kill9();
                let at = loop {
                    if let Some(at) = failover_on_after(&k, killed) {
                        break at;
                    }
                    assert!(killed.elapsed() < WAIT, "no FAILOVER-ON");
                    std::thread::sleep(Duration::from_millis(1));
                };
                total += at - killed;
                k.node_mut("elementary").restart();
                k.wait_owners(&HOME, WAIT);
            }
            total
        })
    });
    g.bench_function("handback", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let office = k.node("office").admin().to_owned();
                let elementary = k.node("elementary").admin().to_owned();
                let a = post(
                    &elementary,
                    "/api/v1/cluster/switchover?group=elementary&to=office",
                    Some("admin"),
                    "",
                );
                assert_eq!(a.status, 200, "{}", a.body);
                k.wait_owners(&[("elementary", "office")], WAIT);
                let t = Instant::now();
                let a = post(
                    &office,
                    "/api/v1/cluster/failback?group=elementary",
                    Some("admin"),
                    "",
                );
                assert_eq!(a.status, 200, "{}", a.body);
                while get(&elementary, "/status?group=elementary", None).status != 200 {
                    assert!(t.elapsed() < WAIT, "no handback");
                    std::thread::sleep(Duration::from_millis(1));
                }
                total += t.elapsed();
            }
            total
        })
    });
    g.finish();
}

criterion::criterion_group!(benches, cluster);
criterion::criterion_main!(benches);
