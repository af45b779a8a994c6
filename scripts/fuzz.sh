#!/usr/bin/env bash
# Runs the cargo-fuzz targets one after the other, each for SECONDS (fuzz/Cargo.toml lists
# what each one checks): proxy_header, scan_validate, decompress, otlp_json, grpc_frame,
# api_key, kafka_envelope, archive_object. Each starts from its committed seeds (fuzz/seeds/<target>).
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]   (default 600 s each, all targets; CI runs each
# briefly, e.g. 20 s each)
#
# cargo-fuzz wants a nightly compiler for -Zsanitizer=address. This machine has stable Rust only,
# so we set RUSTC_BOOTSTRAP=1, which lets stable rustc accept those flags (the sanitizer runtime
# ships with the stable x86_64 Linux toolchain). Installs cargo-fuzz if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TO_RUN="${1:-600}"
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(proxy_header scan_validate decompress otlp_json grpc_frame api_key kafka_envelope archive_object)
if ! command -v cargo-fuzz >/dev/null; then
  echo "== installing cargo-fuzz"
  env -u CARGO_TARGET_DIR cargo install cargo-fuzz --locked --quiet
fi
export RUSTC_BOOTSTRAP=1
# Keep fuzz builds next to the others (CI points CARGO_TARGET_DIR at its cache).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}/fuzz"
cd fuzz
for target in "${TARGETS[@]}"; do
  case "$target" in
    proxy_header|api_key|grpc_frame) max_len=8192 ;;
    decompress|kafka_envelope|archive_object) max_len=262144 ;;
    *) max_len=65536 ;;
  esac
  mkdir -p "corpus/$target"
  echo "== cargo fuzz run $target for ${SECONDS_TO_RUN}s"
  cargo fuzz run "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$SECONDS_TO_RUN" -max_len="$max_len" -print_final_stats=1 2>&1 \
    | grep -a -v -E '^#[0-9]+' || { echo "fuzzing failed: see fuzz/artifacts/$target/"; exit 1; }
done
