#!/usr/bin/env python3
"""Test-only ClickHouse HTTP front on top of chdb (an embedded, current ClickHouse engine).

It serves the part of ClickHouse's HTTP interface that tracegate and the `clickhouse` Rust
crate use, so tests exercise the real engine (schema, RowBinary parsing, deduplication) without
a ClickHouse server package (Debian's is 18.16, too old). What is real and what is scaffolding
is written down in docs/testing.md. NEVER use this in production.

    chdb_front.py --data DIR [--port N] [--user U --password P] [--fault-ack-loss P --seed S]
                  [--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]]

With --tls-cert/--tls-key it also serves HTTPS on a second port (the certificate and key the
test made with its own throwaway CA), printed first as `chdb-front tls-listening 127.0.0.1:PORT`;
the plain port stays for the test's own queries. With --tls-client-ca the HTTPS port also
requires a client certificate signed by that CA.

Prints `chdb-front listening 127.0.0.1:PORT` once ready (port 0 picks a free port).

Served:
- `GET /ping` -> `Ok.`
- `POST /?query=INSERT INTO t (...) FORMAT RowBinary[&decompress=1][&<setting>=<value>...]`
  with the data as the (possibly chunked) body. With `decompress=1` the body is a sequence of
  ClickHouse native compressed blocks: 16-byte CityHash128 checksum, method byte (0x82 LZ4,
  0x90 zstd, 0x02 none), u32 compressed size (with the 9-byte header), u32 raw size, data; the
  checksum is verified. The data is written to a file and run as
  `INSERT INTO t (...) FROM INFILE '<file>' SETTINGS <settings> FORMAT RowBinary` in the chdb
  session, so `insert_deduplication_token` and `insert_deduplicate` are applied by the engine.
- `POST /` with SQL in the body (or `?query=`), output in `default_format` (default
  TabSeparated): DDL, SELECT. Errors come back as HTTP 500 with `Code: N. DB::Exception: ...`
  and the `X-ClickHouse-Exception-Code` header, as ClickHouse does.

Fault injection (scaffolding for tests): `--fault-ack-loss P` makes the front, with probability
P, run an INSERT to completion and then drop the connection without answering, exactly what a
writer sees when it is killed after ClickHouse committed its insert: the writer never learns
the outcome and writes the same data again.
"""

import argparse
import base64
import os
import random
import re
import socket
import ssl
import struct
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import chdb
import lz4.block
import zstandard
from chdb import session as chdb_session
from clickhouse_cityhash import cityhash

# URL parameters that are not ClickHouse settings.
NOT_SETTINGS = {
    "query", "database", "decompress", "compress", "default_format", "user", "password",
    "query_id", "session_id", "session_timeout", "session_check", "role",
    "enable_http_compression", "http_zlib_compression_level", "wait_end_of_query",
    "buffer_size", "add_http_cors_header",
}

INSERT_RE = re.compile(r"^\s*INSERT\s+INTO\s+(.+?)\s+FORMAT\s+(\w+)\s*;?\s*$", re.I | re.S)
CODE_RE = re.compile(r"Code:\s*(\d+)")


class Front:
    def __init__(self, data_dir, user, password, fault_ack_loss, seed):
        self.data_dir = data_dir
        os.makedirs(os.path.join(data_dir, "infiles"), exist_ok=True)
        self.sess = chdb_session.Session(os.path.join(data_dir, "chdb"))
        self.lock = threading.Lock()
        self.user = user
        self.password = password
        self.fault_ack_loss = fault_ack_loss
        self.rng = random.Random(seed)
        self.counter = 0

    def query(self, sql, fmt):
        with self.lock:
            return self.sess.query(sql, fmt)


def checksum_ok(block_without_checksum, checksum):
    """ClickHouse's block checksum: CityHash128 v1.0.2 of method byte + sizes + data, stored as
    its high 64-bit half then its low half, each little-endian (the `clickhouse_cityhash`
    package returns the hash as one integer, high half first)."""
    h = cityhash.CityHash128(block_without_checksum)
    return checksum == struct.pack("<QQ", h >> 64, h & (2**64 - 1))


def decompress_blocks(data):
    out = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < 25:
            raise ValueError("Code: 432. DB::Exception: truncated compressed block header")
        checksum = data[pos:pos + 16]
        method = data[pos + 16]
        comp_size, raw_size = struct.unpack_from("<II", data, pos + 17)
        end = pos + 16 + comp_size
        if comp_size < 9 or end > len(data):
            raise ValueError("Code: 432. DB::Exception: truncated compressed block")
        block = data[pos + 16:end]
        if not checksum_ok(block, checksum):
            raise ValueError("Code: 40. DB::Exception: checksum doesn't match: corrupted data. (CHECKSUM_DOESNT_MATCH)")
        payload = block[9:]
        if method == 0x82:
            out.append(lz4.block.decompress(payload, uncompressed_size=raw_size))
        elif method == 0x90:
            raw = zstandard.ZstdDecompressor().decompress(payload, max_output_size=raw_size)
            if len(raw) != raw_size:
                raise ValueError("Code: 271. DB::Exception: zstd block decompressed to the wrong size")
            out.append(raw)
        elif method == 0x02:
            out.append(payload)
        else:
            raise ValueError(f"Code: 432. DB::Exception: unknown compression method 0x{method:02x}")
        pos = end
    return b"".join(out)


