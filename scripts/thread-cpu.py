#!/usr/bin/env python3
"""CPU time of a process's threads and of one CPU, every 50 ms, for finding what ran during a
latency episode of a load run (docs/benchmarks.md, session 6).

    scripts/thread-cpu.py OUT_FILE PID [CPU]

Writes one line per sample until PID exits: the Unix time, then CPU's user / system / idle /
softirq clock ticks in the interval (from /proc/stat), then the ticks of each thread name of PID
that ran (from /proc/PID/task/*/stat; threads with the same name are summed). Ticks are
1/CLK_TCK s (10 ms on Linux), so a 50 ms sample holds at most 5 per CPU.
"""
import os
import sys
import time


def threads(pid):
    out = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            s = open(f"/proc/{pid}/task/{t}/stat").read()
        except OSError:
            continue  # the thread ended between listdir and open
        name = s[s.index("(") + 1 : s.rindex(")")]
        f = s[s.rindex(")") + 2 :].split()
        out[t] = (name, int(f[11]) + int(f[12]))  # utime + stime
    return out


def cpu(n):
    for line in open("/proc/stat"):
        if line.startswith(f"cpu{n} "):
            return list(map(int, line.split()[1:]))
    raise SystemExit(f"no cpu{n} in /proc/stat")


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    out, pid = open(sys.argv[1], "w"), int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    prev, prevc = threads(pid), cpu(n)
    while os.path.exists(f"/proc/{pid}"):
        time.sleep(0.05)
        try:
            cur, c = threads(pid), cpu(n)
        except OSError:
            break  # the process ended
        ran = {}
        for t, (name, ticks) in cur.items():
            d = ticks - prev.get(t, (name, ticks))[1]
            if d:
                ran[name] = ran.get(name, 0) + d
        dc = [a - b for a, b in zip(c, prevc)]
        out.write(
            f"{time.time():.3f} cpu{n} user={dc[0]} sys={dc[2]} idle={dc[3]} softirq={dc[6]} | "
            + " ".join(f"{k}={v}" for k, v in sorted(ran.items()))
            + "\n"
        )
        out.flush()
        prev, prevc = cur, c


if __name__ == "__main__":
    main()
