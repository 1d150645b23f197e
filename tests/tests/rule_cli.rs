//! `tandem rule check | run | new`, run as a user would: the real binary on
//! real modules.

use std::process::Command;
use std::time::Duration;

use tandem_tests::{
    assemble, fixtures_dir, repo_root, run_with_limit, sample_wasm, tandem, target_dir,
};

fn path(p: &std::path::Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn check_prints_exports_abi_and_default_signals() {
    let wasm = sample_wasm("failover_notify");
    let r = tandem(&["rule", "check", path(&wasm)]);
    assert!(r.status.success(), "{r:?}");
    assert!(r.stdout.contains("abi: v1"), "{}", r.stdout);
    assert!(
        r.stdout
            .contains("default signals: FAILOVER-ON, FAILOVER-OFF"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("tandem_on_signal: func"), "{}", r.stdout);
}

#[test]
fn check_fails_on_broken_modules_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        ("no-marker", "tandem_abi_v1"),
        ("unknown-import", "env.abort"),
    ];
    for (name, expect) in cases {
        let wasm = assemble(&fixtures_dir().join(format!("{name}.wat")), dir.path());
        let r = tandem(&["rule", "check", path(&wasm)]);
        assert!(!r.status.success(), "{name}: {r:?}");
        assert!(r.stderr.contains(expect), "{name}: {}", r.stderr);
    }
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm\x01\0\0\0\xff\xff").expect("write");
    let r = tandem(&["rule", "check", path(&junk)]);
    assert!(!r.status.success());
    assert!(
        r.stderr.contains("not a valid WebAssembly module"),
        "{}",
        r.stderr
    );
    let r = tandem(&["rule", "check", "/nonexistent.wasm"]);
    assert!(!r.status.success());
    assert!(r.stderr.contains("/nonexistent.wasm"), "{}", r.stderr);
}

#[test]
fn run_prints_actions_as_json_lines() {
    let wasm = sample_wasm("failover_notify");
    let r = tandem(&[
        "rule",
        "run",
        path(&wasm),
        "--signal",
        "FAILOVER-ON",
        "--field",
        "primary=dev4120",
        "--field",
        "down_since=1763780000000",
        "--config",
        r#"{"to": "group:it"}"#,
    ]);
    assert!(r.status.success(), "{r:?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{}", r.stdout);
    let action: serde_json::Value = serde_json::from_str(lines[0]).expect("JSON line");
    assert_eq!(action["type"], "notify");
    assert_eq!(action["to"], "group:it");
    assert!(
        action["body"]
            .as_str()
            .is_some_and(|b| b.contains("2025-11-22 02:53:20 UTC"))
    );
}

#[test]
fn run_calls_the_guest_whatever_it_subscribes_to() {
    // panic-button subscribes to PANIC-*, but a dry run always calls it.
    let wasm = sample_wasm("panic_button");
    let r = tandem(&[
        "rule",
        "run",
        path(&wasm),
        "--signal",
        "DOOR-1-OPEN",
        "--field",
        "location=dock",
    ]);
    assert!(r.status.success(), "{r:?}");
    assert!(r.stdout.contains("dock"), "{}", r.stdout);
}

#[test]
fn run_fails_clearly_on_a_loop_or_a_trap_and_never_hangs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let looping = assemble(&fixtures_dir().join("loop.wat"), dir.path());
    let padding = format!("pad={}", "x".repeat(100));
    let r = tandem(&[
        "rule",
        "run",
        path(&looping),
        "--signal",
        "X",
        "--field",
        &padding,
        "--deadline",
        "100ms",
    ]);
    assert!(!r.status.success());
    assert!(
        r.stderr.contains("deadline of 100ms exceeded"),
        "{}",
        r.stderr
    );
    assert!(r.elapsed < Duration::from_secs(30));

    let panicky = assemble(&fixtures_dir().join("panic.wat"), dir.path());
    let r = tandem(&["rule", "run", path(&panicky), "--signal", "X"]);
    assert!(!r.status.success());
    assert!(
        r.stderr.contains("panicked at src/lib.rs:7:9: boom"),
        "{}",
        r.stderr
    );
}

