#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for tests and local development (the postgres key store).
#
#   scripts/pg.sh start DIR   initialise (first time) and start a cluster in DIR; the last line of
#                             stdout is the admin URL  postgres://USER:PASS@127.0.0.1:PORT/tracegate
#   scripts/pg.sh stop DIR    stop it (fast mode: open connections are closed); no-op if stopped
#   scripts/pg.sh url DIR     print the admin URL of a cluster made by `start`
#   scripts/pg.sh pgbin       print the server bin dir (newest /usr/lib/postgresql/*/bin)
#
# TLS: with PG_SSL_CERT and PG_SSL_KEY (PEM files) set at the first `start`, the server gets
# `ssl = on` with that certificate, and TCP connections must use TLS (pg_hba `hostssl` only):
# what RDS and Cloud SQL enforce. gateway/tests/pg_tls.rs makes them with a throwaway CA.
#
# The cluster listens on 127.0.0.1 only, on a free port chosen at first start and kept for
# later starts (so a client's URL survives a stop/start), with its unix socket inside DIR. The
# bootstrap superuser `tracegate_admin` (random password, scram-sha-256 over TCP) owns database
# `tracegate`. Durability is switched off (fsync=off): it is for tests only.
#
# Roles: this script creates only the admin role. `tracegate keys migrate` creates the NOLOGIN
# role `tracegate_gateway` (SELECT on api_keys); the gateway's LOGIN role is then created by
# whoever runs the migration, e.g.
#   CREATE ROLE tracegate_gw LOGIN PASSWORD '...' IN ROLE tracegate_gateway;
# (gateway/tests/auth_postgres.rs does exactly that).
#
# PostgreSQL refuses to run as root: as root, the server runs as the `postgres` OS user (made by
# the Debian package; a system user `tracegate-pg` is created if it is missing) and DIR is
# chowned to it, so DIR's parents must be traversable by that user (e.g. under /tmp).
# Needs the server binaries: `apt-get install -y postgresql`.
set -euo pipefail

ADMIN_USER=tracegate_admin
DB_NAME=tracegate

die() {
  echo "pg.sh: $*" >&2
  exit 1
}

pgbin() {
  local d best=""
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ] || continue
    best="$d"$'\n'"$best"
  done
  best="$(printf '%s' "$best" | sed '/^$/d' | sort -V | tail -n 1)"
  [ -n "$best" ] || die "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin (install them: apt-get install -y postgresql)"
  printf '%s\n' "$best"
}

# The OS user the server runs as: ourselves, or (as root) an unprivileged user.
run_user() {
  if [ "$(id -u)" -ne 0 ]; then
    id -un
  elif id postgres >/dev/null 2>&1; then
    echo postgres
  else
    id tracegate-pg >/dev/null 2>&1 ||
      useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin tracegate-pg ||
      die "cannot create the OS user tracegate-pg"
    echo tracegate-pg
  fi
}

# as_user CMD...: runs CMD as the server's OS user, from DIR (never from a cwd it cannot read).
as_user() {
  if [ "$(id -u)" -ne 0 ]; then
    (cd "$DIR" && "$@")
  else
    (cd "$DIR" && runuser -u "$RUN_USER" -- "$@")
  fi
}

