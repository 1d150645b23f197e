//! Nothing lost, nothing twice: keyed signals sent to both nodes of a real
//! pair, through handbacks, switchovers and kill -9, counted at a webhook
//! by signal key and notification id (DESIGN.md §4, the model's I2 and I3
//! traces).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tandem_tests::http::{get, post, try_request};
use tandem_tests::node::NodeProc;
use tandem_tests::pair::*;
use tandem_tests::webhook::Received;

/// panic-button on every `K-*` signal: one notification per key.
const K_RULE: (&str, &str, &str) = ("k", "panic_button", "signals = [\"K-*\"]\n");

fn opts() -> Opts {
    Opts {
        rules: vec![K_RULE],
        ..Opts::default()
    }
}

fn send(node: &NodeProc, key: &str) -> Option<serde_json::Value> {
    let body = format!(r#"{{"name":"K-1","key":"{key}"}}"#);
    let a = try_request(
        "POST",
        node.admin(),
        "/api/v1/signals",
        Some("ingest"),
        body.as_bytes(),
    )?;
    (a.status == 202).then(|| a.json())
}

/// Send `key` to both nodes (a node that is down just misses it).
fn send_both(pair: &Pair, key: &str) {
    let _ = send(&pair.p, key);
    let _ = send(&pair.s, key);
}

/// Delivered notifications of K- signals: signal key -> set of ids, and
/// how many deliveries in all per key.
fn by_key(got: &[Received]) -> BTreeMap<String, (BTreeSet<String>, usize)> {
    let mut m: BTreeMap<String, (BTreeSet<String>, usize)> = BTreeMap::new();
    for r in got
        .iter()
        .filter(|r| r.answered < 300 && r.body["signal"]["name"] == "K-1")
    {
        let key = r.body["signal"]["key"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let e = m.entry(key).or_default();
        e.0.insert(r.idempotency_key.clone().unwrap_or_default());
        e.1 += 1;
    }
    m
}

fn event_status(node: &NodeProc, key: &str) -> Vec<String> {
    let events = get(
        node.admin(),
        "/api/v1/events?limit=1000&name=K-1",
        Some("admin"),
    )
    .json();
    events
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["key"] == key)
        .map(|e| e["status"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn handback_runs_each_key_exactly_once() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut pair = start_pair(opts(), None);
    wait_normal(&pair);
    pair.p.kill9();
    wait_until("S active", WAIT, || status(&pair.s).0 == 200);
    // k1 reaches the active secondary only and runs there.
    assert_eq!(
        send(&pair.s, "k1").expect("202")["accepted"][0]["executed"],
        true
    );
    pair.p.restart();
    // While the primary is back but standby: k2 reaches both, k3 only it.
    wait_until("P linked, standby", WAIT, || {
        status(&pair.p).0 == 503
            && get(pair.p.admin(), "/api/v1/status", Some("admin")).json()["peer"]["link_state"]
                == "up"
    });
    send_both(&pair, "k2");
    assert_eq!(
        send(&pair.p, "k3").expect("202")["accepted"][0]["executed"],
        false
    );
    wait_normal(&pair);
    // A late copy of k1 reaches the primary after the handback: not again.
    let late = send(&pair.p, "k1").expect("202");
    assert_eq!(late["accepted"][0]["executed"], false, "{late}");
    pair.hook.wait_until(WAIT, |g| by_key(g).len() == 3);
    std::thread::sleep(Duration::from_millis(800));
    let got = by_key(&pair.hook.received());
    for k in ["k1", "k2", "k3"] {
        let (ids, n) = &got[k];
        assert_eq!((ids.len(), *n), (1, 1), "{k} ran exactly once: {got:?}");
    }
    assert!(
        event_status(&pair.p, "k2").contains(&"covered".to_owned()),
        "{:?}",
        event_status(&pair.p, "k2")
    );
    assert!(
        event_status(&pair.p, "k3").contains(&"executed".to_owned()),
        "k3 replayed at the handback"
    );
}

#[test]
fn takeover_replays_what_only_the_secondary_got_and_not_what_the_primary_reported() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut pair = start_pair(opts(), None);
    wait_normal(&pair);
    // k4 reaches only the standby secondary: stored as pending.
    assert_eq!(
        send(&pair.s, "k4").expect("202")["accepted"][0]["executed"],
        false
    );
    // k5 reaches both: the primary runs it and streams the key.
    send_both(&pair, "k5");
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(
            "k5 covered on the secondary",
            Duration::from_secs(5),
            || event_status(&pair.s, "k5") == ["covered"],
        )
    }));
    if waited.is_err() {
        eprintln!(
            "S events: {}",
            get(pair.s.admin(), "/api/v1/events", Some("admin")).body
        );
        eprintln!(
            "P events: {}",
            get(pair.p.admin(), "/api/v1/events", Some("admin")).body
        );
        eprintln!("S log: {}", pair.s.log());
        panic!("k5 not covered");
    }
    assert_eq!(event_status(&pair.s, "k4"), ["pending"]);
    pair.p.kill9();
    pair.hook.wait_until(WAIT, |g| by_key(g).len() == 2);
    std::thread::sleep(Duration::from_millis(600));
    let received = pair.hook.received();
    let got = by_key(&received);
    assert_eq!(
        (got["k4"].0.len(), got["k4"].1),
        (1, 1),
        "k4 delivered once, under one id: {got:?}"
    );
    assert_eq!(got["k5"].1, 1, "k5 not replayed: {got:?}");
    let k4 = received
        .iter()
        .find(|r| r.body["signal"]["key"] == "k4")
        .expect("k4");
    assert_eq!(k4.body["signal"]["replayed"], true);
    assert_eq!(k4.body["node"], "wat4120");
}

