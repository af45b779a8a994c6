#!/usr/bin/env python3
"""Connection attacks for the overload benchmark (scripts/bench-load.sh attack).

Keeps, until SECONDS have passed, on each given HOST:PORT:
  --silent N    TCP connections that never send a byte (reopened when the gateway closes them);
  --h2c N       connections that send only the HTTP/2 preface and an empty SETTINGS frame;
  --slow N      (first address only, needs --key) requests declaring 1 MiB that trickle one
                byte per second.
Prints one line of counts at the end: how many connections were opened and how many the
gateway closed. Loopback only; every loop is bounded by the duration.
"""
import argparse
import resource
import selectors
import socket
import time

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("addrs", nargs="+", help="HOST:PORT of OTLP listeners")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--silent", type=int, default=500)
    ap.add_argument("--h2c", type=int, default=200)
    ap.add_argument("--slow", type=int, default=50)
    ap.add_argument("--key", default="")
    ap.add_argument("--source", default="", help="source address (e.g. 127.0.0.2): another client")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    for addr in a.addrs:
        if not (addr.startswith("127.") or addr.startswith("[::1]") or addr.startswith("localhost")):
            raise SystemExit(f"{addr}: loopback addresses only")
    targets = [(h, int(p)) for h, p in (x.rsplit(":", 1) for x in a.addrs)]
    sel = selectors.DefaultSelector()
    opened = closed = 0
    closed_by_kind = {}

    def open_one(kind, target):
        nonlocal opened
        s = socket.socket()
        s.settimeout(2)
        try:
            if a.source:
                s.bind((a.source, 0))
            s.connect(target)
        except OSError:
            s.close()
            return
        s.setblocking(False)
        try:
            if kind == "h2c":
                s.send(H2_PREFACE)
            elif kind == "slow":
                s.send(
                    (
                        f"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                        f"Authorization: Bearer {a.key}\r\nContent-Length: 1048576\r\n\r\n"
                    ).encode()
                )
        except OSError:
            pass
        opened += 1
        sel.register(s, selectors.EVENT_READ, (kind, target))

    wanted = []
    for t in targets:
        wanted += [("silent", t)] * a.silent + [("h2c", t)] * a.h2c
    if a.key:
        wanted += [("slow", targets[0])] * a.slow
    for kind, t in wanted:
        open_one(kind, t)
    end = time.monotonic() + a.seconds
    next_trickle = time.monotonic() + 1
    while time.monotonic() < end:
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            if not data:  # closed by the gateway (or answered and closed): open another
                kind, t = key.data
                sel.unregister(s)
                s.close()
                closed += 1
                closed_by_kind[kind] = closed_by_kind.get(kind, 0) + 1
                open_one(kind, t)
        if time.monotonic() >= next_trickle:
            next_trickle += 1
            for key in list(sel.get_map().values()):
                if key.data[0] == "slow":
                    try:
                        key.fileobj.send(b"\x0a")
                    except OSError:
                        pass
    by_kind = ", ".join(f"{k} {v}" for k, v in sorted(closed_by_kind.items()))
    print(f"connection attack: opened {opened}, closed by the gateway {closed} ({by_kind})", flush=True)


if __name__ == "__main__":
    main()
