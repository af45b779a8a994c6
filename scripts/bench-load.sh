#!/usr/bin/env bash
# System-level load figures of docs/benchmarks.md ("System-level load (issue 8)"), with release
# builds of tracegate and loadtest. Every run writes loadtest's JSON report and SVG plot to
# $OUT (default ./bench-out) and prints the figures.
#
#   scripts/bench-load.sh gateway [embedded|kafka] [none|zstd]   max rate (closed loop), then 70 % of it (open loop)
#   scripts/bench-load.sh soak [SECONDS] [RATE]                  RSS at RATE spans/s (default: 600 s)
#   scripts/bench-load.sh overload [RATE]                        10x overload against a 64 MiB in-flight bound
#   scripts/bench-load.sh quota                                  quiet project next to one sending 4x its quota
#   scripts/bench-load.sh attack                                 4x capacity from one project + connection attacks
#                                                                under a memory cap, a quiet project at 10 %: PASS/FAIL
#   scripts/bench-load.sh writer [SPANS]                         Kafka backlog -> tracegate write -> ClickHouse (chdb front) + archive
#   scripts/bench-load.sh signals [embedded|kafka] [none|zstd]   the three signals (issue 25): max load of traces,
#                                                                logs and metrics from the same span models (and
#                                                                traces / logs with 8 KiB prompts), rounds
#                                                                alternating, in items and OTLP bytes per
#                                                                gateway CPU-second
#   scripts/bench-load.sh profile [embedded|kafka] [none|zstd]   perf profile of the gateway at max load
#   scripts/bench-load.sh shapes [embedded|kafka] [none|zstd]    cost follows bytes (issue 21): max load per
#                                                                shape (871-B spans, 8 KiB / 64 KiB prompts,
#                                                                64-span requests), rounds alternating, in
#                                                                spans and OTLP bytes per gateway CPU-second
#
# LOAD_EXTRA='--attr-bytes 8192' adds loadtest options to the profiled load or the backlog (profile, writer);
# PERF_WRITER=1 profiles the writer while it drains (writer);
# PERF_G='--call-graph dwarf' PERF_FREQ=99 gives call graphs through Rust code (no frame pointers).
# KAFKA_EXTRA='compression = "zstd"' adds lines to the gateway's [kafka] section (gateway, profile).
# PARTITION_KEY=project keys records by tenant instead of by batch (gateway, profile, shapes).
# GW_EXTRA='[writer]\ncompression_level = -3' adds sections to the gateway's config (gateway, shapes).
# Latency experiments (gateway): SCRAPE=1 keeps the gateway's /metrics of every second of the
# 70 % run (read them with scripts/metrics-per-second.py); RATE=N replaces 70 % of the max;
# BROKERS=N test brokers (default 1); BROKER_CPU=C puts the broker on another core than the load
# generator's; LOAD_NICE=-10 runs loadtest at a higher priority; ARRIVALS=poisson makes the 70 %
# run's requests fall due as a Poisson process (bursty) instead of evenly spaced; THREADS=1 samples
# the gateway's threads and core every 50 ms into $OUT/$TAG-threads.txt (scripts/thread-cpu.py);
# GW_ENV='NAME=value' sets environment variables of the gateway alone; WARM_CONC=N runs the
# 3 s warm-up with N requests in flight (default 8), which grows the gateway's heap first.
# TMPDIR=/dir puts the run's files (the gateway's data dir and archive) there (default /tmp);
# under `attack` a tmpfs counts against the memory cap, so raise MEM_CAP_MIB with it.
#
# Pinning: the gateway (or writer) runs on CPU 0, loadtest and the test broker on CPU 1
# (`taskset`), so the gateway's figures are not diluted by the load generator. Per-core figures
# are acked spans / (user+sys CPU seconds of the gateway process, from /proc/PID/stat), taken
# by loadtest --watch-pid. Requests are 512 realistic spans (20 string attributes + 1 int),
# auth on (a key from `tracegate keys create`).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-gateway}"
BIN="${CARGO_TARGET_DIR:-target}/release"
OUT="${OUT:-bench-out}"
SPR="${SPANS_PER_REQUEST:-512}"
GW_CPU="${GW_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
[ -n "${NO_BUILD:-}" ] || cargo build --release -q -p tracegate -p tracegate-testkit -p loadtest
mkdir -p "$OUT"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/tracegate-bench-load.XXXXXX")"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
wait_line() { # file pattern seconds
  for _ in $(seq 1 $(( $3 * 10 ))); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timeout waiting for '$2' in $1" >&2; cat "$1" >&2; return 1
}
field() { sed -n "s/.*$2=\([^ ]*\).*/\1/p" "$1"; }
jq_() { python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }
machine() {
  echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); date: $(date -u +%FT%TZ); load average: $(cut -d' ' -f1-3 /proc/loadavg); commit: $(git rev-parse --short HEAD)"
}