#[test]
fn run_signals_runs_a_file_in_order_through_one_instance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let list = dir.path().join("readings.jsonl");
    // Two readings above 100 in a row notify (count 2): only one instance
    // remembering the first makes the second notify. A blank line is
    // skipped; other sources do not mix in.
    std::fs::write(
        &list,
        concat!(
            r#"{"name": "SENSOR-1", "source": "s1", "fields": {"value": 150}}"#,
            "\n\n",
            r#"{"name": "SENSOR-1", "source": "s2", "fields": {"value": 20}}"#,
            "\n",
            r#"{"name": "SENSOR-1", "source": "s1", "fields": {"value": 160}}"#,
            "\n",
        ),
    )
    .expect("write");
    let wasm = sample_wasm("threshold");
    let r = tandem(&[
        "rule",
        "run",
        path(&wasm),
        "--signals",
        path(&list),
        "--config",
        r#"{"count": 2}"#,
    ]);
    assert!(r.status.success(), "{r:?}");
    let lines: Vec<serde_json::Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 3, "{}", r.stdout);
    assert_eq!(
        lines.iter().map(|l| l["line"].as_u64()).collect::<Vec<_>>(),
        [Some(1), Some(3), Some(4)]
    );
    assert_eq!(lines[0]["actions"], serde_json::json!([]));
    assert_eq!(lines[1]["actions"], serde_json::json!([]));
    let actions = lines[2]["actions"].as_array().expect("actions");
    assert_eq!(actions.len(), 1, "{}", r.stdout);
    assert!(
        actions[0]["body"]
            .as_str()
            .is_some_and(|b| b.contains("s1 reported value = 160")),
        "{}",
        r.stdout
    );
    assert!(lines.iter().all(|l| l["error"].is_null()));

    // A line that is not a signal is refused, naming the line.
    std::fs::write(&list, "{\"name\": \"SENSOR-1\"}\n[1, 2]\n").expect("write");
    let r = tandem(&["rule", "run", path(&wasm), "--signals", path(&list)]);
    assert!(!r.status.success());
    assert!(
        r.stderr.contains("line 2 is not a signal object"),
        "{}",
        r.stderr
    );
    // --signal and --signals together are refused; neither too.
    let r = tandem(&[
        "rule",
        "run",
        path(&wasm),
        "--signals",
        path(&list),
        "--signal",
        "X",
    ]);
    assert!(!r.status.success());
    let r = tandem(&["rule", "run", path(&wasm)]);
    assert!(!r.status.success());
    assert!(r.stderr.contains("--signal"), "{}", r.stderr);
}

#[test]
fn run_warns_about_raises_the_node_would_refuse() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = assemble(&fixtures_dir().join("raise-host-only.wat"), dir.path());
    let r = tandem(&["rule", "run", path(&wasm), "--signal", "X"]);
    assert!(r.status.success(), "{r:?}");
    assert!(r.stdout.contains("FAILOVER-ON"), "{}", r.stdout);
    assert!(
        r.stderr
            .contains("`FAILOVER-` signals are raised by the host only"),
        "{}",
        r.stderr
    );
    // A sample's own raise is fine: no warning.
    let door = sample_wasm("door_held_open");
    let list = dir.path().join("door.jsonl");
    std::fs::write(
        &list,
        concat!(
            r#"{"name": "DOOR-1-OPEN", "time": 1763780000000}"#,
            "\n",
            r#"{"name": "TICK", "time": 1763780100000}"#,
            "\n"
        ),
    )
    .expect("write");
    let r = tandem(&["rule", "run", path(&door), "--signals", path(&list)]);
    assert!(r.status.success(), "{r:?}");
    assert!(r.stdout.contains("DOOR-HELD-OPEN"), "{}", r.stdout);
    assert!(!r.stderr.contains("warning"), "{}", r.stderr);
}

