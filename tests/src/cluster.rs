//! A real etcd (Debian's `etcd-server`) and a cluster of real `tandem
//! serve` processes on loopback, with lab timings, a webhook, and helpers
//! to drive and observe them.
//!
//! etcd runs with a 50 ms heartbeat and a 250 ms election timeout (so it
//! grants 1 s leases), revision auto-compaction on, in a temporary data
//! directory; it is killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;
use crate::http::{get, post};
use crate::node::NodeProc;
use crate::pair::wait_until;
use crate::proxy::Proxy;
use crate::sample_wasm;
use crate::webhook::Webhook;

/// The cluster's shared secret in tests.
pub const CLUSTER_SECRET: &str = "tandem-test-cluster-secret-0123456789abcdef";
/// The lease TTL of test clusters: long enough for a loaded 2-core
/// machine's scheduling hiccups, short enough for quick takeovers.
pub const LEASE_TTL: Duration = Duration::from_secs(2);
/// Generous: these must hold on a loaded 2-core machine.
pub const MARGIN: Duration = Duration::from_secs(4);
pub const WAIT: Duration = Duration::from_secs(30);

/// One etcd member.
#[derive(Debug)]
struct Member {
    name: String,
    client: u16,
    peer: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// An etcd cluster of one or more members.
#[derive(Debug)]
pub struct Etcd {
    members: Vec<Member>,
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// Start `n` members and wait until each answers `/health`.
    pub fn start(n: usize) -> Etcd {
        let dir = tempfile::tempdir().expect("tempdir");
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("e{i}"),
                client: free_port(),
                peer: free_port(),
                dir: dir.path().join(format!("e{i}")),
                child: None,
            })
            .collect();
        let mut etcd = Etcd { members, _dir: dir };
        for i in 0..n {
            etcd.spawn(i);
        }
        for i in 0..n {
            etcd.wait_healthy(i);
        }
        etcd
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize) {
        let initial = self.initial_cluster();
        let m = &mut self.members[i];
        let log = std::fs::File::create(format!("{}.log", m.dir.display())).expect("log");
        let client = format!("http://127.0.0.1:{}", m.client);
        let peer = format!("http://127.0.0.1:{}", m.peer);
        let child = Command::new("etcd")
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial])
            .args(["--initial-cluster-state", "new"])
            .args(["--heartbeat-interval", "50", "--election-timeout", "250"])
            .args(["--auto-compaction-mode", "revision"])
            .args(["--auto-compaction-retention", "10000"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd (Debian's etcd-server; `make test` installs it)");
        m.child = Some(child);
    }

    fn wait_healthy(&self, i: usize) {
        let url = format!("http://127.0.0.1:{}", self.members[i].client);
        wait_until("etcd healthy", WAIT, || {
            crate::http::try_request("GET", &url, "/health", None, b"")
                .is_some_and(|a| a.status == 200 && a.body.contains("true"))
        });
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect()
    }

    /// Member `i`'s client address (`127.0.0.1:PORT`).
    pub fn client_addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.members[i].client)
    }

    /// Every key under `prefix` with its value, in key order, read from
    /// member 0 through etcd's JSON gateway (`POST /v3/kv/range`).
    pub fn range(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        // The end of a prefix range: the prefix with its last byte + 1.
        let mut end = prefix.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let body = serde_json::json!({"key": b64.encode(prefix), "range_end": b64.encode(&end)});
        let base = format!("http://{}", self.client_addr(0));
        let a = post(&base, "/v3/kv/range", None, &body.to_string());
        assert_eq!(a.status, 200, "etcd range: {}", a.body);
        let v: serde_json::Value = serde_json::from_str(&a.body).expect("etcd's JSON");
        let decode = |x: &serde_json::Value| b64.decode(x.as_str().unwrap_or("")).expect("base64");
        v["kvs"]
            .as_array()
            .map(|kvs| {
                kvs.iter()
                    .map(|kv| {
                        let key = String::from_utf8(decode(&kv["key"])).expect("utf-8 key");
                        (key, decode(&kv["value"]))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// kill -9 member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// kill -9 every member.
    pub fn stop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }

    /// Start member `i` again on its data (after [`Etcd::kill`]).
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
    }

    /// Start every member again and wait until each is healthy.
    pub fn restart_all(&mut self) {
        for i in 0..self.members.len() {
            self.restart(i);
        }
        for i in 0..self.members.len() {
            self.wait_healthy(i);
        }
    }

    /// The index of the current leader: the member whose `/metrics` says
    /// `etcd_server_is_leader 1`.
    pub fn leader(&self) -> Option<usize> {
        (0..self.members.len()).find(|&i| {
            self.members[i].child.is_some()
                && crate::http::try_request(
                    "GET",
                    &format!("http://127.0.0.1:{}", self.members[i].client),
                    "/metrics",
                    None,
                    b"",
                )
                .is_some_and(|a| a.body.lines().any(|l| l == "etcd_server_is_leader 1"))
        })
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How to start a test cluster.
#[derive(Debug, Clone)]
pub struct Opts {
    /// Node names, in start order.
    pub nodes: Vec<&'static str>,
    /// `[cluster.groups]` lines.
    pub groups: &'static str,
    pub failback: &'static str,
    /// Rules: (file stem, sample crate, sidecar TOML).
    pub rules: Vec<(&'static str, &'static str, &'static str)>,
    /// etcd members.
    pub etcd_members: usize,
    /// Route node `i`'s etcd traffic through a fault-injecting proxy.
    pub proxied: Vec<usize>,
    /// Extra lines for `[cluster.advanced]`.
    pub advanced: &'static str,
    /// Advertise each node through a proxy of its own (to cut members
    /// off from each other while etcd stays reachable).
    pub advertise_proxies: bool,
    /// `[cluster] startup_delay`.
    pub startup_delay: &'static str,
    /// `[cluster] lease_ttl` ([`LEASE_TTL`] unless a test needs etcd's
    /// own pauses to fit inside a lease).
    pub lease_ttl: Duration,
}

/// Where the three groups of [`DESIGN_GROUPS`] belong: each on its first
/// node.
pub const HOME: [(&str, &str); 3] = [
    ("default", "office"),
    ("elementary", "elementary"),
    ("highschool", "highschool"),
];

/// Cluster tests share the machine's two cores: one at a time in a
/// binary (the pair tests' lock).
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    crate::pair::ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// The three groups of DESIGN.md §7.
pub const DESIGN_GROUPS: &str = "default = [\"office\", \"elementary\", \"highschool\"]\n\
    elementary = [\"elementary\", \"office\", \"highschool\"]\n\
    highschool = [\"highschool\", \"office\", \"elementary\"]\n";

impl Default for Opts {
    fn default() -> Self {
        Opts {
            nodes: vec!["office", "elementary", "highschool"],
            groups: DESIGN_GROUPS,
            failback: "auto",
            rules: vec![
                (
                    "failover-notify",
                    "failover_notify",
                    "group = \"default\"\n",
                ),
                (
                    "panic-default",
                    "panic_button",
                    "group = \"default\"\nsignals = [\"PANIC-*\"]\n",
                ),
                (
                    "panic-elementary",
                    "panic_button",
                    "group = \"elementary\"\nsignals = [\"PANIC-*\"]\n",
                ),
                (
                    "panic-highschool",
                    "panic_button",
                    "group = \"highschool\"\nsignals = [\"PANIC-*\"]\n",
                ),
            ],
            etcd_members: 1,
            proxied: Vec::new(),
            advanced: "",
            advertise_proxies: false,
            startup_delay: "0s",
            lease_ttl: LEASE_TTL,
        }
    }
}

/// A running cluster.
#[derive(Debug)]
pub struct Cluster {
    pub etcd: Etcd,
    pub nodes: Vec<NodeProc>,
    pub names: Vec<&'static str>,
    pub hook: Webhook,
    /// Per node: the proxy its etcd traffic goes through, if any.
    pub proxies: Vec<Option<Proxy>>,
    /// Per node: the proxy it is advertised through, if any.
    pub fronts: Vec<Option<Proxy>>,
    _dir: tempfile::TempDir,
}

/// The config of cluster node `name`.
#[allow(clippy::too_many_arguments)]
fn node_config(
    dir: &Path,
    name: &str,
    admin: &str,
    advertise: &str,
    etcd: &[String],
    o: &Opts,
    rules: &Path,
    hook: &str,
) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let endpoints = etcd
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        "[node]\nname = \"{name}\"\ndata_dir = \"{data}\"\n\n\
         [admin]\nlisten = \"{admin}\"\ntoken = \"admin\"\ningest_token = \"ingest\"\n\n\
         [rules]\ndir = \"{rules}\"\n\n\
         [cluster]\nname = \"test\"\netcd = [{endpoints}]\nadvertise = \"http://{advertise}\"\n\
         lease_ttl = \"{ttl}ms\"\nsecret = \"{CLUSTER_SECRET}\"\nfailback = \"{failback}\"\n\
         startup_delay = \"{startup}\"\nreplay_window = \"10s\"\n\n\
         [cluster.groups]\n{groups}\n\
         [cluster.advanced]\nlab_timings = true\n{advanced}\n\n\
         [[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{hook}\"\n",
        data = dir.join("data").display(),
        rules = rules.display(),
        ttl = o.lease_ttl.as_millis(),
        failback = o.failback,
        groups = o.groups,
        advanced = o.advanced,
        startup = o.startup_delay,
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// Start etcd, then the nodes in order, each with its own data directory
/// and a fixed admin port (its `advertise`).
pub fn start_cluster(o: Opts) -> Cluster {
    let dir = tempfile::tempdir().expect("tempdir");
    let etcd = Etcd::start(o.etcd_members);
    let hook = Webhook::start();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).expect("mkdir");
    for (stem, krate, toml) in &o.rules {
        std::fs::copy(sample_wasm(krate), rules.join(format!("{stem}.wasm"))).expect("copy");
        std::fs::write(rules.join(format!("{stem}.toml")), toml).expect("toml");
    }
    let mut nodes = Vec::new();
    let mut proxies = Vec::new();
    let mut fronts = Vec::new();
    for (i, name) in o.nodes.iter().enumerate() {
        let ndir = dir.path().join(name);
        std::fs::create_dir_all(&ndir).expect("mkdir");
        let (endpoints, proxy) = if o.proxied.contains(&i) {
            let p = Proxy::start(etcd.client_addr(0));
            (vec![format!("http://{}", p.addr())], Some(p))
        } else {
            (etcd.endpoints(), None)
        };
        let admin = format!("127.0.0.1:{}", free_port());
        let front = o.advertise_proxies.then(|| Proxy::start(admin.clone()));
        let advertise = front
            .as_ref()
            .map_or(admin.clone(), |p| p.addr().to_owned());
        let cfg = node_config(
            &ndir,
            name,
            &admin,
            &advertise,
            &endpoints,
            &o,
            &rules,
            &hook.url(),
        );
        nodes.push(NodeProc::start(&ndir, &cfg));
        proxies.push(proxy);
        fronts.push(front);
    }
    Cluster {
        etcd,
        nodes,
        names: o.nodes.clone(),
        hook,
        proxies,
        fronts,
        _dir: dir,
    }
}

impl Cluster {
    /// Node `name`.
    pub fn node(&self, name: &str) -> &NodeProc {
        let i = self.index(name);
        &self.nodes[i]
    }

    /// Node `name`, mutably (to kill or restart it).
    pub fn node_mut(&mut self, name: &str) -> &mut NodeProc {
        let i = self.index(name);
        &mut self.nodes[i]
    }

    pub fn index(&self, name: &str) -> usize {
        self.names
            .iter()
            .position(|n| *n == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// `GET /api/v1/cluster` of `name` (None when it does not answer).
    pub fn view(&self, name: &str) -> Option<serde_json::Value> {
        let a = crate::http::try_request(
            "GET",
            self.node(name).admin(),
            "/api/v1/cluster",
            Some("admin"),
            b"",
        )?;
        (a.status == 200).then(|| a.json())
    }

    /// The groups `name` owns (its gate open), as it says.
    pub fn owned(&self, name: &str) -> Vec<String> {
        self.view(name)
            .and_then(|v| {
                v["owned"].as_array().map(|a| {
                    a.iter()
                        .filter_map(|g| g.as_str().map(str::to_owned))
                        .collect()
                })
            })
            .unwrap_or_default()
    }

    /// The owner of `group` in etcd, as `via` reads it.
    pub fn owner(&self, via: &str, group: &str) -> Option<String> {
        let v = self.view(via)?;
        v["owners"]
            .as_array()?
            .iter()
            .find(|o| o["group"] == group)?["node"]
            .as_str()
            .map(str::to_owned)
    }

    /// Wait until every live node says each group in `want` (group ->
    /// node) is open on that node and on no other.
    pub fn wait_owners(&self, want: &[(&str, &str)], limit: Duration) -> Duration {
        wait_until(&format!("owners {want:?}"), limit, || {
            want.iter().all(|(g, n)| {
                self.owned(n).iter().any(|o| o == g)
                    && self
                        .names
                        .iter()
                        .filter(|x| *x != n)
                        .all(|x| !self.owned(x).iter().any(|o| o == g))
            })
        })
    }

    /// Whether `name` says it is fenced.
    pub fn fenced(&self, name: &str) -> bool {
        self.view(name).is_some_and(|v| !v["fenced"].is_null())
    }

    /// The epoch of every group as `via` sees it.
    pub fn epochs(&self, via: &str) -> Vec<(String, Option<String>, i64)> {
        self.view(via)
            .and_then(|v| {
                v["owners"].as_array().map(|a| {
                    a.iter()
                        .map(|o| {
                            (
                                o["group"].as_str().unwrap_or("").to_owned(),
                                o["node"].as_str().map(str::to_owned),
                                o["epoch"].as_i64().unwrap_or(0),
                            )
                        })
                        .collect()
                })
            })
            .unwrap_or_default()
    }

    /// Every tenure (group, node, epoch, opened, closed) the nodes in
    /// `names` report, on the machine's CLOCK_BOOTTIME.
    pub fn tenures(&self, names: &[&str]) -> Vec<(String, String, i64, u64, u64)> {
        let mut all = Vec::new();
        for n in names {
            let v = self
                .view(n)
                .unwrap_or_else(|| panic!("{n} does not answer /api/v1/cluster"));
            for t in v["tenures"].as_array().into_iter().flatten() {
                all.push((
                    t["group"].as_str().unwrap_or("").to_owned(),
                    (*n).to_owned(),
                    t["epoch"].as_i64().unwrap_or(0),
                    t["opened_ns"].as_u64().unwrap_or(0),
                    t["closed_ns"].as_u64().unwrap_or(u64::MAX),
                ));
            }
        }
        all
    }

    /// No two nodes had one group's gate open (and within their fencing
    /// deadline) at the same instant.
    pub fn assert_one_owner_at_a_time(&self, names: &[&str]) {
        let t = self.tenures(names);
        for a in &t {
            for b in &t {
                if a.0 == b.0 && a.1 < b.1 {
                    let overlap = a.3 < b.4 && b.3 < a.4;
                    assert!(
                        !overlap,
                        "group {} open on {} (epoch {}, {}..{}) and on {} (epoch {}, {}..{}) at once",
                        a.0, a.1, a.2, a.3, a.4, b.1, b.2, b.3, b.4
                    );
                }
            }
        }
    }

    /// POST a signal to every node (as devices do).
    pub fn send_to_all(&self, body: &str) {
        for n in &self.nodes {
            let _ = crate::http::try_request(
                "POST",
                n.admin(),
                "/api/v1/signals",
                Some("ingest"),
                body.as_bytes(),
            );
        }
    }

    /// POST a signal to one node; its reply.
    pub fn send(&self, name: &str, body: &str) -> serde_json::Value {
        let a = post(
            self.node(name).admin(),
            "/api/v1/signals",
            Some("ingest"),
            body,
        );
        assert_eq!(a.status, 202, "{}", a.body);
        a.json()
    }

    /// `GET /status?group=G` of `name`: the status code.
    pub fn status_of(&self, name: &str, group: Option<&str>) -> u16 {
        let path = group.map_or("/status".to_owned(), |g| format!("/status?group={g}"));
        get(self.node(name).admin(), &path, None).status
    }

    /// Print the end of every node's log (on a failing test).
    fn dump_logs(&self) {
        for (name, node) in self.names.iter().zip(&self.nodes) {
            let log = node.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("---- {name} log (last {} lines) ----", tail.len());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
    }
}

/// Wait until `pred`, up to `limit`, returning how long it took.
pub fn wait_for(what: &str, limit: Duration, pred: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    wait_until(what, limit, pred);
    t.elapsed()
}

/// A device that keeps sending keyed PANIC signals to some nodes, every
/// 25 ms, until stopped.
#[derive(Debug)]
pub struct Sender {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Sender {
    /// Start sending to `admins` (admin base URLs), keys `PREFIX-N`.
    pub fn start(admins: Vec<String>, prefix: &str) -> Sender {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, prefix) = (stop.clone(), prefix.to_owned());
        let thread = std::thread::spawn(move || {
            // `n` counts keys some node accepted: a key no node took (all
            // down) is sent again under the same number.
            let mut n = 0u64;
            while !s.load(std::sync::atomic::Ordering::SeqCst) {
                let body = format!(
                    r#"{{"name": "PANIC-2", "key": "{prefix}-{}", "fields": {{"location": "hall"}}}}"#,
                    n + 1
                );
                let mut accepted = false;
                for a in &admins {
                    accepted |= crate::http::try_request(
                        "POST",
                        a,
                        "/api/v1/signals",
                        Some("ingest"),
                        body.as_bytes(),
                    )
                    .is_some_and(|r| r.status == 202);
                }
                if accepted {
                    n += 1;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            n
        });
        Sender {
            stop,
            thread: Some(thread),
        }
    }

    /// Stop; how many signals were sent (to each node).
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.take().map_or(0, |t| t.join().unwrap_or(0))
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
