#!/usr/bin/env bash
# `make demo`: a primary and a secondary on loopback with lab timings.
# Kills the primary, shows FAILOVER-ON on the secondary, restarts the
# primary, shows FAILOVER-OFF and the handback. Leaves nothing running.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=./target/release/tandem
WASM=target/wasm32-unknown-unknown/release
DEMO=./data/demo
rm -rf "$DEMO" && mkdir -p "$DEMO/rules"
cp "$WASM/failover_notify.wasm" "$WASM/panic_button.wasm" "$DEMO/rules/"

pair() { # role name admin link-key link-addr peer-admin
  cat <<TOML
[node]
name = "$2"
data_dir = "$DEMO/$2"
[admin]
listen = "$3"
token = "admin-token"
[rules]
dir = "$DEMO/rules"
[failover]
role = "$1"
primary = "dev4120"
secondary = "wat4120"
$4 = "$5"
peer_admin = "$6"
secret = "demo-pair-secret-change-me-0123456789abcdef"
startup_delay = "1s"
timeout = "1s"
check_interval = "100ms"
failback = "auto"
table_sync_types = ["contact"]
[failover.advanced]
lab_timings = true
[[sinks]]
name = "log"
kind = "log"
TOML
}
pair primary dev4120 127.0.0.1:8081 peer 127.0.0.1:6511 http://127.0.0.1:8082 > "$DEMO/primary.toml"
pair secondary wat4120 127.0.0.1:8082 listen 127.0.0.1:6511 http://127.0.0.1:8081 > "$DEMO/secondary.toml"

pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
start() { RUST_LOG=info "$BIN" serve --config "$DEMO/$1.toml" >> "$DEMO/$1.log" 2>&1 & pids+=($!); echo $!; }
status() { printf '  %-10s %s\n' "$1" "$(curl -s "http://127.0.0.1:$2/status")"; }
show() { sed 's/\x1b\[[0-9;]*m//g' "$DEMO/$1.log" | grep -E "$2" | cut -c1-220 | sed 's/^/  /'; }

echo "== starting the secondary (wat4120, :8082) and the primary (dev4120, :8081)"
start secondary > /dev/null
PRIMARY=$(start primary)
sleep 2.5
status primary 8081; status secondary 8082

echo; echo "== kill -9 of the primary"
kill -9 "$PRIMARY"
sleep 2
status secondary 8082
echo "-- the secondary's log:"
show secondary "FAILOVER-ON|tandem::notify"

echo; echo "== the primary comes back"
start primary > /dev/null
sleep 3
status primary 8081; status secondary 8082
echo "-- the secondary's log:"
show secondary "FAILOVER-OFF|back and active|standby: rules"
echo "-- the failover log (GET /api/v1/failovers on the secondary):"
curl -s -H 'Authorization: Bearer admin-token' http://127.0.0.1:8082/api/v1/failovers | sed 's/^/  /'
echo; echo "== done; logs in $DEMO/*.log"
