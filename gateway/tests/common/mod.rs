//! Shared harness for tracegate's integration tests.
//!
//! Starts the real `tracegate` binary (`env!("CARGO_BIN_EXE_tracegate")`) as a child process,
//! waits for its `tracegate listening ...` line and exposes its addresses, plus helpers to build,
//! encode and POST OTLP requests. Every wait is bounded: nothing here can hang a test forever.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

/// How long `start*` waits for the listening line.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `terminate` waits for a clean exit after SIGTERM.
pub const TERM_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a CLI subcommand (`keys create`, `archive cat`) may run.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(30);
/// Default timeout for one HTTP request made by the helpers.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tracegate")
}

/// A running `tracegate serve` child process.
pub struct Gateway {
    child: Option<Child>,
    _tempdir: Option<tempfile::TempDir>,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    pub data_dir: PathBuf,
}

/// Why a start attempt failed (used to retry binding on restart).
enum StartError {
    /// The process exited before printing the listening line.
    Exited(ExitStatus),
}

impl Gateway {
    /// Starts a gateway on a fresh temporary data dir (removed on drop), all ports 0.
    pub fn start(env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::Builder::new()
            .prefix("tracegate-test-")
            .tempdir()
            .expect("create temp data dir");
        let path = dir.path().to_path_buf();
        let mut gw = Self::start_or_panic(&path, "127.0.0.1:0", "127.0.0.1:0", env);
        gw._tempdir = Some(dir);
        gw
    }

    /// Starts a gateway on an existing data dir (owned and kept by the caller), all ports 0.
    pub fn start_in(data_dir: &Path, env: &[(&str, &str)]) -> Gateway {
        Self::start_or_panic(data_dir, "127.0.0.1:0", "127.0.0.1:0", env)
    }

    /// Starts a gateway on given OTLP/HTTP and OTLP/gRPC addresses (admin on port 0), e.g. to
    /// restart on the ports of a killed instance. Retries for up to 15 s while the process
    /// exits early (typically "address in use" right after a kill).
    pub fn start_with_addrs(
        data_dir: &Path,
        http: &str,
        grpc: &str,
        env: &[(&str, &str)],
    ) -> Gateway {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::try_start(data_dir, http, grpc, env) {
                Ok(gw) => return gw,
                Err(StartError::Exited(status)) => {
                    if Instant::now() >= deadline {
                        panic!(
                            "tracegate serve --http-addr {http} --grpc-addr {grpc} exited with \
                             {status} before listening, {attempt} attempts (see stderr above)"
                        );
                    }
                    eprintln!("[harness] start attempt {attempt} exited with {status}; retrying");
                    thread::sleep(Duration::from_millis(250));
                }
            }
        }
    }

    fn start_or_panic(data_dir: &Path, http: &str, grpc: &str, env: &[(&str, &str)]) -> Gateway {
        match Self::try_start(data_dir, http, grpc, env) {
            Ok(gw) => gw,
            Err(StartError::Exited(status)) => panic!(
                "tracegate serve exited with {status} before printing the listening line \
                 (data dir {}; see its stderr above)",
                data_dir.display()
            ),
        }
    }

    fn try_start(
        data_dir: &Path,
        http: &str,
        grpc: &str,
        env: &[(&str, &str)],
    ) -> Result<Gateway, StartError> {
        let mut cmd = Command::new(bin());
        cmd.arg("serve")
            .arg("--grpc-addr")
            .arg(grpc)
            .arg("--http-addr")
            .arg(http)
            .arg("--admin-addr")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn tracegate serve");
        let pid = child.id();

        let stdout = child.stdout.take().expect("child stdout");
        let stderr = child.stderr.take().expect("child stderr");
        let (tx, rx) = mpsc::channel::<String>();
        thread::spawn(move || {
            // Keep draining stdout for the process's whole life so it never blocks on a pipe.
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                eprintln!("[tracegate {pid} stdout] {line}");
                if !sent && line.starts_with("tracegate listening") {
                    sent = true;
                    let _ = tx.send(line);
                }
            }
        });
        forward_stderr(stderr, pid);

        let deadline = Instant::now() + START_TIMEOUT;
        let line = loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => break line,
                Err(mpsc::RecvTimeoutError::Timeout)
                | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    if let Some(status) = child.try_wait().expect("try_wait") {
                        // Give the reader a last chance (line printed just before exit).
                        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                            break line;
                        }
                        return Err(StartError::Exited(status));
                    }
                    if Instant::now() >= deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        panic!(
                            "tracegate serve (pid {pid}) did not print 'tracegate listening ...' \
                             within {START_TIMEOUT:?} (data dir {})",
                            data_dir.display()
                        );
                    }
                }
            }
        };

        let (grpc_addr, http_addr, admin_addr) = parse_listening_line(&line);
        Ok(Gateway {
            child: Some(child),
            _tempdir: None,
            http: http_addr,
            grpc: grpc_addr,
            admin: admin_addr,
            data_dir: data_dir.to_path_buf(),
        })
    }

    /// PID of the server process.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("gateway already stopped").id()
    }

    /// Runs `tracegate keys create --project P --data-dir D`; returns the last stdout line.
    pub fn create_key(&self, project: &str) -> String {
        create_key_in(&self.data_dir, project)
    }

    /// Runs `tracegate archive cat [--project P] --data-dir D` and parses its JSON lines.
    pub fn archive_spans(&self, project: Option<&str>) -> Vec<serde_json::Value> {
        archive_spans_in(&self.data_dir, project)
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.http)
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// `http_url() + "/v1/traces"`.
    pub fn traces_url(&self) -> String {
        format!("http://{}/v1/traces", self.http)
    }

    /// GET admin `/metrics` (panics on non-200 or transport error).
    pub fn metrics(&self) -> String {
        let resp = http_client()
            .get(format!("{}/metrics", self.admin_url()))
            .send()
            .expect("GET /metrics");
        assert_eq!(resp.status().as_u16(), 200, "GET /metrics status");
        resp.text().expect("read /metrics body")
    }

    /// Sends SIGTERM and waits (at most 30 s) for the process to exit; returns its status.
    /// Panics (after SIGKILLing it) if it does not exit in time.
    pub fn terminate(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("gateway already stopped");
        if let Some(status) = child.try_wait().expect("try_wait") {
            self.child = None;
            return status;
        }
        let pid = child.id() as libc::pid_t;
        // SAFETY: plain kill(2) on our own child's pid, which has not been reaped yet.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM) failed");
        match wait_timeout(child, TERM_TIMEOUT) {
            Some(status) => {
                self.child = None;
                status
            }
            None => {
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                panic!("tracegate (pid {pid}) did not exit within {TERM_TIMEOUT:?} after SIGTERM");
            }
        }
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn forward_stderr(stderr: std::process::ChildStderr, pid: u32) {
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("[tracegate {pid} stderr] {line}");
        }
    });
}

