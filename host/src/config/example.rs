//! The commented example `tandem config example` prints.

/// The commented example `tandem config example` prints.
pub const EXAMPLE: &str = r#"# Tandem node configuration. Durations: "150ms", "20s", "2m", "30d".
# Sizes: "32MiB", "1GiB". Secrets may come from TANDEM_ADMIN_TOKEN,
# TANDEM_INGEST_TOKEN and TANDEM_PAIR_SECRET instead.

[node]
name = "dev4120"            # this node's name, unique in the pair
data_dir = "./data"         # SQLite database, module cache, listen.json
# timezone = "Europe/Berlin" # for the daily table sync (default: the system's)
retention = "30d"           # event log and pending signals are kept this long

[admin]
listen = "127.0.0.1:8080"   # port 0 picks a free port (see DATA_DIR/listen.json)
token = "change-me"         # Bearer token for everything under /api/v1/
# ingest_token = "devices"  # may only POST /api/v1/signals

[rules]
dir = "./rules"             # NAME.wasm (+ NAME.toml) here are loaded and watched
deadline = "50ms"           # per call; a rule's NAME.toml may override it
memory_limit = "32MiB"      # per rule instance
memory_budget = "1GiB"      # all rules together; loads beyond it are refused

[failover]
role = "standalone"         # standalone | primary | secondary

# Notifications go to every sink whose channels match (default ["*"]).
[[sinks]]
name = "log"
kind = "log"

# [[sinks]]
# name = "oncall"
# kind = "webhook"
# url = "https://hooks.example.org/notify"   # http:// or https://
# channels = ["*"]
# max_age = "1h"            # older notifications are marked expired
# concurrency = 4           # deliveries in flight; timeout = "10s", connect_timeout = "5s"
# format = "tandem"         # or "slack": {"text": "SUBJECT: BODY"}
# headers = { Authorization = "env:HOOK_TOKEN" }
# ca_file = "/etc/tandem/private-ca.pem"      # besides the system's roots

# [[sinks]]
# name = "mail"
# kind = "email"
# host = "smtp.example.org"
# tls = "starttls"          # starttls (587) | tls (465) | none (25)
# username = "tandem"
# password = "env:SMTP_PASSWORD"
# from = "Tandem <tandem@example.org>"
"#;

/// What `tandem config example --cluster` prints: the office node of a
/// three-node cluster (DESIGN.md §7). The other two differ only in
/// `[node] name`, `[admin] listen` and `advertise`.
pub const CLUSTER_EXAMPLE: &str = r#"# Tandem cluster member (DESIGN.md §7): three nodes, three priority groups,
# coordinated by etcd. Copy it to each node and change [node] name,
# [admin] listen and [cluster] advertise. TANDEM_CLUSTER_SECRET may carry
# the secret instead.

[node]
name = "office"             # must appear in at least one group below
data_dir = "./data"

[admin]
listen = "0.0.0.0:8080"
token = "change-me"
ingest_token = "devices"

[rules]
dir = "./rules"             # a rule's NAME.toml may say group = "elementary"

[cluster]
name = "district"                           # etcd keys live under /tandem/district/
etcd = ["http://10.0.0.11:2379", "http://10.0.0.12:2379", "http://10.0.0.13:2379"]
advertise = "http://10.0.0.1:8080"          # this node's admin URL, as the others reach it
lease_ttl = "10s"                           # 5s to 60s: a dead owner's groups move after this
secret = "replace with `tandem secret new`" # signs /internal/v1/* between members
failback = "auto"                           # or "manual": POST /api/v1/cluster/failback
# replay_window = "20s"                     # default: lease_ttl + 10s
# startup_delay = "2m"                      # Ready (may own groups) after this much uptime
# fence_margin = "3s"                       # default: a third of lease_ttl

[cluster.groups]                            # each group: its nodes in priority order
default    = ["office", "elementary", "highschool"]
elementary = ["elementary", "office", "highschool"]
highschool = ["highschool", "office", "elementary"]

[[sinks]]
name = "log"
kind = "log"
"#;
