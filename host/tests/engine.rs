//! The engine against real modules: the sample rules built to wasm by
//! `make rules`, and hostile WAT fixtures.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{fixture, sample_wasm, wat_bytes};
use tandem_guest::{Action, Config, Signal, Value};
use tandem_host::engine::{
    CallError, Dispatch, Engine, EngineConfig, EngineError, Gate, Outcome, RuleSet, RuleSpec,
    Script,
};

fn engine() -> Engine {
    Engine::new(EngineConfig {
        deadline: Duration::from_millis(50),
        ..EngineConfig::default()
    })
    .expect("engine")
}

fn spec(name: &str, script: &Arc<Script>) -> RuleSpec {
    RuleSpec {
        name: name.to_owned(),
        script: script.clone(),
        signals: Vec::new(),
        config: Config::new(),
        deadline: None,
        enabled: true,
        group: "default".into(),
    }
}

fn ruleset(engine: &Engine, specs: Vec<RuleSpec>) -> RuleSet {
    let mut rs = RuleSet::new(engine.clone(), Gate::new(true));
    let report = rs.install(specs);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    rs
}

fn executed(d: Dispatch) -> Outcome {
    match d {
        Dispatch::Executed(o) => o,
        Dispatch::Suppressed => panic!("suppressed"),
    }
}

/// A signal whose encoding is longer than 64 bytes (the fixtures' trigger).
fn big(name: &str) -> Signal {
    Signal::new(name).with_field("padding", "x".repeat(80))
}

fn small(name: &str) -> Signal {
    Signal::new(name)
}

fn notifies(o: &Outcome) -> Vec<&tandem_guest::Notify> {
    o.runs
        .iter()
        .flat_map(|r| r.notifications().map(|(_, n)| n))
        .collect()
}

// ---------------------------------------------------------------- samples

#[test]
fn failover_on_notifies_through_the_real_failover_notify_wasm() {
    let e = engine();
    let script = e
        .compile("failover-notify", &sample_wasm("failover_notify"))
        .unwrap();
    assert_eq!(script.default_signals(), ["FAILOVER-ON", "FAILOVER-OFF"]);
    let mut rs = ruleset(&e, vec![spec("failover-notify", &script)]);
    let on = Signal::new("FAILOVER-ON")
        .with_key("k1")
        .with_field("primary", "dev4120")
        .with_field("reason", "heartbeat timeout")
        .with_field("epoch", 2)
        .with_field("down_since", 1_763_780_000_000_i64);
    let o = executed(rs.dispatch(&on));
    assert_eq!(o.runs.len(), 1);
    assert_eq!(o.runs[0].error, None);
    assert_eq!(o.signal_of(&o.runs[0], &on).key, "k1");
    let n = notifies(&o);
    assert_eq!(n.len(), 1);
    assert_eq!(n[0].to, "group:oncall");
    assert!(
        n[0].body.contains("offline since 2025-11-22 02:53:20 UTC"),
        "{}",
        n[0].body
    );

    let off = executed(rs.dispatch(&Signal::new("FAILOVER-OFF").with_field("primary", "dev4120")));
    assert!(notifies(&off)[0].body.contains("is back"));
    // Not subscribed: never enters WebAssembly.
    let calls = e.stats().calls.load(std::sync::atomic::Ordering::Relaxed);
    assert!(executed(rs.dispatch(&small("DOOR-1-OPEN"))).runs.is_empty());
    assert_eq!(
        e.stats().calls.load(std::sync::atomic::Ordering::Relaxed),
        calls
    );
}

#[test]
fn panic_button_names_source_and_location() {
    let e = engine();
    let script = e
        .compile("panic-button", &sample_wasm("panic_button"))
        .unwrap();
    let mut rs = ruleset(&e, vec![spec("panic-button", &script)]);
    let o = executed(
        rs.dispatch(
            &Signal::new("PANIC-3")
                .with_source("button-3")
                .with_field("location", "lobby"),
        ),
    );
    let n = notifies(&o);
    assert_eq!(n.len(), 1);
    assert_eq!(n[0].to, "group:security");
    assert!(
        n[0].body.contains("button-3") && n[0].body.contains("lobby"),
        "{}",
        n[0].body
    );
}

