//! Metric names in one place, and the Prometheus text rendering.
//!
//! Counters are plain atomics bumped where things happen; the engine keeps
//! its own ([`EngineStats`]) and is read at render time.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::engine::EngineStats;

/// Upper bounds of the dispatch latency buckets, in microseconds.
const BUCKETS_US: [u64; 12] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000, 250_000,
];

/// A fixed-bucket latency histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS_US.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    /// Record one observation.
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        if let Some(i) = BUCKETS_US.iter().position(|&b| us <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }
}

/// The node's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    pub signals_received: AtomicU64,
    pub signals_executed: AtomicU64,
    pub signals_suppressed: AtomicU64,
    pub signals_rejected: AtomicU64,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    pub notifications_queued: AtomicU64,
    pub notifications_sent: AtomicU64,
    pub notifications_failed: AtomicU64,
    pub notifications_expired: AtomicU64,
    pub notifications_retried: AtomicU64,
    /// Time to dispatch one signal through the engine (all its rules).
    pub dispatch_latency: Histogram,
    /// Link connections refused or dropped, by reason.
    link_rejects: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

/// Add to a counter.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

impl Metrics {
    /// Count a link refused or dropped for `reason`.
    pub fn link_rejected(&self, reason: &'static str) {
        *self
            .link_rejects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason)
            .or_default() += 1;
    }

    /// The Prometheus text exposition of these and the engine's counters.
    pub fn render(
        &self,
        engine: &EngineStats,
        rules_loaded: usize,
        rules_quarantined: usize,
    ) -> String {
        let mut out = String::with_capacity(4096);
        counter(
            &mut out,
            "tandem_signals_received_total",
            "Signals accepted by ingest.",
            get(&self.signals_received),
        );
        counter(
            &mut out,
            "tandem_signals_executed_total",
            "Signals run through the rules (gate open).",
            get(&self.signals_executed),
        );
        counter(
            &mut out,
            "tandem_signals_suppressed_total",
            "Signals stored without running rules (gate closed).",
            get(&self.signals_suppressed),
        );
        counter(
            &mut out,
            "tandem_signals_rejected_total",
            "Signals refused as bad input.",
            get(&self.signals_rejected),
        );
        counter(
            &mut out,
            "tandem_rule_calls_total",
            "Guest calls.",
            EngineStats::get(&engine.calls),
        );
        counter(
            &mut out,
            "tandem_rule_traps_total",
            "Guest calls that trapped.",
            EngineStats::get(&engine.traps),
        );
        counter(
            &mut out,
            "tandem_rule_deadline_hits_total",
            "Guest calls stopped at their deadline.",
            EngineStats::get(&engine.deadline_hits),
        );
        counter(
            &mut out,
            "tandem_rule_quarantines_total",
            "Rules quarantined.",
            EngineStats::get(&engine.quarantines),
        );
        counter(
            &mut out,
            "tandem_module_compiles_total",
            "Modules compiled (cache misses).",
            EngineStats::get(&engine.compiles),
        );
        counter(
            &mut out,
            "tandem_reloads_total",
            "Rule set reloads.",
            get(&self.reloads),
        );
        counter(
            &mut out,
            "tandem_reload_failures_total",
            "Rules that failed to load in a reload.",
            get(&self.reload_failures),
        );
        let _ = writeln!(
            out,
            "# HELP tandem_notifications_total Notifications by final status.\n# TYPE tandem_notifications_total counter"
        );
        for (status, c) in [
            ("queued", &self.notifications_queued),
            ("sent", &self.notifications_sent),
            ("failed", &self.notifications_failed),
            ("expired", &self.notifications_expired),
            ("retried", &self.notifications_retried),
        ] {
            let _ = writeln!(
                out,
                "tandem_notifications_total{{status=\"{status}\"}} {}",
                get(c)
            );
        }
        let _ = writeln!(
            out,
            "# HELP tandem_rules Rules installed, by state.\n# TYPE tandem_rules gauge"
        );
        let _ = writeln!(out, "tandem_rules{{state=\"loaded\"}} {rules_loaded}");
        let _ = writeln!(
            out,
            "tandem_rules{{state=\"quarantined\"}} {rules_quarantined}"
        );
        let _ = writeln!(
            out,
            "# HELP tandem_link_rejected_total Link connections refused or dropped, by reason.\n# TYPE tandem_link_rejected_total counter"
        );
        for (reason, n) in self
            .link_rejects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(out, "tandem_link_rejected_total{{reason=\"{reason}\"}} {n}");
        }
        let h = &self.dispatch_latency;
        let name = "tandem_dispatch_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time to run one signal through its rules.\n# TYPE {name} histogram"
        );
        let mut cumulative = 0;
        for (i, bound) in BUCKETS_US.iter().enumerate() {
            cumulative += get(&h.buckets[i]);
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{}\"}} {cumulative}",
                *bound as f64 / 1e6
            );
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", get(&h.count));
        let _ = writeln!(out, "{name}_sum {}", get(&h.sum_us) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {}", get(&h.count));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let m = Metrics::default();
        add(&m.signals_received, 3);
        m.dispatch_latency.observe(Duration::from_micros(20));
        m.dispatch_latency.observe(Duration::from_micros(400));
        m.dispatch_latency.observe(Duration::from_secs(5));
        let text = m.render(&EngineStats::default(), 2, 1);
        assert!(text.contains("tandem_signals_received_total 3"), "{text}");
        assert!(
            text.contains("tandem_dispatch_seconds_bucket{le=\"0.000025\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tandem_dispatch_seconds_bucket{le=\"0.0005\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("tandem_dispatch_seconds_bucket{le=\"+Inf\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("tandem_rules{state=\"quarantined\"} 1"),
            "{text}"
        );
    }
}
