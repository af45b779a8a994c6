#!/usr/bin/env python3
"""Per-second view of a gateway run from /metrics snapshots (scripts/bench-load.sh SCRAPE=1).

  scripts/metrics-per-second.py DIR

For each second: requests answered, and how many took over 5 / 10 / 25 ms, for the gateway's
whole handling (tracegate_request_duration_seconds: headers to answer) and its phases: reading
the body, decode + validation on the blocking pool (queue wait included), and the Kafka delivery
(tracegate_kafka_delivery_duration_seconds: produce to broker ack);
plus librdkafka's own p99s (queue wait before sending, broker round trip). Then the run's
quantiles of both, interpolated within histogram buckets.
"""
import glob
import re
import sys

NAMES = {
    "request": "tracegate_request_duration_seconds",
    "body": "tracegate_request_body_read_seconds",
    "decode": "tracegate_request_decode_seconds",
    "kafka": "tracegate_kafka_delivery_duration_seconds",
}


def parse(path):
    d = {}
    for line in open(path):
        if line.startswith("#") or not line.strip():
            continue
        k, _, v = line.rpartition(" ")
        try:
            d[k] = float(v)
        except ValueError:
            pass
    return d


def buckets(d, name):
    b = {}
    for k, v in d.items():
        if k.startswith(name + "_bucket"):
            le = re.search(r'le="([^"]+)"', k).group(1)
            le = float("inf") if le == "+Inf" else float(le)
            b[le] = b.get(le, 0) + v
    return b


def delta(a, b, name):
    ha, hb = buckets(a, name), buckets(b, name)
    return {le: hb[le] - ha.get(le, 0) for le in hb}


def over(h, le):
    return h.get(float("inf"), 0) - h.get(le, 0)


def quantile(h, q):
    total = h.get(float("inf"), 0)
    if total == 0:
        return float("nan")
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le in sorted(h):
        c = h[le]
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1e-9)
        prev_le, prev_c = le, c
    return prev_le


def main():
    snaps = [parse(f) for f in sorted(glob.glob(sys.argv[1] + "/*.txt"))]
    if len(snaps) < 2:
        sys.exit("need at least two snapshots")
    for i in range(1, len(snaps)):
        a, b = snaps[i - 1], snaps[i]
        row = []
        for label, name in NAMES.items():
            h = delta(a, b, name)
            row.append(
                f"{label} n={h.get(float('inf'), 0):.0f} >5ms={over(h, 0.005):.0f} "
                f">10ms={over(h, 0.01):.0f} >25ms={over(h, 0.025):.0f}"
            )
        gauges = " ".join(
            f"{k.split('{')[0].replace('tracegate_kafka_', '')}={v * 1000:.1f}ms"
            for k, v in sorted(b.items())
            if "p99" in k
        )
        print(f"{i:3d}s " + " | ".join(row) + " " + gauges)
    for label, name in NAMES.items():
        h = delta(snaps[0], snaps[-1], name)
        if h.get(float("inf"), 0):
            qs = " ".join(
                f"p{q * 100:g} {quantile(h, q) * 1000:.1f} ms" for q in (0.5, 0.9, 0.99, 0.999)
            )
            print(f"whole run, {label}: n={h[float('inf')]:.0f} {qs}")


if __name__ == "__main__":
    main()
