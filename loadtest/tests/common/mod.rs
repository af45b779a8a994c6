//! Harness for loadtest's end-to-end tests: a real `tracegate serve` child process (free ports,
//! temp data dir) and the real `loadtest` binary, every wait bounded.
//!
//! The gateway binary is `$TRACEGATE_BIN`, else `tracegate` next to the `loadtest` binary under
//! test (cargo builds it there for `cargo test --workspace`; for `cargo test -p loadtest` run
//! `cargo build -p tracegate` first). A missing binary fails the test, never skips it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

pub const START_TIMEOUT: Duration = Duration::from_secs(60);

pub fn loadtest_bin() -> &'static str {
    env!("CARGO_BIN_EXE_loadtest")
}

pub fn tracegate_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TRACEGATE_BIN") {
        return PathBuf::from(p);
    }
    let p = Path::new(loadtest_bin())
        .parent()
        .expect("binary dir")
        .join("tracegate");
    assert!(
        p.exists(),
        "{} not found: build it first (`cargo build -p tracegate`; `cargo test --workspace` \
         does) or set TRACEGATE_BIN",
        p.display()
    );
    p
}

pub struct Gateway {
    child: Child,
    pub dir: tempfile::TempDir,
    pub http: String,
    pub grpc: String,
    pub admin: String,
}

