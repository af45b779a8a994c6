#!/usr/bin/env python3
"""Runs the README's own commands, as written, on this clone (CI runs it from .ci/run).

The README's "Set up" and "Send a first span" sections are the promise a newcomer reads first;
this script takes their fenced `sh` blocks out of README.md (nothing is copied here) and runs them:

1. the run command (`cargo run --release -p tracegate -- serve`), verbatim, in the repository
   root: it must print its listening line and, on this first start, a key and a curl command;
2. the curl command the gateway printed, pasted as it is;
3. the README's curl block with `KEY=` set to that key (the only edit: the placeholder line);
4. the README's `keys create` line: its last line is a new secret, and the running gateway must
   accept it without a restart (the README's curl block again, with that key);
5. the README's `export OTEL_…` block: the variables must name the gateway and carry the key;
6. the README's `archive cat` line: every span sent above must be there, under its project;
7. the README's log record and metric curls (with `$KEY` the first start's key) and its
   `archive cat --signal logs` / `--signal metrics` lines: the record and the metric must be
   there;
8. SIGTERM: the gateway must exit 0.

The README's test command is not run here: `readme-check.py --print-test-command` prints it
from README.md, and .ci/run runs that last. The default ports (4317, 4318, 8888) and `./tracegate-data` must be free
— they are on a fresh clone; the script refuses to run otherwise and removes the data dir after.
Every wait is bounded; the gateway is always stopped.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The first `cargo run --release` may compile the gateway: allow for a fresh machine.
BUILD_TIMEOUT_S = int(os.environ.get("TRACEGATE_README_BUILD_TIMEOUT", "3600"))
STEP_TIMEOUT_S = 120


def fail(msg):
    print(f"readme-check: FAIL: {msg}", flush=True)
    sys.exit(1)


def sections(readme):
    """{section heading: [sh block text, …]} for every `## ` section."""
    out, name = {}, None
    for part in re.split(r"^## ", readme, flags=re.M)[1:]:
        name, _, body = part.partition("\n")
        out[name.strip()] = re.findall(r"^```sh\n(.*?)^```", body, flags=re.M | re.S)
    return out


def block_with(blocks, needle, where):
    found = [b for b in blocks if needle in b]
    if len(found) != 1:
        fail(f"expected one `sh` block containing {needle!r} in section {where!r}, found {len(found)}")
    return found[0]


def sh(script, env=None, timeout=STEP_TIMEOUT_S):
    """Runs `script` with bash in the repository root; returns (exit code, stdout, stderr)."""
    print(f"readme-check: $ {script.strip()}", flush=True)
    p = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def port_free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def wait_for(path, pattern, proc, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        if re.search(pattern, text, flags=re.M):
            return text
        if proc.poll() is not None:
            fail(f"the gateway exited ({proc.returncode}) before printing {pattern!r}:\n{text[-4000:]}")
        time.sleep(0.2)
    fail(f"no {pattern!r} within {timeout} s")


def otlp_ok(code, out, err, what):
    """curl exited 0 and the body is an OTLP success (no error status, no rejected spans)."""
    if code != 0:
        fail(f"{what}: curl exit {code}: {err}")
    try:
        body = json.loads(out)
    except ValueError:
        fail(f"{what}: the answer is not OTLP/JSON: {out!r}")
    rejected = body.get("partialSuccess", {})
    if "code" in body or any(
        rejected.get(k) for k in ("rejectedSpans", "rejectedLogRecords", "rejectedDataPoints")
    ):
        fail(f"{what}: not accepted: {out!r}")


def main():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        secs = sections(f.read())
    setup, first = secs.get("Set up", []), secs.get("Send a first span", [])
    if sys.argv[1:] == ["--print-test-command"]:
        # For .ci/run: the README's test command, as written.
        print(block_with(setup, "test", "Set up").strip())
        return
    serve_cmd = block_with(setup, "-- serve", "Set up").strip()
    keys_cmd = block_with(first, "keys create", "Send a first span")
    curl_block = block_with(first, "/v1/traces", "Send a first span")
    logs_block = block_with(first, "/v1/logs", "Send a first span")
    metrics_block = block_with(first, "/v1/metrics", "Send a first span")
    export_block = block_with(first, "export OTEL_EXPORTER_OTLP_ENDPOINT", "Send a first span")
    cat_cmd = block_with(first, "archive cat\n", "Send a first span")
    cat_signals = block_with(first, "archive cat --signal logs", "Send a first span")
    if not re.search(r"^KEY=\S+", curl_block, flags=re.M):
        fail("the curl block no longer starts with a KEY= line to fill in")

    data_dir = os.path.join(ROOT, "tracegate-data")
    if os.path.exists(data_dir):
        fail(f"{data_dir} exists: the README's first start needs an empty data dir")
    busy = [p for p in (4317, 4318, 8888) if not port_free(p)]
    if busy:
        fail(f"the README's default ports {busy} are in use on this machine")

    log = tempfile.NamedTemporaryFile(prefix="readme-serve-", suffix=".log", delete=False)
    print(f"readme-check: $ {serve_cmd}   (output: {log.name})", flush=True)
    # No shell in between: `cargo run` execs the gateway, so this pid is the gateway's.
    proc = subprocess.Popen(["bash", "-c", f"exec {serve_cmd}"], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        text = wait_for(log.name, r"^tracegate listening ", proc, BUILD_TIMEOUT_S)
        run_steps(text, keys_cmd, curl_block, export_block, cat_cmd)
        run_signal_steps(text, logs_block, metrics_block, cat_signals)
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            fail("the gateway did not exit within 60 s of SIGTERM")
        if code != 0:
            fail(f"the gateway exited {code} on SIGTERM")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        subprocess.run(["rm", "-rf", data_dir], check=False)
    print("readme-check: every README set-up and first-span command ran as written", flush=True)


def run_steps(text, keys_cmd, curl_block, export_block, cat_cmd):
    keys = re.findall(r"^\s+(tg_\S+)\s*$", text, flags=re.M)
    if len(keys) != 1:
        fail(f"first start printed {len(keys)} keys, expected 1:\n{text[-3000:]}")
    key = keys[0]
    printed = re.search(r"^curl .*?-d '.*?'$", text, flags=re.M | re.S)
    if not printed:
        fail(f"first start printed no curl command:\n{text[-3000:]}")
    otlp_ok(*sh(printed.group(0)), "the curl the gateway printed")

    with_key = lambda k: re.sub(r"^KEY=\S+.*$", f"KEY={k}", curl_block, count=1, flags=re.M)
    otlp_ok(*sh(with_key(key)), "the README's curl block")

    code, out, err = sh(keys_cmd)
    if code != 0:
        fail(f"keys create exited {code}: {err}")
    lines = out.strip().splitlines()
    project = next((l.split(":", 1)[1].strip() for l in lines if l.startswith("project:")), None)
    secret = lines[-1].strip() if lines else ""
    if not secret.startswith("tg_") or not project:
        fail(f"keys create printed no project / secret as its last line: {out!r}")
    otlp_ok(*sh(with_key(secret)), f"the README's curl block with the new key of {project}")

    env_script = f"KEY={key}\n{export_block}\nenv | grep '^OTEL_EXPORTER_OTLP_'"
    code, out, err = sh(env_script)
    if code != 0:
        fail(f"the export block failed: {err}")
    exported = dict(l.split("=", 1) for l in out.splitlines())
    if exported.get("OTEL_EXPORTER_OTLP_ENDPOINT") != "http://127.0.0.1:4318" or key not in exported.get(
        "OTEL_EXPORTER_OTLP_HEADERS", ""
    ):
        fail(f"the export block does not point an SDK at the gateway with the key: {exported}")

    code, out, err = sh(cat_cmd)
    if code != 0:
        fail(f"archive cat exited {code}: {err}")
    records = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    by_project = {}
    for r in records:
        by_project.setdefault(r["project_id"], []).append(r["span"]["name"])
    want = {"default": ["hello", "hello"], project: ["hello"]}
    if by_project != want:
        fail(f"archive cat shows {by_project}, expected {want}")


def run_signal_steps(text, logs_block, metrics_block, cat_signals):
    """The log record and metric curls, with the first start's key in $KEY (as the curl block
    above set it), then the `archive cat --signal logs` / `--signal metrics` block."""
    key = re.findall(r"^\s+(tg_\S+)\s*$", text, flags=re.M)[0]
    otlp_ok(*sh(f"KEY={key}\n{logs_block}"), "the README's log record curl")
    otlp_ok(*sh(f"KEY={key}\n{metrics_block}"), "the README's metric curl")
    code, out, err = sh(cat_signals)
    if code != 0:
        fail(f"the archive cat --signal block exited {code}: {err}")
    records = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    got = [
        (r["project_id"], r["log"]["body"]["stringValue"] if "log" in r else r["metric"]["name"])
        for r in records
    ]
    if got != [("default", "hello log"), ("default", "hello.requests")]:
        fail(f"archive cat --signal logs / metrics show {got}, expected the README's record and metric")


if __name__ == "__main__":
    main()
