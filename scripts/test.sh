#!/usr/bin/env bash
# Runs the whole test suite: format and lint checks, unit tests, and the integration tests that
# start the real `tracegate` binary on free loopback ports.
# Usage: scripts/test.sh            (from anywhere; needs only the Rust toolchain and a C compiler)
set -euo pipefail
cd "$(dirname "$0")/.."

# Every test has its own timeouts; this is the outer guard so CI can never hang.
TEST_TIMEOUT="${TRACEGATE_TEST_TIMEOUT:-2400}"

# Install what is missing on a fresh machine (PostgreSQL, openssl, compilers); a no-op otherwise.
bash scripts/deps.sh

# The profile the tests build with: dev by default; CI sets TRACEGATE_TEST_PROFILE=release (with
# fast-to-compile CARGO_PROFILE_RELEASE_* settings) so the README's `cargo run --release` and the
# tests share one build.
profile=()
[ "${TRACEGATE_TEST_PROFILE:-dev}" = release ] && profile=(--release)

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== layout (no production file over 600 lines of code, no function over 100 lines)"
python3 scripts/layout-check.py

echo "== dependency direction (no file uses a file that uses it back)"
python3 scripts/deps-check.py --self-test
python3 scripts/deps-check.py

echo "== cargo clippy -D warnings"
cargo clippy "${profile[@]}" --workspace --all-targets --locked -- -D warnings

echo "== cargo build -p tracegate-testkit"
# The Kafka test broker is a binary of another package (never shipped): cargo hands the tests
# only their own package's binaries, so it is built first, on the tests' profile.
cargo build "${profile[@]}" --locked -p tracegate-testkit

echo "== cargo test"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
timeout --signal=KILL "$TEST_TIMEOUT" cargo test "${profile[@]}" --workspace --locked --lib --bins --tests \
  -- --test-threads="${TRACEGATE_TEST_THREADS:-4}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line over every test binary (cargo prints one `test result:` per binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
