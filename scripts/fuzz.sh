#!/usr/bin/env bash
# Fuzzes the PROXY protocol header parser (fuzz/fuzz_targets/proxy_header.rs) with cargo-fuzz.
# Usage: scripts/fuzz.sh [SECONDS]      (default 600; CI runs it briefly, e.g. 20)
#
# cargo-fuzz wants a nightly compiler for -Zsanitizer=address. This machine has stable Rust only,
# so we set RUSTC_BOOTSTRAP=1, which lets stable rustc accept those flags (the sanitizer runtime
# ships with the stable x86_64 Linux toolchain). Installs cargo-fuzz if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TO_RUN="${1:-600}"
if ! command -v cargo-fuzz >/dev/null; then
  echo "== installing cargo-fuzz"
  env -u CARGO_TARGET_DIR cargo install cargo-fuzz --locked --quiet
fi
export RUSTC_BOOTSTRAP=1
# Keep fuzz builds next to the others (CI points CARGO_TARGET_DIR at its cache).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}/fuzz"
mkdir -p fuzz/corpus/proxy_header
cd fuzz
echo "== cargo fuzz run proxy_header for ${SECONDS_TO_RUN}s"
cargo fuzz run proxy_header corpus/proxy_header seeds/proxy_header -- \
  -max_total_time="$SECONDS_TO_RUN" -max_len=8192 -print_final_stats=1 2>&1 \
  | grep -a -v -E '^#[0-9]+' || { echo "fuzzing failed: see fuzz/artifacts/proxy_header/"; exit 1; }