port_in_use() {
  # Something accepts on 127.0.0.1:$1 (bash's /dev/tcp; no extra tools needed).
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

random_port() {
  echo $((20000 + (RANDOM * 32768 + RANDOM) % 40000))
}

random_hex() {
  od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'
}

admin_url() {
  printf 'postgres://%s:%s@127.0.0.1:%s/%s\n' "$ADMIN_USER" "$(cat "$DIR/admin_password")" \
    "$(cat "$DIR/port")" "$DB_NAME"
}

write_conf() {
  cat >"$DIR/data/tracegate.conf" <<EOF
# Written by scripts/pg.sh; included from postgresql.conf.
listen_addresses = '127.0.0.1'
port = $1
unix_socket_directories = '$DIR/sock'
unix_socket_permissions = 0700
max_connections = 100
shared_buffers = 32MB
fsync = off
synchronous_commit = off
full_page_writes = off
logging_collector = off
log_min_messages = warning
EOF
  if [ -f "$DIR/data/server.crt" ]; then
    cat >>"$DIR/data/tracegate.conf" <<EOF
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
ssl_min_protocol_version = 'TLSv1.2'
EOF
  fi
  if [ "$(id -u)" -eq 0 ]; then chown "$RUN_USER:" "$DIR/data/tracegate.conf"; fi
}

# install_tls: the certificate and key of PG_SSL_CERT / PG_SSL_KEY into the data dir, and
# TCP clients limited to TLS (`hostssl`).
install_tls() {
  cp "$PG_SSL_CERT" "$DIR/data/server.crt"
  cp "$PG_SSL_KEY" "$DIR/data/server.key"
  chmod 0600 "$DIR/data/server.key"
  sed -i 's/^host /hostssl /' "$DIR/data/pg_hba.conf"
  [ "$(id -u)" -ne 0 ] || chown "$RUN_USER:" "$DIR/data/server.crt" "$DIR/data/server.key"
}

# try_start: starts the server on the port in tracegate.conf; false if it did not come up.
try_start() {
  as_user "$BIN/pg_ctl" start -D "$DIR/data" -l "$DIR/postgres.log" -w -t 15 -s >/dev/null 2>&1
}

cmd_start() {
  BIN="$(pgbin)"
  RUN_USER="$(run_user)"
  mkdir -p "$DIR"
  DIR="$(cd "$DIR" && pwd -P)"
  if [ "$(id -u)" -eq 0 ]; then
    chown "$RUN_USER:" "$DIR"
    runuser -u "$RUN_USER" -- test -w "$DIR" ||
      die "$DIR is not reachable by OS user $RUN_USER (a parent directory is not traversable); use a directory under /tmp"
  fi
  chmod 0700 "$DIR"
  [ ${#DIR} -le 80 ] || die "$DIR is too long for a unix socket path (keep it under 80 chars)"

  if [ -f "$DIR/data/postmaster.pid" ] && as_user "$BIN/pg_ctl" status -D "$DIR/data" >/dev/null 2>&1; then
    admin_url # already running
    return
  fi

  if [ ! -f "$DIR/data/PG_VERSION" ]; then
    rm -rf "$DIR/data" "$DIR/sock"
    mkdir -p "$DIR/sock"
    random_hex 24 >"$DIR/admin_password"
    [ "$(id -u)" -ne 0 ] || chown "$RUN_USER:" "$DIR/sock" "$DIR/admin_password"
    chmod 0700 "$DIR/sock"
    chmod 0600 "$DIR/admin_password"
    as_user "$BIN/initdb" -D "$DIR/data" -U "$ADMIN_USER" --pwfile="$DIR/admin_password" \
      --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --no-locale --no-sync \
      >"$DIR/initdb.log" 2>&1 || die "initdb failed:"$'\n'"$(cat "$DIR/initdb.log")"
    echo "include_if_exists = 'tracegate.conf'" >>"$DIR/data/postgresql.conf"
    if [ -n "${PG_SSL_CERT:-}" ]; then install_tls; fi
    rm -f "$DIR/port"
  fi

  if [ -f "$DIR/port" ]; then
    # A restart: same port, so clients holding the URL reconnect.
    local port
    port="$(cat "$DIR/port")"
    write_conf "$port"
    try_start || die "could not start PostgreSQL on port $port:"$'\n'"$(tail -n 20 "$DIR/postgres.log")"
  else
    local attempt port started=""
    for attempt in 1 2 3 4 5 6 7 8; do
      port="$(random_port)"
      port_in_use "$port" && continue
      write_conf "$port"
      if try_start; then
        started=1
        break
      fi
    done
    [ -n "$started" ] || die "could not start PostgreSQL (last port $port):"$'\n'"$(tail -n 20 "$DIR/postgres.log" 2>/dev/null)"
    echo "$port" >"$DIR/port"
    as_user "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$DIR/sock" -p "$port" -U "$ADMIN_USER" -d postgres \
      -c "CREATE DATABASE $DB_NAME OWNER $ADMIN_USER" >/dev/null ||
      die "could not create database $DB_NAME"
  fi
  admin_url
}

cmd_stop() {
  BIN="$(pgbin)"
  RUN_USER="$(run_user)"
  [ -d "$DIR" ] || return 0
  DIR="$(cd "$DIR" && pwd -P)"
  [ -f "$DIR/data/postmaster.pid" ] || return 0
  if ! as_user "$BIN/pg_ctl" stop -D "$DIR/data" -m fast -w -t 15 -s >/dev/null 2>&1; then
    # pg_ctl stop fails when the server was not running; fail only if it still runs.
    if as_user "$BIN/pg_ctl" status -D "$DIR/data" >/dev/null 2>&1; then
      die "could not stop PostgreSQL in $DIR"
    fi
  fi
}

case "${1:-}" in
  start | stop | url)
    [ $# -eq 2 ] || die "usage: $0 $1 DIR"
    DIR="$2"
    case "$1" in
      start) cmd_start ;;
      stop) cmd_stop ;;
      url) DIR="$(cd "$DIR" && pwd -P)" && admin_url ;;
    esac
    ;;
  pgbin) pgbin ;;
  *)
    echo "usage: $0 start DIR | stop DIR | url DIR | pgbin" >&2
    exit 2
    ;;
esac