/// A module built with the SDK before the borrowed view and the action
/// writer (serde decode of the whole signal, serde-encoded actions) runs
/// unchanged, and acts exactly as the same rule built today.
#[test]
fn a_module_built_with_the_previous_sdk_runs_unchanged() {
    let old = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/panic_button-sdk-2026-11.wasm"
    ))
    .unwrap();
    let e = engine();
    let old = e.compile("old", &old).unwrap();
    let new = e.compile("new", &sample_wasm("panic_button")).unwrap();
    assert_ne!(old.sha256(), new.sha256());
    assert_eq!(old.default_signals(), new.default_signals());
    let signal = Signal::new("PANIC-3")
        .with_source("button-3")
        .with_key("k3")
        .with_field("location", "lobby")
        .with_field("floor", 2);
    let mut actions = Vec::new();
    for script in [&old, &new] {
        let mut rs = ruleset(&e, vec![spec("panic-button", script)]);
        let o = executed(rs.dispatch(&signal));
        assert_eq!(o.runs[0].error, None);
        actions.push(o.runs[0].actions.clone());
    }
    assert_eq!(actions[0], actions[1]);
    let Action::Notify(n) = &actions[0][0] else {
        panic!("{actions:?}")
    };
    assert_eq!(n.subject, "PANIC at lobby");
}

#[test]
fn door_held_open_keeps_state_and_its_raise_is_dispatched() {
    let e = engine();
    let script = e.compile("door", &sample_wasm("door_held_open")).unwrap();
    let mut s = spec("door", &script);
    s.config = Config::new().with("seconds", 10);
    let mut rs = ruleset(&e, vec![s]);
    let t0 = 1_763_780_000_000;
    executed(rs.dispatch(&small("DOOR-4-OPEN").with_time(t0).with_key("a")));
    assert!(notifies(&executed(rs.dispatch(&small("TICK").with_time(t0 + 5_000)))).is_empty());
    let tick = small("TICK").with_time(t0 + 10_000).with_key("tick-2");
    let o = executed(rs.dispatch(&tick));
    // The TICK run raises DOOR-HELD-OPEN and notifies; the raised signal
    // matches DOOR-*-OPEN and reaches the same rule one level down.
    assert_eq!(o.runs.len(), 2, "{o:#?}");
    assert_eq!(notifies(&o).len(), 1);
    assert!(matches!(&o.runs[0].actions[0], Action::Raise(r) if r.name == "DOOR-HELD-OPEN"));
    let raised = &o.runs[1];
    let signal = o.signal_of(raised, &tick);
    assert_eq!((signal.name.as_str(), raised.depth), ("DOOR-HELD-OPEN", 1));
    assert_eq!(signal.key, "tick-2/door/0");
    assert_eq!(raised.error, None);
}

#[test]
fn threshold_counts_consecutive_readings_across_calls() {
    let e = engine();
    let script = e.compile("threshold", &sample_wasm("threshold")).unwrap();
    let mut s = spec("threshold", &script);
    s.config = Config::new().with("above", 50).with("count", 2);
    let mut rs = ruleset(&e, vec![s]);
    let reading = |v: i64| small("SENSOR-T").with_source("t1").with_field("value", v);
    assert!(notifies(&executed(rs.dispatch(&reading(60)))).is_empty());
    assert_eq!(notifies(&executed(rs.dispatch(&reading(70)))).len(), 1);
    assert!(notifies(&executed(rs.dispatch(&reading(80)))).is_empty());
}

// ---------------------------------------------------------------- hostile