/// Parses `tracegate listening otlp_grpc=A otlp_http=B admin=C` into (grpc, http, admin).
pub fn parse_listening_line(line: &str) -> (SocketAddr, SocketAddr, SocketAddr) {
    let mut grpc = None;
    let mut http = None;
    let mut admin = None;
    for tok in line.split_whitespace() {
        if let Some((k, v)) = tok.split_once('=') {
            let addr = || -> SocketAddr {
                v.parse()
                    .unwrap_or_else(|e| panic!("bad address {v:?} in listening line {line:?}: {e}"))
            };
            match k {
                "otlp_grpc" => grpc = Some(addr()),
                "otlp_http" => http = Some(addr()),
                "admin" => admin = Some(addr()),
                _ => {}
            }
        }
    }
    match (grpc, http, admin) {
        (Some(g), Some(h), Some(a)) => (g, h, a),
        _ => panic!("listening line lacks otlp_grpc=/otlp_http=/admin=: {line:?}"),
    }
}

/// Polls `child` until it exits or `timeout` elapses.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `tracegate ARGS` to completion with a timeout (killed and panics past it).
pub fn run_tracegate(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn tracegate {args:?}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = match wait_timeout(&mut child, timeout) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tracegate {args:?} did not finish within {timeout:?}");
        }
    };
    Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    }
}

/// `tracegate keys create --project P --data-dir D` -> the key (last non-empty stdout line).
pub fn create_key_in(data_dir: &Path, project: &str) -> String {
    let dir = data_dir.to_str().expect("utf-8 data dir");
    let out = run_tracegate(
        &["keys", "create", "--project", project, "--data-dir", dir],
        &[],
        CMD_TIMEOUT,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tracegate keys create --project {project} failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let key = stdout
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or_else(|| panic!("keys create printed no key; stdout: {stdout:?}"))
        .to_string();
    key
}

/// `tracegate archive cat [--project P] --data-dir D`, one JSON value per non-empty line.
pub fn archive_spans_in(data_dir: &Path, project: Option<&str>) -> Vec<serde_json::Value> {
    archive_cat(data_dir, project, &[])
}

/// The spans of the ClickHouse dead-letter area (`archive cat --dead-letters`).
pub fn dead_letter_spans_in(data_dir: &Path) -> Vec<serde_json::Value> {
    archive_cat(data_dir, None, &["--dead-letters"])
}

fn archive_cat(data_dir: &Path, project: Option<&str>, extra: &[&str]) -> Vec<serde_json::Value> {
    let dir = data_dir.to_str().expect("utf-8 data dir");
    let mut args = vec!["archive", "cat"];
    args.extend_from_slice(extra);
    if let Some(p) = project {
        args.push("--project");
        args.push(p);
    }
    args.push("--data-dir");
    args.push(dir);
    let out = run_tracegate(&args, &[], Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tracegate {args:?} failed: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("archive cat printed a non-JSON line ({e}): {l:?}"))
        })
        .collect()
}

/// Every envelope archived under `data_dir` (read with the library, as `archive cat` does),
/// optionally only `project`'s: to check envelope fields `archive cat` does not print.
pub fn archive_batches_in(
    data_dir: &Path,
    project: Option<&str>,
) -> Vec<tracegate_proto::v1::Batch> {
    use tracegate::archive::store::{ArchiveStore, Filter};
    let cfg = tracegate::cli::CommonArgs {
        config: None,
        data_dir: Some(data_dir.to_path_buf()),
    }
    .load()
    .expect("config for the archive");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let store = ArchiveStore::open(&cfg, false).expect("open the archive");
        let filter = Filter {
            project: project.map(str::to_string),
            from: None,
            to: None,
        };
        let mut out = Vec::new();
        for o in store.list(&filter).await.expect("list the archive") {
            let c = store.read(&o).await.expect("read an archive object");
            out.extend(
                c.batches
                    .into_iter()
                    .map(|(_, b)| b)
                    .filter(|b| project.is_none_or(|p| p == b.project_id)),
            );
        }
        out
    })
}

/// (schema_version, otlp_request_encoding) of every envelope, counted.
pub fn envelope_encodings(
    batches: &[tracegate_proto::v1::Batch],
) -> std::collections::BTreeMap<(u32, i32), usize> {
    let mut m = std::collections::BTreeMap::new();
    for b in batches {
        *m.entry((b.schema_version, b.otlp_request_encoding))
            .or_default() += 1;
    }
    m
}

/// Span names found in archive records (`record["span"]["name"]`).
pub fn span_names(records: &[serde_json::Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| {
            r["span"]["name"]
                .as_str()
                .unwrap_or_else(|| panic!("archive record without span.name: {r}"))
                .to_string()
        })
        .collect()
}

/// A project name unique within this machine run (tests share nothing, but be safe).
pub fn unique_project(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{n}-{}", std::process::id(), t % 1_000_000_000)
}

// ---------------------------------------------------------------------------------------------
// OTLP request builders
// ---------------------------------------------------------------------------------------------

/// Deterministic, non-zero 16-byte trace id for `n`.
pub fn trace_id(n: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&0x7472_6163_6567_6174u64.to_be_bytes()); // "tracegat"
    v.extend_from_slice(&(n + 1).to_be_bytes());
    v
}

/// Deterministic, non-zero 8-byte span id for `n`.
pub fn span_id(n: u64) -> Vec<u8> {
    (n | 0x8000_0000_0000_0000).to_be_bytes().to_vec()
}

pub fn now_unix_nano() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

pub fn kv_str(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    }
}

/// A span with the given ids and name, start = now, duration 1 ms, one string attribute.
pub fn span(trace_id: Vec<u8>, span_id: Vec<u8>, name: &str) -> Span {
    let start = now_unix_nano();
    Span {
        trace_id,
        span_id,
        name: name.to_string(),
        kind: 1, // SPAN_KIND_INTERNAL
        start_time_unix_nano: start,
        end_time_unix_nano: start + 1_000_000,
        attributes: vec![kv_str("test.attr", "v")],
        ..Default::default()
    }
}

