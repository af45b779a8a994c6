#!/usr/bin/env bash
# Refreshes the vendored RustSec advisory database snapshot that `cargo deny` uses in CI (CI has
# no access to GitHub). Run it where github.com is reachable, then commit the two files:
#
#   scripts/update-advisory-db.sh [PATH_TO_A_CLONE]
#   git add deploy/ci/advisory-db.tar.xz deploy/ci/advisory-db.snapshot
#
# Without an argument it clones https://github.com/rustsec/advisory-db (shallow). Only the
# `crates/` tree is kept (what cargo-deny reads), xz-compressed: about 300 KB.
# deny.toml's maximum-db-staleness (180 days) makes CI fail when the snapshot gets too old.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC="${1:-}"
if [ -z "$SRC" ]; then
  SRC="$(mktemp -d /tmp/advisory-db.XXXXXX)"
  trap 'rm -rf "$SRC"' EXIT
  git clone -q --depth 1 https://github.com/rustsec/advisory-db "$SRC"
fi
git -C "$SRC" archive --format=tar HEAD crates | xz -9 >deploy/ci/advisory-db.tar.xz
printf 'source=https://github.com/rustsec/advisory-db\ncommit=%s\ndate=%s\n' \
  "$(git -C "$SRC" rev-parse HEAD)" "$(git -C "$SRC" log -1 --format=%cI)" >deploy/ci/advisory-db.snapshot
cat deploy/ci/advisory-db.snapshot
ls -l deploy/ci/advisory-db.tar.xz