start_broker() { # partitions
  mkfifo "$WORK/broker.in"
  taskset -c "${BROKER_CPU:-$LOAD_CPU}" "$BIN/tracegate-test-broker" --brokers "${BROKERS:-1}" --topic "bench:$1" < "$WORK/broker.in" > "$WORK/broker.out" 2>"$WORK/broker.err" &
  BROKER=$!; PIDS+=($BROKER)
  sleep 1000000 > "$WORK/broker.in" &
  PIDS+=($!)
  wait_line "$WORK/broker.out" "bootstrap=" 10
  BOOT=$(field "$WORK/broker.out" bootstrap)
}

# start_gateway CONFIG_FILE: sets GW (pid), HTTP, GRPC, ADMIN, KEY
start_gateway() {
  # GW_ENV='NAME=value …' sets environment variables for the gateway only (e.g. GLIBC_TUNABLES),
  # so loadtest and the broker keep theirs.
  env RUST_LOG=warn ${GW_ENV:-} taskset -c "$GW_CPU" "$BIN/tracegate" serve --config "$1" --data-dir "$WORK/gw" \
    --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 > "$WORK/gw.out" 2>"$WORK/gw.err" &
  GW=$!; PIDS+=($GW)
  wait_line "$WORK/gw.out" "tracegate listening" 30
  HTTP=$(field "$WORK/gw.out" otlp_http); GRPC=$(field "$WORK/gw.out" otlp_grpc); ADMIN=$(field "$WORK/gw.out" admin)
  KEY=$("$BIN/tracegate" keys create --project bench --data-dir "$WORK/gw" ${KEY_ARGS:-} | tail -1)
  for _ in $(seq 1 100); do curl -sf "http://$ADMIN/readyz" >/dev/null && break; sleep 0.1; done
}

load() { # loadtest args...
  ${LOAD_NICE:+nice -n "$LOAD_NICE"} taskset -c "$LOAD_CPU" "$BIN/loadtest" --quiet "$@"
}

# The broker shares the load generator's core: its CPU says whether that core kept up.
watch_broker() { [ -z "${BROKER:-}" ] || echo "--watch-pid $BROKER:broker"; }
broker_cpu() { # report.json
  [ -z "${BROKER:-}" ] || jq_ "$1" '"broker CPU %.2f s (shares the load core with loadtest)" % r["watched"][1]["cpu_secs"]'
}
summary() { # report.json
  jq_ "$1" '"acked %d spans in %.1f s = %.0f spans/s; gateway CPU %.2f s = %.0f spans per gateway CPU-second (RSS max %d MiB); loadtest CPU %.2f s; p50 %.1f ms, p99 %.1f ms, p99.9 %.1f ms, max %.1f ms; answers %s" % (r["spans"]["acked"], r["elapsed_secs"], r["acked_spans_per_sec"], r["watched"][0]["cpu_secs"], r["watched"][0]["acked_spans_per_cpu_sec"], r["watched"][0]["rss_max_kib"]//1024, r["load_generator"]["cpu_secs"], r["latency"]["p50_ms"], r["latency"]["p99_ms"], r["latency"]["p999_ms"], r["latency"]["max_ms"], r["responses"])'
}

machine | tee "$OUT/machine-$MODE.txt"
case "$MODE" in
gateway)
  TRANSPORT="${2:-embedded}"; COMP="${3:-none}"
  echo "[limits]" > "$WORK/gw.toml"
  echo "max_inflight_bytes = 1073741824" >> "$WORK/gw.toml"
  [ -z "${GW_EXTRA:-}" ] || printf '%b\n' "$GW_EXTRA" >> "$WORK/gw.toml"
  if [ "$TRANSPORT" = kafka ]; then
    start_broker 32
    cat >> "$WORK/gw.toml" <<EOF