/// One ResourceSpans / one ScopeSpans request holding `spans`.
pub fn request_with_spans(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv_str("service.name", "tracegate-tests")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "tracegate-tests".to_string(),
                    version: "1".to_string(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// A request with spans `first..first+n`: trace id `trace_id(i / 10)`, span id `span_id(i)`,
/// name `format!("{prefix}-{i}")`.
pub fn request_n(prefix: &str, first: u64, n: u64) -> ExportTraceServiceRequest {
    let spans = (first..first + n)
        .map(|i| span(trace_id(i / 10), span_id(i), &format!("{prefix}-{i}")))
        .collect();
    request_with_spans(spans)
}

/// Protobuf encoding.
pub fn encode(req: &ExportTraceServiceRequest) -> Vec<u8> {
    req.encode_to_vec()
}

/// OTLP/JSON encoding (opentelemetry-proto's serde: hex ids, camelCase).
pub fn encode_json(req: &ExportTraceServiceRequest) -> Vec<u8> {
    serde_json::to_vec(req).expect("serialize request as JSON")
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

pub fn decode_response(body: &[u8]) -> ExportTraceServiceResponse {
    ExportTraceServiceResponse::decode(body).expect("decode ExportTraceServiceResponse")
}

// ---------------------------------------------------------------------------------------------
// HTTP helpers (blocking reqwest; never call from inside a tokio runtime)
// ---------------------------------------------------------------------------------------------

/// A blocking client with connect and total timeouts.
pub fn http_client() -> reqwest::blocking::Client {
    http_client_with_timeout(HTTP_TIMEOUT)
}

pub fn http_client_with_timeout(timeout: Duration) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .expect("build reqwest client")
}

/// Response of a POST: status code, headers, body bytes.
pub type HttpResponse = (u16, reqwest::header::HeaderMap, Vec<u8>);

/// POST `body` to `url` with `headers`; transport errors are returned.
pub fn try_post(
    client: &reqwest::blocking::Client,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<HttpResponse, reqwest::Error> {
    let mut rb = client.post(url).body(body);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let resp = rb.send()?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes()?.to_vec();
    Ok((status, headers, body))
}

/// POST with a fresh client; panics on transport error.
pub fn post(url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> HttpResponse {
    try_post(&http_client(), url, headers, body)
        .unwrap_or_else(|e| panic!("POST {url} failed: {e}"))
}

/// POST protobuf-encoded `req` to the gateway's `/v1/traces` with `Authorization: Bearer key`.
pub fn post_protobuf(gw: &Gateway, key: &str, req: &ExportTraceServiceRequest) -> HttpResponse {
    let auth = format!("Bearer {key}");
    post(
        &gw.traces_url(),
        &[
            ("content-type", "application/x-protobuf"),
            ("authorization", &auth),
        ],
        encode(req),
    )
}

/// POST protobuf-encoded `req`, compressed with `encoding` (`gzip` or `zstd`), with
/// `Content-Encoding: encoding`.
pub fn post_protobuf_compressed(
    gw: &Gateway,
    key: &str,
    req: &ExportTraceServiceRequest,
    encoding: &str,
) -> HttpResponse {
    let auth = format!("Bearer {key}");
    let plain = encode(req);
    let body = match encoding {
        "gzip" => gzip(&plain),
        "zstd" => zstd::encode_all(&plain[..], 3).expect("zstd"),
        other => panic!("post_protobuf_compressed: unknown encoding {other}"),
    };
    post(
        &gw.traces_url(),
        &[
            ("content-type", "application/x-protobuf"),
            ("content-encoding", encoding),
            ("authorization", &auth),
        ],
        body,
    )
}

/// POST JSON-encoded `req` to the gateway's `/v1/traces` with `Authorization: Bearer key`.
pub fn post_json(gw: &Gateway, key: &str, req: &ExportTraceServiceRequest) -> HttpResponse {
    let auth = format!("Bearer {key}");
    post(
        &gw.traces_url(),
        &[
            ("content-type", "application/json"),
            ("authorization", &auth),
        ],
        encode_json(req),
    )
}

/// GET `url` with a fresh client; returns (status, body text).
pub fn get(url: &str) -> (u16, String) {
    let resp = http_client()
        .get(url)
        .send()
        .unwrap_or_else(|e| panic!("GET {url} failed: {e}"));
    let status = resp.status().as_u16();
    (status, resp.text().unwrap_or_default())
}

/// Polls `f` every 50 ms until it returns true or `timeout` elapses; returns the last result.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL (scripts/pg.sh): a throwaway cluster per test, stopped and removed on drop
// ---------------------------------------------------------------------------------------------

/// How long one `scripts/pg.sh` call may run (initdb + start is about 1 s).
pub const PG_SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);

/// Path of `scripts/pg.sh`.
pub fn pg_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/pg.sh")
}

/// Runs `cmd` to completion with a timeout (killed and panics past it); stdout and stderr are
/// captured.
pub fn run_command(mut cmd: Command, what: &str, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = match wait_timeout(&mut child, timeout) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {timeout:?}");
        }
    };
    Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    }
}

fn pg_sh(args: &[&str]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(pg_script()).args(args);
    run_command(cmd, &format!("scripts/pg.sh {args:?}"), PG_SCRIPT_TIMEOUT)
}