#[test]
fn check_warns_about_a_debug_build() {
    let release = sample_wasm("panic_button");
    let r = tandem(&["rule", "check", path(&release)]);
    assert!(r.status.success(), "{r:?}");
    assert!(!r.stderr.contains("debug build"), "{}", r.stderr);
    // The same module with DWARF appended, as a debug build carries it: a
    // custom section `.debug_info` of 10,000 bytes.
    let mut bytes = std::fs::read(&release).expect("read");
    let payload = vec![0u8; 10_000];
    let name = b".debug_info";
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(&payload);
    bytes.push(0);
    let mut len = section.len();
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        bytes.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
    bytes.extend_from_slice(&section);
    let dir = tempfile::tempdir().expect("tempdir");
    let debug = dir.path().join("panic_button.wasm");
    std::fs::write(&debug, &bytes).expect("write");
    let r = tandem(&["rule", "check", path(&debug)]);
    assert!(r.status.success(), "{r:?}");
    let want = format!(
        "this looks like a debug build: {} bytes, 10000 of them debug info",
        bytes.len()
    );
    assert!(r.stderr.contains(&want), "{}", r.stderr);
}

#[test]
fn run_refuses_bad_arguments() {
    let wasm = sample_wasm("panic_button");
    let r = tandem(&[
        "rule",
        "run",
        path(&wasm),
        "--signal",
        "X",
        "--field",
        "novalue",
    ]);
    assert!(!r.status.success());
    assert!(r.stderr.contains("KEY=VALUE"), "{}", r.stderr);
    let r = tandem(&[
        "rule",
        "run",
        path(&wasm),
        "--signal",
        "X",
        "--config",
        "[1",
    ]);
    assert!(!r.status.success());
    assert!(
        r.stderr.contains("--config must be a JSON object"),
        "{}",
        r.stderr
    );
}

/// The whole author's path: scaffold, native test, wasm build, check, run.
#[test]
fn new_scaffolds_a_crate_that_tests_builds_and_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = tandem(&["rule", "new", "door-alarm", "--dir", path(dir.path())]);
    assert!(r.status.success(), "{r:?}");
    let krate = dir.path().join("door-alarm");
    assert!(krate.join("src/lib.rs").is_file());
    // Reuse the workspace's resolved versions; a separate target directory
    // (the outer `cargo test` holds the workspace's lock).
    std::fs::copy(repo_root().join("Cargo.lock"), krate.join("Cargo.lock")).expect("copy lock");
    let scaffold_target = target_dir().join("scaffold");
    let cargo = || {
        let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        c.current_dir(&krate)
            .env("CARGO_TARGET_DIR", &scaffold_target);
        c
    };
    let limit = Duration::from_secs(600);
    let t = run_with_limit(cargo().args(["test", "--quiet"]), limit);
    assert!(t.status.success(), "cargo test: {}", t.stderr);
    assert!(t.stdout.contains("1 passed"), "{}", t.stdout);
    let b = run_with_limit(
        cargo().args([
            "build",
            "--quiet",
            "--release",
            "--target",
            "wasm32-unknown-unknown",
        ]),
        limit,
    );
    assert!(b.status.success(), "cargo build: {}", b.stderr);
    let wasm = scaffold_target.join("wasm32-unknown-unknown/release/door_alarm.wasm");
    let r = tandem(&["rule", "check", path(&wasm)]);
    assert!(r.status.success(), "{r:?}");
    assert!(
        r.stdout.contains("default signals: ALARM-*"),
        "{}",
        r.stdout
    );
    let r = tandem(&[
        "rule",
        "run",
        path(&wasm),
        "--signal",
        "ALARM-2",
        "--field",
        "zone=dock",
    ]);
    assert!(r.status.success(), "{r:?}");
    assert!(r.stdout.contains("ALARM-2 in dock"), "{}", r.stdout);
}

