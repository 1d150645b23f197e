//! Metric names in one place, on the `prometheus-client` crate, rendered
//! in the OpenMetrics text format.
//!
//! A leaf: counters are bumped where things happen; values kept elsewhere
//! (the engine's counters, the number of loaded rules) are handed to
//! [`Metrics::render`] as plain numbers ([`Snapshot`]), so this module
//! depends on nothing of the host.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds of the dispatch latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25,
];

/// The engine's counters: (name, help), in [`Snapshot`]'s order.
const ENGINE_COUNTERS: [(&str, &str); 6] = [
    ("rule_calls", "Guest calls"),
    ("rule_traps", "Guest calls that trapped"),
    (
        "rule_deadline_hits",
        "Guest calls stopped at their deadline",
    ),
    ("rule_quarantines", "Rules quarantined"),
    ("module_compiles", "Modules compiled (cache misses)"),
    (
        "guest_logs_dropped",
        "Guest log lines dropped by the per-rule rate limit",
    ),
];

/// A label set of one `reason`, `status` or `state` value.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Status {
    status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct State {
    state: &'static str,
}

/// Values kept outside this module, read when metrics are rendered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub rule_calls: u64,
    pub rule_traps: u64,
    pub rule_deadline_hits: u64,
    pub rule_quarantines: u64,
    pub module_compiles: u64,
    pub guest_logs_dropped: u64,
    pub rules_loaded: u64,
    pub rules_quarantined: u64,
}

/// The node's counters.
#[derive(Debug)]
pub struct Metrics {
    pub signals_received: Counter,
    pub signals_executed: Counter,
    pub signals_suppressed: Counter,
    pub signals_rejected: Counter,
    pub reloads: Counter,
    pub reload_failures: Counter,
    /// Rule runs and raises refused because one signal reached the cap.
    pub fanout_refused: Counter,
    /// Admin connections refused or shed (limit reached, no descriptor).
    pub admin_connections_refused: Family<Reason, Counter>,
    notifications: Family<Status, Counter>,
    /// Time to dispatch one signal through the engine (all its rules).
    dispatch_latency: Histogram,
    /// Link connections refused or dropped, by reason.
    link_rejects: Family<Reason, Counter>,
    /// Whether failover state could not be persisted (1 while it cannot).
    pub persist_failing: Gauge,
    /// Cluster: groups this node owns with its gate open.
    pub cluster_owned_groups: Gauge,
    /// Cluster: 1 while this node is fenced (why: `/api/v1/cluster`).
    pub cluster_fenced: Gauge,
    /// Cluster: milliseconds since the last credited keepalive was sent.
    pub cluster_keepalive_age_ms: Gauge,
    /// Cluster: etcd calls that failed or timed out.
    pub cluster_etcd_errors: Counter,
    /// Cluster: raised signals that could not be posted to a member.
    pub cluster_fanout_failed: Counter,
    /// Cluster: age (ms) of the oldest key in the last executed batch put.
    pub cluster_publish_lag_ms: Gauge,
    /// Cluster: gaps recorded in this node's history of executed keys.
    pub cluster_gaps: Gauge,
    /// The engine's counters, copied in at render time.
    engine: [Counter<u64, AtomicU64>; 6],
    rules: Family<State, Gauge>,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// How a notification ended (or that it was retried).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotificationStatus {
    Queued,
    Sent,
    Failed,
    Expired,
    Retried,
}

impl NotificationStatus {
    fn label(self) -> &'static str {
        match self {
            NotificationStatus::Queued => "queued",
            NotificationStatus::Sent => "sent",
            NotificationStatus::Failed => "failed",
            NotificationStatus::Expired => "expired",
            NotificationStatus::Retried => "retried",
        }
    }
}

