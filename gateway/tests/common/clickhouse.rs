//! ClickHouse through chdb: the test HTTP front, its environment, `tracegate migrate`.

use super::*;

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
    super::manifest_dir().join("../deploy/testing/chdb_front.py")
}

/// A running chdb front (a real ClickHouse engine on a data dir), killed on drop.
pub struct ChFront {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub port: u16,
    /// The HTTPS port, when started with `--tls-cert` (the plain port stays for queries).
    pub tls_port: Option<u16>,
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
        let (child, port, tls_port) = Self::spawn(dir.path(), 0, &args);
        ChFront {
            child: Some(child),
            dir,
            port,
            tls_port,
            args,
        }
    }

    fn spawn(dir: &Path, port: u16, args: &[String]) -> (Child, u16, Option<u16>) {
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

    fn try_spawn(
        dir: &Path,
        port: u16,
        args: &[String],
    ) -> Result<(Child, u16, Option<u16>), String> {
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
        let port_of = |line: &str| -> Result<u16, String> {
            let addr = line.split_whitespace().nth(2).unwrap_or_default();
            addr.rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| format!("bad listening line {line:?}"))
        };
        let mut tls_port = None;
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.starts_with("chdb-front tls-listening") => {
                    tls_port = Some(port_of(&line)?);
                }
                Ok(line) if line.starts_with("chdb-front listening") => {
                    return Ok((child, port_of(&line)?, tls_port));
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
        let (child, port, tls_port) = Self::spawn(self.dir.path(), self.port, &self.args);
        self.tls_port = tls_port;
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

/// Sends `requests` requests of `per_request` sequence-numbered spans from `threads` threads;
/// each request is retried until it gets a 200. Returns (spans acknowledged, non-200 answers).
pub fn send_sequenced(
    gw: &Gateway,
    key: &str,
    prefix: &'static str,
    requests: u64,
    per_request: u64,
    threads: u64,
    stop_by: Instant,
) -> (u64, u64) {
    use std::sync::Arc;
    let acked = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let url = gw.traces_url();
    let mut handles = vec![];
    for _ in 0..threads {
        let (acked, failures, next, url, key) = (
            acked.clone(),
            failures.clone(),
            next.clone(),
            url.clone(),
            key.to_string(),
        );
        handles.push(thread::spawn(move || {
            let client = http_client_with_timeout(Duration::from_secs(180));
            let auth = format!("Bearer {key}");
            loop {
                let r = next.fetch_add(1, Ordering::SeqCst);
                if r >= requests {
                    return;
                }
                let body = encode(&request_n(prefix, r * per_request, per_request));
                loop {
                    assert!(
                        Instant::now() < stop_by,
                        "request {r} not acknowledged in time"
                    );
                    match try_post(
                        &client,
                        &url,
                        &[
                            ("content-type", "application/x-protobuf"),
                            ("authorization", &auth),
                        ],
                        body.clone(),
                    ) {
                        Ok((200, _, _)) => {
                            acked.fetch_add(per_request, Ordering::SeqCst);
                            break;
                        }
                        Ok((status, _, b)) => {
                            failures.fetch_add(1, Ordering::SeqCst);
                            eprintln!("request {r}: HTTP {status} {}", String::from_utf8_lossy(&b));
                            thread::sleep(Duration::from_millis(200));
                        }
                        Err(e) => {
                            failures.fetch_add(1, Ordering::SeqCst);
                            eprintln!("request {r}: {e}");
                            thread::sleep(Duration::from_millis(200));
                        }
                    }
                }
            }
        }));
    }
    for h in handles {
        h.join().expect("client thread");
    }
    (
        acked.load(Ordering::SeqCst),
        failures.load(Ordering::SeqCst),
    )
}

/// (count(), uniqExact(TraceId, SpanId)) of the project's spans.
pub fn counts(front: &ChFront, db: &str, project: &str) -> (u64, u64) {
    let out = front.query(&format!(
        "SELECT count(), uniqExact(TraceId, SpanId) FROM {db}.otel_traces \
         WHERE ProjectId = '{project}' FORMAT TSV"
    ));
    let mut it = out.split_whitespace().map(|v| v.parse::<u64>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

/// `assert_all_three_signals` in ClickHouse: the project's rows in `otel_traces`, `otel_logs`
/// and `otel_metrics_sum` are `{tag}-span-{0,1,2}`, `{tag}-log-{0,1,2}` (bodies) and one point
/// of `{tag}.requests` with value 3, once each (waits for the writer up to 60 s).
pub fn assert_all_three_in_clickhouse(front: &ChFront, db: &str, project: &str, tag: &str) {
    let rows = |sql: String| -> Vec<String> {
        front
            .query(&format!("{sql} FORMAT TSV"))
            .lines()
            .map(String::from)
            .collect()
    };
    let spans = || {
        rows(format!(
            "SELECT SpanName FROM {db}.otel_traces WHERE ProjectId = '{project}' ORDER BY SpanName"
        ))
    };
    let logs = || {
        rows(format!(
            "SELECT Body FROM {db}.otel_logs WHERE ProjectId = '{project}' ORDER BY Body"
        ))
    };
    let sums = || {
        rows(format!(
            "SELECT MetricName, Value FROM {db}.otel_metrics_sum WHERE ProjectId = '{project}'"
        ))
    };
    let want = |kind: &str| {
        (0..3)
            .map(|i| format!("{tag}-{kind}-{i}"))
            .collect::<Vec<_>>()
    };
    let done = wait_until(Duration::from_secs(60), || {
        spans().len() >= 3 && logs().len() >= 3 && !sums().is_empty()
    });
    assert!(done, "{project}: {:?} {:?} {:?}", spans(), logs(), sums());
    assert_eq!(spans(), want("span"), "{project}");
    assert_eq!(logs(), want("log"), "{project}");
    assert_eq!(sums(), [format!("{tag}.requests\t3")], "{project}");
}
