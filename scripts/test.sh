#!/usr/bin/env bash
# Runs the whole test suite: format and lint checks, unit tests, and the integration tests that
# start the real `tracegate` binary on free loopback ports.
# Usage: scripts/test.sh            (from anywhere; needs only the Rust toolchain and a C compiler)
set -euo pipefail
cd "$(dirname "$0")/.."

# Every test has its own timeouts; this is the outer guard so CI can never hang.
TEST_TIMEOUT="${TRACEGATE_TEST_TIMEOUT:-2400}"

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test"
timeout --signal=KILL "$TEST_TIMEOUT" cargo test --workspace --locked -- --test-threads="${TRACEGATE_TEST_THREADS:-4}"
