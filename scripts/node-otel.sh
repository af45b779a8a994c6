#!/usr/bin/env bash
# The OpenTelemetry Node SDK for the real-client tests (gateway/tests/node_sdk.rs), from npm,
# cached in ${TRACEGATE_CI_CACHE:-$HOME/.cache/tracegate-ci}/node-otel.
#
#   scripts/node-otel.sh install    install it (idempotent)
#   scripts/node-otel.sh modules    install if needed; the last line of stdout is its
#                                   node_modules directory
#
# 0.212 / API 1.9: the newest release line that runs on Node 18.19 and 20 (Debian's and
# NodeSource's LTS); later ones ask for Node >= 22.15. Needs node + npm (scripts/deps.sh).
set -euo pipefail

SPEC='@opentelemetry/sdk-node@0.212.0 @opentelemetry/api@1.9.0 @opentelemetry/api-logs@0.212.0'
DIR="${TRACEGATE_CI_CACHE:-$HOME/.cache/tracegate-ci}/node-otel"

install() {
  [ "$(cat "$DIR/.tracegate-spec" 2>/dev/null)" = "$SPEC" ] && return 0
  command -v npm >/dev/null || { echo "node-otel.sh: npm is missing" >&2; exit 1; }
  rm -rf "$DIR" && mkdir -p "$DIR"
  # shellcheck disable=SC2086
  (cd "$DIR" && npm install --no-audit --no-fund --loglevel=error $SPEC >/dev/null) ||
    { echo "node-otel.sh: npm install $SPEC failed" >&2; exit 1; }
  echo "$SPEC" >"$DIR/.tracegate-spec"
}

case "${1:-}" in
  install) install ;;
  modules)
    install
    echo "$DIR/node_modules"
    ;;
  *)
    echo "usage: $0 install | modules" >&2
    exit 2
    ;;
esac
