#!/usr/bin/env bash
# Creates (once) the Python virtualenv with chdb — an embedded ClickHouse engine — that the
# ClickHouse integration tests run behind deploy/testing/chdb_front.py (docs/testing.md).
#
#   scripts/chdb-venv.sh        prints the venv's python path (last line)
#
# The venv lives in the CI cache (${TRACEGATE_CI_CACHE:-$HOME/.cache/tracegate-ci}/chdb-venv),
# outside the clone, so reruns on the same machine reuse it: when the pinned versions are
# already installed this takes well under a second. chdb's wheel is large (~900 MB unpacked).
set -euo pipefail

CHDB_VERSION=4.4.0
LZ4_VERSION=4.4.5
CITYHASH_VERSION=1.0.2.6
ZSTANDARD_VERSION=0.25.0
CACHE="${TRACEGATE_CI_CACHE:-$HOME/.cache/tracegate-ci}"
VENV="$CACHE/chdb-venv"
STAMP="$VENV/.tracegate-stamp"
WANT="chdb==$CHDB_VERSION lz4==$LZ4_VERSION clickhouse-cityhash==$CITYHASH_VERSION zstandard==$ZSTANDARD_VERSION"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -x "$VENV/bin/python" ]; then
  echo "$VENV/bin/python"
  exit 0
fi
PY="$(command -v python3 || true)"
[ -n "$PY" ] || { echo "chdb-venv.sh: python3 is needed" >&2; exit 1; }
mkdir -p "$CACHE"
"$PY" -m venv "$VENV" >&2 || {
  # Debian's python3 without ensurepip
  apt-get update -qq >&2 && apt-get install -y -qq python3-venv >&2 && "$PY" -m venv "$VENV" >&2
}
# shellcheck disable=SC2086
"$VENV/bin/pip" install --disable-pip-version-check -q $WANT >&2
"$VENV/bin/python" -c 'import chdb, lz4.block, zstandard; from clickhouse_cityhash import cityhash' >&2
echo "$WANT" > "$STAMP"
echo "$VENV/bin/python"