#[test]
fn an_infinite_loop_hits_the_deadline_and_the_host_carries_on() {
    let e = engine();
    let script = e.compile("loop", &fixture("loop")).unwrap();
    let mut s = spec("loop", &script);
    s.signals = vec!["X".into()];
    s.deadline = Some(Duration::from_millis(30));
    let mut rs = ruleset(&e, vec![s]);
    let started = Instant::now();
    let o = executed(rs.dispatch(&big("X")));
    assert_eq!(
        o.runs[0].error,
        Some(CallError::Deadline(Duration::from_millis(30)))
    );
    // Generous: the deadline is 30 ms; a hang would be forever.
    assert!(started.elapsed() < Duration::from_secs(5));
    // The next call gets a fresh instance and works.
    let o = executed(rs.dispatch(&small("X")));
    assert_eq!(o.runs[0].error, None);
    assert_eq!(
        e.stats()
            .deadline_hits
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn a_memory_grower_hits_the_cap() {
    let e = Engine::new(EngineConfig {
        memory_limit: 4 << 20,
        ..EngineConfig::default()
    })
    .unwrap();
    let script = e.compile("grow", &fixture("grow")).unwrap();
    let mut s = spec("grow", &script);
    s.signals = vec!["X".into()];
    let mut rs = ruleset(&e, vec![s]);
    let o = executed(rs.dispatch(&small("X")));
    assert_eq!(
        o.runs[0].error,
        Some(CallError::MemoryLimit { limit: 4 << 20 })
    );
    // The trapped instance's memory went back to the budget; the fresh one
    // holds its single page.
    executed(rs.dispatch(&small("X")));
    assert!(e.budget().used() <= 64 << 10, "{}", e.budget().used());
}

#[test]
fn a_trap_replaces_the_instance() {
    let e = engine();
    let script = e.compile("trap", &fixture("trap")).unwrap();
    let mut s = spec("trap", &script);
    s.signals = vec!["X".into()];
    let mut rs = ruleset(&e, vec![s]);
    let o = executed(rs.dispatch(&big("X")));
    match &o.runs[0].error {
        Some(CallError::Trap(m)) => assert!(m.contains("divide by zero"), "{m}"),
        other => panic!("expected a trap, got {other:?}"),
    }
    assert_eq!(rs.status()[0].traps_in_row, 1);
    assert_eq!(executed(rs.dispatch(&small("X"))).runs[0].error, None);
    assert_eq!(rs.status()[0].traps_in_row, 0);
}

#[test]
fn a_panic_reports_its_message_and_location() {
    let e = engine();
    let script = e.compile("panicky", &fixture("panic")).unwrap();
    let mut s = spec("panicky", &script);
    s.signals = vec!["X".into()];
    let mut rs = ruleset(&e, vec![s]);
    let o = executed(rs.dispatch(&small("X")));
    assert_eq!(
        o.runs[0].error,
        Some(CallError::Panic("panicked at src/lib.rs:7:9: boom".into()))
    );
    assert_eq!(
        rs.status()[0].last_error.as_deref(),
        Some("panicked at src/lib.rs:7:9: boom")
    );
}

#[test]
fn a_pointer_outside_memory_traps_the_call_not_the_host() {
    let e = engine();
    let script = e.compile("bad-emit", &fixture("bad-emit")).unwrap();
    let mut s = spec("bad-emit", &script);
    s.signals = vec!["X".into()];
    let mut rs = ruleset(&e, vec![s]);
    match &executed(rs.dispatch(&small("X"))).runs[0].error {
        Some(CallError::Trap(m)) => assert!(m.contains("outside the guest's memory"), "{m}"),
        other => panic!("expected a trap, got {other:?}"),
    }
}

#[test]
fn five_traps_in_a_row_quarantine_until_reset() {
    let e = engine();
    let script = e.compile("trap", &fixture("trap")).unwrap();
    let mut s = spec("trap", &script);
    s.signals = vec!["X".into()];
    let mut rs = ruleset(&e, vec![s]);
    for _ in 0..5 {
        assert!(
            executed(rs.dispatch(&big("X"))).runs[0]
                .error
                .as_ref()
                .is_some_and(CallError::is_trap)
        );
    }
    let st = &rs.status()[0];
    assert!(st.quarantined);
    assert!(
        st.last_error
            .as_deref()
            .is_some_and(|m| m.contains("divide by zero"))
    );
    let calls = e.stats().calls.load(std::sync::atomic::Ordering::Relaxed);
    let o = executed(rs.dispatch(&small("X")));
    assert!(
        matches!(
            o.runs[0].error,
            Some(CallError::Quarantined { traps: 5, .. })
        ),
        "{o:?}"
    );
    assert_eq!(
        e.stats().calls.load(std::sync::atomic::Ordering::Relaxed),
        calls,
        "no guest call"
    );
    assert!(rs.reset("trap"));
    assert!(!rs.reset("nope"));
    assert_eq!(executed(rs.dispatch(&small("X"))).runs[0].error, None);
}

#[test]
fn a_module_without_the_marker_is_refused_by_name() {
    let err = engine()
        .compile("nomark", &fixture("no-marker"))
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, EngineError::Abi { .. }), "{err:?}");
    assert!(
        text.contains("rule `nomark`") && text.contains("tandem_abi_v1"),
        "{text}"
    );
}