#[test]
fn keys_sent_to_both_nodes_through_20_switchover_cycles_run_once_each() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let pair = start_pair(opts(), None);
    wait_normal(&pair);
    let mut keys = Vec::new();
    for cycle in 0..20 {
        for half in ["a", "b"] {
            for i in 0..3 {
                let key = format!("c{cycle}{half}{i}");
                send_both(&pair, &key);
                keys.push(key);
            }
            let from = if half == "a" { &pair.p } else { &pair.s };
            let a = post(from.admin(), "/api/v1/switchover", Some("admin"), "");
            assert_eq!(a.status, 200, "cycle {cycle}{half}: {}", a.body);
            let to = if half == "a" { &pair.s } else { &pair.p };
            wait_until("the switchover", WAIT, || status(to).0 == 200);
        }
    }
    pair.hook
        .wait_until(WAIT, |g| by_key(g).len() == keys.len());
    std::thread::sleep(Duration::from_millis(800));
    let got = by_key(&pair.hook.received());
    for k in &keys {
        let (ids, n) = &got[k];
        assert_eq!((ids.len(), *n), (1, 1), "{k}: {got:?}");
    }
}

#[test]
fn keys_sent_to_both_nodes_through_20_kill_9_cycles_are_never_lost() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut pair = start_pair(opts(), None);
    wait_normal(&pair);
    let mut keys = Vec::new();
    for cycle in 0..20 {
        for i in 0..3 {
            let key = format!("x{cycle}p{i}");
            send_both(&pair, &key);
            keys.push(key);
        }
        pair.p.kill9();
        for i in 0..2 {
            let key = format!("x{cycle}d{i}");
            send_both(&pair, &key); // the primary is down: only S gets it
            keys.push(key);
        }
        wait_until("S active", WAIT, || status(&pair.s).0 == 200);
        pair.p.restart();
        wait_normal(&pair);
    }
    pair.hook
        .wait_until(WAIT, |g| by_key(g).len() == keys.len());
    std::thread::sleep(Duration::from_millis(800));
    let got = by_key(&pair.hook.received());
    for k in &keys {
        let (ids, n) = got.get(k).unwrap_or_else(|| panic!("{k} lost"));
        assert_eq!(
            ids.len(),
            1,
            "{k}: any repeat carries the same id: {n} deliveries"
        );
    }
}

