#!/usr/bin/env bash
# The side-by-side benchmark: exdaas against the HTTP floor (a minimal hyper
# server), Webdis over Redis with every write fsynced, and etcd's JSON
# gateway, all on loopback in one run. Installs what it needs (Debian
# packages), builds release binaries, then runs bench/run.py, which prints a
# table and writes bench/results.json, bench/RESULTS.md and the chart
# bench/results.png.
# Options are passed on: --duration SECONDS (default 10), --keys N
# (default 1000000), --skip-baselines, --growth 0,1000000,5000000 (key
# counts to measure cost growth at), --quick (no key count above 1M).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v ab >/dev/null || need+=(apache2-utils)
command -v redis-server >/dev/null || need+=(redis-server)
command -v webdis >/dev/null || need+=(webdis)
command -v etcd >/dev/null || need+=(etcd-server)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "==> installing ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
  # Packaged services may start on install; the benchmark runs its own.
  for svc in redis-server webdis etcd; do $sudo service "$svc" stop >/dev/null 2>&1 || true; done
fi

python3 -c 'import matplotlib' 2>/dev/null || {
  echo "==> installing matplotlib (for bench/results.png)"
  python3 -m pip install --quiet --disable-pip-version-check 'matplotlib>=3.8,<4'
}

echo "==> building release binaries"
cargo build --release --locked --bin exdaas --bin http-floor
[ -f examples/dist/require_fields.wasm ] || scripts/build-plugins.sh

exec python3 bench/run.py "$@"
