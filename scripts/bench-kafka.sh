#!/usr/bin/env bash
# Kafka transport throughput on this machine (docs/benchmarks.md), with release builds and the
# test broker (librdkafka's mock cluster):
#   A. gateway: loadtest → tracegate serve [kafka] → broker ack   (no writer running)
#   B. writer:  the backlog of A → tracegate write → archive       (nothing else running)
# For each process it reports spans/s of wall time and spans per CPU-second of that process
# (user+sys from /proc), which is the per-core figure on a machine shared with the load
# generator and the broker.
#
# Usage: [PROTOCOL=http|grpc] scripts/bench-kafka.sh [REQUESTS] [SPANS_PER_REQUEST] [CONCURRENCY] [PARTITIONS]
#        (defaults 1200 500 8 32: 600 000 spans, ~2.7 MiB per partition on the broker, within the
#        mock's ~5 MiB per partition; a larger backlog loses its oldest batches to that limit)
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS="${1:-1200}"
SPANS="${2:-500}"
CONC="${3:-8}"
PARTS="${4:-32}"
PROTOCOL="${PROTOCOL:-http}"
TOPIC=bench
BIN="${CARGO_TARGET_DIR:-target}/release"
cargo build --release -q -p tracegate -p tracegate-testkit -p loadtest

WORK="$(mktemp -d /tmp/tracegate-bench-kafka.XXXXXX)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
tck=$(getconf CLK_TCK)
cpu_secs() { awk -v t="$tck" '{print ($14+$15)/t}' "/proc/$1/stat"; }
wait_line() { # file pattern seconds
  for _ in $(seq 1 $(( $3 * 10 ))); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timeout waiting for '$2' in $1" >&2; cat "$1" >&2; return 1
}
metric() { curl -s "http://$1/metrics" | awk -v m="$2" '$1 ~ "^"m"({|$)" {s+=$NF} END {printf "%.0f", s}'; }

mkfifo "$WORK/broker.in"
"$BIN/tracegate-test-broker" --topic "$TOPIC:$PARTS" < "$WORK/broker.in" > "$WORK/broker.out" 2>"$WORK/broker.err" &
PIDS+=($!)
sleep 1000000 > "$WORK/broker.in" &
PIDS+=($!)
wait_line "$WORK/broker.out" "bootstrap=" 10
BOOT=$(sed -n 's/.*bootstrap=//p' "$WORK/broker.out")
cat > "$WORK/k.toml" <<EOF
[kafka]
brokers = "$BOOT"
topic = "$TOPIC"
partition_key = "batch"
# writer: cut by size (10k spans per batch), a short age only for the tail
batch_max_spans = 10000
batch_max_age_ms = 200
[limits]
max_inflight_bytes = 1073741824
EOF

# --- A: gateway to broker ack ----------------------------------------------------------------
RUST_LOG=warn "$BIN/tracegate" serve --config "$WORK/k.toml" --data-dir "$WORK/gw" \
  --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 > "$WORK/gw.out" 2>"$WORK/gw.err" &
GW=$!; PIDS+=($GW)
wait_line "$WORK/gw.out" "tracegate listening" 30
HTTP=$(sed -n 's/.*otlp_http=\([^ ]*\).*/\1/p' "$WORK/gw.out")
GRPC=$(sed -n 's/.*otlp_grpc=\([^ ]*\).*/\1/p' "$WORK/gw.out")
EP="http://$HTTP"; [ "$PROTOCOL" = grpc ] && EP="http://$GRPC"
KEY=$("$BIN/tracegate" keys create --project bench --data-dir "$WORK/gw" | tail -1)
for _ in $(seq 1 50); do curl -sf "http://$(sed -n 's/.*admin=\([^ ]*\).*/\1/p' "$WORK/gw.out")/readyz" >/dev/null && break; sleep 0.1; done
# warm-up, then the measured run
"$BIN/loadtest" --quiet --endpoint "$EP" --protocol "$PROTOCOL" --api-key "$KEY" --duration 2s --concurrency "$CONC" --spans-per-request "$SPANS" --max-requests 20 >/dev/null
c0=$(cpu_secs $GW)
OUT=$("$BIN/loadtest" --quiet --endpoint "$EP" --protocol "$PROTOCOL" --api-key "$KEY" --duration 300s --concurrency "$CONC" \
  --spans-per-request "$SPANS" --max-requests "$REQUESTS")
c1=$(cpu_secs $GW)
echo "$OUT"
secs=$(sed -n 's/.* seconds=\([^ ]*\).*/\1/p' <<<"$OUT")
ok=$(sed -n 's/.* spans_ok=\([^ ]*\).*/\1/p' <<<"$OUT")
awk -v ok="$ok" -v s="$secs" -v c0="$c0" -v c1="$c1" 'BEGIN {
  printf "A gateway->broker ack: %d spans in %.1f s = %.0f spans/s; gateway CPU %.1f s = %.0f spans per gateway CPU-second\n", ok, s, ok/s, c1-c0, ok/(c1-c0) }'
kill -TERM $GW; wait $GW || true
TOTAL=$(( ok + 20 * SPANS ))

# --- B: writer from the backlog to the archive -----------------------------------------------
RUST_LOG=warn "$BIN/tracegate" write --config "$WORK/k.toml" --data-dir "$WORK/wr" --admin-addr 127.0.0.1:0 \
  > "$WORK/wr.out" 2>"$WORK/wr.err" &
WR=$!; PIDS+=($WR)
wait_line "$WORK/wr.out" "tracegate writer ready" 30
ADMIN=$(sed -n 's/.*admin=\([^ ]*\).*/\1/p' "$WORK/wr.out")
# Measure from the partition assignment (after the group join) to the last written batch.
for _ in $(seq 1 600); do [ "$(metric "$ADMIN" tracegate_kafka_writer_assigned_partitions)" -gt 0 ] && break; sleep 0.02; done
t0=$(date +%s.%N); c0=$(cpu_secs $WR); s0=$(metric "$ADMIN" tracegate_kafka_writer_spans_total)
last=$s0; t1=$t0; c1=$c0; s1=$s0
# Until everything is written, or nothing more for 10 s (then the end time is the last progress).
while :; do
  s=$(metric "$ADMIN" tracegate_kafka_writer_spans_total)
  now=$(date +%s.%N)
  if [ "$s" -gt "$last" ]; then last=$s; t1=$now; c1=$(cpu_secs $WR); s1=$s; fi
  [ "$s" -ge "$TOTAL" ] && break
  awk -v a="$now" -v b="$t1" 'BEGIN { exit !(a - b > 10) }' && { echo "writer stalled at $s of $TOTAL spans" >&2; break; }
  sleep 0.05
done
objs=$(find "$WORK/wr/archive" -name '*.tga' | wc -l)
bytes=$(du -sb "$WORK/wr/archive" | cut -f1)
awk -v n=$((s1 - s0)) -v t0="$t0" -v t1="$t1" -v c0="$c0" -v c1="$c1" -v tot="$s1" -v want="$TOTAL" -v o="$objs" -v b="$bytes" 'BEGIN {
  printf "B broker->writer->archive: %d spans in %.1f s = %.0f spans/s; writer CPU %.1f s = %.0f spans per writer CPU-second; %d/%d spans written, %d objects, %d bytes\n", n, t1-t0, n/(t1-t0), c1-c0, n/(c1-c0), tot, want, o, b }'
kill -TERM $WR; wait $WR || true
