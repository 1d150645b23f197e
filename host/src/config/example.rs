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