#[test]
fn copy_back_tags_the_secondary_rows_and_resumes_after_a_kill() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let o = Opts {
        advanced: "copyback_batch = 4\ncopyback_delay = \"300ms\"",
        ..opts()
    };
    let mut pair = start_pair(o, None);
    wait_normal(&pair);
    pair.p.kill9();
    wait_until("S active", WAIT, || status(&pair.s).0 == 200);
    for i in 0..24 {
        assert_eq!(
            send(&pair.s, &format!("cb{i}")).expect("202")["accepted"][0]["executed"],
            true
        );
    }
    pair.hook.wait_until(WAIT, |g| by_key(g).len() == 24);
    pair.p.restart();
    wait_normal(&pair);
    let notes = |node: &NodeProc| -> Vec<serde_json::Value> {
        get(
            node.admin(),
            "/api/v1/notifications?node=wat4120&limit=1000",
            Some("admin"),
        )
        .json()
        .as_array()
        .cloned()
        .unwrap_or_default()
    };
    let ids = |rows: &[serde_json::Value]| -> BTreeSet<String> {
        rows.iter()
            .map(|n| n["id"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let executed_events = |node: &NodeProc| -> usize {
        get(node.admin(), "/api/v1/events?limit=1000", Some("admin"))
            .json()
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["node"] == "wat4120" && e["status"] == "executed")
            .count()
    };
    // What the secondary made during its tenure: the 24 K notifications and
    // a FAILOVER-ON and -OFF per failover (a loaded machine can add a
    // failover at the start, before the primary's first heartbeat).
    let made = notes(&pair.s);
    let subjects = |rows: &[serde_json::Value], needle: &str| {
        rows.iter()
            .filter(|n| n["subject"].as_str().is_some_and(|s| s.contains(needle)))
            .count()
    };
    assert_eq!(subjects(&made, "PANIC"), 24, "{made:?}");
    assert!(subjects(&made, "offline") >= 1 && subjects(&made, "back online") >= 1);
    let expected = ids(&made);
    // Kill the secondary in the middle of the copy-back.
    wait_until("a few batches copied", WAIT, || notes(&pair.p).len() >= 8);
    pair.s.kill9();
    let partial = notes(&pair.p).len();
    assert!(
        partial < expected.len(),
        "the kill came before the end ({partial})"
    );
    pair.s.restart();
    wait_until("every row copied", WAIT, || {
        ids(&notes(&pair.p)) == expected
    });
    let rows = notes(&pair.p);
    assert_eq!(rows.len(), expected.len(), "no duplicates");
    assert!(rows.iter().all(|n| n["node"] == "wat4120"));
    assert!(
        rows.iter().all(|n| n["status"] != "pending"),
        "never queued on the primary"
    );
    assert_eq!(
        executed_events(&pair.p),
        executed_events(&pair.s),
        "the secondary's executed events, tagged"
    );
    // The primary delivered none of them itself.
    std::thread::sleep(Duration::from_millis(500));
    let got = by_key(&pair.hook.received());
    assert!(got.values().all(|(_, n)| *n == 1), "{got:?}");
}

/// The model's I3a trace: k1 reaches the standby secondary; the primary
/// crashes, restarts and gets k1 before (or just as) it reconnects. The
/// primary must run k1, once.
#[test]
fn a_key_stored_by_both_while_the_primary_restarts_runs_once() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut pair = start_pair(opts(), None);
    wait_normal(&pair);
    pair.p.kill9();
    assert_eq!(
        send(&pair.s, "i3").expect("202")["accepted"][0]["executed"],
        false
    );
    pair.p.restart();
    let _ = send(&pair.p, "i3");
    wait_normal(&pair);
    pair.hook.wait_until(WAIT, |g| by_key(g).contains_key("i3"));
    std::thread::sleep(Duration::from_millis(800));
    let got = by_key(&pair.hook.received());
    assert_eq!(got["i3"].1, 1, "{got:?}");
    assert_eq!(status(&pair.s).0, 503, "no takeover happened");
    wait_until("i3 covered on the secondary", WAIT, || {
        event_status(&pair.s, "i3") == ["covered"]
    });
}

/// The traces the model calls not fixable without extra assumptions: a
/// repeat is possible, but never a loss, and the repeat carries the same
/// notification id.
#[test]
fn unfixable_traces_lose_nothing_and_repeat_with_the_same_id() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut pair = start_pair(opts(), None);
    wait_normal(&pair);
    // A (takeover): the primary runs u1 and dies at once; a late u1
    // reaches the secondary after its takeover.
    assert_eq!(
        send(&pair.p, "u1").expect("202")["accepted"][0]["executed"],
        true
    );
    pair.p.kill9();
    wait_until("S active", WAIT, || status(&pair.s).0 == 200);
    let _ = send(&pair.s, "u1");
    // C (grace): the secondary runs u2 and dies; the primary comes back
    // alone, activates by grace, and then u2 reaches it.
    assert_eq!(
        send(&pair.s, "u2").expect("202")["accepted"][0]["executed"],
        true
    );
    pair.s.kill9();
    pair.p.restart();
    wait_until("P active by grace", WAIT, || status(&pair.p).0 == 200);
    let _ = send(&pair.p, "u2");
    pair.hook.wait_until(WAIT, |g| {
        let m = by_key(g);
        m.contains_key("u1") && m.contains_key("u2")
    });
    std::thread::sleep(Duration::from_millis(800));
    let got = by_key(&pair.hook.received());
    for k in ["u1", "u2"] {
        assert_eq!(
            got[k].0.len(),
            1,
            "{k}: every delivery under one id: {got:?}"
        );
    }
}
