//! Engine benchmarks (`make bench`); figures and ratios are recorded in
//! docs/performance.md.
//!
//! - `failover_notify/*`: one matching FAILOVER-ON (about 100 bytes of
//!   fields) through the real failover-notify rule: in WebAssembly through
//!   the full dispatch, in WebAssembly through a bare instance call (bytes in,
//!   encoded action out), and natively through the same crate fed the same
//!   msgpack bytes (decode, logic, encode the action).
//! - `light/wasm_dispatch`: a reading under the threshold rule's threshold
//!   (one numeric field read and compared, nothing emitted), full dispatch.
//! - `fanout/*`: the same signal to 1 and to 100 matching rules, and a
//!   reading to 1 and to 100 light rules (`*_light_rules`).
//! - `no_match/1000_rules`: a signal no rule matches, with 900 exact names
//!   and 100 globs installed.
//! - `floor/raw_wasmtime_call`: a typed call of an empty export.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use failover_notify::FailoverNotify;
use tandem_guest::testing::Harness;
use tandem_guest::{Config, Signal};
use tandem_host::engine::{Dispatch, Engine, EngineConfig, Gate, RuleSet, RuleSpec, Script};

fn failover_on() -> Signal {
    let s = Signal::new("FAILOVER-ON")
        .with_key("wat4120:1")
        .with_source("wat4120")
        .with_time(1_763_780_000_000)
        .with_field("reason", "heartbeat timeout")
        .with_field("epoch", 7)
        .with_field("primary", "dev4120")
        .with_field("secondary", "wat4120")
        .with_field("down_since", 1_763_779_880_000_i64)
        .with_field("zone", "north-building");
    let fields = tandem_guest::wire::encode(&s.fields).unwrap();
    assert!(
        (90..=130).contains(&fields.len()),
        "fields are {} bytes",
        fields.len()
    );
    s
}

fn engine() -> Engine {
    Engine::new(EngineConfig {
        memory_budget: 8 << 30,
        ..EngineConfig::default()
    })
    .unwrap()
}

fn spec(name: String, script: &Arc<Script>, signals: Vec<String>) -> RuleSpec {
    RuleSpec {
        name,
        script: script.clone(),
        signals,
        config: Config::new(),
        deadline: None,
        enabled: true,
        group: "default".into(),
    }
}

fn installed(engine: &Engine, specs: Vec<RuleSpec>) -> RuleSet {
    let mut rs = RuleSet::new(engine.clone(), Gate::new(true));
    let report = rs.install(specs);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    rs
}

fn failover_notify(c: &mut Criterion) {
    let engine = engine();
    let script = engine
        .compile("failover-notify", &support::wasm("failover_notify"))
        .unwrap();
    let signal = failover_on();
    let bytes = tandem_guest::wire::encode(&signal).unwrap();
    let mut g = c.benchmark_group("failover_notify");

    let mut rs = installed(
        &engine,
        vec![spec("failover-notify".into(), &script, vec![])],
    );
    g.bench_function("wasm_dispatch", |b| {
        b.iter(|| {
            let Dispatch::Executed(o) = rs.dispatch(black_box(&signal)) else {
                panic!("suppressed")
            };
            assert_eq!(o.runs[0].actions.len(), 1);
            o
        })
    });

    let mut instance = engine
        .instantiate("failover-notify", &script, &Config::new(), None)
        .unwrap();
    g.bench_function("wasm_call", |b| {
        b.iter(|| {
            instance.call_raw(black_box(&bytes)).unwrap();
            assert_eq!(instance.encoded_actions().count(), 1);
        })
    });

    // The host's share of a call: the same path into a module that does
    // nothing (no decode, no logic, no action).
    let tiny = engine
        .compile("tiny", &wat::parse_str(TINY).unwrap())
        .unwrap();
    let mut empty = engine
        .instantiate("tiny", &tiny, &Config::new(), None)
        .unwrap();
    g.bench_function("wasm_call_empty_rule", |b| {
        b.iter(|| empty.call_raw(black_box(&bytes)).unwrap())
    });

    g.bench_function("native_decode_only", |b| {
        b.iter(|| tandem_guest::wire::decode::<Signal>(black_box(&bytes)).unwrap())
    });

    let mut native = Harness::<FailoverNotify>::new(&Config::new()).unwrap();
    let mut out = Vec::new();
    g.bench_function("native", |b| {
        b.iter(|| {
            native.run_encoded(black_box(&bytes), &mut out).unwrap();
            assert_eq!(out.len(), 1);
        })
    });
    g.finish();
}