impl Gateway {
    pub fn start(env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::Builder::new()
            .prefix("loadtest-e2e-")
            .tempdir()
            .expect("temp dir");
        let mut cmd = Command::new(tracegate_bin());
        cmd.args(["serve", "--grpc-addr", "127.0.0.1:0", "--http-addr"])
            .arg("127.0.0.1:0")
            .args(["--admin-addr", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn tracegate serve");
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if !sent && line.starts_with("tracegate listening") {
                    sent = true;
                    let _ = tx.send(line);
                }
            }
        });
        let err = child.stderr.take().expect("stderr");
        thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[tracegate {pid}] {line}");
            }
        });
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("tracegate serve did not print its listening line in {START_TIMEOUT:?}");
            }
        };
        let field = |k: &str| -> String {
            line.split_whitespace()
                .find_map(|t| t.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("no {k}= in {line:?}"))
                .to_string()
        };
        Gateway {
            http: field("otlp_http"),
            grpc: field("otlp_grpc"),
            admin: field("admin"),
            child,
            dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// `tracegate keys create --project P [extra]`; the secret (last line).
    pub fn create_key(&self, project: &str, extra: &[&str]) -> String {
        let out = run_bounded(
            Command::new(tracegate_bin())
                .args(["keys", "create", "--project", project, "--data-dir"])
                .arg(self.data_dir())
                .args(extra),
            Duration::from_secs(30),
        );
        assert!(out.status.success(), "keys create: {out:?}");
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .expect("key line")
            .trim()
            .to_string()
    }

    /// Every archive object file under the data dir.
    pub fn archive_objects(&self) -> Vec<PathBuf> {
        let mut out = vec![];
        let mut stack = vec![self.data_dir().join("archive")];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "tga") {
                    out.push(p);
                }
            }
        }
        out.sort();
        out
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command to completion within `limit` (killed after it), capturing its output.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let o = thread::spawn(move || {
        let mut v = vec![];
        let _ = std::io::Read::read_to_end(&mut BufReader::new(stdout), &mut v);
        v
    });
    let e = thread::spawn(move || {
        let mut v = vec![];
        let _ = std::io::Read::read_to_end(&mut BufReader::new(stderr), &mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: o.join().unwrap_or_default(),
        stderr: e.join().unwrap_or_default(),
    }
}

/// Runs `loadtest ARGS`; panics unless it exits 0. Returns (stdout, stderr).
pub fn loadtest(args: &[&str]) -> (String, String) {
    let out = loadtest_status(args);
    assert!(
        out.status.success(),
        "loadtest {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

pub fn loadtest_status(args: &[&str]) -> Output {
    let out = run_bounded(
        Command::new(loadtest_bin()).args(args),
        Duration::from_secs(180),
    );
    eprintln!(
        "[loadtest {args:?}] exit {:?}\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).expect("read json")).expect("parse json")
}

pub fn num(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Checks a report's internal consistency; returns acked spans.
pub fn check_report(r: &serde_json::Value) -> u64 {
    let spr = num(&r["spans_per_request"]) as u64;
    let req = &r["requests"];
    let sent = num(&req["sent"]) as u64;
    let acked = num(&req["acked"]) as u64;
    let refused = num(&req["refused"]) as u64;
    let unknown = num(&req["unknown"]) as u64;
    assert!(acked > 0, "nothing acked: {r}");
    assert_eq!(acked + refused + unknown, sent, "requests do not add up");
    let spans = &r["spans"];
    assert_eq!(num(&spans["sent"]) as u64, sent * spr);
    assert_eq!(
        num(&spans["acked"]) as u64 + num(&spans["rejected_in_partial_success"]) as u64,
        acked * spr
    );
    let attempts = num(&req["attempts"]) as u64;
    let responses: u64 = r["responses"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| num(v) as u64)
        .sum();
    assert_eq!(attempts, responses, "attempts vs responses");
    assert_eq!(
        attempts,
        sent - unknown_unanswered(r) + num(&req["retries"]) as u64,
        "attempts = answered requests + retries"
    );
    let l = &r["latency"];
    let p: Vec<f64> = ["p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"]
        .iter()
        .map(|k| num(&l[*k]))
        .collect();
    assert!(p[0] > 0.0, "p50 is 0: {l}");
    assert!(
        p.windows(2).all(|w| w[0] <= w[1]),
        "percentiles out of order: {p:?}"
    );
    assert_eq!(num(&l["count"]) as u64, acked);
    let series = r["series"].as_array().unwrap();
    assert!(!series.is_empty(), "no per-second series");
    let series_acked: u64 = series.iter().map(|s| num(&s["acked_spans"]) as u64).sum();
    // The last, partial second is in the series too.
    assert_eq!(series_acked, num(&spans["acked"]) as u64, "series vs total");
    assert!(num(&r["acked_spans_per_sec"]) > 0.0);
    // Ranges cover exactly the acked spans.
    let covered: u64 = r["acked_ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| num(&x[1]) as u64 - num(&x[0]) as u64 + 1)
        .sum();
    assert_eq!(covered, acked * spr);
    num(&spans["acked"]) as u64
}

/// Requests abandoned unanswered at the drain deadline made no attempt that was counted.
fn unknown_unanswered(r: &serde_json::Value) -> u64 {
    let unknown = num(&r["requests"]["unknown"]) as u64;
    let errors: u64 = r["refusals"]["errors_by_kind"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| num(v) as u64)
        .sum();
    unknown - errors
}

/// An SVG file that looks like one: starts with an XML/SVG tag, ends with </svg>, balanced.
pub fn check_svg(p: &Path) {
    let s = std::fs::read_to_string(p).expect("read svg");
    assert!(s.trim_start().starts_with("<svg") || s.trim_start().starts_with("<?xml"));
    assert!(s.trim_end().ends_with("</svg>"), "svg not closed");
    assert!(
        s.contains("<polyline") || s.contains("<path"),
        "no lines drawn"
    );
    assert_eq!(s.matches("<svg").count(), s.matches("</svg>").count());
}

/// The Python with chdb: `$TRACEGATE_CHDB_PYTHON`, else the venv `scripts/chdb-venv.sh`
/// creates (as gateway/tests). Missing: the test fails with the install hint, never skips.
pub fn chdb_python() -> PathBuf {
    let p = std::env::var_os("TRACEGATE_CHDB_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("TRACEGATE_CI_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                        .join(".cache/tracegate-ci")
                });
            cache.join("chdb-venv/bin/python")
        });
    assert!(
        p.exists(),
        "no Python with chdb at {} (set TRACEGATE_CHDB_PYTHON; `bash scripts/chdb-venv.sh`)",
        p.display()
    );
    p
}

/// The test-only ClickHouse HTTP front (deploy/testing/chdb_front.py) on a free port.
pub struct ChFront {
    child: Child,
    _dir: tempfile::TempDir,
    pub url: String,
}

impl ChFront {
    pub fn start() -> ChFront {
        let dir = tempfile::Builder::new()
            .prefix("loadtest-chdb-")
            .tempdir()
            .expect("temp dir");
        // Cargo's run-time CARGO_MANIFEST_DIR first: a test binary carried over by a shared build
        // cache from another checkout would otherwise look there.
        let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")));
        let script = manifest.join("../deploy/testing/chdb_front.py");
        let mut child = Command::new(chdb_python())
            .arg(script)
            .arg("--data")
            .arg(dir.path())
            .args(["--port", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn chdb front");
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let err = child.stderr.take().expect("stderr");
        thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[chdb-front {pid}] {line}");
            }
        });
        let deadline = Instant::now() + Duration::from_secs(90);
        let addr = loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(l) if l.starts_with("chdb-front listening") => {
                    break l.split_whitespace().nth(2).expect("address").to_string()
                }
                Ok(_) => {}
                Err(_) if Instant::now() < deadline => {}
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("chdb front did not start within 90 s");
                }
            }
        };
        ChFront {
            child,
            _dir: dir,
            url: format!("http://{addr}"),
        }
    }

    /// Runs SQL (HTTP/1.1 POST over a plain TcpStream: no curl needed); panics on failure.
    /// Returns the response body.
    pub fn sql(&self, q: &str) -> String {
        use std::io::{Read, Write};
        let addr = self.url.trim_start_matches("http://");
        let mut c = std::net::TcpStream::connect(addr).expect("connect to the chdb front");
        c.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        write!(
            c,
            "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{q}",
            q.len()
        )
        .unwrap();
        let mut resp = String::new();
        c.read_to_string(&mut resp).expect("read the answer");
        let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
        assert!(
            head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
            "SQL {q:?}: {resp}"
        );
        body.to_string()
    }
}

impl Drop for ChFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
