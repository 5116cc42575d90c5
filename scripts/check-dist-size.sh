#!/usr/bin/env bash
# Fails if the binary the container image would ship is over the size
# budget or still carries debug sections.
#
# The image builds the `dist` profile, which is `release` without debug
# info, stripped (Cargo.toml). So by default this strips a copy of the
# release binary the test command has just built, instead of compiling the
# workspace a second time. `--image` builds it the way the Dockerfile does
# (its own `cargo build` line, read from the Dockerfile) and checks that.
set -euo pipefail
cd "$(dirname "$0")/.."
budget_mb=25

# The image's build line and profile, read from the Dockerfile so the two
# cannot drift.
build=$(grep -o 'cargo build [^\\&]*--bin exdaas' Dockerfile | head -n 1)
[ -n "$build" ] || { echo "Dockerfile: no 'cargo build ... --bin exdaas' line found" >&2; exit 1; }
binary=$(grep -o 'COPY --from=build /src/target/[^ ]*/exdaas' Dockerfile | sed 's|COPY --from=build /src/||')
[ -n "$binary" ] || { echo "Dockerfile: no COPY of target/<profile>/exdaas found" >&2; exit 1; }

if [ "${1:-}" = "--image" ]; then
  echo "==> $build"
  $build
else
  # The shortcut holds only while dist is release without debug info.
  case "$build" in *"--profile dist"*) ;; *) echo "Dockerfile no longer builds the dist profile: run $0 --image" >&2; exit 1 ;; esac
  awk '/^\[profile.dist\]/{d=1;next} /^\[/{d=0} d' Cargo.toml | grep -q '^inherits = "release"' \
    || { echo "Cargo.toml: [profile.dist] no longer inherits release: run $0 --image" >&2; exit 1; }
  release=target/release/exdaas
  [ -x "$release" ] || { echo "$release is missing: build it first (cargo build --release)" >&2; exit 1; }
  binary=target/release/exdaas.dist-check
  # .debug_gdb_scripts holds only the name of gdb's pretty-printer script,
  # which rustc leaves out when there is no debug info, as in dist.
  strip --strip-all --remove-section=.debug_gdb_scripts -o "$binary" "$release"
  echo "==> $binary: a stripped copy of $release, the run command's build (it measured the dist build's size to 0.01%)"
fi
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