#[test]
fn an_unknown_import_is_refused_by_name() {
    let err = engine()
        .compile("imp", &fixture("unknown-import"))
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("rule `imp`") && text.contains("`env.abort`"),
        "{text}"
    );
}

#[test]
fn malformed_bytes_are_refused() {
    for bytes in [
        &b""[..],
        b"\0asm",
        b"\0asm\x01\0\0\0garbage",
        b"not wasm at all",
    ] {
        let err = engine().compile("junk", bytes).unwrap_err();
        assert!(matches!(err, EngineError::Malformed { .. }), "{err:?}");
        assert!(err.to_string().contains("rule `junk`"), "{err}");
    }
}

/// A module that emits one raise of `name` on every signal, declaring
/// `signals` as its defaults.
fn raiser(name: &str, signals: &[&str]) -> Vec<u8> {
    bomber(name, signals, 1)
}

/// A rule on `signals` that raises `name` `times` times per call.
fn bomber(name: &str, signals: &[&str], times: u32) -> Vec<u8> {
    let action = tandem_guest::wire::encode(&Action::Raise(tandem_guest::Raise {
        name: name.into(),
        fields: Default::default(),
    }))
    .unwrap();
    let wat = format!(
        r#"(module
          (import "tandem" "emit" (func $emit (param i32 i32)))
          (memory (export "memory") 1)
          (data (i32.const 16) "{data}")
          (@custom "tandem.signals" "{section}")
          (func (export "tandem_abi_v1"))
          (func (export "tandem_alloc") (param i32) (result i32) (i32.const 1024))
          (func (export "tandem_free") (param i32 i32))
          (func (export "tandem_on_signal") (param i32 i32) (result i32)
            (local $i i32)
            (block $done
              (loop $next
                (br_if $done (i32.ge_u (local.get $i) (i32.const {times})))
                (call $emit (i32.const 16) (i32.const {len}))
                (local.set $i (i32.add (local.get $i) (i32.const 1)))
                (br $next)))
            (i32.const 0)))"#,
        data = wat_bytes(&action),
        section = wat_bytes(&rmp_serde::to_vec(signals).unwrap()),
        len = action.len()
    );
    wat::parse_str(&wat).unwrap()
}

