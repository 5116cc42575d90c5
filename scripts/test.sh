#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what is missing,
# builds the example plugins from source, then runs unit and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
# The wasm guest toolchain is needed only when rustup's has no wasm32 target.
if ! rustup target list --installed 2>/dev/null | grep -q '^wasm32-unknown-unknown$'; then
  [ -x /usr/bin/cargo ] && [ -d /usr/lib/rustlib/wasm32-unknown-unknown ] || need_apt+=(rustc cargo libstd-rust-dev-wasm32)
fi
command -v clang >/dev/null || need_apt+=(clang)
# The change feed tests read streams with curl, as a user would.
command -v curl >/dev/null || need_apt+=(curl)
# The multi-node test runs the shipped nginx configuration.
command -v nginx >/dev/null || need_apt+=(nginx-light)
# The power-loss tests mount a FUSE filesystem of their own.
command -v fusermount3 >/dev/null || need_apt+=(fuse3)
command -v wasm-ld >/dev/null || command -v wasm-ld-14 >/dev/null || need_apt+=(lld)
if [ ${#need_apt[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "==> installing ${need_apt[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# The API conformance test drives schemathesis against a live server. It
# goes into a virtual environment of the project's own: Debian's Python
# refuses global pip installs (PEP 668).
if ! command -v schemathesis >/dev/null; then
  venv=target/tools-venv
  if [ ! -x "$venv/bin/schemathesis" ]; then
    echo "==> installing schemathesis into $venv (about a minute)"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
      rm -rf "$venv"
      sudo=""
      [ "$(id -u)" -ne 0 ] && sudo="sudo"
      $sudo apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'schemathesis==4.32.5'
  fi
  export EXDAAS_SCHEMATHESIS="$PWD/$venv/bin/schemathesis"
fi

# The metrics test checks the classic exposition with Prometheus's own
# promtool, unpacked from Debian's package (its server is not installed).
if ! command -v promtool >/dev/null; then
  promtool=target/tools/prometheus/usr/bin/promtool
  if [ ! -x "$promtool" ]; then
    echo "==> unpacking promtool into target/tools (about 20 MB)"
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    mkdir -p target/tools
    (cd target/tools && apt-get download -qq prometheus 2>/dev/null && dpkg -x prometheus_*.deb prometheus && rm -f prometheus_*.deb)
  fi
  export EXDAAS_PROMTOOL="$PWD/$promtool"
fi

if [ -x scripts/build-plugins.sh ]; then
  echo "==> building the example plugins (about 2 minutes from a fresh clone)"
  scripts/build-plugins.sh
fi

# One optimised build serves the tests, the image's size check and the run
# command (`cargo run --release` is then instant).
echo "==> building the server and the tests, optimised, once (about 10 minutes on 2 cores from a fresh clone)"
cargo build --locked --release --workspace --all-targets
echo "==> testing: unit tests, then every end-to-end test against the real binary (about 4 minutes)"
cargo test --locked --release --workspace
echo "==> testing the example plugins' logic natively (under a minute)"
(cd examples && cargo test --locked)
# `cargo run --bin exdaas` builds the server alone, where a few dependencies
# get fewer features than in the workspace build above: build that variant
# now, so the run command finds it ready and the size check sees it.
echo "==> building the server as the run command does (about a minute)"
cargo build --locked --release --bin exdaas
echo "==> checking the container image's binary: a stripped copy of the release build (seconds)"
scripts/check-dist-size.sh
