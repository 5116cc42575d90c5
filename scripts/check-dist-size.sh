#!/usr/bin/env bash
# Builds the server the way the Dockerfile does (its own `cargo build` line,
# read from the Dockerfile so the two cannot drift) and fails if the binary
# the image would ship is over the size budget.
set -euo pipefail
cd "$(dirname "$0")/.."
budget_mb=25

build=$(grep -o 'cargo build [^\\&]*--bin exdaas' Dockerfile | head -n 1)
[ -n "$build" ] || { echo "Dockerfile: no 'cargo build ... --bin exdaas' line found" >&2; exit 1; }
binary=$(grep -o 'COPY --from=build /src/target/[^ ]*/exdaas' Dockerfile | sed 's|COPY --from=build /src/||')
[ -n "$binary" ] || { echo "Dockerfile: no COPY of target/<profile>/exdaas found" >&2; exit 1; }

echo "==> $build"
$build
bytes=$(stat -c %s "$binary")
mb=$(( (bytes + 1048575) / 1048576 ))
echo "==> $binary: $bytes bytes (~${mb} MiB), budget ${budget_mb} MB"
if [ "$bytes" -gt $(( budget_mb * 1000 * 1000 )) ]; then
  echo "$binary is over the ${budget_mb} MB budget of the container image" >&2
  exit 1
fi
if readelf -S "$binary" 2>/dev/null | grep -q '\.debug_'; then
  echo "$binary still carries debug sections" >&2
  exit 1
fi
