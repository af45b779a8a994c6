//! Starting the real binaries (`tracegate serve` as [`Gateway`], CLI subcommands), bounded waits, metrics and process RSS.

use super::*;

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
    /// Every stderr line so far (its logs).
    pub stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
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
        let keep = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        forward_stderr_as(stderr, "tracegate", pid, Some(keep.clone()));

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
            stderr: keep,
        })
    }

    /// Its logs so far, one line each.
    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
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

    /// Waits (bounded) for `/readyz` to answer 200 (with Kafka: the broker is reachable);
    /// panics if it does not within `timeout`.
    pub fn wait_ready(&self, timeout: Duration) {
        let url = format!("{}/readyz", self.admin_url());
        let client = http_client_with_timeout(Duration::from_secs(2));
        let ready = || {
            client
                .get(&url)
                .send()
                .is_ok_and(|r| r.status().as_u16() == 200)
        };
        assert!(
            wait_until(timeout, ready),
            "{url} not 200 within {timeout:?}"
        );
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
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_command(cmd, &format!("tracegate {args:?}"), timeout)
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

/// How long one `scripts/pg.sh` call may run (initdb + start is about 1 s).
pub const PG_SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);

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

/// `[(String, String)]` → `[(&str, &str)]` for the start functions.
pub fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

pub(crate) fn forward_stderr_as(
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

/// A fresh temporary directory named `prefix…`, removed when dropped.
pub fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create a temp dir")
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

/// How long one `scripts/moto.sh` call may run (start is ~1-3 s once the venv exists; the first
/// call may install it).
pub const MOTO_SCRIPT_TIMEOUT: Duration = Duration::from_secs(600);

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

/// `tracegate serve` on loopback port 0 with `args` and `env`, expected to refuse to start:
/// asserts it exited unsuccessfully without listening, and returns its stderr.
pub fn serve_fails(args: &[&str], env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let mut all = vec!["serve", "--admin-addr", "127.0.0.1:0", "--data-dir", d];
    all.extend_from_slice(args);
    if !args.contains(&"--http-addr") {
        all.extend_from_slice(&["--http-addr", "127.0.0.1:0"]);
    }
    if !args.contains(&"--grpc-addr") {
        all.extend_from_slice(&["--grpc-addr", "127.0.0.1:0"]);
    }
    let out = run_tracegate(&all, env, CMD_TIMEOUT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "serve {args:?} started: {stdout}");
    assert!(!stdout.contains("tracegate listening"), "{stdout}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}
