#!/usr/bin/env bash
# A throwaway AWS (S3 + KMS) for tests and local development: PyPI's `moto[server]`, both services
# on one loopback port.
#
#   scripts/moto.sh install              create the venv with moto[server] (idempotent, cached)
#   scripts/moto.sh start DIR [PID]      start a server with its state in DIR; the last line of
#                                        stdout is its endpoint  http://127.0.0.1:PORT
#                                        With PID, the server also stops when process PID exits
#                                        (a test process killed mid-run leaves nothing behind).
#   scripts/moto.sh stop DIR             stop the server started in DIR; no-op if stopped
#   scripts/moto.sh python               print the venv's python (it has boto3, for checks)
#
# Point the gateway at it with AWS_ENDPOINT_URL=http://127.0.0.1:PORT AWS_REGION=us-east-1
# AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_ALLOW_HTTP=true.
# The venv lives in ${TRACEGATE_CI_CACHE:-$HOME/.cache/tracegate-ci}/moto-venv (override with
# TRACEGATE_MOTO_VENV). Needs python3 (>= 3.9) with venv; .ci/run installs it.
set -euo pipefail

MOTO_SPEC='moto[server]==5.2.*'
VENV="${TRACEGATE_MOTO_VENV:-${TRACEGATE_CI_CACHE:-$HOME/.cache/tracegate-ci}/moto-venv}"

die() {
  echo "moto.sh: $*" >&2
  exit 1
}

cmd_install() {
  if [ -x "$VENV/bin/moto_server" ] && [ "$(cat "$VENV/.tracegate-spec" 2>/dev/null)" = "$MOTO_SPEC" ]; then
    return 0
  fi
  command -v python3 >/dev/null || die "python3 is missing (apt-get install -y python3 python3-venv)"
  mkdir -p "$(dirname "$VENV")"
  # The spec file is written last: a venv without it (an interrupted install) is made anew.
  rm -rf "$VENV"
  python3 -m venv "$VENV" || die "python3 -m venv failed (apt-get install -y python3-venv)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$MOTO_SPEC" ||
    die "pip install $MOTO_SPEC failed"
  echo "$MOTO_SPEC" >"$VENV/.tracegate-spec"
}

port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

random_port() {
  echo $((20000 + (RANDOM * 32768 + RANDOM) % 40000))
}

# ready PORT: moto answers HTTP on the port.
ready() {
  "$VENV/bin/python" - "$1" <<'EOF' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/moto-api/data.json", timeout=2).read()
EOF
}

cmd_start() {
  local dir="$1" parent="${2:-}"
  cmd_install
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd -P)"
  if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null && ready "$(cat "$dir/port")"; then
    echo "http://127.0.0.1:$(cat "$dir/port")"
    return
  fi
  local attempt port pid started=""
  for attempt in 1 2 3 4 5 6; do
    port="$(random_port)"
    port_in_use "$port" && continue
    # setsid: its own process group, so stop can end the server and its watcher together.
    setsid bash -c '
      "$0" -H 127.0.0.1 -p "$1" >"$2/moto.log" 2>&1 &
      m=$!
      echo "$m" >"$2/server.pid"
      if [ -n "$3" ]; then
        while kill -0 "$m" 2>/dev/null && kill -0 "$3" 2>/dev/null; do sleep 1; done
        kill "$m" 2>/dev/null
      fi
      wait "$m"
    ' "$VENV/bin/moto_server" "$port" "$dir" "$parent" </dev/null >/dev/null 2>&1 &
    pid=$!
    echo "$pid" >"$dir/pid"
    echo "$port" >"$dir/port"
    local i
    for i in $(seq 1 150); do
      if ready "$port"; then
        started=1
        break
      fi
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    [ -n "$started" ] && break
    cmd_stop "$dir"
  done
  [ -n "$started" ] || die "moto did not start (last port $port):"$'\n'"$(tail -n 20 "$dir/moto.log" 2>/dev/null)"
  echo "http://127.0.0.1:$port"
}

cmd_stop() {
  local dir="$1" pid i
  [ -f "$dir/pid" ] || return 0
  pid="$(cat "$dir/pid")"
  # The group made by setsid: the watcher and the server.
  kill -TERM -- "-$pid" 2>/dev/null || true
  for i in $(seq 1 100); do
    kill -0 -- "-$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$dir/pid"
}

case "${1:-}" in
  install) cmd_install ;;
  start)
    [ $# -ge 2 ] && [ $# -le 3 ] || die "usage: $0 start DIR [PID]"
    cmd_start "$2" "${3:-}"
    ;;
  stop)
    [ $# -eq 2 ] || die "usage: $0 stop DIR"
    cmd_stop "$2"
    ;;
  python)
    cmd_install
    echo "$VENV/bin/python"
    ;;
  *)
    echo "usage: $0 install | start DIR [PID] | stop DIR | python" >&2
    exit 2
    ;;
esac