[kafka]
brokers = "$BOOT"
topic = "bench"
partition_key = "${PARTITION_KEY:-batch}"
${KAFKA_EXTRA:-}
EOF
  fi
  start_gateway "$WORK/gw.toml"
  TAG="gateway-$TRANSPORT-$COMP"
  EP="http://$HTTP"
  # The embedded gateway stores a repeated request once (retry-safe ingest, `[dedup]`), so a
  # pool of 16 bodies would measure answers to repeats: there the bodies are fresh (MAX_POOL=0).
  MAX_POOL="${MAX_POOL:-$([ "$TRANSPORT" = embedded ] && echo 0 || echo 16)}"
  # warm-up
  load --endpoint "$EP" --api-key "$KEY" --compression "$COMP" --spans-per-request "$SPR" --duration 3s --concurrency "${WARM_CONC:-8}" --body-pool "$MAX_POOL" >/dev/null
  # max: closed loop, 8 in flight; pre-built bodies (no per-request render/compress in loadtest).
  load --endpoint "$EP" --api-key "$KEY" --compression "$COMP" --spans-per-request "$SPR" \
    --duration "${MAX_SECS:-20}s" --concurrency "${MAX_CONC:-16}" --body-pool "$MAX_POOL" --watch-pid "$GW:gateway" $(watch_broker) \
    --report "$OUT/$TAG-max.json" --plot "$OUT/$TAG-max.svg"
  echo "MAX   $TAG: $(summary "$OUT/$TAG-max.json") $(broker_cpu "$OUT/$TAG-max.json")"
  MAXR=$(jq_ "$OUT/$TAG-max.json" 'int(r["acked_spans_per_sec"])')
  RATE="${RATE:-$(( MAXR * 7 / 10 ))}"
  # 70 %: open loop, fresh sequence-numbered ids per request, latency from the intended send time.
  # With zstd, rendering and compressing fresh bodies at 70 % of the gateway's rate takes more
  # than loadtest's one core (its lag would be charged as latency): then RATE_POOL=N sends N
  # pre-built bodies in turn, and the run cannot be verified (ids repeat).
  POOL=()
  [ -z "${RATE_POOL:-}" ] || POOL=(--body-pool "$RATE_POOL")
  curl -s "http://$ADMIN/metrics" > "$WORK/m0.txt"
  # SCRAPE=1: the gateway's /metrics every second of the run, to split each second's latency
  # into the gateway's handling and the Kafka delivery (scripts/metrics-per-second.py).
  # THREADS=1: CPU time of the gateway's threads and of its core every 50 ms (scripts/thread-cpu.py,
  # on the load core), to tell a pause from a saturated core in a latency episode.
  if [ -n "${THREADS:-}" ]; then
    taskset -c "$LOAD_CPU" scripts/thread-cpu.py "$OUT/$TAG-threads.txt" "$GW" "$GW_CPU" &
    PIDS+=($!)
  fi
  if [ -n "${SCRAPE:-}" ]; then
    mkdir -p "$OUT/$TAG-metrics"; rm -f "$OUT/$TAG-metrics"/*.txt
    ( while kill -0 "$GW" 2>/dev/null; do curl -s "http://$ADMIN/metrics" > "$OUT/$TAG-metrics/$(date +%s.%N).txt"; sleep 1; done ) &
    PIDS+=($!)
  fi
  load --endpoint "$EP" --api-key "$KEY" --compression "$COMP" --spans-per-request "$SPR" \
    --duration "${RATE_SECS:-30}s" --rate "$RATE" --arrivals "${ARRIVALS:-even}" --watch-pid "$GW:gateway" $(watch_broker) "${POOL[@]}" \
    --report "$OUT/$TAG-70pct.json" --plot "$OUT/$TAG-70pct.svg"
  echo "70%   $TAG at $RATE spans/s: $(summary "$OUT/$TAG-70pct.json") $(broker_cpu "$OUT/$TAG-70pct.json")"
  # Minor page faults of the gateway since it started (field 10 of /proc/PID/stat): a burst that
  # needs more heap than the gateway has touched so far shows here (docs/benchmarks.md).
  echo "gateway minor page faults so far: $(awk '{print $10}' "/proc/$GW/stat" 2>/dev/null)"
  jq_ "$OUT/$TAG-70pct.json" '"p99 per second (ms): " + " ".join("%.0f" % p["latency"]["p99_ms"] for p in r["series"])'
  # The gateway's own view of the same run (from the request's headers to its answer): how many
  # requests took over 10 / 25 / 50 ms, next to loadtest's (from the intended send time).
  curl -s "http://$ADMIN/metrics" > "$WORK/m1.txt"
  over() { # file le
    awk -v le="$2" 'index($1, "tracegate_request_duration_seconds_count") == 1 { c += $NF }
      index($1, "tracegate_request_duration_seconds_bucket") == 1 && index($1, "le=\"" le "\"") > 0 { b += $NF }
      END { printf "%d", c - b }' "$1"; }
  for le in 0.01 0.025 0.05; do
    echo "gateway-side requests over ${le}s: $(( $(over "$WORK/m1.txt" $le) - $(over "$WORK/m0.txt" $le) ))"
  done
  if [ "$TRANSPORT" = embedded ] && [ -z "${RATE_POOL:-}" ]; then
    "$BIN/loadtest" verify --report "$OUT/$TAG-70pct.json" --data-dir "$WORK/gw" 2>/dev/null
  fi
  ;;
soak)
  SECS="${2:-600}"; RATE="${3:?RATE spans/s (70 % of the measured max)}"
  printf '[limits]\nmax_inflight_bytes = 67108864\n' > "$WORK/gw.toml"
  start_gateway "$WORK/gw.toml"
  load --endpoint "http://$HTTP" --api-key "$KEY" --spans-per-request "$SPR" --duration "${SECS}s" \
    --rate "$RATE" --watch-pid "$GW:gateway" --report "$OUT/soak.json" --plot "$OUT/soak.svg"
  echo "SOAK  ${SECS}s at $RATE spans/s: $(summary "$OUT/soak.json")"
  jq_ "$OUT/soak.json" '"RSS every 10 s (MiB): " + " ".join(str(p["rss_kib"][0]//1024) for p in r["series"][::10])'
  jq_ "$OUT/soak.json" '"RSS start %d MiB, end %d MiB, max %d MiB" % (r["watched"][0]["rss_start_kib"]//1024, r["watched"][0]["rss_end_kib"]//1024, r["watched"][0]["rss_max_kib"]//1024)'
  # Reading ~80 M spans back takes minutes: opt-in.
  [ -z "${VERIFY:-}" ] || "$BIN/loadtest" verify --report "$OUT/soak.json" --data-dir "$WORK/gw" 2>/dev/null
  ;;
overload)
  RATE="${2:?RATE spans/s (10x the measured max)}"
  # The memory bound under test: 64 MiB of request bytes in flight.
  printf '[limits]\nmax_inflight_bytes = 67108864\n' > "$WORK/gw.toml"
  start_gateway "$WORK/gw.toml"
  load --endpoint "http://$HTTP" --api-key "$KEY" --spans-per-request "$SPR" --duration 60s \
    --rate "$RATE" --concurrency 512 --max-retries 3 --watch-pid "$GW:gateway" \
    --report "$OUT/overload.json" --plot "$OUT/overload.svg"
  echo "OVERLOAD at $RATE spans/s offered: $(summary "$OUT/overload.json")"
  jq_ "$OUT/overload.json" '"retryable refusals %d (with Retry-After %d), final refusals %s, gave up %s, RSS start %d MiB, max %d MiB" % (r["refusals"]["retryable"], r["refusals"]["retryable_with_retry_after"], r["refusals"]["final_by_status"], r["refusals"]["gave_up_by_status"], r["watched"][0]["rss_start_kib"]//1024, r["watched"][0]["rss_max_kib"]//1024)'
  "$BIN/loadtest" verify --report "$OUT/overload.json" --data-dir "$WORK/gw" 2>/dev/null
  ;;
quota)
  Q="${QUOTA:-20000}"
  printf '[limits]\nmax_inflight_bytes = 1073741824\n' > "$WORK/gw.toml"
  KEY_ARGS="--spans-per-sec $Q" start_gateway "$WORK/gw.toml"
  NOISY=$KEY
  QUIET=$("$BIN/tracegate" keys create --project quiet --data-dir "$WORK/gw" --spans-per-sec "$Q" | tail -1)
  # quiet alone first (baseline), then quiet next to noisy at 4x its quota
  load --endpoint "http://$HTTP" --api-key "$QUIET" --spans-per-request "$SPR" --duration 20s --rate $(( Q / 2 )) \
    --max-retries 0 --report "$OUT/quota-quiet-alone.json"
  echo "QUIET alone at $(( Q / 2 )) spans/s: $(jq_ "$OUT/quota-quiet-alone.json" '"acked %d of %d spans, p50 %.1f ms, p99 %.1f ms, answers %s" % (r["spans"]["acked"], r["spans"]["sent"], r["latency"]["p50_ms"], r["latency"]["p99_ms"], r["responses"])')"
  load --endpoint "http://$HTTP" --api-key "$NOISY" --spans-per-request "$SPR" --duration 24s --rate $(( Q * 4 )) \
    --max-retries 0 --report "$OUT/quota-noisy.json" &
  NP=$!
  sleep 2
  load --endpoint "http://$HTTP" --api-key "$QUIET" --spans-per-request "$SPR" --duration 20s --rate $(( Q / 2 )) \
    --max-retries 0 --watch-pid "$GW:gateway" --report "$OUT/quota-quiet.json" --plot "$OUT/quota-quiet.svg"
  wait $NP
  echo "NOISY at $(( Q * 4 )) spans/s (quota $Q): $(jq_ "$OUT/quota-noisy.json" '"acked %d of %d spans (%.0f spans/s), answers %s" % (r["spans"]["acked"], r["spans"]["sent"], r["acked_spans_per_sec"], r["responses"])')"
  echo "QUIET next to it at $(( Q / 2 )) spans/s: $(jq_ "$OUT/quota-quiet.json" '"acked %d of %d spans, p50 %.1f ms, p99 %.1f ms, p99.9 %.1f ms, answers %s" % (r["spans"]["acked"], r["spans"]["sent"], r["latency"]["p50_ms"], r["latency"]["p99_ms"], r["latency"]["p999_ms"], r["responses"])')"
  ;;
attack)
  # Issue 20's overload test. Thresholds: no OOM, gateway memory under 80 % of the cap, > 99 %
  # of the noisy project's refusals retryable with Retry-After, the quiet project's p99 within
  # 2x its unloaded baseline. MEM_CAP_MIB (default 1024) caps the gateway's memory with a
  # cgroup (v1 memory controller) where one can be made, else its address space (prlimit --as,
  # 4x the cap: cruder, virtual memory). ATTACK_SECS (default 60). ATTACK_JUDGE=edges (CI's
  # short form) judges everything but the quiet project's p99, which it reports: a latency ratio
  # on a shared CI machine would judge the machine.
  CAP_MIB="${MEM_CAP_MIB:-1024}"; SECS="${ATTACK_SECS:-60}"
  printf '[server]
max_connections = 4096
' > "$WORK/gw.toml"
  # The gateway needs more file descriptors than connections (4096 per listener).
  [ "$(ulimit -Hn)" = unlimited ] || [ "$(ulimit -Hn)" -ge 10000 ] || { echo "ulimit -Hn $(ulimit -Hn) < 10000" >&2; exit 2; }
  ulimit -Sn "$(ulimit -Hn)"
  start_gateway "$WORK/gw.toml"
  CG=/sys/fs/cgroup/memory/tracegate-attack-$$
  if mkdir "$CG" 2>/dev/null && echo $(( CAP_MIB << 20 )) > "$CG/memory.limit_in_bytes" && echo "$GW" > "$CG/cgroup.procs"; then
    CAPPED="cgroup memory.limit_in_bytes=${CAP_MIB} MiB"
    trap 'cleanup; rmdir "$CG" 2>/dev/null || true' EXIT
  else
    prlimit --pid "$GW" --as=$(( CAP_MIB * 4 << 20 ))
    CAPPED="prlimit --as=$(( CAP_MIB * 4 )) MiB (no cgroup here)"
  fi
  NOISY=$KEY
  QUIET=$("$BIN/tracegate" keys create --project quiet --data-dir "$WORK/gw" | tail -1)
  load --endpoint "http://$HTTP" --api-key "$NOISY" --spans-per-request "$SPR" --duration 10s --concurrency 8 \
    --report "$OUT/attack-capacity.json"
  C=$(jq_ "$OUT/attack-capacity.json" 'int(r["acked_spans_per_sec"])')
  echo "capacity (closed loop, one project): $C spans/s; memory cap: $CAPPED"
  load --endpoint "http://$HTTP" --api-key "$QUIET" --spans-per-request "$SPR" --duration 20s --rate $(( C / 10 )) \
    --max-retries 0 --report "$OUT/attack-quiet-alone.json"
  BASE=$(jq_ "$OUT/attack-quiet-alone.json" 'r["latency"]["p99_ms"]')
  echo "QUIET alone at $(( C / 10 )) spans/s: p99 $BASE ms"
  # For diagnosis: NOISY_X (default 4) scales the noisy load, CONN_ATTACK=0 leaves out the
  # connection attack.
  # Three clients, three loopback addresses: the gateway limits connections per client address
  # (`server.max_connections_per_client`, 1 024), and from one address the noisy project's
  # connections and the attack's would count as one client's, so that limit (not the project's
  # in-flight share) would shed the noisy client's idle connections as soon as a slow second
  # made it hold a few hundred more (session 17: CI's failure of b66e379, docs/reliability.md).
  load --endpoint "http://$HTTP" --api-key "$NOISY" --spans-per-request "$SPR" --duration "${SECS}s" --rate $(( C * ${NOISY_X:-4} )) \
    --concurrency 1000 --max-retries 0 --local-addr 127.0.0.1 --report "$OUT/attack-noisy.json" &
  NP=$!
  : > "$WORK/attack.out"
  if [ "${CONN_ATTACK:-1}" != 0 ]; then
    ( sleep "${ATTACK_DELAY:-0}"; exec taskset -c "$LOAD_CPU" python3 scripts/conn-attack.py "$HTTP" "$GRPC" --seconds "$SECS" --key "$NOISY" --source 127.0.0.2 ) > "$WORK/attack.out" 2>&1 &
  fi
  AP=$!
  sleep 3
  load --endpoint "http://$HTTP" --api-key "$QUIET" --spans-per-request "$SPR" --duration "$(( SECS - 6 ))s" --rate $(( C / 10 )) \
    --max-retries 0 --local-addr 127.0.0.3 --watch-pid "$GW:gateway" --report "$OUT/attack-quiet.json" --plot "$OUT/attack-quiet.svg"
  curl -sf "http://$ADMIN/metrics" > "$OUT/attack-metrics.prom" || true
  wait $NP || true; wait $AP || true
  cat "$WORK/attack.out"
  # What the gateway closed or refused, by reason (explains the clients' transport errors).
  grep -E '^tracegate_connections_(refused|shed|closed|unheld)_total' "$OUT/attack-metrics.prom" | grep -v ' 0$' || true
  ALIVE=yes; kill -0 "$GW" 2>/dev/null || ALIVE=no
  # The gateway's RSS (sampled every second by loadtest). The cgroup's own peak also counts
  # the page cache of the archive files it wrote, so it is reported, not judged.
  PEAK_MIB=$(jq_ "$OUT/attack-quiet.json" 'r["watched"][0]["rss_max_kib"]//1024')
  OOMS=0
  if [ -f "$CG/memory.max_usage_in_bytes" ]; then
    echo "cgroup peak usage (RSS + page cache): $(( $(cat "$CG/memory.max_usage_in_bytes") >> 20 )) MiB"
    OOMS=$(awk '/oom_kill /{print $2}' "$CG/memory.oom_control"); OOMS=${OOMS:-0}
  fi
  echo "NOISY at $(( C * 4 )) spans/s: $(jq_ "$OUT/attack-noisy.json" '"acked %d of %d spans, answers %s, retryable refusals %d (with Retry-After %d), final %s, errors %s" % (r["spans"]["acked"], r["spans"]["sent"], r["responses"], r["refusals"]["retryable"], r["refusals"]["retryable_with_retry_after"], r["refusals"]["final_by_status"], r["refusals"]["errors_by_kind"])')"
  echo "QUIET next to it: $(jq_ "$OUT/attack-quiet.json" '"acked %d of %d spans, p50 %.1f ms, p99 %.1f ms, answers %s" % (r["spans"]["acked"], r["spans"]["sent"], r["latency"]["p50_ms"], r["latency"]["p99_ms"], r["responses"])')"
  QP99=$(jq_ "$OUT/attack-quiet.json" 'r["latency"]["p99_ms"]')
  RETRYABLE=$(jq_ "$OUT/attack-noisy.json" '"%.4f" % (r["refusals"]["retryable_with_retry_after"] / max(1, r["refusals"]["retryable"] + sum(r["refusals"]["final_by_status"].values()) + sum(r["refusals"]["errors_by_kind"].values())))')
  echo "gateway alive: $ALIVE; OOM kills: $OOMS; peak RSS: $PEAK_MIB MiB of $CAP_MIB MiB; refusals retryable with Retry-After: $RETRYABLE; quiet p99 $QP99 ms vs baseline $BASE ms"
  python3 - "$ALIVE" "$OOMS" "$PEAK_MIB" "$CAP_MIB" "$RETRYABLE" "$QP99" "$BASE" "${ATTACK_JUDGE:-all}" <<'PY'
import sys
alive, ooms, peak, cap, retryable, qp99, base, judge = sys.argv[1:]
checks = {
    "no OOM, gateway alive": alive == "yes" and int(ooms) == 0,
    "RSS < 80 % of the cap": int(peak) < 0.8 * int(cap),
    "> 99 % of refusals retryable": float(retryable) > 0.99,
}
p99_ok = float(qp99) <= 2 * float(base)
if judge == "edges":
    print("REPORT quiet p99 %.1fx its baseline (not judged here; threshold 2x)" % (float(qp99) / float(base)))
else:
    checks["quiet p99 <= 2x baseline"] = p99_ok
for name, ok in checks.items():
    print(("PASS " if ok else "FAIL ") + name)
sys.exit(0 if all(checks.values()) else 1)
PY
  ;;
writer)
  SPANS="${2:-200000}"
  PY="$(bash scripts/chdb-venv.sh | tail -n 1)"
  taskset -c "$LOAD_CPU" "$PY" deploy/testing/chdb_front.py --data "$WORK/ch" --port 0 > "$WORK/ch.out" 2>"$WORK/ch.err" &
  PIDS+=($!)
  wait_line "$WORK/ch.out" "chdb-front listening" 60
  CH="http://$(sed -n 's/.*listening \([^ ]*\).*/\1/p' "$WORK/ch.out")"
  start_broker 32
  cat > "$WORK/k.toml" <<EOF