/// The PostgreSQL server bin dir (`scripts/pg.sh pgbin`). Panics with an install hint when the
/// server is not installed: the PostgreSQL tests must fail, never skip silently.
pub fn pg_bin() -> PathBuf {
    let out = pg_sh(&["pgbin"]);
    if !out.status.success() {
        panic!(
            "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin, so the \
             PostgreSQL key store tests cannot run. Install them with \
             `apt-get install -y postgresql` (.ci/run does this). scripts/pg.sh said: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A PostgreSQL cluster started with `scripts/pg.sh start` in a temp dir; stopped (fast) and
/// removed on drop.
pub struct PgCluster {
    dir: tempfile::TempDir,
    /// `postgres://tracegate_admin:PASS@127.0.0.1:PORT/tracegate` (superuser).
    pub admin_url: String,
    running: bool,
}

impl PgCluster {
    /// initdb + start on a free loopback port, with database `tracegate`.
    pub fn start() -> PgCluster {
        pg_bin();
        // Short path: the unix socket lives inside the dir. pg.sh chowns it to the server's OS
        // user when we run as root.
        let dir = tempfile::Builder::new()
            .prefix("tg-pg-")
            .tempdir_in("/tmp")
            .expect("create PostgreSQL temp dir");
        let t = Instant::now();
        let admin_url = Self::run_start(dir.path());
        eprintln!(
            "[harness] PostgreSQL started in {:?} at {}",
            t.elapsed(),
            redact_url(&admin_url)
        );
        PgCluster {
            dir,
            admin_url,
            running: true,
        }
    }

    fn run_start(dir: &Path) -> String {
        let d = dir.to_str().expect("utf-8 dir");
        let out = pg_sh(&["start", d]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "scripts/pg.sh start {d} failed ({}):\n{}\n{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        let url = stdout
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .unwrap_or_default()
            .to_string();
        assert!(
            url.starts_with("postgres://"),
            "scripts/pg.sh start printed no URL: {stdout:?}"
        );
        url
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `scripts/pg.sh stop` (fast shutdown: clients are disconnected).
    pub fn stop(&mut self) {
        let d = self.dir.path().to_str().expect("utf-8 dir");
        let out = pg_sh(&["stop", d]);
        assert!(
            out.status.success(),
            "scripts/pg.sh stop {d} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.running = false;
    }

    /// Starts a stopped cluster again, on the same port (so clients' URLs stay valid).
    pub fn restart(&mut self) {
        let url = Self::run_start(self.dir.path());
        assert_eq!(url, self.admin_url, "PostgreSQL came back with another URL");
        self.running = true;
    }

    /// `postgres://USER:PASSWORD@<same host:port/db as the admin URL>`.
    pub fn url_for(&self, user: &str, password: &str) -> String {
        let (_, rest) = self
            .admin_url
            .split_once('@')
            .expect("admin URL has user@host");
        format!("postgres://{user}:{password}@{rest}")
    }

    /// Runs `sql` (one or more statements, simple protocol) as the admin; panics on error.
    pub fn admin_exec(&self, sql: &str) {
        pg_batch(&self.admin_url, sql).unwrap_or_else(|e| panic!("SQL {sql:?} failed: {e}"));
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.running {
            let d = self.dir.path().to_string_lossy().into_owned();
            let _ = pg_sh(&["stop", &d]);
        }
    }
}

/// The URL without its password, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..s + 3], user, &url[at..])
        }
        _ => url.to_string(),
    }
}

/// Runs `f` with a fresh tokio-postgres connection to `url`, on a private current-thread
/// runtime (so it can be called from plain `#[test]`s). Connect and query are bounded (10 s).
pub fn with_pg<T>(
    url: &str,
    f: impl for<'c> FnOnce(
        &'c tokio_postgres::Client,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<T, tokio_postgres::Error>> + 'c>,
    >,
) -> Result<T, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let (client, conn) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_postgres::connect(url, tokio_postgres::NoTls),
        )
        .await
        .map_err(|_| format!("timed out connecting to {}", redact_url(url)))?
        .map_err(|e| format!("connecting to {}: {e}", redact_url(url)))?;
        let driver = tokio::spawn(conn);
        let r = tokio::time::timeout(Duration::from_secs(10), f(&client))
            .await
            .map_err(|_| "query timed out".to_string())?
            .map_err(|e| match e.as_db_error() {
                Some(db) => format!("{} ({}): {}", db.severity(), db.code().code(), db.message()),
                None => e.to_string(),
            });
        drop(client);
        let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
        r
    })
}

/// Runs `sql` (simple protocol, may hold several statements) as whoever `url` names. The error
/// text carries the SQLSTATE, e.g. `ERROR (42501): permission denied for table api_keys`.
pub fn pg_batch(url: &str, sql: &str) -> Result<(), String> {
    let sql = sql.to_string();
    with_pg(url, move |c| {
        Box::pin(async move { c.batch_execute(&sql).await })
    })
}