impl Metrics {
    /// Every metric, registered.
    pub fn new() -> Metrics {
        let mut m = Metrics {
            signals_received: Counter::default(),
            signals_executed: Counter::default(),
            signals_suppressed: Counter::default(),
            signals_rejected: Counter::default(),
            reloads: Counter::default(),
            reload_failures: Counter::default(),
            fanout_refused: Counter::default(),
            admin_connections_refused: Family::default(),
            notifications: Family::default(),
            dispatch_latency: Histogram::new(BUCKETS),
            link_rejects: Family::default(),
            persist_failing: Gauge::default(),
            cluster_owned_groups: Gauge::default(),
            cluster_fenced: Gauge::default(),
            cluster_keepalive_age_ms: Gauge::default(),
            cluster_etcd_errors: Counter::default(),
            cluster_fanout_failed: Counter::default(),
            cluster_publish_lag_ms: Gauge::default(),
            cluster_gaps: Gauge::default(),
            engine: Default::default(),
            rules: Family::default(),
            registry: Registry::with_prefix("tandem"),
        };
        let r = &mut m.registry;
        r.register(
            "signals_received",
            "Signals accepted by ingest",
            m.signals_received.clone(),
        );
        r.register(
            "signals_executed",
            "Signals run through the rules (gate open)",
            m.signals_executed.clone(),
        );
        r.register(
            "signals_suppressed",
            "Signals stored without running rules (gate closed)",
            m.signals_suppressed.clone(),
        );
        r.register(
            "signals_rejected",
            "Signals refused as bad input",
            m.signals_rejected.clone(),
        );
        r.register("reloads", "Rule set reloads", m.reloads.clone());
        r.register(
            "reload_failures",
            "Rules that failed to load in a reload",
            m.reload_failures.clone(),
        );
        r.register(
            "fanout_refused",
            "Rule runs and raises refused at the per-signal cap",
            m.fanout_refused.clone(),
        );
        r.register(
            "admin_connections_refused",
            "Admin connections refused or shed, by reason",
            m.admin_connections_refused.clone(),
        );
        r.register(
            "notifications",
            "Notifications by status",
            m.notifications.clone(),
        );
        r.register(
            "dispatch_seconds",
            "Time to run one signal through its rules",
            m.dispatch_latency.clone(),
        );
        r.register(
            "link_rejected",
            "Link connections refused or dropped, by reason",
            m.link_rejects.clone(),
        );
        r.register(
            "persist_failing",
            "1 while the failover state cannot be stored",
            m.persist_failing.clone(),
        );
        r.register(
            "cluster_owned_groups",
            "Cluster: groups this node owns with its gate open",
            m.cluster_owned_groups.clone(),
        );
        r.register(
            "cluster_fenced",
            "Cluster: 1 while this node is fenced",
            m.cluster_fenced.clone(),
        );
        r.register(
            "cluster_keepalive_age_ms",
            "Cluster: milliseconds since the last credited keepalive was sent",
            m.cluster_keepalive_age_ms.clone(),
        );
        r.register(
            "cluster_etcd_errors",
            "Cluster: etcd calls that failed or timed out",
            m.cluster_etcd_errors.clone(),
        );
        r.register(
            "cluster_fanout_failed",
            "Cluster: raised signals that could not be posted to a member",
            m.cluster_fanout_failed.clone(),
        );
        r.register(
            "cluster_publish_lag_ms",
            "Cluster: age of the oldest key in the last executed batch put",
            m.cluster_publish_lag_ms.clone(),
        );
        r.register(
            "cluster_gaps",
            "Cluster: gaps in this node's history of executed keys",
            m.cluster_gaps.clone(),
        );
        for (counter, (name, help)) in m.engine.iter().zip(ENGINE_COUNTERS) {
            r.register(name, help, counter.clone());
        }
        r.register("rules", "Rules installed, by state", m.rules.clone());
        m
    }

    /// Count a link refused or dropped for `reason`.
    pub fn link_rejected(&self, reason: &'static str) {
        self.link_rejects.get_or_create(&Reason { reason }).inc();
    }

    /// Count notifications.
    pub fn notifications(&self, status: NotificationStatus, n: u64) {
        self.notifications
            .get_or_create(&Status {
                status: status.label(),
            })
            .inc_by(n);
    }

    /// How many notifications were counted with `status`.
    pub fn notification_count(&self, status: NotificationStatus) -> u64 {
        self.notifications
            .get_or_create(&Status {
                status: status.label(),
            })
            .get()
    }

    /// Record one dispatch's time.
    pub fn observe_dispatch(&self, d: Duration) {
        self.dispatch_latency.observe(d.as_secs_f64());
    }

    /// The OpenMetrics text of every metric, with `snapshot`'s values.
    pub fn render(&self, snapshot: Snapshot) -> String {
        let values = [
            snapshot.rule_calls,
            snapshot.rule_traps,
            snapshot.rule_deadline_hits,
            snapshot.rule_quarantines,
            snapshot.module_compiles,
            snapshot.guest_logs_dropped,
        ];
        for (counter, v) in self.engine.iter().zip(values) {
            counter
                .inner()
                .store(v, std::sync::atomic::Ordering::Relaxed);
        }
        for (state, v) in [
            ("loaded", snapshot.rules_loaded),
            ("quarantined", snapshot.rules_quarantined),
        ] {
            self.rules
                .get_or_create(&State { state })
                .set(i64::try_from(v).unwrap_or(i64::MAX));
        }
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_families_and_a_cumulative_histogram() {
        let m = Metrics::new();
        m.signals_received.inc_by(3);
        m.link_rejected("auth");
        m.notifications(NotificationStatus::Sent, 2);
        m.observe_dispatch(Duration::from_micros(20));
        m.observe_dispatch(Duration::from_micros(400));
        m.observe_dispatch(Duration::from_secs(5));
        let text = m.render(Snapshot {
            rule_traps: 4,
            rules_loaded: 2,
            ..Snapshot::default()
        });
        for line in [
            "tandem_signals_received_total 3",
            "tandem_link_rejected_total{reason=\"auth\"} 1",
            "tandem_notifications_total{status=\"sent\"} 2",
            "tandem_rule_traps_total 4",
            "tandem_rules{state=\"loaded\"} 2",
            "tandem_dispatch_seconds_bucket{le=\"0.000025\"} 1",
            "tandem_dispatch_seconds_bucket{le=\"0.0005\"} 2",
            "tandem_dispatch_seconds_bucket{le=\"+Inf\"} 3",
            "tandem_dispatch_seconds_count 3",
            "# EOF",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