/// A reading below the threshold rule's default of 100: the rule reads one
/// numeric field, compares it and emits nothing.
fn light_signal() -> Signal {
    Signal::new("SENSOR-7")
        .with_key("sensor-7:1")
        .with_source("sensor-7")
        .with_time(1_763_780_000_000)
        .with_field("value", 21.5)
        .with_field("unit", "C")
        .with_field("zone", "north-building")
}

/// The light rule (threshold, under its threshold): a dispatch that is
/// mostly the host's own path and the guest's read of one field.
fn light(c: &mut Criterion) {
    let engine = engine();
    let script = engine
        .compile("threshold", &support::wasm("threshold"))
        .unwrap();
    let signal = light_signal();
    let mut g = c.benchmark_group("light");
    let mut rs = installed(&engine, vec![spec("threshold".into(), &script, vec![])]);
    g.bench_function("wasm_dispatch", |b| {
        b.iter(|| {
            let Dispatch::Executed(o) = rs.dispatch(black_box(&signal)) else {
                panic!("suppressed")
            };
            assert!(o.runs[0].actions.is_empty() && o.runs[0].error.is_none());
            o
        })
    });
    g.finish();
}

fn fanout(c: &mut Criterion) {
    let engine = engine();
    let script = engine
        .compile("failover-notify", &support::wasm("failover_notify"))
        .unwrap();
    let signal = failover_on();
    let mut g = c.benchmark_group("fanout");
    for n in [1usize, 100] {
        let mut rs = installed(
            &engine,
            (0..n)
                .map(|i| spec(format!("notify-{i:03}"), &script, vec![]))
                .collect(),
        );
        g.bench_function(format!("{n}_rules"), |b| {
            b.iter(|| {
                let Dispatch::Executed(o) = rs.dispatch(black_box(&signal)) else {
                    panic!("suppressed")
                };
                assert_eq!(o.runs.len(), n);
                o
            })
        });
    }
    // The per-rule cost of the dispatch itself: light rules.
    let light = engine
        .compile("threshold", &support::wasm("threshold"))
        .unwrap();
    let reading = light_signal();
    for n in [1usize, 100] {
        let mut rs = installed(
            &engine,
            (0..n)
                .map(|i| spec(format!("threshold-{i:03}"), &light, vec![]))
                .collect(),
        );
        g.bench_function(format!("{n}_light_rules"), |b| {
            b.iter(|| {
                let Dispatch::Executed(o) = rs.dispatch(black_box(&reading)) else {
                    panic!("suppressed")
                };
                assert_eq!(o.runs.len(), n);
                o
            })
        });
    }
    g.finish();
}

/// A minimal v1 module: the index is under test, not the guest.
const TINY: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "tandem_abi_v1"))
  (func (export "tandem_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "tandem_free") (param i32 i32))
  (func (export "tandem_on_signal") (param i32 i32) (result i32) (i32.const 0)))"#;

fn no_match(c: &mut Criterion) {
    let engine = engine();
    let script = engine
        .compile("tiny", &wat::parse_str(TINY).unwrap())
        .unwrap();
    let mut specs: Vec<RuleSpec> = (0..900)
        .map(|i| {
            spec(
                format!("exact-{i}"),
                &script,
                vec![format!("SENSOR-{i}-ALARM")],
            )
        })
        .collect();
    specs.extend((0..100).map(|i| {
        let pattern = match i % 4 {
            0 => format!("ZONE-{i}-*"),
            1 => format!("*-DOOR-{i}"),
            2 => format!("PBX-{i}-*-CALL"),
            _ => format!("BELL-{i}*"),
        };
        spec(format!("glob-{i}"), &script, vec![pattern])
    }));
    let mut rs = installed(&engine, specs);
    let signal = Signal::new("DOOR-77-OPEN").with_field("zone", "north");
    let mut g = c.benchmark_group("no_match");
    g.bench_function("1000_rules", |b| {
        b.iter(|| {
            let Dispatch::Executed(o) = rs.dispatch(black_box(&signal)) else {
                panic!("suppressed")
            };
            assert!(o.runs.is_empty());
            o
        })
    });
    g.finish();
}

fn floor(c: &mut Criterion) {
    let mut config = wasmtime::Config::new();
    config.epoch_interruption(true);
    let engine = wasmtime::Engine::new(&config).unwrap();
    let bytes = wat::parse_str(r#"(module (func (export "f")))"#).unwrap();
    let module = wasmtime::Module::new(&engine, bytes).unwrap();
    let mut store = wasmtime::Store::new(&engine, ());
    store.set_epoch_deadline(u64::MAX / 2);
    let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
    let f = instance.get_typed_func::<(), ()>(&mut store, "f").unwrap();
    c.bench_function("floor/raw_wasmtime_call", |b| {
        b.iter(|| f.call(&mut store, ()).unwrap())
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
    targets = failover_notify, light, fanout, no_match, floor
}
criterion_main!(benches);