/// Every template scaffolds a crate whose own tests pass; the window
/// template, built to wasm, raises ALARM-STORM from a file of alarms.
#[test]
fn new_templates_each_pass_their_tests_and_the_window_one_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let scaffold_target = target_dir().join("scaffold");
    let limit = Duration::from_secs(600);
    for (template, tests) in [("failover", 2), ("window", 2), ("threshold", 2)] {
        let name = format!("my-{template}");
        let r = tandem(&[
            "rule",
            "new",
            &name,
            "--template",
            template,
            "--dir",
            path(dir.path()),
        ]);
        assert!(r.status.success(), "{template}: {r:?}");
        let krate = dir.path().join(&name);
        std::fs::copy(repo_root().join("Cargo.lock"), krate.join("Cargo.lock")).expect("copy lock");
        let cargo = |args: &[&str]| {
            let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            c.current_dir(&krate)
                .env("CARGO_TARGET_DIR", &scaffold_target)
                .args(args);
            run_with_limit(&mut c, limit)
        };
        let t = cargo(&["test", "--quiet"]);
        assert!(t.status.success(), "{template}: cargo test: {}", t.stderr);
        assert!(
            t.stdout.contains(&format!("{tests} passed")),
            "{template}: {}",
            t.stdout
        );
        if template != "window" {
            continue;
        }
        let b = cargo(&[
            "build",
            "--quiet",
            "--release",
            "--target",
            "wasm32-unknown-unknown",
        ]);
        assert!(b.status.success(), "cargo build: {}", b.stderr);
        let wasm = scaffold_target.join("wasm32-unknown-unknown/release/my_window.wasm");
        let list = dir.path().join("alarms.jsonl");
        let lines: String = [0, 10, 20]
            .iter()
            .map(|s| {
                format!(
                    "{{\"name\": \"ALARM-1\", \"source\": \"door-7\", \"time\": {}}}\n",
                    1_763_780_000_000_i64 + s * 1000
                )
            })
            .collect();
        std::fs::write(&list, lines).expect("write");
        let r = tandem(&["rule", "run", path(&wasm), "--signals", path(&list)]);
        assert!(r.status.success(), "{r:?}");
        let last: serde_json::Value =
            serde_json::from_str(r.stdout.lines().last().expect("a line")).expect("JSON");
        let raise = &last["actions"][1];
        assert_eq!(raise["type"], "raise", "{}", r.stdout);
        assert_eq!(raise["name"], "ALARM-STORM");
        assert_eq!(raise["fields"]["count"], 3);
        assert_eq!(raise["fields"]["source"], "door-7");
    }
    let r = tandem(&[
        "rule",
        "new",
        "x",
        "--template",
        "nope",
        "--dir",
        path(dir.path()),
    ]);
    assert!(!r.status.success());
    assert!(r.stderr.contains("failover"), "{}", r.stderr);
}

#[test]
fn new_refuses_bad_names_and_existing_directories() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = tandem(&["rule", "new", "Bad Name", "--dir", path(dir.path())]);
    assert!(!r.status.success());
    assert!(r.stderr.contains("not a valid crate name"), "{}", r.stderr);
    std::fs::create_dir(dir.path().join("taken")).expect("mkdir");
    let r = tandem(&["rule", "new", "taken", "--dir", path(dir.path())]);
    assert!(!r.status.success());
    assert!(r.stderr.contains("already exists"), "{}", r.stderr);
    let r = tandem(&[
        "rule",
        "new",
        "x",
        "--dir",
        path(dir.path()),
        "--sdk",
        "/nowhere",
    ]);
    assert!(!r.status.success());
    assert!(r.stderr.contains("--sdk"), "{}", r.stderr);
}
