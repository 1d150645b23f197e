//! A real `tandem serve` process, real HTTP on loopback, a real webhook
//! receiver, the real sample rules.

use std::path::Path;
use std::time::Duration;

use tandem_tests::http::{get, post, request};
use tandem_tests::node::{NodeProc, write_config};
use tandem_tests::webhook::Webhook;
use tandem_tests::{assemble, fixtures_dir, sample_wasm};

const WAIT: Duration = Duration::from_secs(30);

fn rules_dir(dir: &Path, rules: &[(&str, &str)]) -> std::path::PathBuf {
    let rules_dir = dir.join("rules");
    std::fs::create_dir_all(&rules_dir).expect("mkdir");
    for (file, krate) in rules {
        std::fs::copy(sample_wasm(krate), rules_dir.join(format!("{file}.wasm")))
            .expect("copy rule");
    }
    rules_dir
}

/// A node config with panic-button and a webhook sink on a port nobody
/// listens on yet (`sink_extra`: more sink keys); returns the port.
fn unreachable_sink(dir: &Path, sink_extra: &str) -> (u16, std::path::PathBuf) {
    let port = tandem_tests::free_port();
    let rd = rules_dir(dir, &[("panic", "panic_button")]);
    let extra = format!(
        "[rules]\ndir = \"{}\"\n\n[[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{port}/notify\"\n{sink_extra}",
        rd.display()
    );
    (port, write_config(dir, "n1", &extra))
}

fn sink(hook: &Webhook) -> String {
    format!(
        "[[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n",
        hook.url()
    )
}

fn start(dir: &Path, rules: &[(&str, &str)], hook: &Webhook) -> NodeProc {
    let rd = rules_dir(dir, rules);
    let extra = format!("[rules]\ndir = \"{}\"\n\n{}", rd.display(), sink(hook));
    let config = write_config(dir, "n1", &extra);
    NodeProc::start(dir, &config)
}

fn send(node: &NodeProc, body: &str) -> serde_json::Value {
    let a = post(node.admin(), "/api/v1/signals", Some("ingest"), body);
    assert_eq!(a.status, 202, "{}", a.body);
    a.json()
}

