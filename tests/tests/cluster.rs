//! Clusters on etcd (DESIGN.md §7), end to end: real `tandem serve`
//! processes, a real etcd on loopback, a real webhook. One test at a time:
//! they share the machine's two cores.

use std::time::{Duration, Instant};

use tandem_tests::cluster::{Cluster, LEASE_TTL, MARGIN, Opts, WAIT, start_cluster, wait_for};
use tandem_tests::cluster::{HOME, one_at_a_time as lock};
use tandem_tests::webhook::Received;

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

/// How a zstd frame opens: an executed batch in value format 2.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

/// office's executed batches of `group` in etcd: the etcd keys of the
/// compressed ones, and the signal keys of the JSON ones.
fn office_batches(c: &Cluster, group: &str) -> (Vec<String>, Vec<String>) {
    let mut compressed = Vec::new();
    let mut keys = Vec::new();
    for (k, v) in c
        .etcd
        .range(&format!("/tandem/test/executed/{group}/office-"))
    {
        if v.starts_with(&ZSTD_MAGIC) {
            compressed.push(k);
            continue;
        }
        let b: serde_json::Value = serde_json::from_slice(&v)
            .unwrap_or_else(|e| panic!("{k}: neither zstd nor JSON: {e}"));
        keys.extend(
            b["keys"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(str::to_owned)),
        );
    }
    (compressed, keys)
}

