//! A standalone node attacked the way a hostile tester did: slowloris on
//! the admin port, a rule that silences every other, a raise bomb, a log
//! flood, rule names that are paths, control characters or SQL, and a
//! weak pair secret. Each test fails on a node without the fix.

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tandem_tests::http::{get, post, request};
use tandem_tests::node::{NodeProc, write_config};
use tandem_tests::webhook::Webhook;
use tandem_tests::{sample_wasm, tandem};

const WAIT: Duration = Duration::from_secs(30);

/// A node with panic-button in its rules directory, notifying `hook`.
fn node_config(dir: &Path, hook: &Webhook, extra: &str) -> PathBuf {
    let rd = dir.join("rules");
    std::fs::create_dir_all(&rd).expect("mkdir");
    std::fs::copy(sample_wasm("panic_button"), rd.join("panic.wasm")).expect("copy");
    let text = format!(
        "[rules]\ndir = \"{}\"\n{extra}\n[[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n",
        rd.display(),
        hook.url()
    );
    write_config(dir, "n1", &text)
}

fn panic_is_notified(node: &NodeProc, hook: &Webhook, key: &str) {
    let before = hook.received().len();
    let a = post(
        node.admin(),
        "/api/v1/signals",
        Some("ingest"),
        &format!(r#"{{"name":"PANIC-1","key":"{key}","fields":{{"location":"hall"}}}}"#),
    );
    assert_eq!(a.status, 202, "{}", a.body);
    hook.wait_for_delivered(before + 1, WAIT);
}

fn metric(node: &NodeProc, line_start: &str) -> f64 {
    let text = get(node.admin(), "/metrics", None).body;
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Upload a module assembled from `wat` as script `name`, and a rule of
/// the same name on `signals` (a JSON array), with a 10 s deadline (the
/// node under test is a debug build).
fn upload(node: &NodeProc, name: &str, wat: &str, signals: &str) {
    let wasm = wat::parse_str(wat).expect("wat");
    let a = request(
        "PUT",
        node.admin(),
        &format!("/api/v1/scripts/{name}"),
        Some("admin"),
        &wasm,
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let rule = format!(r#"{{"script":"{name}","signals":{signals},"deadline":"10s"}}"#);
    let a = request(
        "PUT",
        node.admin(),
        &format!("/api/v1/rules/{name}"),
        Some("admin"),
        rule.as_bytes(),
    );
    assert_eq!(a.status, 200, "{}", a.body);
}

/// WAT bytes of `data` as a string literal body.
fn wat_bytes(data: &[u8]) -> String {
    data.iter().map(|b| format!("\\{b:02x}")).collect()
}

/// A module that, per call, calls `tandem.emit` with `action` (msgpack)
/// `emits` times, and `tandem.log` with a 4 KiB line `logs` times.
fn module(action: &[u8], emits: u32, logs: u32) -> String {
    format!(
        r#"(module
          (import "tandem" "emit" (func $emit (param i32 i32)))
          (import "tandem" "log" (func $log (param i32 i32 i32)))
          (memory (export "memory") 1)
          (data (i32.const 16) "{data}")
          (func (export "tandem_abi_v1"))
          (func (export "tandem_alloc") (param i32) (result i32) (i32.const 8192))
          (func (export "tandem_free") (param i32 i32))
          (func (export "tandem_on_signal") (param i32 i32) (result i32)
            (local $i i32)
            (block $done (loop $next
              (br_if $done (i32.ge_u (local.get $i) (i32.const {emits})))
              (call $emit (i32.const 16) (i32.const {len}))
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br $next)))
            (local.set $i (i32.const 0))
            (block $done (loop $next
              (br_if $done (i32.ge_u (local.get $i) (i32.const {logs})))
              (call $log (i32.const 2) (i32.const 16384) (i32.const 4096))
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br $next)))
            (i32.const 0)))"#,
        data = wat_bytes(action),
        len = action.len(),
    )
}

/// msgpack of `{"type": "raise", "name": NAME, "fields": {}}`.
fn raise_action(name: &str) -> Vec<u8> {
    let mut out = vec![0x83];
    for (k, v) in [("type", "raise"), ("name", name)] {
        for s in [k, v] {
            out.push(0xa0 | s.len() as u8);
            out.extend_from_slice(s.as_bytes());
        }
    }
    out.push(0xa6);
    out.extend_from_slice(b"fields");
    out.push(0x80);
    out
}

#[test]
fn slowloris_does_not_silence_status_ingest_or_delivery() {
    assert!(
        NodeProc::raise_own_fd_limit(4096),
        "the test needs 1,100 sockets of its own"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let hook = Webhook::start();
    let config = node_config(dir.path(), &hook, "");
    let node = NodeProc::start_limited(dir.path(), &config, 1024);
    let addr = node.admin().trim_start_matches("http://").to_owned();
    // 1,100 half-open requests: headers begun, never finished.
    let mut held = Vec::new();
    for _ in 0..1100 {
        if let Ok(mut s) = TcpStream::connect(&addr) {
            let _ = s.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n");
            held.push(s);
        }
    }
    assert!(held.len() > 1000, "the attack really held {}", held.len());
    let t = Instant::now();
    let a = get(node.admin(), "/status", None);
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "/status took {:?}",
        t.elapsed()
    );
    panic_is_notified(&node, &hook, "under-attack");
    assert!(
        metric(
            &node,
            "tandem_admin_connections_refused_total{reason=\"shed\"}"
        ) > 0.0,
        "connections were shed"
    );
    drop(held);
    assert!(node.log().lines().count() < 2000, "no log flood");
}

#[test]
fn one_rules_patterns_cannot_turn_off_the_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hook = Webhook::start();
    let config = node_config(dir.path(), &hook, "");
    let node = NodeProc::start(dir.path(), &config);
    // 20,000 patterns `P<i>*Q*R`, over the API.
    let signals: Vec<String> = (0..20_000).map(|i| format!("\"P{i}*Q*R\"")).collect();
    let body = format!(r#"{{"script":"panic","signals":[{}]}}"#, signals.join(","));
    let a = request(
        "PUT",
        node.admin(),
        "/api/v1/rules/bigpat",
        Some("admin"),
        body.as_bytes(),
    );
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(
        a.body.contains("bigpat") && a.body.contains("at most 256"),
        "{}",
        a.body
    );
    // `ZZ` and 100,000 `*A`.
    let body = format!(
        r#"{{"script":"panic","signals":["ZZ{}"]}}"#,
        "*A".repeat(100_000)
    );
    let a = request(
        "PUT",
        node.admin(),
        "/api/v1/rules/stars",
        Some("admin"),
        body.as_bytes(),
    );
    assert_eq!(a.status, 400, "{}", a.body);
    // 300 patterns through the rules directory: refused alone, and said.
    let rd = dir.path().join("rules");
    let many: Vec<String> = (0..300).map(|i| format!("\"S{i}-*\"")).collect();
    std::fs::copy(sample_wasm("panic_button"), rd.join("wide.wasm")).expect("copy");
    std::fs::write(
        rd.join("wide.toml"),
        format!("signals = [{}]\n", many.join(",")),
    )
    .expect("toml");
    let t = Instant::now();
    loop {
        let status = get(node.admin(), "/api/v1/status", Some("admin")).json();
        let errors = status["rules"]["last_reload_errors"].to_string();
        if errors.contains("wide") && errors.contains("at most 256") {
            break;
        }
        assert!(t.elapsed() < WAIT, "no error for `wide`: {status}");
        std::thread::sleep(Duration::from_millis(50));
    }
    panic_is_notified(&node, &hook, "still-dispatched");
}

#[test]
fn a_raise_bomb_is_capped_and_other_ingest_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hook = Webhook::start();
    let config = node_config(dir.path(), &hook, "max_runs_per_signal = 500");
    let node = NodeProc::start(dir.path(), &config);
    // BOMB-* raises four BOMB-X per call: 87,381 runs to depth 8 uncapped.
    upload(
        &node,
        "bomb",
        &module(&raise_action("BOMB-X"), 4, 0),
        r#"["BOMB-*"]"#,
    );
    let t = Instant::now();
    let a = post(
        node.admin(),
        "/api/v1/signals",
        Some("ingest"),
        r#"{"name":"BOMB-1","key":"b1"}"#,
    );
    assert_eq!(a.status, 202, "{}", a.body);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let events = get(node.admin(), "/api/v1/events?name=BOMB-1", Some("admin")).json();
    let outcome = events[0]["outcome"].as_array().cloned().expect("outcome");
    let runs = outcome.iter().filter(|r| r.get("rule").is_some()).count();
    assert!(runs <= 500, "{runs} runs");
    let capped = outcome
        .last()
        .and_then(|r| r["capped"].as_u64())
        .expect("the refused remainder is recorded");
    assert!(capped > 0);
    assert!(metric(&node, "tandem_fanout_refused_total") > 0.0);
    panic_is_notified(&node, &hook, "after-the-bomb");
    // Five bombs in a row quarantine the bomber.
    for i in 2..=5 {
        post(
            node.admin(),
            "/api/v1/signals",
            Some("ingest"),
            &format!(r#"{{"name":"BOMB-1","key":"b{i}"}}"#),
        );
    }
    let rule = get(node.admin(), "/api/v1/rules/bomb", Some("admin")).json();
    assert_eq!(rule["quarantined"], true, "{rule}");
}

#[test]
fn a_log_flood_is_rate_limited_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hook = Webhook::start();
    let config = node_config(dir.path(), &hook, "log_lines_per_second = 50");
    let node = NodeProc::start(dir.path(), &config);
    // 2,000 lines of 4 KiB per call, 10 calls: 80 MB unlimited.
    upload(&node, "chatty", &module(&[], 0, 2000), r#"["CHAT"]"#);
    let before = node.log().len();
    for i in 0..10 {
        let a = post(
            node.admin(),
            "/api/v1/signals",
            Some("ingest"),
            &format!(r#"{{"name":"CHAT","key":"c{i}"}}"#),
        );
        assert_eq!(a.status, 202, "{}", a.body);
    }
    let grown = node.log().len() - before;
    assert!(grown < 4 << 20, "the log grew by {grown} bytes");
    let dropped = metric(&node, "tandem_guest_logs_dropped_total");
    assert!(
        dropped > 19_000.0,
        "{dropped}: {}",
        get(node.admin(), "/api/v1/events?name=CHAT", Some("admin")).body
    );
    assert!(node.log().contains("log lines dropped") || grown > 0);
}

#[test]
fn rule_names_that_are_paths_controls_or_sql_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hook = Webhook::start();
    let config = node_config(dir.path(), &hook, "");
    let node = NodeProc::start(dir.path(), &config);
    let long = "x".repeat(10_000);
    for name in [
        "..%2F..%2Fetc%2Fpasswd",
        "a%00b",
        "a%0Aforged%20INFO%20line",
        "a%1B%5B2J",
        long.as_str(),
        "x'%3B%20DROP%20TABLE%20person%3B%20--",
        ".hidden",
    ] {
        for path in [
            format!("/api/v1/rules/{name}"),
            format!("/api/v1/scripts/{name}"),
        ] {
            let a = request(
                "PUT",
                node.admin(),
                &path,
                Some("admin"),
                br#"{"script":"panic"}"#,
            );
            assert!(
                a.status == 400 || a.status == 404,
                "{path}: {} {}",
                a.status,
                a.body
            );
        }
    }
    let rules = get(node.admin(), "/api/v1/rules", Some("admin")).json();
    assert_eq!(
        rules.as_array().map(Vec::len),
        Some(1),
        "only panic: {rules}"
    );
    assert!(!node.log().contains("forged INFO line\n"));
}

#[test]
fn quarantine_survives_a_restart_until_reset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hook = Webhook::start();
    let config = node_config(dir.path(), &hook, "");
    let mut node = NodeProc::start(dir.path(), &config);
    let trap = std::fs::read_to_string(tandem_tests::fixtures_dir().join("trap.wat")).expect("wat");
    upload(&node, "trap", &trap, r#"["TRAP"]"#);
    for i in 0..5 {
        post(
            node.admin(),
            "/api/v1/signals",
            Some("ingest"),
            &format!(
                r#"{{"name":"TRAP","key":"t{i}","fields":{{"pad":"{}"}}}}"#,
                "x".repeat(80)
            ),
        );
    }
    let quarantined = |node: &NodeProc| {
        get(node.admin(), "/api/v1/rules/trap", Some("admin")).json()["quarantined"] == true
    };
    assert!(quarantined(&node));
    node.restart();
    assert!(quarantined(&node), "kept across a restart");
    let a = post(node.admin(), "/api/v1/rules/trap/reset", Some("admin"), "");
    assert_eq!(a.status, 200, "{}", a.body);
    node.restart();
    assert!(!quarantined(&node), "a reset is kept too");
}

#[test]
fn weak_pair_secrets_are_refused_and_secret_new_makes_a_strong_one() {
    let r = tandem(&["secret", "new"]);
    assert!(r.status.success(), "{r:?}");
    let secret = r.stdout.trim();
    assert_eq!(secret.len(), 64);
    assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()));
    let dir = tempfile::tempdir().expect("tempdir");
    for (value, ok) in [
        ("a", false),
        (" ", false),
        ("pair-secret", false),
        (secret, true),
    ] {
        let config = write_config(
            dir.path(),
            "p",
            &format!(
                "[failover]\nrole = \"primary\"\nprimary = \"p\"\nsecondary = \"s\"\npeer = \"127.0.0.1:1\"\nsecret = \"{value}\"\n"
            ),
        );
        let r = tandem(&["config", "check", config.to_str().expect("utf-8")]);
        assert_eq!(r.status.success(), ok, "{value:?}: {r:?}");
        if !ok {
            assert!(r.stderr.contains("failover.secret"), "{}", r.stderr);
        }
    }
}

#[test]
fn an_event_cursor_past_2_63_is_refused_not_wrapped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hook = Webhook::start();
    let config = node_config(dir.path(), &hook, "");
    let node = NodeProc::start(dir.path(), &config);
    panic_is_notified(&node, &hook, "one-event");
    for after in ["18446744073709551615", "9223372036854775808", "-1"] {
        let a = get(
            node.admin(),
            &format!("/api/v1/events?after={after}"),
            Some("admin"),
        );
        assert_eq!(a.status, 400, "after={after}: {}", a.body);
    }
    let a = get(node.admin(), "/api/v1/events?after=0", Some("admin"));
    assert_eq!(a.json().as_array().map(Vec::len), Some(1));
}