def setting_literal(v):
    if re.fullmatch(r"-?\d+(\.\d+)?", v):
        return v
    return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    front = None  # set in main

    def log_message(self, fmt, *args):  # quiet
        pass

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                line = self.rfile.readline()
                if not line:
                    raise ConnectionError("eof in chunked body")
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    # trailers until empty line
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(parts)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def reply(self, status, body=b"", headers=None):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def error(self, msg):
        m = CODE_RE.search(msg)
        code = m.group(1) if m else "1001"
        if not m:
            msg = f"Code: 1001. DB::Exception: {msg}"
        self.reply(500, msg.encode() + b"\n", {
            "X-ClickHouse-Exception-Code": code,
            "Content-Type": "text/plain; charset=UTF-8",
        })

    def authorized(self):
        f = self.front
        if f.user is None:
            return True
        user = self.headers.get("X-ClickHouse-User")
        key = self.headers.get("X-ClickHouse-Key", "")
        auth = self.headers.get("Authorization", "")
        if user is None and auth.startswith("Basic "):
            user, _, key = base64.b64decode(auth[6:]).decode().partition(":")
        return user == f.user and key == f.password

    def do_GET(self):
        path = urlsplit(self.path).path
        if path in ("/ping", "/"):
            if path == "/" and "query=" in self.path:
                return self.handle_query(b"")
            return self.reply(200, b"Ok.\n")
        return self.reply(404, b"not found\n")

    def do_POST(self):
        try:
            body = self.read_body()
        except Exception as e:  # noqa: BLE001
            self.close_connection = True
            return self.error(f"Code: 33. DB::Exception: cannot read request body: {e}")
        return self.handle_query(body)

    def handle_query(self, body):
        f = self.front
        if not self.authorized():
            return self.error("Code: 516. DB::Exception: default: Authentication failed. (AUTHENTICATION_FAILED)")
        params = dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))
        sql = params.get("query")
        settings = {k: v for k, v in params.items() if k not in NOT_SETTINGS and not k.startswith("param_")}
        try:
            if sql is not None and INSERT_RE.match(sql):
                return self.handle_insert(sql, body, params, settings)
            if sql is None:
                sql = body.decode()
            elif body:
                sql = sql + " " + body.decode()
            m = INSERT_RE.match(sql)
            if m and "VALUES" not in sql.upper():
                return self.handle_insert(sql, b"", params, settings)
            fmt = params.get("default_format", "TabSeparated")
            res = f.query(sql, fmt)
            out = res.bytes() if res is not None else b""
            return self.reply(200, out or b"", {"Content-Type": "application/octet-stream",
                                                "X-ClickHouse-Format": fmt})
        except Exception as e:  # noqa: BLE001
            return self.error(str(e))

    def handle_insert(self, sql, body, params, settings):
        f = self.front
        m = INSERT_RE.match(sql)
        target, fmt = m.group(1), m.group(2)
        data = decompress_blocks(body) if params.get("decompress") == "1" else body
        if os.environ.get("CHDB_FRONT_DEBUG"):
            print(f"insert into {target}: body {len(body)} B, data {len(data)} B, settings {settings}", file=sys.stderr, flush=True)
        with f.lock:
            f.counter += 1
            n = f.counter
            lose_ack = f.fault_ack_loss > 0 and f.rng.random() < f.fault_ack_loss
        path = os.path.join(f.data_dir, "infiles", f"insert-{os.getpid()}-{n}.bin")
        with open(path, "wb") as fh:
            fh.write(data)
        try:
            clause = ""
            if settings:
                clause = " SETTINGS " + ", ".join(f"{k} = {setting_literal(v)}" for k, v in settings.items())
            f.query(f"INSERT INTO {target} FROM INFILE '{path}'{clause} FORMAT {fmt}", "TabSeparated")
        finally:
            try:
                os.unlink(path)
            except OSError:
                pass
        if lose_ack:
            # The insert is committed; the client never hears about it.
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return None
        return self.reply(200, b"", {"X-ClickHouse-Summary": '{"written_rows":"0"}'})


class TlsServer(ThreadingHTTPServer):
    """HTTPS: each accepted connection is wrapped, and its handshake runs in the connection's
    own thread (on first read), so a client that never finishes one holds up nobody else."""

    tls = None

    def get_request(self):
        sock, addr = self.socket.accept()
        return self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request, client_address):
        # A refused handshake (wrong CA on the client's side, no client certificate) is the
        # client's failure to report, not the front's.
        if isinstance(sys.exc_info()[1], (ssl.SSLError, ConnectionError)):
            return
        super().handle_error(request, client_address)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--user")
    ap.add_argument("--password", default="")
    ap.add_argument("--fault-ack-loss", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--tls-client-ca")
    a = ap.parse_args()
    if a.host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("chdb_front.py serves loopback only")
    Handler.front = Front(a.data, a.user, a.password, a.fault_ack_loss, a.seed)
    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer.daemon_threads = True
    if a.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(a.tls_cert, a.tls_key)
        if a.tls_client_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(a.tls_client_ca)
        tls_srv = TlsServer((a.host, 0), Handler)
        tls_srv.tls = ctx
        threading.Thread(target=tls_srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        print(f"chdb-front tls-listening {a.host}:{tls_srv.server_address[1]}", flush=True)
    srv = ThreadingHTTPServer((a.host, a.port), Handler)
    print(f"chdb-front listening {a.host}:{srv.server_address[1]} chdb={chdb.__version__}", flush=True)
    try:
        srv.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        sys.exit(1)
