//! A primary and a secondary as real `tandem serve` processes on loopback
//! with lab timings (check 100 ms, timeout 1 s), a webhook, and helpers to
//! drive and observe them.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::http::get;
use crate::node::{NodeProc, write_config};
use crate::webhook::{Received, Webhook};
use crate::{free_port, sample_wasm};

/// The pair's shared secret in tests (32 bytes or more, as required).
pub const PAIR_SECRET: &str = "tandem-test-pair-secret-0123456789abcdef";

/// Pair tests share the machine's two cores: one at a time in a binary.
pub static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

pub const TIMEOUT_MS: u64 = 1000;
pub const CHECK_MS: u64 = 100;
/// Generous: these must hold on a loaded 2-core machine.
pub const MARGIN: Duration = Duration::from_secs(4);
pub const WAIT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct Opts {
    pub failback: &'static str,
    pub startup_delay: &'static str,
    /// The primary's `startup_delay`, when it differs from the
    /// secondary's (`startup_delay`).
    pub startup_delay_p: Option<&'static str>,
    pub secret_p: &'static str,
    /// Extra `[failover]` lines (both nodes).
    pub failover_extra: &'static str,
    /// `table_sync_types` of both nodes (TOML array text).
    pub sync_types: &'static str,
    /// Extra lines for `[failover.advanced]` (both nodes).
    pub advanced: &'static str,
    /// Extra `NAME.toml` rules: (file stem, sample crate, toml text).
    pub rules: Vec<(&'static str, &'static str, &'static str)>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            failback: "auto",
            startup_delay: "300ms",
            startup_delay_p: None,
            secret_p: PAIR_SECRET,
            rules: Vec::new(),
            advanced: "",
            failover_extra: "",
            // Not `rule`: the secondary loads its rules from its own
            // directory (a synced secondary does not watch it).
            sync_types: "[\"contact\"]",
        }
    }
}

pub fn failover_section(role: &str, o: &Opts, secret: &str, link: &str) -> String {
    let startup_delay = match o.startup_delay_p {
        Some(d) if role == "primary" => d,
        _ => o.startup_delay,
    };
    let (key, rank) = if role == "primary" {
        ("peer", 1)
    } else {
        ("listen", 2)
    };
    format!(
        "[failover]\nrole = \"{role}\"\nrank = {rank}\nprimary = \"dev4120\"\nsecondary = \"wat4120\"\n{key} = \"{link}\"\n\
         secret = \"{secret}\"\nstartup_delay = \"{}\"\ntimeout = \"{TIMEOUT_MS}ms\"\ncheck_interval = \"{CHECK_MS}ms\"\n\
         failback = \"{}\"\ntable_sync_types = {}\n{}\n[failover.advanced]\nlab_timings = true\n{}\n",
        startup_delay, o.failback, o.sync_types, o.failover_extra, o.advanced
    )
}

/// The two nodes and the webhook they notify.
#[derive(Debug)]
pub struct Pair {
    pub p: NodeProc,
    pub s: NodeProc,
    pub hook: Webhook,
    _dir: tempfile::TempDir,
}

