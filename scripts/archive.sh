#!/usr/bin/env bash
# Writes a timestamped, consistent backup of a running exdaas server, the
# way ExDaas's archive scripts did (but as a snapshot, not a tarball of live
# files). Usage: scripts/archive.sh [DIR]   (default ./backups)
# Honours EXDAAS_SERVER (host:port), EXDAAS_TOKEN and EXDAAS_BIN.
set -euo pipefail
dir=${1:-./backups}
bin=${EXDAAS_BIN:-exdaas}
command -v "$bin" >/dev/null || bin="$(dirname "$0")/../target/release/exdaas"
mkdir -p "$dir"
file="$dir/exdaas-$(date -u +%Y%m%dT%H%M%SZ).ndjson"
args=(backup --out "$file")
[ -n "${EXDAAS_SERVER:-}" ] && args+=(--server "$EXDAAS_SERVER")
"$bin" "${args[@]}"
gzip -9 "$file"
echo "$file.gz"