/// Runs one statement with text parameters; returns the number of rows affected.
pub fn pg_execute(url: &str, sql: &str, params: &[&str]) -> Result<u64, String> {
    let sql = sql.to_string();
    let params: Vec<String> = params.iter().map(|s| s.to_string()).collect();
    with_pg(url, move |c| {
        Box::pin(async move {
            let p: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                .iter()
                .map(|s| s as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            c.execute(sql.as_str(), &p).await
        })
    })
}

/// Runs a query whose columns are all text (cast in SQL with `::text`); returns the rows.
pub fn pg_query_text(url: &str, sql: &str, params: &[&str]) -> Result<Vec<Vec<String>>, String> {
    let sql = sql.to_string();
    let params: Vec<String> = params.iter().map(|s| s.to_string()).collect();
    with_pg(url, move |c| {
        Box::pin(async move {
            let p: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                .iter()
                .map(|s| s as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            let rows = c.query(sql.as_str(), &p).await?;
            Ok(rows
                .iter()
                .map(|r| {
                    (0..r.len())
                        .map(|i| r.get::<_, Option<String>>(i).unwrap_or_default())
                        .collect()
                })
                .collect())
        })
    })
}

// ---------------------------------------------------------------------------------------------
// Kafka transport: the test broker, `tracegate write`, and a retrying load generator
// ---------------------------------------------------------------------------------------------

/// Path of the test broker binary (librdkafka's mock cluster in a process). It belongs to the
/// `tracegate-testkit` package, so cargo does not hand its path to this package's tests: it sits
/// beside the `tracegate` binary in the same target directory (`cargo test --workspace` and
/// `cargo build --workspace` build it).
pub fn broker_bin() -> std::path::PathBuf {
    let dir = std::path::Path::new(bin())
        .parent()
        .expect("the tracegate binary has a directory");
    let path = dir.join(format!(
        "tracegate-test-broker{}",
        std::env::consts::EXE_SUFFIX
    ));
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build -p tracegate-testkit` (same profile as the tests)",
        path.display()
    );
    path
}

/// A running `tracegate-test-broker`; commands go to its stdin, answers come from its stdout.
pub struct TestBroker {
    child: Option<Child>,
    stdin: Option<std::process::ChildStdin>,
    replies: mpsc::Receiver<String>,
    pub bootstrap: String,
}

impl TestBroker {
    /// Starts a one-broker cluster with `topics` (name, partitions) created.
    pub fn start(topics: &[(&str, i32)]) -> TestBroker {
        let mut cmd = Command::new(broker_bin());
        for (t, p) in topics {
            cmd.arg("--topic").arg(format!("{t}:{p}"));
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn tracegate-test-broker");
        let pid = child.id();
        let stdout = child.stdout.take().expect("broker stdout");
        forward_stderr_as(
            child.stderr.take().expect("broker stderr"),
            "broker",
            pid,
            None,
        );
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                eprintln!("[broker {pid} stdout] {line}");
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(START_TIMEOUT)
            .unwrap_or_else(|_| panic!("tracegate-test-broker printed no ready line"));
        let bootstrap = line
            .split_whitespace()
            .find_map(|t| t.strip_prefix("bootstrap="))
            .unwrap_or_else(|| panic!("no bootstrap= in {line:?}"))
            .to_string();
        TestBroker {
            stdin: child.stdin.take(),
            child: Some(child),
            replies: rx,
            bootstrap,
        }
    }

    /// Sends one command (`down 1`, `up 1`, ...) and waits for its `ok` (panics on `error`).
    pub fn cmd(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().expect("broker stdin");
        writeln!(stdin, "{command}").expect("write broker command");
        stdin.flush().expect("flush broker command");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.replies.recv_timeout(left) {
                Ok(l) if l.starts_with("ok ") => return,
                Ok(l) if l.starts_with("error") => panic!("broker command {command:?}: {l}"),
                Ok(_) => continue,
                Err(_) => panic!("broker did not answer {command:?} within 10 s"),
            }
        }
    }

    /// `TRACEGATE_KAFKA__BROKERS` / `__TOPIC` for the gateway and the writer.
    pub fn env(&self, topic: &str) -> Vec<(String, String)> {
        vec![
            ("TRACEGATE_KAFKA__BROKERS".into(), self.bootstrap.clone()),
            ("TRACEGATE_KAFKA__TOPIC".into(), topic.into()),
        ]
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "stop");
        }
        if let Some(mut child) = self.child.take() {
            if wait_timeout(&mut child, Duration::from_secs(5)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// `[(String, String)]` → `[(&str, &str)]` for the start functions.
pub fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn forward_stderr_as(
    stderr: std::process::ChildStderr,
    what: &'static str,
    pid: u32,
    keep: Option<std::sync::Arc<std::sync::Mutex<Vec<String>>>>,
) {
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("[{what} {pid} stderr] {line}");
            if let Some(k) = &keep {
                k.lock().unwrap().push(line);
            }
        }
    });
}

/// A running `tracegate write`.
pub struct Writer {
    child: Option<Child>,
    pub admin: SocketAddr,
    pub data_dir: PathBuf,
    /// Every stderr line so far (logs, without ANSI colours: NO_COLOR is set).
    pub stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Writer {
    /// `tracegate write [--config FILE] --data-dir D --admin-addr 127.0.0.1:0` with `env`;
    /// waits for `tracegate writer ready admin=...`.
    pub fn start(data_dir: &Path, config: Option<&Path>, env: &[(&str, &str)]) -> Writer {
        let mut cmd = Command::new(bin());
        cmd.arg("write");
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        cmd.arg("--data-dir")
            .arg(data_dir)
            .arg("--admin-addr")
            .arg("127.0.0.1:0")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn tracegate write");
        let pid = child.id();
        let stdout = child.stdout.take().expect("writer stdout");
        let keep = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        forward_stderr_as(
            child.stderr.take().expect("writer stderr"),
            "writer",
            pid,
            Some(keep.clone()),
        );
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                eprintln!("[writer {pid} stdout] {line}");
                if !sent && line.starts_with("tracegate writer ready") {
                    sent = true;
                    let _ = tx.send(line);
                }
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let line = loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(l) => break l,
                Err(_) => {
                    if let Some(status) = child.try_wait().expect("try_wait") {
                        panic!("tracegate write exited with {status} before it was ready");
                    }
                    if Instant::now() >= deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        panic!("tracegate write printed no ready line within {START_TIMEOUT:?}");
                    }
                }
            }
        };
        let admin = line
            .split_whitespace()
            .find_map(|t| t.strip_prefix("admin="))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no admin= address in {line:?}"));
        Writer {
            child: Some(child),
            admin,
            data_dir: data_dir.to_path_buf(),
            stderr: keep,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("writer already stopped").id()
    }

    /// GET admin `/metrics` (None when the writer does not answer).
    pub fn metrics(&self) -> Option<String> {
        let r = http_client_with_timeout(Duration::from_secs(5))
            .get(format!("http://{}/metrics", self.admin))
            .send()
            .ok()?;
        r.text().ok()
    }

    /// Sum of all samples of metric `name` (0 when absent or the writer does not answer).
    pub fn metric(&self, name: &str) -> f64 {
        self.metrics()
            .map(|t| metric_value(&t, name))
            .unwrap_or(0.0)
    }

    /// SIGTERM, then wait up to `TERM_TIMEOUT`; returns the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("writer already stopped");
        // SAFETY: kill(2) on our own child's pid, not yet reaped.
        let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM) failed");
        match wait_timeout(child, TERM_TIMEOUT) {
            Some(s) => {
                self.child = None;
                s
            }
            None => {
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                panic!("tracegate write did not exit within {TERM_TIMEOUT:?} after SIGTERM");
            }
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stderr lines containing `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Sum of all samples of Prometheus metric `name` (any labels) in `text`; 0 when absent.
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            if !(rest.starts_with(' ') || rest.starts_with('{')) {
                return None;
            }
            l.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .sum()
}

/// Resident set size of process `pid` in bytes (Linux).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// What a load client saw.
#[derive(Default)]
pub struct LoadLog {
    /// Request ids answered 200, with the time of the answer.
    pub acked: Vec<(u64, Instant)>,
    /// Non-200 answers and transport errors: (time, status or 0 for a transport error).
    pub failures: Vec<(Instant, u16)>,
    /// Requests sent more than once.
    pub retried: u64,
}

/// Client threads POSTing OTLP/HTTP protobuf requests of unique spans (`{prefix}-{id}-{j}`)
/// to a gateway, each retried until it gets a 200 (or the load is stopped). The URL can be
/// changed while running (restarts on other ports are not needed: the kill tests reuse them).
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
    pub log: std::sync::Arc<std::sync::Mutex<LoadLog>>,
    pub prefix: String,
    pub spans_per_request: u64,
}

impl Load {
    /// `threads` clients, each sending a request then sleeping `pause`; failed requests are
    /// retried after `retry_pause`.
    pub fn start(
        url: &str,
        key: &str,
        prefix: &str,
        threads: usize,
        spans_per_request: u64,
        pause: Duration,
        retry_pause: Duration,
    ) -> Load {
        Self::start_encoded(
            url,
            key,
            prefix,
            threads,
            spans_per_request,
            pause,
            retry_pause,
            &["identity"],
        )
    }

    /// As `start`, with request `id` sent in `encodings[id % len]` (`identity`, `gzip`,
    /// `zstd`: the `content-encoding`).
    #[allow(clippy::too_many_arguments)]
    pub fn start_encoded(
        url: &str,
        key: &str,
        prefix: &str,
        threads: usize,
        spans_per_request: u64,
        pause: Duration,
        retry_pause: Duration,
        encodings: &[&'static str],
    ) -> Load {
        let encodings: std::sync::Arc<Vec<&'static str>> = std::sync::Arc::new(encodings.to_vec());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let next = std::sync::Arc::new(AtomicU64::new(0));
        let log = std::sync::Arc::new(std::sync::Mutex::new(LoadLog::default()));
        let threads = (0..threads)
            .map(|_| {
                let (stop, next, log) = (stop.clone(), next.clone(), log.clone());
                let encodings = encodings.clone();
                let (url, auth, prefix) =
                    (url.to_string(), format!("Bearer {key}"), prefix.to_string());
                thread::spawn(move || {
                    let client = http_client_with_timeout(Duration::from_secs(15));
                    while !stop.load(Ordering::Relaxed) {
                        let id = next.fetch_add(1, Ordering::Relaxed);
                        let encoding = encodings[(id as usize) % encodings.len().max(1)];
                        let headers = [
                            ("content-type", "application/x-protobuf"),
                            ("authorization", auth.as_str()),
                            ("content-encoding", encoding),
                        ];
                        let spans = (0..spans_per_request)
                            .map(|j| {
                                let n = id * spans_per_request + j;
                                span(trace_id(n / 10), span_id(n), &format!("{prefix}-{id}-{j}"))
                            })
                            .collect();
                        let plain = encode(&request_with_spans(spans));
                        let body = match encoding {
                            "gzip" => gzip(&plain),
                            "zstd" => zstd::encode_all(&plain[..], 3).expect("zstd"),
                            _ => plain,
                        };
                        let mut attempts = 0;
                        loop {
                            attempts += 1;
                            if attempts == 2 {
                                log.lock().unwrap().retried += 1;
                            }
                            match try_post(&client, &url, &headers, body.clone()) {
                                Ok((200, _, _)) => {
                                    log.lock().unwrap().acked.push((id, Instant::now()));
                                    break;
                                }
                                Ok((status, _, _)) => {
                                    log.lock().unwrap().failures.push((Instant::now(), status))
                                }
                                Err(_) => log.lock().unwrap().failures.push((Instant::now(), 0)),
                            }
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                            thread::sleep(retry_pause);
                        }
                        thread::sleep(pause);
                    }
                })
            })
            .collect();
        Load {
            stop,
            threads,
            log,
            prefix: prefix.to_string(),
            spans_per_request,
        }
    }

    pub fn acked(&self) -> usize {
        self.log.lock().unwrap().acked.len()
    }

    /// Stops the clients (a request in flight finishes, but is not retried) and joins them.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().expect("load thread panicked");
        }
    }

    /// Names of every span of every acknowledged request.
    pub fn acked_span_names(&self) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.acked
            .iter()
            .flat_map(|(id, _)| {
                (0..self.spans_per_request).map(move |j| format!("{}-{id}-{j}", self.prefix))
            })
            .collect()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits (bounded) until the archive under `data_dir` holds every name in `want` for
/// `project`; returns the names still missing (empty = all there) and the records read.
pub fn wait_for_spans(
    data_dir: &Path,
    project: &str,
    want: &[String],
    timeout: Duration,
) -> (Vec<String>, Vec<serde_json::Value>) {
    let deadline = Instant::now() + timeout;
    loop {
        let records = archive_spans_in(data_dir, Some(project));
        let have: std::collections::HashSet<&str> = records
            .iter()
            .filter_map(|r| r["span"]["name"].as_str())
            .collect();
        let missing: Vec<String> = want
            .iter()
            .filter(|n| !have.contains(n.as_str()))
            .cloned()
            .collect();
        if missing.is_empty() || Instant::now() >= deadline {
            return (missing, records);
        }
        thread::sleep(Duration::from_millis(500));
    }
}

// ---------------------------------------------------------------------------------------------
// Keys with extra options (allow-lists) and raw connections (PROXY protocol tests)
// ---------------------------------------------------------------------------------------------

/// `tracegate keys create --project P --data-dir D EXTRA...` (e.g. `--vpce vpce-1`,
/// `--cidr 10.0.0.0/8`); returns the secret (last stdout line).
pub fn create_key_with(data_dir: &Path, project: &str, extra: &[&str]) -> String {
    let dir = data_dir.to_str().expect("utf-8 data dir");
    let mut args = vec!["keys", "create", "--project", project, "--data-dir", dir];
    args.extend_from_slice(extra);
    let out = run_tracegate(&args, &[], CMD_TIMEOUT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tracegate {args:?} failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or_else(|| panic!("keys create printed no key; stdout: {stdout:?}"))
        .to_string()
}

/// A complete HTTP/1.1 `POST /v1/traces` (protobuf, `Connection: close`) as bytes.
pub fn raw_http_post(key: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-protobuf\r\n\
         Authorization: Bearer {key}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

/// Status code of the first HTTP/1.x response in `bytes`, if any.
pub fn http_status_of(bytes: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(bytes);
    let line = text.lines().next()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// Connects to `addr`, writes `preamble` then `request`, and reads until the server closes
/// (10 s bound). `None` = no HTTP response (the connection was closed or reset).
pub fn raw_exchange(addr: SocketAddr, preamble: &[u8], request: &[u8]) -> Option<u16> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    // Writes may fail once the server has closed: that is an answer too.
    let _ = s.write_all(preamble);
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    http_status_of(&out)
}

// ---------------------------------------------------------------------------------------------
// ClickHouse: a real engine (chdb, PyPI) behind the test-only HTTP front
// deploy/testing/chdb_front.py. See docs/testing.md.
// ---------------------------------------------------------------------------------------------

/// How long the front may take to print its listening line (importing chdb takes a few s).
pub const CH_START_TIMEOUT: Duration = Duration::from_secs(60);

/// The Python interpreter that has chdb: `TRACEGATE_CHDB_PYTHON`, else the venv `.ci/run`
/// creates. Panics with an install hint when missing: these tests fail, never skip.
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
    if !p.exists() {
        panic!(
            "no Python with chdb at {} (set TRACEGATE_CHDB_PYTHON). The ClickHouse tests need \
             it: run `bash scripts/chdb-venv.sh` (.ci/run does this).",
            p.display()
        );
    }
    p
}

/// Path of `deploy/testing/chdb_front.py`.
pub fn chdb_front_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/testing/chdb_front.py")
}

/// A running chdb front (a real ClickHouse engine on a data dir), killed on drop.
pub struct ChFront {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub port: u16,
    args: Vec<String>,
}

impl ChFront {
    /// Starts a front on a fresh data dir and a free port.
    pub fn start(extra_args: &[&str]) -> ChFront {
        let dir = tempfile::Builder::new()
            .prefix("tg-chdb-")
            .tempdir()
            .expect("chdb temp dir");
        let args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let (child, port) = Self::spawn(dir.path(), 0, &args);
        ChFront {
            child: Some(child),
            dir,
            port,
            args,
        }
    }

    fn spawn(dir: &Path, port: u16, args: &[String]) -> (Child, u16) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match Self::try_spawn(dir, port, args) {
                Ok(r) => return r,
                Err(e) if port != 0 && Instant::now() < deadline => {
                    eprintln!("[harness] chdb front restart on port {port} failed ({e}); retrying");
                    thread::sleep(Duration::from_millis(300));
                }
                Err(e) => panic!("chdb front did not start: {e}"),
            }
        }
    }

    fn try_spawn(dir: &Path, port: u16, args: &[String]) -> Result<(Child, u16), String> {
        let mut cmd = Command::new(chdb_python());
        cmd.arg(chdb_front_script())
            .arg("--data")
            .arg(dir)
            .arg("--port")
            .arg(port.to_string())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("spawn python: {e}"))?;
        let pid = child.id();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[chdb-front {pid} stderr] {line}");
            }
        });
        let (tx, rx) = mpsc::channel::<String>();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                eprintln!("[chdb-front {pid}] {line}");
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + CH_START_TIMEOUT;
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.starts_with("chdb-front listening") => {
                    let addr = line.split_whitespace().nth(2).unwrap_or_default();
                    let port = addr
                        .rsplit(':')
                        .next()
                        .and_then(|p| p.parse().ok())
                        .ok_or_else(|| format!("bad listening line {line:?}"))?;
                    return Ok((child, port));
                }
                Ok(_) => {}
                Err(_) => {
                    if let Some(st) = child.try_wait().expect("try_wait") {
                        return Err(format!("exited with {st}"));
                    }
                    if Instant::now() >= deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(format!("no listening line within {CH_START_TIMEOUT:?}"));
                    }
                }
            }
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("front stopped").id()
    }

    /// SIGKILL (the engine gets no chance to flush anything it has not committed).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same data dir and port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "front still running");
        let (child, port) = Self::spawn(self.dir.path(), self.port, &self.args);
        assert_eq!(port, self.port);
        self.child = Some(child);
    }

    /// Runs `sql`; returns the output (TabSeparated unless the SQL says FORMAT) or the error.
    pub fn try_query(&self, sql: &str) -> Result<String, String> {
        let resp = http_client_with_timeout(Duration::from_secs(120))
            .post(format!("{}/", self.url()))
            .body(sql.to_string())
            .send()
            .map_err(|e| format!("POST to chdb front: {e}"))?;
        let status = resp.status().as_u16();
        let text = resp.text().map_err(|e| e.to_string())?;
        if status == 200 {
            Ok(text)
        } else {
            Err(format!("HTTP {status}: {text}"))
        }
    }

    pub fn query(&self, sql: &str) -> String {
        self.try_query(sql)
            .unwrap_or_else(|e| panic!("query {sql:?} failed: {e}"))
    }

    /// One number from a query like `SELECT count() FROM …`.
    pub fn query_u64(&self, sql: &str) -> u64 {
        let out = self.query(sql);
        out.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{sql:?} returned {out:?}: {e}"))
    }

    /// Rows of `sql` (which must not have a FORMAT clause) as JSON objects.
    pub fn query_json(&self, sql: &str) -> Vec<serde_json::Value> {
        self.query(&format!("{sql} FORMAT JSONEachRow"))
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

impl Drop for ChFront {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Environment for `tracegate serve` / `migrate` to use `front` with database `db`.
pub fn clickhouse_env(front: &ChFront, db: &str) -> Vec<(String, String)> {
    vec![
        ("TRACEGATE_CLICKHOUSE__URL".into(), front.url()),
        ("TRACEGATE_CLICKHOUSE__DATABASE".into(), db.into()),
        // Short groups and fast retries keep the tests quick.
        (
            "TRACEGATE_CLICKHOUSE__INSERT_INTERVAL_MS".into(),
            "50".into(),
        ),
        ("TRACEGATE_CLICKHOUSE__RETRY_MAX_MS".into(), "1000".into()),
        (
            "TRACEGATE_CLICKHOUSE__INSERT_TIMEOUT_MS".into(),
            "30000".into(),
        ),
    ]
}

/// `tracegate migrate` with `env`; panics unless it succeeds. Returns its stdout.
pub fn migrate(env: &[(String, String)]) -> String {
    let out = run_tracegate(&["migrate"], &env_refs(env), Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "tracegate migrate failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Resident memory of a process in KiB (`VmRSS` from /proc).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// AWS S3 + KMS (scripts/moto.sh: PyPI moto[server]): a throwaway server per test, on a free
// loopback port, stopped on drop (and by its watcher if this test process dies)
// ---------------------------------------------------------------------------------------------

/// How long one `scripts/moto.sh` call may run (start is ~1-3 s once the venv exists; the first
/// call may install it).
pub const MOTO_SCRIPT_TIMEOUT: Duration = Duration::from_secs(600);

fn moto_sh(args: &[&str]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/moto.sh"))
        .args(args);
    run_command(
        cmd,
        &format!("scripts/moto.sh {args:?}"),
        MOTO_SCRIPT_TIMEOUT,
    )
}

pub struct Moto {
    dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    python: PathBuf,
}

impl Moto {
    pub fn start() -> Moto {
        let dir = tempfile::Builder::new()
            .prefix("tg-moto-")
            .tempdir()
            .expect("moto temp dir");
        let d = dir.path().to_str().expect("utf-8 dir").to_string();
        let pid = std::process::id().to_string();
        let t = Instant::now();
        let out = moto_sh(&["start", &d, &pid]);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "scripts/moto.sh start failed ({}): {stdout}\n{}\n(moto is installed by .ci/run; \
             `bash scripts/moto.sh install` installs it by hand)",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let endpoint = stdout
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .unwrap_or_default()
            .to_string();
        assert!(endpoint.starts_with("http://127.0.0.1:"), "{stdout:?}");
        let py = moto_sh(&["python"]);
        let python = PathBuf::from(String::from_utf8_lossy(&py.stdout).trim());
        eprintln!("[harness] moto started in {:?} at {endpoint}", t.elapsed());
        Moto {
            dir,
            endpoint,
            python,
        }
    }

    /// The AWS_* variables that point a process at this server (through `endpoint`).
    pub fn env_for(endpoint: &str) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), endpoint.into()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ]
    }

    pub fn env(&self) -> Vec<(String, String)> {
        Self::env_for(&self.endpoint)
    }

    /// Runs a python snippet with boto3 clients `s3` and `kms` bound to this server; returns
    /// its stdout (panics on failure).
    pub fn boto(&self, script: &str) -> String {
        let prelude = format!(
            "import boto3, json, sys\n\
             kw = dict(endpoint_url={ep:?}, region_name='us-east-1', \
             aws_access_key_id='testing', aws_secret_access_key='testing')\n\
             s3 = boto3.client('s3', **kw)\nkms = boto3.client('kms', **kw)\n",
            ep = self.endpoint
        );
        let mut cmd = Command::new(&self.python);
        cmd.arg("-c").arg(format!("{prelude}{script}"));
        let out = run_command(cmd, "boto3 script", Duration::from_secs(60));
        assert!(
            out.status.success(),
            "boto3 script failed: {}\n{script}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    pub fn create_bucket(&self, bucket: &str) {
        self.boto(&format!("s3.create_bucket(Bucket={bucket:?})"));
    }

    /// A new symmetric KMS key; returns its ARN.
    pub fn create_kms_key(&self) -> String {
        self.boto("print(kms.create_key()['KeyMetadata']['Arn'])")
            .trim()
            .to_string()
    }

    /// Every object key under `prefix`.
    pub fn list_keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let out = self.boto(&format!(
            "p = s3.get_paginator('list_objects_v2')\n\
             for page in p.paginate(Bucket={bucket:?}, Prefix={prefix:?}):\n\
             \x20   for o in page.get('Contents', []): print(o['Key'])"
        ));
        out.lines().map(str::to_string).collect()
    }

    /// (ServerSideEncryption, SSEKMSKeyId) of an object, from HeadObject.
    pub fn sse_of(&self, bucket: &str, key: &str) -> (String, String) {
        let out = self.boto(&format!(
            "h = s3.head_object(Bucket={bucket:?}, Key={key:?})\n\
             print(h.get('ServerSideEncryption', ''))\nprint(h.get('SSEKMSKeyId', ''))"
        ));
        let mut l = out.lines();
        (
            l.next().unwrap_or_default().to_string(),
            l.next().unwrap_or_default().to_string(),
        )
    }

    pub fn get_object(&self, bucket: &str, key: &str) -> Vec<u8> {
        let out = self.boto(&format!(
            "sys.stdout.write(s3.get_object(Bucket={bucket:?}, Key={key:?})['Body'].read().hex())"
        ));
        hex::decode(out.trim()).expect("hex object")
    }

    pub fn put_object(&self, bucket: &str, key: &str, body: &[u8]) {
        self.boto(&format!(
            "s3.put_object(Bucket={bucket:?}, Key={key:?}, Body=bytes.fromhex({:?}))",
            hex::encode(body)
        ));
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let d = self.dir.path().to_str().unwrap_or_default().to_string();
        let _ = moto_sh(&["stop", &d]);
    }
}

/// `tracegate ARGS --data-dir D` with `env`; panics unless it succeeds; returns stdout.
pub fn tracegate_ok(data_dir: &Path, args: &[&str], env: &[(String, String)]) -> String {
    let out = tracegate_run(data_dir, args, env);
    assert!(
        out.status.success(),
        "tracegate {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// `tracegate ARGS --data-dir D` with `env`, whatever its outcome.
pub fn tracegate_run(data_dir: &Path, args: &[&str], env: &[(String, String)]) -> Output {
    let mut a: Vec<&str> = args.to_vec();
    a.push("--data-dir");
    a.push(data_dir.to_str().expect("utf-8 data dir"));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    run_tracegate(&a, &env, CMD_TIMEOUT)
}

/// `keys create --org O --project P`: the key.
pub fn create_key_for_org(data_dir: &Path, org: &str, project: &str) -> String {
    let out = tracegate_ok(
        data_dir,
        &["keys", "create", "--org", org, "--project", project],
        &[],
    );
    out.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .expect("a key")
        .to_string()
}

/// A TCP forwarder to `target` that can be switched down: then new connections are closed at
/// once and the open ones are cut (a store or KMS that is unreachable).
pub struct SwitchProxy {
    pub addr: SocketAddr,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    epoch: std::sync::Arc<AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl SwitchProxy {
    pub fn start(target: SocketAddr) -> SwitchProxy {
        use std::net::{TcpListener, TcpStream};
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let l = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let epoch = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (d, e, s) = (down.clone(), epoch.clone(), stop.clone());
        thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let (c, _) = match l.accept() {
                    Ok(x) => x,
                    Err(_) => {
                        thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                if d.load(Ordering::SeqCst) {
                    drop(c);
                    continue;
                }
                let Ok(u) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) else {
                    continue;
                };
                let my = e.load(Ordering::SeqCst);
                c.set_nonblocking(false).ok();
                for (mut from, mut to) in [(c.try_clone().unwrap(), u.try_clone().unwrap()), (u, c)]
                {
                    let (e, s) = (e.clone(), s.clone());
                    thread::spawn(move || {
                        from.set_read_timeout(Some(Duration::from_millis(100))).ok();
                        let mut buf = [0u8; 65536];
                        while !s.load(Ordering::Relaxed) && e.load(Ordering::SeqCst) == my {
                            match from.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                                Err(x)
                                    if x.kind() == std::io::ErrorKind::WouldBlock
                                        || x.kind() == std::io::ErrorKind::TimedOut => {}
                                Err(_) => break,
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        SwitchProxy {
            addr,
            down,
            epoch,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            self.epoch.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Drop for SwitchProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// File names under `dir`, recursively.
pub fn walk_names(dir: &Path) -> Vec<String> {
    walk_files(dir)
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
        .collect()
}

/// File paths under `dir`, recursively.
pub fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Archive object name `<topic>_<partition>_<first>-<last>.tga` (a Kafka group id) →
/// (partition, first, last).
pub fn parse_object_name(name: &str) -> Option<(i32, i64, i64)> {
    let stem = name.strip_suffix(".tga")?;
    let (rest, range) = stem.rsplit_once('_')?;
    let (_, partition) = rest.rsplit_once('_')?;
    let (first, last) = range.split_once('-')?;
    Some((
        partition.parse().ok()?,
        first.parse().ok()?,
        last.parse().ok()?,
    ))
}

/// True once the server has closed `s` (EOF or reset), polling for at most `within`.
pub fn closed_by_server(s: &mut std::net::TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return true,
        }
    }
    false
}
