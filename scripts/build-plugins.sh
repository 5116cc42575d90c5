#!/usr/bin/env bash
# Builds the example plugins from source into examples/dist/*.wasm.
# Rust plugins: rustup's toolchain when it has the wasm32 target, otherwise
# Debian's (apt-get install rustc cargo libstd-rust-dev-wasm32).
# C plugins: clang with wasm-ld (apt-get install clang lld).
# AssemblyScript plugins: Node.js and npm (the compiler comes from npm).
set -euo pipefail
cd "$(dirname "$0")/../examples"
mkdir -p dist
TARGET=wasm32-unknown-unknown

if command -v rustup >/dev/null && rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
  echo "building Rust plugins with rustup's $(rustc --version)"
  cargo build --release --target "$TARGET"
elif [ -x /usr/bin/cargo ] && [ -d /usr/lib/rustlib/$TARGET ]; then
  echo "building Rust plugins with Debian's $(/usr/bin/rustc --version)"
  RUSTC=/usr/bin/rustc /usr/bin/cargo build --release --target "$TARGET"
else
  echo "no Rust toolchain with the $TARGET target: run" >&2
  echo "  rustup target add $TARGET   or   apt-get install rustc cargo libstd-rust-dev-wasm32" >&2
  exit 1
fi
for crate in require_fields immutable_fields timestamps redact revision; do
  cp "target/$TARGET/release/$crate.wasm" "dist/$crate.wasm"
done

CLANG=${CLANG:-clang}
command -v "$CLANG" >/dev/null || { echo "clang not found: apt-get install clang lld" >&2; exit 1; }
"$CLANG" --target=wasm32-unknown-unknown -O2 -nostdlib -Wl,--no-entry -Wl,--strip-all \
  -I ../guest-sdk/include -o dist/max_size.wasm max-size/max_size.c
# AssemblyScript plugins: the compiler is an npm package (Node.js is the
# only toolchain); the SDK is linked from guest-sdk/assemblyscript.
command -v npm >/dev/null || { echo "npm not found: install Node.js (18 or newer) and npm" >&2; exit 1; }
echo "building AssemblyScript plugins with Node $(node --version)"
(cd enum-field && npm ci --silent --no-audit --no-fund && npm run --silent build)

# Each example's test vectors go beside its module, where the server and
# `exdaas plugin test` look for them (MODULE.vectors.json).
for dir in */; do
  dir=${dir%/}
  if [ -f "$dir/vectors.json" ]; then cp "$dir/vectors.json" "dist/${dir//-/_}.vectors.json"; fi
done
ls -l dist
