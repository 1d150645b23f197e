//! Clusters: nothing lost, nothing twice across N nodes (DESIGN.md §7),
//! end to end on real nodes and a real etcd. Devices send every signal to
//! every node; a webhook counts what each group's rule delivered.

use std::collections::BTreeMap;
use std::time::Duration;

use tandem_tests::cluster::{
    Cluster, LEASE_TTL, MARGIN, Opts, Sender, WAIT, start_cluster, wait_for,
};
use tandem_tests::http::post;
use tandem_tests::webhook::Received;

use tandem_tests::cluster::{HOME, one_at_a_time as lock};

/// Delivered notifications of `rule`, by signal key.
fn by_key<'a>(got: &'a [Received], rule: &str) -> BTreeMap<String, Vec<&'a Received>> {
    let mut m: BTreeMap<String, Vec<&Received>> = BTreeMap::new();
    for r in got
        .iter()
        .filter(|r| r.answered < 300 && r.body["rule"] == rule)
    {
        if let Some(k) = r.body["signal"]["key"].as_str() {
            m.entry(k.to_owned()).or_default().push(r);
        }
    }
    m
}

/// Every key `PREFIX-1..=n` delivered by each rule in `rules`.
fn wait_all(c: &Cluster, rules: &[&str], prefix: &str, n: u64) -> Vec<Received> {
    c.hook.wait_until(WAIT, |got| {
        rules.iter().all(|r| {
            let m = by_key(got, r);
            (1..=n).all(|i| m.contains_key(&format!("{prefix}-{i}")))
        })
    });
    // Time for a duplicate to show before counting.
    std::thread::sleep(Duration::from_millis(800));
    c.hook.received()
}

fn assert_once(got: &[Received], rule: &str, prefix: &str, n: u64) {
    let m = by_key(got, rule);
    for i in 1..=n {
        let key = format!("{prefix}-{i}");
        let runs = m.get(&key).map_or(0, Vec::len);
        assert_eq!(runs, 1, "{rule} delivered {key} {runs} times");
    }
}

fn move_group(c: &Cluster, via: &str, path: &str) {
    let a = post(c.node(via).admin(), path, Some("admin"), "");
    assert_eq!(a.status, 200, "{path}: {}", a.body);
}

#[test]
fn twenty_switchover_cycles_run_each_key_exactly_once() {
    let _one = lock();
    let c = start_cluster(Opts::default());
    c.wait_owners(&HOME, WAIT);
    let sender = Sender::start(c.nodes.iter().map(|n| n.admin().to_owned()).collect(), "sw");
    for _ in 0..20 {
        move_group(
            &c,
            "office",
            "/api/v1/cluster/switchover?group=elementary&to=office",
        );
        c.wait_owners(&[("elementary", "office")], WAIT);
        move_group(&c, "office", "/api/v1/cluster/failback?group=elementary");
        c.wait_owners(&[("elementary", "elementary")], WAIT);
    }
    let n = sender.stop();
    assert!(n > 20, "the device sent {n} signals");
    let got = wait_all(&c, &["panic-elementary", "panic-default"], "sw", n);
    assert_once(&got, "panic-elementary", "sw", n);
    assert_once(&got, "panic-default", "sw", n);
}

#[test]
fn keys_the_dead_owner_never_published_run_again_under_the_same_ids_flagged_replayed() {
    let _one = lock();
    // Executed keys are held back for 30 s: elementary dies with all of
    // them unpublished.
    let mut c = start_cluster(Opts {
        advanced: "publish_window = \"30s\"",
        ..Opts::default()
    });
    c.wait_owners(&HOME, WAIT);
    for i in 1..=5 {
        c.send_to_all(&format!(
            r#"{{"name": "PANIC-3", "key": "un-{i}", "fields": {{"location": "lab"}}}}"#
        ));
    }
    let first = wait_all(&c, &["panic-elementary"], "un", 5);
    let ids: BTreeMap<String, String> = by_key(&first, "panic-elementary")
        .into_iter()
        .map(|(k, v)| (k, v[0].body["id"].as_str().unwrap_or("").to_owned()))
        .collect();
    c.node_mut("elementary").kill9();
    wait_for("office takes elementary over", LEASE_TTL + MARGIN, || {
        c.owned("office").iter().any(|g| g == "elementary")
    });
    let got = c.hook.wait_until(WAIT, |got| {
        by_key(got, "panic-elementary")
            .values()
            .all(|v| v.len() >= 2)
    });
    for (key, runs) in by_key(&got, "panic-elementary") {
        assert_eq!(
            runs.len(),
            2,
            "{key}: run by the dead owner, then replayed once"
        );
        let again = runs[1];
        assert_eq!(again.body["node"], "office");
        assert_eq!(
            again.body["id"].as_str(),
            ids.get(&key).map(String::as_str),
            "same id"
        );
        assert_eq!(again.body["signal"]["replayed"], true, "{}", again.body);
    }
}