/// Start the secondary (its link on `link_port`), then the primary dialing
/// `dial` (the link port, or a proxy in front of it).
pub fn start_pair(o: Opts, proxy: Option<&dyn Fn(String) -> String>) -> Pair {
    let dir = tempfile::tempdir().expect("tempdir");
    let hook = Webhook::start();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).expect("mkdir");
    std::fs::copy(
        sample_wasm("failover_notify"),
        rules.join("failover-notify.wasm"),
    )
    .expect("copy");
    for (stem, krate, toml) in &o.rules {
        std::fs::copy(sample_wasm(krate), rules.join(format!("{stem}.wasm"))).expect("copy");
        std::fs::write(rules.join(format!("{stem}.toml")), toml).expect("toml");
    }
    let common = format!(
        "[rules]\ndir = \"{}\"\n[[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n\n",
        rules.display(),
        hook.url()
    );
    let link = format!("127.0.0.1:{}", free_port());
    let s_dir = dir.path().join("s");
    let p_dir = dir.path().join("p");
    std::fs::create_dir_all(&s_dir).expect("mkdir");
    std::fs::create_dir_all(&p_dir).expect("mkdir");
    let s_cfg = write_config(
        &s_dir,
        "wat4120",
        &(common.clone() + &failover_section("secondary", &o, PAIR_SECRET, &link)),
    );
    // The secondary's admin port is fixed up front so the primary can be
    // told it and start first: a secondary started first on a loaded
    // machine may take over before the primary is up (correctly: it never
    // heard it), which would add a failover the tests did not ask for.
    let s_admin = format!("127.0.0.1:{}", free_port());
    let text = std::fs::read_to_string(&s_cfg).expect("config");
    std::fs::write(
        &s_cfg,
        text.replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"{s_admin}\""),
            1,
        ),
    )
    .expect("config");
    let dial = proxy.map_or(link.clone(), |f| f(link.clone()));
    let mut p_extra = common + &failover_section("primary", &o, o.secret_p, &dial);
    p_extra = p_extra.replace(
        "[failover.advanced]",
        &format!("peer_admin = \"http://{s_admin}\"\n[failover.advanced]"),
    );
    let p_cfg = write_config(&p_dir, "dev4120", &p_extra);
    let p = NodeProc::start(&p_dir, &p_cfg);
    let s = NodeProc::start(&s_dir, &s_cfg);
    Pair {
        p,
        s,
        hook,
        _dir: dir,
    }
}

impl Drop for Pair {
    /// A failing pair test shows the end of both nodes' logs: a flake is
    /// diagnosed from the run that showed it.
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (name, node) in [("primary", &self.p), ("secondary", &self.s)] {
                let log = node.log();
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                eprintln!("---- {name} log (last {} lines) ----", tail.len());
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

pub fn status(node: &NodeProc) -> (u16, serde_json::Value) {
    let a = get(node.admin(), "/status", None);
    (a.status, a.json())
}

pub fn wait_until(what: &str, limit: Duration, mut pred: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !pred() {
        assert!(
            t.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    t.elapsed()
}

/// P active, S standby, both Ready in each other's eyes (a takeover needs
/// the primary's last status to say Ready; a table sync needs both).
pub fn wait_normal(pair: &Pair) {
    let ready_as_seen_by = |node: &NodeProc| {
        get(node.admin(), "/api/v1/status", Some("admin")).json()["peer"]["status"]["ready"] == true
    };
    wait_until(
        "P active, S standby, each Ready as the other sees it",
        WAIT,
        || {
            status(&pair.p).0 == 200
                && status(&pair.s).0 == 503
                && ready_as_seen_by(&pair.s)
                && ready_as_seen_by(&pair.p)
        },
    );
}

pub fn subjects(got: &[Received], needle: &str) -> usize {
    got.iter()
        .filter(|r| {
            r.answered < 300
                && r.body["subject"]
                    .as_str()
                    .is_some_and(|s| s.contains(needle))
        })
        .count()
}

/// Distinct notification ids among the deliveries whose subject contains
/// `needle` (a delivery cut short by a kill -9 is sent again under the
/// same id).
pub fn distinct(got: &[Received], needle: &str) -> usize {
    got.iter()
        .filter(|r| {
            r.answered < 300
                && r.body["subject"]
                    .as_str()
                    .is_some_and(|s| s.contains(needle))
        })
        .filter_map(|r| r.idempotency_key.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .len()
}

pub fn failovers(node: &NodeProc) -> Vec<serde_json::Value> {
    get(node.admin(), "/api/v1/failovers", Some("admin"))
        .json()
        .as_array()
        .cloned()
        .unwrap_or_default()
}