[limits]
max_inflight_bytes = 1073741824
[kafka]
brokers = "$BOOT"
topic = "bench"
partition_key = "batch"
# The mock broker keeps only the latest ~5 MiB of each partition (librdkafka's rdkafka_mock.c):
# a backlog of plain 625 KB payloads would be trimmed before the writer reads it. zstd payloads
# (~110 KB) fit; the writer then also decompresses each one, as for clients that send zstd.
compression = "payload_zstd"
batch_max_spans = 20000
batch_max_age_ms = 500
[clickhouse]
url = "$CH"
EOF
  "$BIN/tracegate" migrate --config "$WORK/k.toml" | tail -1
  # A: the backlog, through a gateway (no writer running)
  GW_CPU=$LOAD_CPU start_gateway "$WORK/k.toml"
  load --endpoint "http://$HTTP" --api-key "$KEY" --spans-per-request "$SPR" --spans "$SPANS" --concurrency 4 \
    --report "$OUT/writer-backlog.json" ${LOAD_EXTRA:-}
  TOTAL=$(jq_ "$OUT/writer-backlog.json" 'r["spans"]["acked"]')
  kill -TERM "$GW"; wait "$GW" || true
  # B: the writer drains it into ClickHouse + the archive, pinned to its own core
  RUST_LOG=warn taskset -c "$GW_CPU" "$BIN/tracegate" write --config "$WORK/k.toml" --data-dir "$WORK/wr" --admin-addr 127.0.0.1:0 \
    > "$WORK/wr.out" 2>"$WORK/wr.err" &
  WR=$!; PIDS+=($WR)
  wait_line "$WORK/wr.out" "tracegate writer ready" 30
  WADMIN=$(field "$WORK/wr.out" admin)
  # PERF_WRITER=1: perf samples the writer while it drains (report in $OUT/writer-profile.txt).
  if [ -n "${PERF_WRITER:-}" ]; then
    perf record -F "${PERF_FREQ:-499}" ${PERF_G:--g} -o "$OUT/writer.perf" -p "$WR" >/dev/null 2>&1 &
    PERFP=$!
  fi
  metric() { curl -s "http://$WADMIN/metrics" | awk -v m="$1" '$1 ~ "^"m"({|$)" {s+=$NF} END {printf "%.0f", s}'; }
  tck=$(getconf CLK_TCK)
  cpu() { awk -v t="$tck" '{print ($14+$15)/t}' "/proc/$1/stat"; }
  t0=$(date +%s.%N); c0=$(cpu "$WR")
  last=0; tl=$t0; cl=$c0
  while :; do
    s=$(metric tracegate_kafka_writer_spans_total); now=$(date +%s.%N)
    if [ "$s" -gt "$last" ]; then last=$s; tl=$now; cl=$(cpu "$WR"); fi
    [ "$s" -ge "$TOTAL" ] && break
    awk -v a="$now" -v b="$tl" 'BEGIN { exit !(a - b > 60) }' && { echo "writer stalled at $s of $TOTAL; its log:" >&2; tail -20 "$WORK/wr.err" >&2; break; }
    sleep 0.2
  done
  awk -v n="$last" -v t0="$t0" -v t1="$tl" -v c0="$c0" -v c1="$cl" -v want="$TOTAL" 'BEGIN {
    printf "WRITER %d of %d spans into ClickHouse + archive in %.1f s = %.0f spans/s; writer CPU %.2f s = %.0f spans per writer CPU-second\n", n, want, t1-t0, n/(t1-t0), c1-c0, n/(c1-c0) }'
  if [ -n "${PERFP:-}" ]; then
    kill -INT "$PERFP"; wait "$PERFP" || true
    perf report -i "$OUT/writer.perf" --no-children --sort sym --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -40 | tee "$OUT/writer-profile.txt"
  fi
  "$BIN/loadtest" verify --report "$OUT/writer-backlog.json" --clickhouse "$CH" 2>/dev/null || true
  "$BIN/loadtest" verify --report "$OUT/writer-backlog.json" --data-dir "$WORK/wr" 2>/dev/null || true
  ;;
