#!/usr/bin/env bash
# Side-by-side throughput of exdaas on loopback, in one run:
#   1. GET of a cached key
#   2. durable PUT of distinct keys (100-byte JSON), default group commit
#   3. the same PUT with storage.max_batch=1 (one fsync per write)
#   4. the same PUT through the require-fields example plugin (when built)
# wrk, 2 threads, 64 connections, DURATION seconds each after a warm-up.
# Prints a table and writes bench/results.json.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}

if ! command -v wrk >/dev/null || ! command -v curl >/dev/null; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq wrk curl >/dev/null
fi
cargo build --release --locked --bin exdaas
BIN=target/release/exdaas
WORK=$(mktemp -d)
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

port_free() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start NAME [ENV=VALUE...]: starts a server with a fresh data dir.
start() {
  local name=$1; shift
  PORT=$(port_free)
  mkdir -p "$WORK/$name"
  env EXDAAS_SERVER__LISTEN=127.0.0.1:$PORT EXDAAS_STORAGE__DATA_DIR="$WORK/$name/data" \
      EXDAAS_LOG=warn "$@" "$BIN" --config "$WORK/$name.toml" 2>"$WORK/$name/log" &
  PID=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && return 0; sleep 0.1; done
  echo "server $name did not start:"; cat "$WORK/$name/log"; exit 1
}
stop() { kill "$PID"; wait "$PID" || true; PID=""; }

RESULTS=()
# run LABEL SCRIPT: warm-up, then the measured run; records rps and latencies.
run() {
  local label=$1 script=$2
  wrk -t2 -c"$CONNS" -d2s -s "$script" "http://127.0.0.1:$PORT" >/dev/null
  local out
  out=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency -s "$script" "http://127.0.0.1:$PORT")
  local rps p50 p99 errors
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  errors=$(awk '/Non-2xx/ {print $5}' <<<"$out"); errors=${errors:-0}
  RESULTS+=("$label|$rps|$p50|$p99|$errors")
  printf '%-34s %10s req/s  p50 %-9s p99 %-9s non-2xx %s\n' "$label" "$rps" "$p50" "$p99" "$errors"
}

echo "" > "$WORK/default.toml"
start default
curl -sf -X PUT -H 'content-type: application/json' -d '{"hot":true}' "http://127.0.0.1:$PORT/v1/kv/bench-hot" >/dev/null
run "GET cached key" bench/get_cached.lua
run "PUT distinct keys (group commit)" bench/put_distinct.lua
stop

echo "" > "$WORK/batch1.toml"
start batch1 EXDAAS_STORAGE__MAX_BATCH=1
run "PUT distinct keys (max_batch=1)" bench/put_distinct.lua
stop

PLUGIN=examples/dist/require_fields.wasm
if [ -f "$PLUGIN" ]; then
  cat > "$WORK/plugin.toml" <<TOML
[[plugins]]
name = "require-fields"
path = "$PWD/$PLUGIN"
config = { required = { name = "string", email = "string", age = "number" } }
TOML
  start plugin
  run "PUT distinct keys (require-fields)" bench/put_distinct.lua
  curl -sf "http://127.0.0.1:$PORT/v1/plugins" > "$WORK/plugins.json" || true
  stop
fi

python3 - "$WORK" "${RESULTS[@]}" <<'PY'
import json, sys, datetime, platform, os
work, rows = sys.argv[1], sys.argv[2:]
res = {}
for row in rows:
    label, rps, p50, p99, errors = row.split("|")
    res[label] = {"rps": float(rps), "p50": p50, "p99": p99, "non_2xx": int(errors)}
def ratio(a, b):
    return round(res[a]["rps"] / res[b]["rps"], 3) if a in res and b in res else None
ratios = {
    "group_commit_vs_batch1": ratio("PUT distinct keys (group commit)", "PUT distinct keys (max_batch=1)"),
    "plugin_vs_plain_put": ratio("PUT distinct keys (require-fields)", "PUT distinct keys (group commit)"),
}
out = {"date": datetime.datetime.utcnow().isoformat() + "Z", "machine": platform.node(),
       "cpus": os.cpu_count(), "results": res, "ratios": ratios}
p = os.path.join(work, "plugins.json")
if os.path.exists(p):
    out["plugins"] = json.load(open(p))
json.dump(out, open("bench/results.json", "w"), indent=2)
print("ratios:", json.dumps(ratios))
PY
echo "results written to bench/results.json"