#[test]
fn a_cold_start_loses_nothing_sent_before_any_node_is_ready() {
    let _one = lock();
    let c = start_cluster(Opts {
        startup_delay: "3s",
        ..Opts::default()
    });
    // Every node listens, none is Ready: these are kept as pending.
    for i in 1..=5 {
        c.send_to_all(&format!(
            r#"{{"name": "PANIC-4", "key": "cold-{i}", "fields": {{"location": "hall"}}}}"#
        ));
    }
    c.wait_owners(&HOME, WAIT);
    let got = wait_all(
        &c,
        &["panic-default", "panic-elementary", "panic-highschool"],
        "cold",
        5,
    );
    for rule in ["panic-default", "panic-elementary", "panic-highschool"] {
        assert_once(&got, rule, "cold", 5);
    }
}

#[test]
fn a_rule_in_default_handles_a_signal_raised_by_a_rule_in_elementary_once() {
    let _one = lock();
    let c = start_cluster(Opts {
        rules: vec![
            (
                "door",
                "door_held_open",
                "group = \"elementary\"\nsignals = [\"DOOR-*\"]\n[config]\nseconds = 0\n",
            ),
            (
                "held",
                "panic_button",
                "group = \"default\"\nsignals = [\"DOOR-HELD-OPEN\"]\n",
            ),
        ],
        ..Opts::default()
    });
    c.wait_owners(&HOME, WAIT);
    c.send_to_all(r#"{"name": "DOOR-1-OPEN", "key": "door-k1"}"#);
    let raised = "door-k1/door/0";
    c.hook
        .wait_until(WAIT, |got| by_key(got, "held").contains_key(raised));
    std::thread::sleep(Duration::from_millis(800));
    let got = c.hook.received();
    let held = by_key(&got, "held");
    assert_eq!(held[raised].len(), 1, "the raised signal ran once");
    assert_eq!(held[raised][0].body["node"], "office", "on default's owner");
    assert_eq!(by_key(&got, "door")["door-k1"].len(), 1);
}

#[test]
fn a_signal_with_rules_in_two_groups_whose_owners_die_one_after_the_other_runs_once_per_group() {
    let _one = lock();
    let mut c = start_cluster(Opts::default());
    c.wait_owners(&HOME, WAIT);
    for i in 1..=5 {
        c.send_to_all(&format!(
            r#"{{"name": "PANIC-5", "key": "two-{i}", "fields": {{"location": "yard"}}}}"#
        ));
    }
    wait_all(&c, &["panic-default", "panic-elementary"], "two", 5);
    c.node_mut("elementary").kill9();
    wait_for("office takes elementary over", LEASE_TTL + MARGIN, || {
        c.owned("office").iter().any(|g| g == "elementary")
    });
    c.node_mut("office").kill9();
    wait_for(
        "highschool takes both over",
        (LEASE_TTL + MARGIN) * 2,
        || {
            let owned = c.owned("highschool");
            owned.iter().any(|g| g == "default") && owned.iter().any(|g| g == "elementary")
        },
    );
    // Later signals reach the survivor only for the groups it now owns.
    for i in 6..=8 {
        let _ = tandem_tests::http::try_request(
            "POST",
            c.node("highschool").admin(),
            "/api/v1/signals",
            Some("ingest"),
            format!(r#"{{"name": "PANIC-5", "key": "two-{i}", "fields": {{"location": "yard"}}}}"#)
                .as_bytes(),
        );
    }
    let got = wait_all(&c, &["panic-default", "panic-elementary"], "two", 8);
    assert_once(&got, "panic-default", "two", 8);
    assert_once(&got, "panic-elementary", "two", 8);
}

#[test]
fn twenty_kill_cycles_lose_no_key_and_repeat_none_under_another_id() {
    let _one = lock();
    let mut c = start_cluster(Opts::default());
    c.wait_owners(&HOME, WAIT);
    let sender = Sender::start(
        c.nodes.iter().map(|n| n.admin().to_owned()).collect(),
        "kill",
    );
    let names = ["office", "elementary", "highschool"];
    // A fixed pseudo-random sequence: a failing run can be replayed.
    let mut x: u32 = 0x9e37_79b9;
    for _ in 0..20 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let victim = names[(x % 3) as usize];
        c.node_mut(victim).kill9();
        let others: Vec<&str> = names.iter().copied().filter(|n| *n != victim).collect();
        wait_for(
            "every group owned by a live node",
            LEASE_TTL + MARGIN * 2,
            || {
                HOME.iter()
                    .all(|(g, _)| others.iter().any(|n| c.owned(n).iter().any(|o| o == g)))
            },
        );
        c.node_mut(victim).restart();
        c.wait_owners(&HOME, WAIT);
    }
    let n = sender.stop();
    assert!(n > 100, "the device sent {n} signals");
    let rules = ["panic-default", "panic-elementary", "panic-highschool"];
    let got = wait_all(&c, &rules, "kill", n);
    let mut same_id_repeats = 0;
    for rule in rules {
        for (key, runs) in by_key(&got, rule) {
            let first = &runs[0].body["id"];
            assert!(
                runs.iter().all(|r| &r.body["id"] == first),
                "{rule} ran {key} under two notification ids"
            );
            same_id_repeats += runs.len() - 1;
        }
    }
    eprintln!("20 kill cycles, {n} keys to 3 groups: none lost, {same_id_repeats} same-id repeats");
}

#[test]
fn after_a_handback_the_giver_copies_the_groups_rows_to_its_first_node_resuming_after_a_kill() {
    let _one = lock();
    // One batch of copy-back every second: slow enough to kill the giver
    // in the middle.
    let mut c = start_cluster(Opts {
        advanced: "copyback_delay = \"1s\"",
        ..Opts::default()
    });
    c.wait_owners(&HOME, WAIT);
    c.node_mut("elementary").kill9();
    wait_for("office takes elementary over", LEASE_TTL + MARGIN, || {
        c.owned("office").iter().any(|g| g == "elementary")
    });
    // 450 signals while office carries elementary's group: three batches.
    for i in 1..=450 {
        let _ = tandem_tests::http::try_request(
            "POST",
            c.node("office").admin(),
            "/api/v1/signals",
            Some("ingest"),
            format!(r#"{{"name": "PANIC-6", "key": "cb-{i}", "fields": {{"location": "gym"}}}}"#)
                .as_bytes(),
        );
    }
    c.hook
        .wait_until(WAIT, |got| by_key(got, "panic-elementary").len() >= 450);
    c.node_mut("elementary").restart();
    c.wait_owners(&HOME, WAIT);
    let copied = |c: &Cluster| {
        let a = tandem_tests::http::get(
            c.node("elementary").admin(),
            "/api/v1/notifications?node=office&limit=1000",
            Some("admin"),
        );
        a.json()
            .as_array()
            .map(|rows| {
                rows.iter()
                    .filter(|r| r["rule"] == "panic-elementary")
                    .count()
            })
            .unwrap_or(0)
    };
    // The first batch lands, then the giver dies in the middle.
    wait_for("a first batch copied", WAIT, || copied(&c) >= 200);
    c.node_mut("office").kill9();
    c.node_mut("office").restart();
    wait_for("the rest copied after the restart", WAIT, || {
        copied(&c) >= 450
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(copied(&c), 450, "each row copied once");
}
