//! The Kafka test broker (`tracegate-test-broker`) and the `tracegate write` process.

use super::*;

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
        Self::start_with(topics, &[])
    }

    /// The same with more arguments (`--tls-cert`, `--sasl-user`, …: a TLS / SASL front).
    pub fn start_with(topics: &[(&str, i32)], args: &[&str]) -> TestBroker {
        let mut cmd = Command::new(broker_bin());
        for (t, p) in topics {
            cmd.arg("--topic").arg(format!("{t}:{p}"));
        }
        cmd.args(args);
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

/// What a consumer group has committed on `topic`, and the span names of every message below
/// it: read back from the broker from the beginning of each partition, decoded as the writer
/// decodes them. (committed offsets summed, log end offsets summed, span names).
pub fn committed_log_span_names(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> (i64, i64, Vec<String>) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message as _;
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let client = |group: &str| -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer")
    };
    let mut all = TopicPartitionList::new();
    for p in 0..partitions {
        all.add_partition(topic, p);
    }
    // Reads the group's offsets without joining it (OffsetFetch by group id).
    let committed: Vec<i64> = client(group)
        .committed_offsets(all.clone(), Duration::from_secs(10))
        .expect("committed offsets")
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .collect();
    let reader = client("tracegate-test-log-reader");
    let mut ends = 0;
    let mut names = Vec::new();
    for (p, &upto) in committed.iter().enumerate() {
        let (_, high) = reader
            .fetch_watermarks(topic, p as i32, Duration::from_secs(10))
            .expect("watermarks");
        ends += high;
        if upto == 0 {
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p as i32, Offset::Beginning)
            .unwrap();
        reader.assign(&tpl).expect("assign");
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut next = 0;
        while next < upto {
            assert!(
                Instant::now() < deadline,
                "partition {p}: log not read back to {upto}"
            );
            let Some(Ok(m)) = reader.poll(Duration::from_millis(500)) else {
                continue;
            };
            next = m.offset() + 1;
            if m.offset() >= upto {
                break;
            }
            let batch = tracegate_proto::v1::Batch::decode(m.payload().unwrap_or_default())
                .expect("a tracegate.v1.Batch");
            let plain = tracegate_otlp::envelope::plain_request(&batch, 1 << 30).expect("payload");
            let req = ExportTraceServiceRequest::decode(plain).expect("OTLP request");
            for rs in &req.resource_spans {
                for ss in &rs.scope_spans {
                    names.extend(ss.spans.iter().map(|s| s.name.clone()));
                }
            }
        }
    }
    (committed.iter().sum(), ends, names)
}
