//! S3 and KMS through moto, and a switchable TCP forwarder that makes a store unreachable.

use super::*;

pub(crate) fn moto_sh(args: &[&str]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(super::manifest_dir().join("../scripts/moto.sh"))
        .args(args);
    run_command(
        cmd,
        &format!("scripts/moto.sh {args:?}"),
        MOTO_SCRIPT_TIMEOUT,
    )
}

/// The python of moto's venv: it has boto3 and botocore, for checks against AWS's own code.
pub fn moto_python() -> PathBuf {
    let py = moto_sh(&["python"]);
    PathBuf::from(String::from_utf8_lossy(&py.stdout).trim())
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
        let python = moto_python();
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

/// A TCP forwarder to `target` that can be switched down: then new connections are closed at
/// once and the open ones are cut (a store or KMS that is unreachable). With an answer loss
/// (`set_answer_loss`), a chunk coming back from `target` is, with that probability, not
/// forwarded and the connection is cut instead: the server answered (an OTLP gateway has
/// acknowledged), the client never hears it.
pub struct SwitchProxy {
    pub addr: SocketAddr,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    epoch: std::sync::Arc<AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Answer loss in parts per million.
    loss_ppm: std::sync::Arc<AtomicU64>,
    /// Answers cut so far.
    pub cut: std::sync::Arc<AtomicU64>,
    /// Everything clients sent through it, when started with `start_recording`.
    pub sent: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl SwitchProxy {
    pub fn start(target: SocketAddr) -> SwitchProxy {
        Self::start_with(target, false)
    }

    /// The same, keeping a copy of every byte clients send (`sent`): the requests as they went
    /// on the wire, for checking their headers.
    pub fn start_recording(target: SocketAddr) -> SwitchProxy {
        Self::start_with(target, true)
    }

    fn start_with(target: SocketAddr, record: bool) -> SwitchProxy {
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
        let loss_ppm = Arc::new(AtomicU64::new(0));
        let cut = Arc::new(AtomicU64::new(0));
        let (loss, cuts) = (loss_ppm.clone(), cut.clone());
        let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
        let tap = record.then(|| sent.clone());
        thread::spawn(move || {
            let mut seed = 0x2545_f491_4f6c_dd1du64;
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
                let pairs = [(c.try_clone().unwrap(), u.try_clone().unwrap()), (u, c)];
                for (answers, (mut from, mut to)) in pairs.into_iter().enumerate() {
                    let (e, s) = (e.clone(), s.clone());
                    let (loss, cuts) = (loss.clone(), cuts.clone());
                    let tap = tap.clone().filter(|_| answers == 0);
                    seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    let mut rng = seed;
                    thread::spawn(move || {
                        from.set_read_timeout(Some(Duration::from_millis(100))).ok();
                        let mut buf = [0u8; 65536];
                        while !s.load(Ordering::Relaxed) && e.load(Ordering::SeqCst) == my {
                            match from.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => {
                                    rng ^= rng << 13;
                                    rng ^= rng >> 7;
                                    rng ^= rng << 17;
                                    if answers == 1
                                        && rng % 1_000_000 < loss.load(Ordering::Relaxed)
                                    {
                                        cuts.fetch_add(1, Ordering::Relaxed);
                                        break;
                                    }
                                    if let Some(t) = &tap {
                                        t.lock().unwrap().extend_from_slice(&buf[..n]);
                                    }
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
            loss_ppm,
            cut,
            sent,
        }
    }

    /// Cuts a connection instead of forwarding an answer chunk with probability `p`.
    pub fn set_answer_loss(&self, p: f64) {
        self.loss_ppm
            .store((p.clamp(0.0, 1.0) * 1e6) as u64, Ordering::Relaxed);
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