/// A rule's timer: set by its action, due on the engine's clock, fired to
/// that rule alone through the gate, gone with a closed gate.
#[test]
fn a_timer_is_fired_to_its_rule_alone_and_only_through_an_open_gate() {
    let now = Arc::new(std::sync::atomic::AtomicI64::new(1_000_000));
    let clock = {
        let now = now.clone();
        Arc::new(move || now.load(std::sync::atomic::Ordering::SeqCst))
    };
    let e = Engine::with_clock(EngineConfig::default(), clock).unwrap();
    let script = e.compile("door", &sample_wasm("door_held_open")).unwrap();
    let gate = Gate::new(true);
    let mut rs = RuleSet::new(e.clone(), gate.clone());
    // A second rule that would match TIMER by its patterns: not called.
    let other = e.compile("panic", &sample_wasm("panic_button")).unwrap();
    let mut o = spec("panic", &other);
    o.signals = vec!["*".into()];
    let specs = vec![
        {
            let mut s = spec("door", &script);
            s.config = Config::new().with("seconds", 10);
            s
        },
        o,
    ];
    assert!(rs.install(specs).failed.is_empty());
    executed(rs.dispatch(&small("DOOR-4-OPEN").with_time(1_000_000)));
    assert_eq!(rs.next_timer(), Some(1_010_000));
    assert!(rs.take_due_timers(1_009_999).is_empty());
    now.store(1_010_000, std::sync::atomic::Ordering::SeqCst);
    let due = rs.take_due_timers(1_010_000);
    assert_eq!(due, vec![(Arc::from("door"), 1_010_000)]);
    assert_eq!(rs.next_timer(), None, "taken");
    let timer = small("TIMER").with_time(1_010_000).with_key("t1");
    let o = executed(rs.dispatch_timer("door", &timer));
    assert_eq!(
        o.runs.iter().map(|r| &*r.rule).collect::<Vec<_>>(),
        ["door", "door", "panic"],
        "door alone for the TIMER; door (DOOR-*-OPEN) and panic (`*`) for the raised DOOR-HELD-OPEN"
    );
    assert_eq!(
        (o.runs[0].origin, o.runs[1].origin, o.runs[2].origin),
        (0, 1, 1)
    );
    assert_eq!(o.raised[0].name, "DOOR-HELD-OPEN");
    // An unknown rule runs nothing; a closed gate runs nothing either.
    assert!(executed(rs.dispatch_timer("nope", &timer)).runs.is_empty());
    executed(rs.dispatch(&small("DOOR-5-OPEN").with_time(1_010_000)));
    assert_eq!(rs.next_timer(), Some(1_020_000));
    gate.close();
    assert!(matches!(
        rs.dispatch_timer("door", &timer),
        Dispatch::Suppressed
    ));
}

#[test]
fn raises_stop_at_the_depth_limit() {
    // A rule that answers every LOOP with another LOOP.
    let e = engine();
    let script = e.compile("looper", &raiser("LOOP", &["LOOP"])).unwrap();
    assert_eq!(script.default_signals(), ["LOOP"]);
    let mut rs = ruleset(&e, vec![spec("looper", &script)]);
    let looped = small("LOOP").with_key("k");
    let o = executed(rs.dispatch(&looped));
    assert_eq!(o.runs.len(), 9, "depth 0 to 8");
    assert_eq!(o.runs[8].depth, 8);
    assert!(
        o.runs[8].rejected[0].contains("depth limit of 8"),
        "{:?}",
        o.runs[8].rejected
    );
    assert_eq!(o.signal_of(&o.runs[2], &looped).key, "k/looper/0/looper/0");
}

#[test]
fn host_only_names_cannot_be_raised() {
    let e = engine();
    let script = e.compile("sneaky", &raiser("FAILOVER-ON", &["X"])).unwrap();
    let mut s = spec("sneaky", &script);
    s.signals = vec!["X".into()];
    let mut rs = ruleset(&e, vec![s]);
    let o = executed(rs.dispatch(&small("X")));
    assert_eq!(o.runs.len(), 1);
    assert!(o.runs[0].rejected[0].contains("raised by the host only"));
}

// ---------------------------------------------------------------- engine