/// Whether `node` keeps a tombstone of `key` for `group`.
fn has_tombstone(c: &Cluster, node: &str, group: &str, key: &str) -> bool {
    let Ok(db) = rusqlite::Connection::open_with_flags(
        c.node(node).db(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    ) else {
        return false;
    };
    db.query_row(
        "SELECT count(*) FROM group_tombstone WHERE grp = ?1 AND key = ?2",
        [group, key],
        |r| r.get::<_, i64>(0),
    )
    .is_ok_and(|n| n == 1)
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
    // The members' calls are signed: unsigned, forged or replayed ones are
    // refused before anything is read or stored.
    let office = c.node("office").admin().to_owned();
    let unsigned = tandem_tests::http::request(
        "POST",
        &office,
        "/internal/v1/signals",
        None,
        br#"[{"name": "FAILOVER-ON", "key": "forged", "fields": {"group": "elementary"}}]"#,
    );
    assert_eq!(unsigned.status, 401, "{}", unsigned.body);
    let forged_move = tandem_tests::http::request(
        "POST",
        &office,
        "/internal/v1/cluster/move",
        Some("admin"),
        br#"{"group": "default", "to": "elementary", "pin": true}"#,
    );
    assert_eq!(forged_move.status, 401, "{}", forged_move.body);
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
    // With every node up, executed keys go to etcd compressed.
    c.send_to_all(&panic_signal("all-up"));
    wait_for("a compressed batch of default", WAIT, || {
        !office_batches(&c, "default").0.is_empty()
    });
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
    // A node is down: it may come back on a build that reads JSON only,
    // so the keys it misses go to etcd as JSON.
    wait_for("after-kill in a JSON batch of default", WAIT, || {
        office_batches(&c, "default")
            .1
            .iter()
            .any(|k| k == "after-kill")
    });
    let compressed = office_batches(&c, "default").0;
    // Restart: FAILOVER-OFF, and the group returns.
    c.node_mut("elementary").restart();
    home(&c);
    // It read what was put while it was away.
    wait_for("elementary's tombstone of after-kill", WAIT, || {
        has_tombstone(&c, "elementary", "default", "after-kill")
    });
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
    // Every node reads format 2 again.
    wait_for("a new compressed batch of default", WAIT, || {
        office_batches(&c, "default")
            .0
            .iter()
            .any(|k| !compressed.contains(k))
    });
}

#[test]
fn a_node_cut_off_from_etcd_fences_before_its_lease_ends_and_the_next_takes_over_only_after() {
    let _one = lock();
    let c = start_cluster(Opts {
        proxied: vec![1],
        ..Opts::default()
    });
    home(&c);
    let all = ["office", "elementary", "highschool"];
    let sender = tandem_tests::cluster::Sender::start(
        c.nodes.iter().map(|n| n.admin().to_owned()).collect(),
        "cut",
    );
    c.proxies[1].as_ref().expect("proxied").blackhole();
    wait_for("elementary fences", LEASE_TTL + MARGIN, || {
        c.fenced("elementary")
    });
    assert_eq!(
        c.status_of("elementary", None),
        503,
        "a fenced node answers 503"
    );
    assert!(c.owned("elementary").is_empty());
    wait_for("office takes elementary over", LEASE_TTL + MARGIN, || {
        c.owned("office").iter().any(|g| g == "elementary")
    });
    // The cut node's gate closed (or its deadline passed) before the next
    // owner opened: no instant with two owners.
    c.assert_one_owner_at_a_time(&all);
    let why = c.view("elementary").expect("view")["fenced"]["reason"].clone();
    assert!(
        why.as_str().is_some_and(|w| w.contains("keepalive")),
        "{why}"
    );
    // Healed: it is confirmed again, and gets its group back (a handback:
    // its old key went with its lease).
    c.proxies[1].as_ref().expect("proxied").heal();
    home(&c);
    assert!(!c.fenced("elementary"));
    sender.stop();
    c.assert_one_owner_at_a_time(&all);
}

#[test]
fn a_node_frozen_past_its_deadline_runs_nothing_after_sigcont_until_confirmed_again() {
    let _one = lock();
    let c = start_cluster(Opts::default());
    home(&c);
    let all = ["office", "elementary", "highschool"];
    let old_epoch = c
        .epochs("office")
        .into_iter()
        .find(|(g, _, _)| g == "elementary")
        .map(|(_, _, e)| e)
        .expect("epoch");
    c.node("elementary").signal(libc::SIGSTOP);
    let sender = tandem_tests::cluster::Sender::start(
        vec![
            c.node("office").admin().to_owned(),
            c.node("highschool").admin().to_owned(),
        ],
        "frozen",
    );
    wait_for("office takes elementary over", LEASE_TTL + MARGIN, || {
        c.owned("office").iter().any(|g| g == "elementary")
    });
    std::thread::sleep(LEASE_TTL / 2);
    c.node("elementary").signal(libc::SIGCONT);
    // The thawed node finds its deadline past: it fences, runs nothing
    // under its old epoch, and is given the group back only through a
    // handback, under a new epoch.
    let sender2 = tandem_tests::cluster::Sender::start(
        vec![c.node("elementary").admin().to_owned()],
        "thawed",
    );
    home(&c);
    sender.stop();
    sender2.stop();
    c.assert_one_owner_at_a_time(&all);
    let db = rusqlite::Connection::open(c.node("elementary").db()).expect("db");
    let late: i64 = db
        .query_row(
            "SELECT count(*) FROM group_executed WHERE grp = 'elementary' AND epoch = ?1 AND key LIKE 'thawed-%'",
            [old_epoch],
            |r| r.get(0),
        )
        .expect("query");
    assert_eq!(late, 0, "signals ran under the old epoch after SIGCONT");
    let new_epoch: i64 = db
        .query_row(
            "SELECT max(epoch) FROM group_executed WHERE grp = 'elementary'",
            [],
            |r| r.get(0),
        )
        .expect("query");
    assert!(
        new_epoch > old_epoch,
        "back under a new epoch: {new_epoch} > {old_epoch}"
    );
}

#[test]
fn etcd_stopped_fences_every_node_and_owners_reopen_when_it_returns() {
    let _one = lock();
    let mut c = start_cluster(Opts::default());
    home(&c);
    let all = ["office", "elementary", "highschool"];
    c.etcd.stop();
    wait_for("every node fenced", LEASE_TTL + MARGIN, || {
        all.iter().all(|n| c.fenced(n))
    });
    for n in all {
        assert_eq!(c.status_of(n, None), 503, "{n} fenced answers 503");
        assert!(c.owned(n).is_empty(), "{n} closed its gates");
    }
    c.etcd.restart_all();
    // Each owner reopens its unchanged group, or owners are chosen again.
    home(&c);
    for n in all {
        assert!(!c.fenced(n), "{n} unfenced");
    }
    c.assert_one_owner_at_a_time(&all);
}

#[test]
fn a_three_member_etcd_losing_one_member_the_leader_included_changes_no_owner() {
    let _one = lock();
    // The production minimum lease: a 2 s lab lease leaves a node about
    // 0.7 s of etcd silence before it fences (lease - fence_margin - one
    // keepalive period), and an election on a loaded 2-core machine has
    // taken 0.8 s. Fencing then is right; this test is about a cluster
    // whose leases outlast an election, as production ones do.
    let lease = Duration::from_secs(5);
    let mut c = start_cluster(Opts {
        etcd_members: 3,
        lease_ttl: lease,
        ..Opts::default()
    });
    home(&c);
    // office's view has caught up with the last handback too.
    wait_for("office's view agrees", WAIT, || {
        c.epochs("office").iter().all(|(g, n, _)| {
            HOME.iter()
                .any(|(hg, hn)| hg == g && n.as_deref() == Some(*hn))
        })
    });
    let before = c.epochs("office");
    let tenures = c.tenures(&["office", "elementary", "highschool"]).len();
    let leader = c.etcd.leader().expect("a leader");
    c.etcd.kill(leader);
    // Two lease periods: long enough for any owner change to show.
    std::thread::sleep(lease * 2);
    home(&c);
    assert_eq!(c.epochs("office"), before, "no owner key was rewritten");
    assert_eq!(
        c.tenures(&["office", "elementary", "highschool"]).len(),
        tenures,
        "no gate closed and reopened"
    );
    for n in ["office", "elementary", "highschool"] {
        assert!(!c.fenced(n), "{n} never fenced");
    }
}

fn cli(c: &Cluster, via: &str, args: &[&str]) -> tandem_tests::Run {
    let mut all: Vec<&str> = vec!["cluster"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--admin", c.node(via).admin(), "--token", "admin"]);
    tandem_tests::tandem(&all)
}

#[test]
fn a_switchover_pins_a_group_that_auto_failback_leaves_until_a_failback() {
    let _one = lock();
    let c = start_cluster(Opts::default());
    home(&c);
    // Asked of a node that does not own the group: forwarded to the owner.
    let r = cli(
        &c,
        "office",
        &["switchover", "elementary", "--to", "highschool"],
    );
    assert!(r.status.success(), "{}{}", r.stdout, r.stderr);
    c.wait_owners(
        &[
            ("default", "office"),
            ("elementary", "highschool"),
            ("highschool", "highschool"),
        ],
        WAIT,
    );
    let pinned = |c: &Cluster| {
        c.view("office").expect("view")["owners"]
            .as_array()
            .expect("owners")
            .iter()
            .any(|o| o["group"] == "elementary" && o["pinned"] == true)
    };
    assert!(pinned(&c));
    // Auto failback would move it back at once; pinned, it stays.
    std::thread::sleep(LEASE_TTL * 2);
    assert_eq!(
        c.owner("office", "elementary").as_deref(),
        Some("highschool")
    );
    let status = cli(&c, "elementary", &["status"]);
    assert!(status.stdout.contains("PINNED"), "{}", status.stdout);
    let r = cli(&c, "highschool", &["failback", "elementary"]);
    assert!(r.status.success(), "{}{}", r.stdout, r.stderr);
    home(&c);
    assert!(!pinned(&c));
}

#[test]
fn with_manual_failback_a_group_returns_only_when_an_operator_asks() {
    let _one = lock();
    let mut c = start_cluster(Opts {
        failback: "manual",
        ..Opts::default()
    });
    // Cold start: the groups still go to their first nodes once those
    // are up (a handback needs a failback; a takeover does not), so start
    // from wherever they are and fail back each one by hand.
    for g in ["elementary", "highschool"] {
        wait_for("an owner", WAIT, || c.owner("office", g).is_some());
        if c.owner("office", g).as_deref() != Some(g) {
            let r = cli(&c, "office", &["failback", g]);
            assert!(r.status.success(), "{}{}", r.stdout, r.stderr);
        }
    }
    home(&c);
    c.node_mut("elementary").kill9();
    wait_for("office takes elementary over", LEASE_TTL + MARGIN, || {
        c.owned("office").iter().any(|g| g == "elementary")
    });
    c.node_mut("elementary").restart();
    wait_for("elementary Ready in etcd", WAIT, || {
        c.view("office").is_some_and(|v| {
            v["members"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m["node"] == "elementary"))
        })
    });
    std::thread::sleep(LEASE_TTL * 2);
    assert_eq!(
        c.owner("office", "elementary").as_deref(),
        Some("office"),
        "no auto failback"
    );
    let r = cli(&c, "elementary", &["failback", "elementary"]);
    assert!(r.status.success(), "{}{}", r.stdout, r.stderr);
    home(&c);
}

#[test]
fn a_handback_whose_taker_dies_before_the_move_leaves_the_group_with_the_giver() {
    let _one = lock();
    let mut c = start_cluster(Opts {
        advanced: "handback_delay = \"3s\"",
        ..Opts::default()
    });
    home(&c);
    c.node_mut("elementary").kill9();
    wait_for("office takes elementary over", LEASE_TTL + MARGIN, || {
        c.owned("office").iter().any(|g| g == "elementary")
    });
    let restarted = Instant::now();
    c.node_mut("elementary").restart();
    // The handback starts (FAILOVER-OFF); the taker dies before the move.
    c.hook.wait_until(WAIT, |got| {
        !failovers(got, "FAILOVER-OFF", "elementary", restarted).is_empty()
    });
    c.node_mut("elementary").kill9();
    let got = c.hook.wait_until(WAIT, |got| {
        failovers(got, "FAILOVER-ON", "elementary", restarted)
            .iter()
            .any(|r| signal_of(r)["fields"]["reason"] == "handback_failed")
    });
    assert!(!got.is_empty());
    assert!(
        c.owned("office").iter().any(|g| g == "elementary"),
        "the giver reopened"
    );
    c.send("office", &panic_signal("after-failed-handback"));
    c.hook.wait_until(WAIT, |got| {
        !from_rule(got, "panic-elementary", "after-failed-handback").is_empty()
    });
}

#[test]
fn two_members_cut_from_each_other_but_not_from_etcd_keep_one_owner() {
    let _one = lock();
    let c = start_cluster(Opts {
        nodes: vec!["a", "b"],
        groups: "default = [\"a\", \"b\"]\n",
        rules: vec![(
            "panic-default",
            "panic_button",
            "group = \"default\"\nsignals = [\"PANIC-*\"]\n",
        )],
        advertise_proxies: true,
        ..Opts::default()
    });
    c.wait_owners(&[("default", "a")], WAIT);
    for f in c.fronts.iter().flatten() {
        f.blackhole();
    }
    std::thread::sleep(LEASE_TTL * 2);
    c.send_to_all(&panic_signal("split"));
    let got = c.hook.wait_until(WAIT, |got| {
        !from_rule(got, "panic-default", "split").is_empty()
    });
    std::thread::sleep(Duration::from_millis(500));
    let got = c.hook.received().len().max(got.len());
    let _ = got;
    assert_eq!(
        from_rule(&c.hook.received(), "panic-default", "split").len(),
        1
    );
    assert_eq!(c.owned("a"), vec!["default".to_owned()]);
    assert!(c.owned("b").is_empty());
    c.assert_one_owner_at_a_time(&["a", "b"]);
}

#[test]
fn the_publisher_pushes_synced_tables_to_every_member_and_subscribers_are_read_only() {
    let _one = lock();
    let c = start_cluster(Opts::default());
    home(&c);
    let wasm = std::fs::read(tandem_tests::sample_wasm("door_held_open")).expect("wasm");
    let put = |via: &str, name: &str| {
        tandem_tests::http::request(
            "PUT",
            c.node(via).admin(),
            &format!("/api/v1/scripts/{name}"),
            Some("admin"),
            &wasm,
        )
    };
    let has_rule = |via: &str, name: &str| {
        tandem_tests::http::get(
            c.node(via).admin(),
            &format!("/api/v1/rules/{name}"),
            Some("admin"),
        )
        .status
            == 200
    };
    // office (default's first node) publishes; a change there reaches all.
    let a = put("office", "door-a");
    assert!(a.status < 300, "{}", a.body);
    wait_for("door-a on every member", WAIT, || {
        has_rule("elementary", "door-a") && has_rule("highschool", "door-a")
    });
    // A subscriber refuses changes to synced tables, naming the publisher.
    let refused = put("highschool", "door-b");
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert!(refused.body.contains("office"), "{}", refused.body);
    // Move the publisher, once the new one holds the latest generation
    // (the move is refused before); changes are then made there.
    wait_for("every member holds the latest generation", WAIT, || {
        c.view("highschool").is_some_and(|v| {
            let gens: Vec<u64> = v["members"]
                .as_array()
                .map(|m| m.iter().filter_map(|m| m["generation"].as_u64()).collect())
                .unwrap_or_default();
            gens.len() == 3 && gens.iter().all(|g| *g == gens[0])
        })
    });
    // A generation published meanwhile makes the move wait again (it is
    // refused until elementary has it too): ask until it is taken.
    let mut last = String::new();
    wait_for("the publisher moved to elementary", WAIT, || {
        let r = cli(&c, "highschool", &["publisher", "elementary"]);
        last = format!("{}{}", r.stdout, r.stderr);
        assert!(
            r.status.success() || last.contains("catch up"),
            "refused for another reason: {last}"
        );
        r.status.success()
    });
    wait_for("every node sees the new publisher", WAIT, || {
        ["office", "elementary", "highschool"]
            .iter()
            .all(|n| c.view(n).is_some_and(|v| v["publisher"] == "elementary"))
    });
    let b = put("elementary", "door-b");
    assert!(b.status < 300, "{}", b.body);
    wait_for("door-b on every member", WAIT, || {
        has_rule("office", "door-b") && has_rule("highschool", "door-b")
    });
    assert_eq!(put("office", "door-c").status, 409);
}
