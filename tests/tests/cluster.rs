//! Clusters on etcd (DESIGN.md §7), end to end: real `tandem serve`
//! processes, a real etcd on loopback, a real webhook. One test at a time:
//! they share the machine's two cores.

use std::time::{Duration, Instant};

use tandem_tests::cluster::{Cluster, LEASE_TTL, MARGIN, Opts, WAIT, start_cluster, wait_for};
use tandem_tests::pair::ONE_AT_A_TIME;
use tandem_tests::webhook::Received;

fn lock() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

const HOME: [(&str, &str); 3] = [
    ("default", "office"),
    ("elementary", "elementary"),
    ("highschool", "highschool"),
];

/// The signal a notification was made for.
fn signal_of(r: &Received) -> serde_json::Value {
    r.body["signal"].clone()
}

/// Notifications from rule `rule` for signal key `key`, delivered.
fn from_rule<'a>(got: &'a [Received], rule: &str, key: &str) -> Vec<&'a Received> {
    got.iter()
        .filter(|r| r.answered < 300 && r.body["rule"] == rule && signal_of(r)["key"] == key)
        .collect()
}

/// FAILOVER-ON/OFF notifications about `group` delivered after `since`.
fn failovers<'a>(
    got: &'a [Received],
    name: &str,
    group: &str,
    since: Instant,
) -> Vec<&'a Received> {
    got.iter()
        .filter(|r| {
            r.answered < 300
                && r.at >= since
                && signal_of(r)["name"] == name
                && signal_of(r)["fields"]["group"] == group
        })
        .collect()
}

fn panic_signal(key: &str) -> String {
    format!(
        r#"{{"name": "PANIC-1", "key": "{key}", "source": "button-7", "fields": {{"location": "gym"}}}}"#
    )
}

fn home(c: &Cluster) {
    c.wait_owners(&HOME, WAIT);
}

#[test]
fn each_group_runs_only_on_its_owner_and_a_signal_sent_to_all_runs_once_per_group() {
    let _one = lock();
    let c = start_cluster(Opts::default());
    home(&c);
    // /status?group=G: 200 only on G's owner; /status: 200 on every owner.
    for (g, owner) in HOME {
        for n in ["office", "elementary", "highschool"] {
            let want = if n == owner { 200 } else { 503 };
            assert_eq!(c.status_of(n, Some(g)), want, "{n} /status?group={g}");
        }
    }
    for n in ["office", "elementary", "highschool"] {
        assert_eq!(c.status_of(n, None), 200, "{n} owns a group");
    }
    // The ingest reply names the owner of each group the signal touches.
    let reply = c.send("highschool", &panic_signal("k-0"));
    assert_eq!(
        reply["accepted"][0]["owners"]["elementary"], "elementary",
        "{reply}"
    );
    assert_eq!(
        reply["accepted"][0]["owners"]["default"], "office",
        "{reply}"
    );
    // Devices send to every node: each group's rule runs once, on its owner.
    for i in 1..=5 {
        c.send_to_all(&panic_signal(&format!("k-{i}")));
    }
    c.hook.wait_until(WAIT, |got| {
        (1..=5).all(|i| {
            ["panic-default", "panic-elementary", "panic-highschool"]
                .iter()
                .all(|r| !from_rule(got, r, &format!("k-{i}")).is_empty())
        })
    });
    // Let any duplicate arrive before counting.
    std::thread::sleep(Duration::from_millis(500));
    let got = c.hook.received();
    for i in 1..=5 {
        let key = format!("k-{i}");
        for (rule, owner) in [
            ("panic-default", "office"),
            ("panic-elementary", "elementary"),
            ("panic-highschool", "highschool"),
        ] {
            let n = from_rule(&got, rule, &key);
            assert_eq!(n.len(), 1, "{rule} ran {} times for {key}", n.len());
            assert_eq!(
                n[0].body["node"], owner,
                "{rule} ran on {}",
                n[0].body["node"]
            );
        }
    }
}

#[test]
fn kill_9_of_an_owner_moves_only_its_group_and_a_restart_brings_it_back() {
    let _one = lock();
    let mut c = start_cluster(Opts::default());
    home(&c);
    let killed = Instant::now();
    c.node_mut("elementary").kill9();
    let moved = wait_for("elementary moves to office", LEASE_TTL + MARGIN, || {
        c.owned("office").iter().any(|g| g == "elementary")
    });
    // The other groups did not move.
    assert!(c.owned("office").iter().any(|g| g == "default"));
    assert_eq!(c.owned("highschool"), vec!["highschool".to_owned()]);
    assert!(moved <= LEASE_TTL + MARGIN, "moved after {moved:?}");
    // FAILOVER-ON with the group reaches the webhook (the rule is in
    // `default`, owned by office).
    let got = c.hook.wait_until(WAIT, |got| {
        !failovers(got, "FAILOVER-ON", "elementary", killed).is_empty()
    });
    let on = failovers(&got, "FAILOVER-ON", "elementary", killed);
    assert_eq!(on.len(), 1);
    let sig = signal_of(on[0]);
    assert_eq!(sig["fields"]["from"], "elementary", "{sig}");
    assert_eq!(sig["fields"]["to"], "office", "{sig}");
    eprintln!("kill -9 to FAILOVER-ON delivered: {:?}", on[0].at - killed);
    // A signal now runs elementary's rule on office.
    c.send_to_all(&panic_signal("after-kill"));
    let got = c.hook.wait_until(WAIT, |got| {
        !from_rule(got, "panic-elementary", "after-kill").is_empty()
    });
    assert_eq!(
        from_rule(&got, "panic-elementary", "after-kill")[0].body["node"],
        "office"
    );
    // Restart: FAILOVER-OFF, and the group returns.
    c.node_mut("elementary").restart();
    home(&c);
    c.hook.wait_until(WAIT, |got| {
        !failovers(got, "FAILOVER-OFF", "elementary", killed).is_empty()
    });
    c.send_to_all(&panic_signal("after-restart"));
    let got = c.hook.wait_until(WAIT, |got| {
        !from_rule(got, "panic-elementary", "after-restart").is_empty()
    });
    assert_eq!(
        from_rule(&got, "panic-elementary", "after-restart")[0].body["node"],
        "elementary"
    );
}