shapes|signals)
  # One gateway, every shape in turn, ROUNDS (default 2) rounds with the order reversed every
  # other round; closed loop at 16 in flight with pre-built bodies (as `gateway` max). Per shape:
  # the median over rounds of spans and uncompressed OTLP bytes per gateway CPU-second, and the
  # bytes ratio to the first shape (goal 1a: 8 KiB prompts >= 2.5x the bytes of 871-B spans).
  TRANSPORT="${2:-kafka}"; COMP="${3:-none}"
  printf '[limits]\nmax_inflight_bytes = 1073741824\n' > "$WORK/gw.toml"
  [ -z "${GW_EXTRA:-}" ] || printf '%b\n' "$GW_EXTRA" >> "$WORK/gw.toml"
  if [ "$TRANSPORT" = kafka ]; then
    start_broker 32
    printf '[kafka]\nbrokers = "%s"\ntopic = "bench"\npartition_key = "%s"\n%s\n' "$BOOT" "${PARTITION_KEY:-batch}" "${KAFKA_EXTRA:-}" >> "$WORK/gw.toml"
  fi
  start_gateway "$WORK/gw.toml"
  SHAPES=(${SHAPE_LIST:-"512:0" "512:8192" "64:65536" "64:0"})
  # `signals` mode: SIGNAL:SPANS:PROMPT entries (traces first: the reference).
  [ "$MODE" != signals ] || SHAPES=(${SIGNAL_LIST:-"traces:512:0" "logs:512:0" "metrics:512:0" "traces:512:8192" "logs:512:8192"})
  # Fresh bodies on the embedded path, whose gateway stores a repeated request once (see `gateway`).
  SHAPE_POOL="$([ "$TRANSPORT" = embedded ] && echo 0 || echo 16)"
  load --endpoint "http://$HTTP" --api-key "$KEY" --compression "$COMP" --duration 3s --concurrency 8 --body-pool 16 >/dev/null
  for round in $(seq 1 "${ROUNDS:-2}"); do
    ORDER=("${SHAPES[@]}")
    if [ $(( round % 2 )) -eq 0 ]; then ORDER=(); for (( i=${#SHAPES[@]}-1; i>=0; i-- )); do ORDER+=("${SHAPES[$i]}"); done; fi
    for sh in "${ORDER[@]}"; do
      sig=traces; [ "$MODE" != signals ] || { sig="${sh%%:*}"; sh="${sh#*:}"; }
      spr="${sh%%:*}"; ab="${sh##*:}"; tag="shape-$TRANSPORT-$COMP-$sig-$spr-$ab-r$round"
      load --endpoint "http://$HTTP" --api-key "$KEY" --compression "$COMP" --signal "$sig" --spans-per-request "$spr" --attr-bytes "$ab" \
        --duration "${MAX_SECS:-15}s" --concurrency "${MAX_CONC:-16}" --body-pool "$SHAPE_POOL" --watch-pid "$GW:gateway" \
        --report "$OUT/$tag.json" > /dev/null
      echo "SHAPE $sig $spr x prompt $ab B, round $round: $(summary "$OUT/$tag.json")"
    done
  done
  python3 - "$OUT" "$TRANSPORT-$COMP" "${SHAPES[@]}" <<'PY'
import glob, json, statistics, sys
out, tag, shapes = sys.argv[1], sys.argv[2], sys.argv[3:]
base = None
for sh in shapes:
    sig, spr, ab = (sh if sh.count(":") == 2 else "traces:" + sh).split(":")
    runs = [json.load(open(f)) for f in sorted(glob.glob(f"{out}/shape-{tag}-{sig}-{spr}-{ab}-r*.json"))]
    per_span = runs[0]["request_bytes"] / runs[0]["spans_per_request"]
    cpu = statistics.median(r["watched"][0]["acked_spans_per_cpu_sec"] for r in runs)
    mb = cpu * per_span / 1e6
    base = base or (cpu, mb)
    print(f"SHAPES {tag} {sig} {spr} x {ab} B prompt ({per_span:.0f} B/item): {cpu:,.0f} items/gateway-cpu-s, "
          f"{mb:,.1f} MB/gateway-cpu-s = {mb / base[1]:.2f}x the bytes and {cpu / base[0]:.2f}x the items of the first shape "
          f"(median of {len(runs)})")
PY
  ;;
profile)
  # Where the gateway's CPU goes at max load: perf (apt: linux-perf) samples it for 15 s.
  TRANSPORT="${2:-embedded}"
  printf '[limits]\nmax_inflight_bytes = 1073741824\n' > "$WORK/gw.toml"
  if [ "$TRANSPORT" = kafka ]; then
    start_broker 32
    printf '[kafka]\nbrokers = "%s"\ntopic = "bench"\npartition_key = "%s"\n%s\n' "$BOOT" "${PARTITION_KEY:-batch}" "${KAFKA_EXTRA:-}" >> "$WORK/gw.toml"
  fi
  start_gateway "$WORK/gw.toml"
  load --endpoint "http://$HTTP" --api-key "$KEY" --spans-per-request "$SPR" --duration 20s --concurrency 16 \
    --compression "${3:-none}" --body-pool "$([ "$TRANSPORT" = embedded ] && echo 0 || echo 16)" --watch-pid "$GW:gateway" --report "$OUT/profile-$TRANSPORT.json" ${LOAD_EXTRA:-} > /dev/null &
  LP=$!
  sleep 3
  perf record -F "${PERF_FREQ:-499}" ${PERF_G:--g} -o "$WORK/perf.data" -p "$GW" -- sleep 15 2>/dev/null >/dev/null
  wait $LP
  echo "PROFILE $TRANSPORT: $(summary "$OUT/profile-$TRANSPORT.json")"
  # Kept for call graphs (`perf report -i $OUT/profile-$TRANSPORT.perf --no-children -S SYMBOL -G`).
  cp "$WORK/perf.data" "$OUT/profile-$TRANSPORT.perf"
  perf report -i "$WORK/perf.data" --no-children --sort sym --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -40 | tee "$OUT/profile-$TRANSPORT.txt"
  ;;
*) echo "unknown mode $MODE" >&2; exit 2 ;;
esac