fn notifications(node: &NodeProc, query: &str) -> Vec<serde_json::Value> {
    let a = get(
        node.admin(),
        &format!("/api/v1/notifications{query}"),
        Some("admin"),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    a.json().as_array().cloned().unwrap_or_default()
}

/// Poll the API until `pred` holds (the node's own state is the event).
fn wait_api(what: &str, mut pred: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !pred() {
        assert!(started.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn a_signal_becomes_exactly_one_webhook_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hook = Webhook::start();
    let node = start(dir.path(), &[("panic", "panic_button")], &hook);
    let reply = send(
        &node,
        r#"{"name":"PANIC-1","source":"button-7","key":"b7#1","fields":{"location":"lobby"}}"#,
    );
    assert_eq!(reply["state"], "active");
    assert_eq!(reply["accepted"][0]["executed"], true);
    assert_eq!(reply["active"], node.admin());

    let got = hook.wait_for_delivered(1, WAIT);
    wait_api("the row to be sent", || {
        notifications(&node, "?status=sent").len() == 1
    });
    let got_after = hook.received();
    assert_eq!(got_after.len(), 1, "exactly one call: {got_after:#?}");
    let body = &got[0].body;
    assert_eq!(got[0].idempotency_key.as_deref(), body["id"].as_str());
    assert_eq!(body["rule"], "panic");
    assert_eq!(body["node"], "n1");
    assert_eq!(body["to"], "group:security");
    assert_eq!(body["channel"], "default");
    assert_eq!(body["subject"], "PANIC at lobby");
    assert!(
        body["body"]
            .as_str()
            .is_some_and(|b| b.contains("button-7"))
    );
    assert_eq!(body["signal"]["key"], "b7#1");
    assert_eq!(body["signal"]["name"], "PANIC-1");
    assert_eq!(body["signal"]["replayed"], false);
}

/// A door left open notifies when its time is up with no further signal:
/// the rule's timer comes due as a TIMER to it alone, an event of its own,
/// whose raise is an event linked to it.
#[test]
fn a_rule_timer_fires_with_no_further_signal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hook = Webhook::start();
    let rd = rules_dir(dir.path(), &[("door", "door_held_open")]);
    std::fs::write(rd.join("door.toml"), "[config]\nseconds = 0.3\n").expect("sidecar");
    let extra = format!("[rules]\ndir = \"{}\"\n\n{}", rd.display(), sink(&hook));
    let node = NodeProc::start(dir.path(), &write_config(dir.path(), "n1", &extra));
    let sent = std::time::Instant::now();
    send(&node, r#"{"name":"DOOR-5-OPEN","key":"d5"}"#);
    let got = hook.wait_for_delivered(1, WAIT);
    assert!(
        sent.elapsed() >= Duration::from_millis(300),
        "not before it was due"
    );
    assert_eq!(got[0].body["subject"], "Door 5 held open");
    assert_eq!(got[0].body["signal"]["name"], "TIMER");
    let events = |name: &str| {
        let a = get(
            node.admin(),
            &format!("/api/v1/events?name={name}"),
            Some("admin"),
        );
        assert_eq!(a.status, 200, "{}", a.body);
        a.json().as_array().cloned().unwrap_or_default()
    };
    let timers = events("TIMER");
    assert_eq!(timers.len(), 1, "{timers:?}");
    assert_eq!(
        (timers[0]["status"].as_str(), timers[0]["source"].as_str()),
        (Some("executed"), Some("door"))
    );
    let raised = events("DOOR-HELD-OPEN");
    assert_eq!(raised.len(), 1, "{raised:?}");
    assert_eq!(raised[0]["parent"], timers[0]["id"]);
    assert_eq!(raised[0]["fields"]["door"], "5");
    // Nothing more is due: one notification in all.
    assert_eq!(hook.received().len(), 1);
    // Nobody else may send a TIMER.
    let a = post(
        node.admin(),
        "/api/v1/signals",
        Some("ingest"),
        r#"{"name":"TIMER"}"#,
    );
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(a.body.contains("raised by the host only"), "{}", a.body);
}

#[test]
fn group_recipients_resolve_to_members() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hook = Webhook::start();
    let node = start(dir.path(), &[("panic", "panic_button")], &hook);
    let db = rusqlite::Connection::open(node.db()).expect("open db");
    db.execute_batch(
        "INSERT INTO person (id, name, address) VALUES (1, 'ann', 'ann@example.org'), (2, 'bob', 'bob@example.org');
         INSERT INTO contact_group (id, name) VALUES (1, 'security');
         INSERT INTO group_member VALUES (1, 1), (1, 2);",
    )
    .expect("contacts");
    send(&node, r#"{"name":"PANIC-1","key":"g1"}"#);
    let got = hook.wait_for_delivered(2, WAIT);
    let mut to: Vec<&str> = got.iter().filter_map(|r| r.body["to"].as_str()).collect();
    to.sort();
    assert_eq!(to, ["ann@example.org", "bob@example.org"]);
    assert_ne!(
        got[0].idempotency_key, got[1].idempotency_key,
        "one id per recipient"
    );
}

#[test]
fn a_failing_webhook_is_retried_until_it_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hook = Webhook::start();
    hook.answer_with(&[503, 429, 500]);
    let node = start(dir.path(), &[("panic", "panic_button")], &hook);
    send(&node, r#"{"name":"PANIC-1","key":"r1"}"#);
    let got = hook.wait_for_delivered(1, WAIT);
    assert_eq!(got.len(), 4, "three refusals, then delivered");
    assert!(
        got.iter()
            .all(|r| r.idempotency_key == got[0].idempotency_key)
    );
    wait_api("sent after 4 attempts", || {
        notifications(&node, "?status=sent")
            .first()
            .is_some_and(|n| n["attempts"] == 4)
    });
}

#[test]
fn a_4xx_fails_at_once_and_raises_notify_failed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hook = Webhook::start();
    hook.answer_with(&[400]);
    let node = start(dir.path(), &[("panic", "panic_button")], &hook);
    send(&node, r#"{"name":"PANIC-1","key":"f1"}"#);
    wait_api("a failed row", || {
        notifications(&node, "?status=failed").len() == 1
    });
    assert_eq!(hook.received().len(), 1, "no retry after a 400");
    wait_api("NOTIFY-FAILED in the event log", || {
        get(
            node.admin(),
            "/api/v1/events?name=NOTIFY-FAILED",
            Some("admin"),
        )
        .json()
        .as_array()
        .is_some_and(|a| a.len() == 1)
    });
}

#[test]
fn signals_and_pending_notifications_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A port with nobody on it yet: deliveries fail and stay pending.
    let (port, config) = unreachable_sink(dir.path(), "max_attempts = 50\n");
    let mut node = NodeProc::start(dir.path(), &config);
    let batch: Vec<String> = (0..20)
        .map(|i| format!(r#"{{"name":"PANIC-{i}","key":"k{i}"}}"#))
        .collect();
    let reply = send(&node, &format!("[{}]", batch.join(",")));
    assert_eq!(reply["accepted"].as_array().map(Vec::len), Some(20));
    node.kill9();

    let hook = Webhook::start_on(&format!("127.0.0.1:{port}"));
    node.restart();
    let events = get(node.admin(), "/api/v1/events?limit=1000", Some("admin")).json();
    assert_eq!(
        events.as_array().map(Vec::len),
        Some(20),
        "every acknowledged signal survived"
    );
    hook.wait_for_delivered(20, WAIT);
    wait_api("all 20 sent", || {
        notifications(&node, "?status=sent&limit=1000").len() == 20
    });
    let mut keys: Vec<String> = hook
        .received()
        .iter()
        .filter(|r| r.answered == 200)
        .filter_map(|r| r.idempotency_key.clone())
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 20, "each delivered once");
    assert_eq!(hook.received().len(), 20);
}

#[test]
fn a_notification_older_than_max_age_expires_unsent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, config) = unreachable_sink(dir.path(), "max_age = \"1s\"\nmax_attempts = 100\n");
    let node = NodeProc::start(dir.path(), &config);
    send(&node, r#"{"name":"PANIC-1","key":"old"}"#);
    wait_api("the row to expire", || {
        notifications(&node, "?status=expired").len() == 1
    });
}

#[test]
fn bad_input_over_real_http() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hook = Webhook::start();
    let node = start(dir.path(), &[("panic", "panic_button")], &hook);
    let a = node.admin();
    let cases: Vec<(&str, Option<&str>, Vec<u8>, u16)> = vec![
        ("/api/v1/signals", None, br#"{"name":"X"}"#.to_vec(), 401),
        (
            "/api/v1/signals",
            Some("nope"),
            br#"{"name":"X"}"#.to_vec(),
            401,
        ),
        (
            "/api/v1/signals",
            Some("ingest"),
            b"{\"name\": ".to_vec(),
            400,
        ),
        (
            "/api/v1/signals",
            Some("ingest"),
            br#"{"name":"FAILOVER-OFF"}"#.to_vec(),
            400,
        ),
        ("/api/v1/signals", Some("ingest"), vec![b' '; 3 << 20], 413),
    ];
    for (path, token, body, status) in cases {
        let r = request("POST", a, path, token, &body);
        assert_eq!(r.status, status, "{path} {token:?}: {}", r.body);
        let v = r.json();
        assert!(v["error"].is_string() && v["code"].is_string(), "{v}");
    }
    let r = request(
        "PUT",
        a,
        "/api/v1/scripts/panic",
        Some("admin"),
        b"\0asm\x01\0\0\0junk",
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("not a valid WebAssembly module"))
    );
    let r = request("PUT", a, "/api/v1/scripts/panic", Some("ingest"), b"x");
    assert_eq!(r.status, 401);
    // Nothing of the refused requests was stored; the old rule still runs.
    assert_eq!(
        get(a, "/api/v1/events", Some("admin"))
            .json()
            .as_array()
            .map(Vec::len),
        Some(0)
    );
    assert_eq!(
        send(&node, r#"{"name":"PANIC-1"}"#)["accepted"][0]["executed"],
        true
    );
    hook.wait_for_delivered(1, WAIT);
    // Garbage on the admin port does not hurt the node.
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(a.trim_start_matches("http://")).expect("connect");
        let _ = s.write_all(b"\x16\x03\x01garbage\r\n\r\n");
    }
    assert_eq!(get(a, "/status", None).status, 200);
}

#[test]
fn the_rules_directory_hot_reloads_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hook = Webhook::start();
    let node = start(dir.path(), &[], &hook);
    let rd = dir.path().join("rules");
    let rule_loaded = |pred: &dyn Fn(&serde_json::Value) -> bool| {
        wait_api("the rule to reload", || {
            let r = get(node.admin(), "/api/v1/rules/panic", Some("admin"));
            r.status == 200 && pred(&r.json())
        })
    };
    std::fs::write(
        rd.join("panic.toml"),
        "[config]\nto = \"first@example.org\"\n",
    )
    .expect("toml");
    std::fs::copy(sample_wasm("panic_button"), rd.join("panic.wasm")).expect("copy");
    rule_loaded(&|v| v["loaded"] == true && v["config"]["to"] == "first@example.org");
    send(&node, r#"{"name":"PANIC-1","key":"h1"}"#);
    assert_eq!(
        hook.wait_for_delivered(1, WAIT)[0].body["to"],
        "first@example.org"
    );

    std::fs::write(
        rd.join("panic.toml"),
        "signals = [\"BELL-*\"]\n[config]\nto = \"second@example.org\"\n",
    )
    .expect("toml");
    rule_loaded(&|v| v["config"]["to"] == "second@example.org");
    send(&node, r#"{"name":"BELL-1","key":"h2"}"#);
    let got = hook.wait_for_delivered(2, WAIT);
    assert_eq!(got[1].body["to"], "second@example.org");

    // A broken module: the error shows on the status, the old version runs.
    std::fs::write(rd.join("panic.wasm"), b"\0asm\x01\0\0\0broken").expect("write");
    wait_api("the reload error on /api/v1/status", || {
        let st = get(node.admin(), "/api/v1/status", Some("admin")).json();
        st["rules"]["last_reload_errors"]
            .as_array()
            .is_some_and(|e| {
                e.iter()
                    .any(|m| m.as_str().is_some_and(|m| m.contains("rule `panic`")))
            })
    });
    send(&node, r#"{"name":"BELL-1","key":"h2b"}"#);
    assert_eq!(
        hook.wait_for_delivered(3, WAIT)[2].body["to"],
        "second@example.org"
    );

    std::fs::remove_file(rd.join("panic.wasm")).expect("rm");
    rule_loaded(&|v| v["enabled"] == false);
    let reply = send(&node, r#"{"name":"BELL-2","key":"h3"}"#);
    assert_eq!(reply["accepted"][0]["executed"], true);
    let events = get(node.admin(), "/api/v1/events?name=BELL-2", Some("admin")).json();
    assert_eq!(
        events[0]["outcome"],
        serde_json::json!([]),
        "a disabled rule does not run"
    );
    assert!(node.log().contains("rule file removed"), "{}", node.log());
}

#[test]
fn a_rule_that_traps_under_load_does_not_stop_the_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hook = Webhook::start();
    let rd = rules_dir(dir.path(), &[("panic", "panic_button")]);
    assemble(&fixtures_dir().join("trap.wat"), &rd);
    std::fs::write(rd.join("trap.toml"), "signals = [\"PANIC-*\"]\n").expect("toml");
    let extra = format!("[rules]\ndir = \"{}\"\n\n{}", rd.display(), sink(&hook));
    let config = write_config(dir.path(), "n1", &extra);
    let node = NodeProc::start(dir.path(), &config);
    for batch in 0..10 {
        let signals: Vec<String> = (0..20)
            .map(|i| {
                format!(
                    r#"{{"name":"PANIC-{i}","key":"t{batch}-{i}","fields":{{"location":"hall"}}}}"#
                )
            })
            .collect();
        send(&node, &format!("[{}]", signals.join(",")));
    }
    let got = hook.wait_for_delivered(200, WAIT);
    let mut ids: Vec<_> = got
        .iter()
        .filter_map(|r| r.idempotency_key.clone())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 200, "every panic notified once");
    let trap = get(node.admin(), "/api/v1/rules/trap", Some("admin")).json();
    assert_eq!(trap["quarantined"], true, "{trap}");
    let status = get(node.admin(), "/api/v1/status", Some("admin")).json();
    assert_eq!(status["rules"]["quarantined"], serde_json::json!(["trap"]));
    let metrics = get(node.admin(), "/metrics", None).body;
    assert!(metrics.contains("tandem_rule_traps_total 5"), "{metrics}");
}

/// Wait until rule `name` exists and `pred` holds for it.
fn wait_rule(node: &NodeProc, name: &str, pred: &dyn Fn(&serde_json::Value) -> bool) {
    wait_api(&format!("rule `{name}`"), || {
        let r = get(
            node.admin(),
            &format!("/api/v1/rules/{name}"),
            Some("admin"),
        );
        r.status == 200 && pred(&r.json())
    })
}

#[test]
fn an_api_change_is_not_reverted_by_an_unchanged_file_and_a_file_change_wins_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hook = Webhook::start();
    let rd = rules_dir(dir.path(), &[("k", "panic_button")]);
    std::fs::write(rd.join("k.toml"), "[config]\nto = \"file@example.org\"\n").expect("toml");
    let extra = format!("[rules]\ndir = \"{}\"\n\n{}", rd.display(), sink(&hook));
    let config = write_config(dir.path(), "n1", &extra);
    let node = NodeProc::start(dir.path(), &config);
    wait_rule(&node, "k", &|r| r["config"]["to"] == "file@example.org");
    let a = request(
        "PUT",
        node.admin(),
        "/api/v1/rules/k",
        Some("admin"),
        br#"{"script":"k","config":{"to":"api@example.org"}}"#,
    );
    assert_eq!(a.status, 200, "{}", a.body);
    // The same bytes written again, then a new file: the scan that installs
    // the new one has looked at `k` too.
    let wasm = std::fs::read(rd.join("k.wasm")).expect("read");
    std::fs::write(rd.join("k.wasm"), &wasm).expect("rewrite");
    std::fs::write(rd.join("k.toml"), "[config]\nto = \"file@example.org\"\n").expect("toml");
    std::fs::copy(sample_wasm("panic_button"), rd.join("later.wasm")).expect("copy");
    wait_rule(&node, "later", &|r| r["loaded"] == true);
    let k = get(node.admin(), "/api/v1/rules/k", Some("admin")).json();
    assert_eq!(k["config"]["to"], "api@example.org", "{k}");
    // A real change of the file wins over the API's.
    std::fs::write(rd.join("k.toml"), "[config]\nto = \"file2@example.org\"\n").expect("toml");
    wait_rule(&node, "k", &|r| r["config"]["to"] == "file2@example.org");
}

#[test]
fn a_bad_sidecar_is_reported_once_and_shown_in_the_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hook = Webhook::start();
    let node = start(dir.path(), &[], &hook);
    assert!(
        !node.log().contains("cannot read the rules directory"),
        "the directory is created first: {}",
        node.log()
    );
    let rd = dir.path().join("rules");
    std::fs::copy(sample_wasm("panic_button"), rd.join("bad.wasm")).expect("copy");
    std::fs::write(rd.join("bad.toml"), "signals = [not toml\n").expect("toml");
    let errors = || {
        get(node.admin(), "/api/v1/status", Some("admin")).json()["rules"]["last_reload_errors"]
            .to_string()
    };
    wait_api("the error in the status", || errors().contains("bad.toml"));
    // Two more scans, seen by the rules they install.
    for extra in ["x1", "x2"] {
        std::fs::copy(
            sample_wasm("panic_button"),
            rd.join(format!("{extra}.wasm")),
        )
        .expect("copy");
        wait_rule(&node, extra, &|r| r["loaded"] == true);
    }
    let reported = node
        .log()
        .lines()
        .filter(|l| l.contains("rules directory") && l.contains("bad.toml"))
        .count();
    assert_eq!(reported, 1, "{}", node.log());
    std::fs::write(rd.join("bad.toml"), "signals = [\"BAD-*\"]\n").expect("fix");
    wait_rule(&node, "bad", &|r| r["loaded"] == true);
    assert!(!errors().contains("bad.toml"), "{}", errors());
}