#[test]
fn a_closed_gate_suppresses_without_running_guest_code() {
    let e = engine();
    let script = e
        .compile("panic-button", &sample_wasm("panic_button"))
        .unwrap();
    let gate = Gate::new(false);
    let mut rs = RuleSet::new(e.clone(), gate.clone());
    rs.install(vec![spec("panic-button", &script)]);
    assert_eq!(rs.dispatch(&small("PANIC-1")), Dispatch::Suppressed);
    assert_eq!(
        e.stats().calls.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    gate.open();
    assert_eq!(notifies(&executed(rs.dispatch(&small("PANIC-1")))).len(), 1);
}

#[test]
fn modules_are_compiled_once_and_cached_on_disk() {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().unwrap();
    let cfg = EngineConfig {
        cache_dir: Some(dir.path().to_owned()),
        ..EngineConfig::default()
    };
    let bytes = sample_wasm("threshold");
    let e1 = Engine::new(cfg.clone()).unwrap();
    let a = e1.compile("a", &bytes).unwrap();
    let b = e1.compile("b", &bytes).unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(
        (
            e1.stats().compiles.load(Relaxed),
            e1.stats().memory_hits.load(Relaxed)
        ),
        (1, 1)
    );

    // A restarted node: same directory, new engine. No compile.
    let e2 = Engine::new(cfg).unwrap();
    let c = e2.compile("a", &bytes).unwrap();
    assert_eq!(
        (
            e2.stats().compiles.load(Relaxed),
            e2.stats().disk_hits.load(Relaxed)
        ),
        (0, 1)
    );
    let mut rs = ruleset(&e2, vec![spec("a", &c)]);
    let o = executed(rs.dispatch(&small("SENSOR-X").with_field("value", 1)));
    assert_eq!(o.runs[0].error, None);
}

#[test]
fn a_corrupt_disk_cache_entry_is_dropped_and_recompiled() {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().unwrap();
    let cfg = EngineConfig {
        cache_dir: Some(dir.path().to_owned()),
        ..EngineConfig::default()
    };
    let bytes = sample_wasm("panic_button");
    drop(
        Engine::new(cfg.clone())
            .unwrap()
            .compile("p", &bytes)
            .unwrap(),
    );
    for entry in walk(dir.path()) {
        std::fs::write(entry, b"garbage").unwrap();
    }
    let e = Engine::new(cfg).unwrap();
    e.compile("p", &bytes).unwrap();
    assert_eq!(e.stats().compiles.load(Relaxed), 1);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn the_memory_budget_refuses_a_load_beyond_it() {
    let bytes = sample_wasm("panic_button");
    let probe = engine();
    let script = probe.compile("p", &bytes).unwrap();
    let one = {
        let rs = ruleset(&probe, vec![spec("p0", &script)]);
        rs.status()[0].memory_bytes
    };
    assert!(one > 0);
    let e = Engine::new(EngineConfig {
        memory_budget: one * 2 + one / 2,
        ..EngineConfig::default()
    })
    .unwrap();
    let script = e.compile("p", &bytes).unwrap();
    let mut rs = RuleSet::new(e.clone(), Gate::new(true));
    let report = rs.install((0..3).map(|i| spec(&format!("p{i}"), &script)).collect());
    assert_eq!(report.loaded, ["p0", "p1"]);
    assert_eq!(report.failed.len(), 1);
    let (err, kept_previous) = &report.failed[0];
    assert!(matches!(err, EngineError::Budget { .. }), "{err:?}");
    assert!(err.to_string().contains("memory budget"), "{err}");
    assert!(!kept_previous);
    // Removing rules gives the memory back.
    rs.install(vec![]);
    assert_eq!(e.budget().used(), 0);
}

#[test]
fn reinstall_keeps_unchanged_rules_and_their_state() {
    let e = engine();
    let door = e.compile("door", &sample_wasm("door_held_open")).unwrap();
    let panic = e.compile("panic", &sample_wasm("panic_button")).unwrap();
    let mut d = spec("door", &door);
    d.config = Config::new().with("seconds", 10);
    let mut rs = ruleset(&e, vec![d.clone(), spec("panic", &panic)]);
    let t0 = 1_763_780_000_000;
    executed(rs.dispatch(&small("DOOR-1-OPEN").with_time(t0)));

    // Change only panic's config: door keeps its instance (the open door).
    let mut p = spec("panic", &panic);
    p.config = Config::new().with("to", "group:guards");
    let report = rs.install(vec![d.clone(), p]);
    assert_eq!(
        (report.kept.as_slice(), report.loaded.as_slice()),
        (&["door".to_owned()][..], &["panic".to_owned()][..])
    );
    let o = executed(rs.dispatch(&small("TICK").with_time(t0 + 10_000)));
    assert_eq!(notifies(&o).len(), 1, "door state survived the reload");
    let o = executed(rs.dispatch(&small("PANIC-1")));
    assert_eq!(notifies(&o)[0].to, "group:guards");

    // Changing door's config gives it a fresh instance: the state is gone.
    let mut d2 = d;
    d2.config = Config::new().with("seconds", 11);
    let report = rs.install(vec![d2]);
    assert_eq!(report.loaded, ["door"]);
    assert_eq!(report.removed, ["panic"]);
    assert!(
        notifies(&executed(
            rs.dispatch(&small("TICK").with_time(t0 + 60_000))
        ))
        .is_empty()
    );
}

#[test]
fn a_failed_init_keeps_the_previous_version() {
    let e = engine();
    let script = e.compile("threshold", &sample_wasm("threshold")).unwrap();
    let mut rs = ruleset(&e, vec![spec("threshold", &script)]);
    let mut bad = spec("threshold", &script);
    bad.config = Config::new().with("count", 0);
    let report = rs.install(vec![bad]);
    assert_eq!(report.failed.len(), 1);
    let (err, kept) = &report.failed[0];
    assert!(*kept);
    assert!(err.to_string().contains("count"), "{err}");
    assert_eq!(rs.len(), 1);
}

#[test]
fn disabled_rules_and_overridden_patterns() {
    let e = engine();
    let script = e.compile("panic", &sample_wasm("panic_button")).unwrap();
    let mut s = spec("panic", &script);
    s.signals = vec!["BELL-*".into()];
    let mut rs = ruleset(&e, vec![s.clone()]);
    assert!(executed(rs.dispatch(&small("PANIC-1"))).runs.is_empty());
    assert_eq!(executed(rs.dispatch(&small("BELL-2"))).runs.len(), 1);
    s.enabled = false;
    rs.install(vec![s]);
    assert!(executed(rs.dispatch(&small("BELL-2"))).runs.is_empty());

    let mut bad = spec("panic", &script);
    bad.signals = vec!["bell".into()];
    let report = rs.install(vec![bad]);
    assert!(
        report.failed[0]
            .0
            .to_string()
            .contains("invalid signal pattern `bell`")
    );
}

#[test]
fn fields_of_every_type_reach_the_guest() {
    let e = engine();
    let script = e.compile("threshold", &sample_wasm("threshold")).unwrap();
    let mut s = spec("t", &script);
    s.config = Config::new().with("count", 1).with("above", 1.5);
    let mut rs = ruleset(&e, vec![s]);
    let sig = small("SENSOR-1")
        .with_field("value", "2.5")
        .with_field(
            "nested",
            Value::Map(
                [(
                    "a".to_owned(),
                    Value::Array(vec![Value::Nil, Value::Bool(true)]),
                )]
                .into(),
            ),
        )
        .with_field("bin", Value::Bin(vec![0, 1, 2]));
    assert_eq!(notifies(&executed(rs.dispatch(&sig))).len(), 1);
}

#[test]
fn a_raise_bomb_stops_at_the_cap_and_the_bomber_is_quarantined() {
    // Each BOMB-* raises four BOMB-X: 4^8 runs without a cap.
    let e = Engine::new(EngineConfig {
        max_runs: 100,
        ..EngineConfig::default()
    })
    .expect("engine");
    let script = e
        .compile("bomb", &bomber("BOMB-X", &["BOMB-*"], 4))
        .unwrap();
    let calm = e.compile("calm", &raiser("CALM-X", &["CALM"])).unwrap();
    let mut rs = ruleset(&e, vec![spec("bomb", &script), spec("calm", &calm)]);
    for i in 0..5 {
        let o = executed(rs.dispatch(&small("BOMB-1").with_key(format!("b{i}"))));
        assert!(o.runs.len() <= 100, "{} runs", o.runs.len());
        assert!(
            o.capped > 0,
            "the rest was refused and counted: {} runs, {} actions in the first, {:?}",
            o.runs.len(),
            o.runs[0].actions.len(),
            o.runs[0].error
        );
        assert!(
            o.runs.iter().any(|r| r
                .rejected
                .iter()
                .any(|m| m.contains("at most 100 rule runs"))),
            "a run says why"
        );
    }
    let bomb = rs.status().into_iter().find(|r| r.name == "bomb").unwrap();
    assert!(
        bomb.quarantined,
        "hitting the cap 5 times in a row quarantines"
    );
    let o = executed(rs.dispatch(&small("CALM").with_key("c")));
    assert_eq!(o.runs.len(), 1, "other rules keep running");
    assert!(o.runs[0].error.is_none());
}

#[test]
fn one_rules_patterns_never_disable_dispatch_for_the_others() {
    let e = engine();
    let script = e.compile("loop", &raiser("X", &["PANIC-*"])).unwrap();
    let many: Vec<String> = (0..20_000).map(|i| format!("P{i}*Q*R")).collect();
    let stars = vec![format!("ZZ{}", "*A".repeat(100_000))];
    let mut rs = RuleSet::new(e.clone(), Gate::new(true));
    let mut specs = vec![spec("good", &script)];
    for (name, signals) in [("bigpat", many), ("stars", stars)] {
        let mut s = spec(name, &script);
        s.signals = signals;
        specs.push(s);
    }
    let report = rs.install(specs);
    let failed: Vec<String> = report.failed.iter().map(|(e, _)| e.to_string()).collect();
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(
        failed[0].contains("bigpat") && failed[0].contains("at most 256"),
        "{failed:?}"
    );
    assert!(
        failed[1].contains("stars") && failed[1].contains("at most 128"),
        "{failed:?}"
    );
    let o = executed(rs.dispatch(&small("PANIC-1").with_key("p")));
    assert_eq!(o.runs.len(), 1, "the good rule still runs");
    // A module whose own section holds 300,000 patterns is refused at load.
    let section: Vec<&str> = vec!["*"; 300_000];
    let err = e
        .compile("section", &raiser("X", &section))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("section") && err.contains("at most 256"),
        "{err}"
    );
}

// ---------------------------------------------------------------- groups

#[test]
fn rules_run_only_in_the_groups_the_gate_opened_with_their_epochs() {
    let e = engine();
    let script = e
        .compile("panic-button", &sample_wasm("panic_button"))
        .unwrap();
    let gate = Gate::new(false);
    let mut rs = RuleSet::new(e.clone(), gate.clone());
    let in_group = |name: &str, group: &str| RuleSpec {
        group: group.into(),
        ..spec(name, &script)
    };
    let report = rs.install(vec![in_group("a-rule", "a"), in_group("b-rule", "b")]);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let sig = Signal::new("PANIC-1").with_key("k");
    let mut groups = rs.groups_of("PANIC-1");
    groups.sort();
    assert_eq!(groups, vec![Arc::<str>::from("a"), Arc::from("b")]);
    assert!(rs.groups_of("DOOR-1").is_empty());
    // Nothing open: suppressed, no guest code runs.
    assert!(matches!(rs.dispatch(&sig), Dispatch::Suppressed));
    // Only `b` open, under epoch 9: only b's rule runs, labelled with it.
    gate.open_group("b", 9);
    let o = executed(rs.dispatch(&sig));
    assert_eq!(o.runs.len(), 1);
    assert_eq!(&*o.runs[0].rule, "b-rule");
    assert_eq!((&*o.runs[0].group, o.runs[0].epoch), ("b", 9));
    // Both open, but the node says `b` already ran this key: only a's.
    gate.open_group("a", 4);
    let o = executed(rs.dispatch_where(&sig, &mut |g| g != "b"));
    assert_eq!(o.runs.len(), 1);
    assert_eq!(&*o.runs[0].rule, "a-rule");
    // The whole gate open (a pair's primary): every rule, epoch 0.
    gate.close();
    gate.open();
    let o = executed(rs.dispatch(&sig));
    assert_eq!(o.runs.len(), 2);
    assert!(o.runs.iter().all(|r| r.epoch == 0));
}
