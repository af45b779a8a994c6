//! Command-line contract: config errors name the key, first start prints a working key and stores
//! only its hash, `keys create` output, admin endpoints, and SIGTERM finishing in-flight requests.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

#[test]
fn unknown_env_key_and_bad_value_stop_startup_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let err = serve_fails(&[], &[("TRACEGATE_LIMITS__MAX_ATRIBUTES", "5")]);
    // The variable as it is spelled in the environment, and the key as the file writes it.
    assert!(
        err.contains(
            "environment variable TRACEGATE_LIMITS__MAX_ATRIBUTES: `limits.max_atributes`"
        ),
        "stderr: {err}"
    );

    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "# limits\n[limits]\n  max_request_bytes = \"lots\"\n").unwrap();
    let out = run_tracegate(
        &["serve", "--config", cfg.to_str().unwrap(), "--data-dir", d],
        &[],
        CMD_TIMEOUT,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // file:line:column of the key, no figment profile (`default.`) in it.
    let at = format!(
        "{}:3:3: `limits.max_request_bytes`: invalid type",
        cfg.display()
    );
    assert!(err.contains(&at), "stderr: {err}");
    assert!(!err.contains("default."), "stderr: {err}");

    let out = run_tracegate(
        &["serve", "--data-dir", d],
        &[("TRACEGATE_LIMITS__MAX_INFLIGHT_BYTES", "10")],
        CMD_TIMEOUT,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("limits.max_inflight_bytes"));
}

#[test]
fn first_start_prints_a_working_key_once_and_stores_only_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin())
        .args([
            "serve",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut key = None;
    let mut http = None;
    let mut saw_otel_env = false;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.trim().starts_with("tg_") {
            key = Some(line.trim().to_string());
        }
        saw_otel_env |= line.contains("OTEL_EXPORTER_OTLP_HEADERS");
        if line.starts_with("tracegate listening") {
            http = Some(parse_listening_line(&line).1);
            break;
        }
    }
    let key = key.expect("first start prints a key");
    assert!(
        saw_otel_env,
        "first start prints OTEL_EXPORTER_OTLP_* example"
    );
    let keys_json = std::fs::read_to_string(dir.path().join("keys.json")).unwrap();
    assert!(
        !keys_json.contains(&key[20..80]),
        "secret must not be stored"
    );
    assert!(keys_json.contains("\"default\""));
    let req = request_n("first", 1, 3);
    let r = post(
        &format!("http://{}/v1/traces", http.unwrap()),
        &[
            ("authorization", &format!("Bearer {key}")),
            ("content-type", "application/x-protobuf"),
        ],
        encode(&req),
    );
    assert_eq!(r.0, 200);
    let _ = child.kill();
    let _ = child.wait();
    // A second start does not create or print another key.
    let mut gw = Gateway::start_in(dir.path(), &[]);
    let keys_after: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("keys.json")).unwrap())
            .unwrap();
    assert_eq!(keys_after["keys"].as_array().unwrap().len(), 1);
    assert_eq!(span_names(&gw.archive_spans(Some("default"))).len(), 3);
    assert!(gw.terminate().success());
}

#[test]
fn keys_create_prints_id_and_secret_last() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_tracegate(
        &[
            "keys",
            "create",
            "--project",
            "p-1",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
        &[],
        CMD_TIMEOUT,
    );
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    let id = lines
        .iter()
        .find_map(|l| l.strip_prefix("key_id: "))
        .expect("key_id line");
    let secret = lines.last().unwrap();
    assert!(secret.starts_with(&format!("tg_{id}_")), "{stdout}");
    let d = dir.path().to_str().unwrap();
    let out = run_tracegate(&["keys", "rotate", id, "--data-dir", d], &[], CMD_TIMEOUT);
    assert!(out.status.success());
    let rotated = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string();
    assert!(rotated.starts_with(&format!("tg_{id}_")) && rotated != *secret);
    let out = run_tracegate(&["keys", "revoke", id, "--data-dir", d], &[], CMD_TIMEOUT);
    assert!(out.status.success());
    let out = run_tracegate(&["keys", "list", "--data-dir", d], &[], CMD_TIMEOUT);
    let listed = String::from_utf8(out.stdout).unwrap();
    assert!(
        listed.contains(id) && listed.contains("revoked=true"),
        "{listed}"
    );
    assert!(!listed.contains(&secret[20..]) && !listed.contains(&rotated[20..]));
    // Lifecycle events are audited, without secrets.
    let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    for ev in ["key.created", "key.rotated", "key.revoked"] {
        assert!(audit.contains(ev), "{audit}");
    }
    assert!(!audit.contains(&secret[20..]) && !audit.contains(&rotated[20..]));
    let out = run_tracegate(
        &[
            "keys",
            "create",
            "--project",
            "../evil",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
        &[],
        CMD_TIMEOUT,
    );
    assert!(!out.status.success());
}

/// `tracegate validate` lists every problem, not only the first: parse problems in the file
/// and the environment (a typo does not hide the next), bad values hidden by an override, and
/// the checks between keys, each with where it comes from; exit 2. A key set twice is reported
/// with the place in effect; a valid configuration exits 0. Values are never printed.
#[test]
fn validate_lists_every_problem_and_the_keys_set_twice() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gw.toml");
    std::fs::write(
        &cfg,
        "[server]\nhttp_addr = \"not-an-address\"\nmax_connections = 0\n\n\
         [limits]\nmax_atributes = 5\nmax_request_bytes = \"lots\"\ndecode_concurrency = 5000\n\n\
         [writer]\ncompression_level = 0\n\n[clickhouse]\nurl = \"http://127.0.0.1:9\"\npassword = \"hunter2-secret\"\n",
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let env = [
        ("TRACEGATE_SERVER__HTTP_ADDR", "127.0.0.1:4999"),
        ("TRACEGATE_LIMITS__MAX_INFLIGHT_BYTES", "many"),
        ("TRACEGATE_CLICKHOUSE__PASSWORD", "hunter3-secret"),
    ];
    let out = run_tracegate(&["validate", "--config", c], &env, CMD_TIMEOUT);
    let err = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(2),
        "stdout: {stdout}\nstderr: {err}"
    );
    let want = [
        // hidden by the environment's valid value, still a problem
        format!("{c}:2:1: `server.http_addr`"),
        format!("{c}:6:1: `limits.max_atributes`: unknown field"),
        format!("{c}:7:1: `limits.max_request_bytes`: invalid type"),
        "environment variable TRACEGATE_LIMITS__MAX_INFLIGHT_BYTES: `limits.max_inflight_bytes`"
            .to_string(),
        format!("{c}:3:1: `server.max_connections`: must be greater than 0"),
        format!("{c}:8:1: `limits.decode_concurrency`"),
        format!("{c}:11:1: `writer.compression_level`"),
    ];
    for w in &want {
        assert!(err.contains(w.as_str()), "missing {w:?} in:\n{err}");
    }
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error: ")).count(),
        want.len(),
        "{err}"
    );
    assert!(stdout.contains(&format!("{c}: 7 problems")), "{stdout}");
    assert!(
        stdout.contains(
            "`server.http_addr` is set by the file {c} and by the environment variable \
             TRACEGATE_SERVER__HTTP_ADDR; the value of the environment variable \
             TRACEGATE_SERVER__HTTP_ADDR is in effect"
                .replace("{c}", c)
                .as_str()
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("`clickhouse.password` is set by the file"),
        "{stdout}"
    );
    for secret in ["hunter2", "hunter3", "4999", "not-an-address"] {
        assert!(
            !err.contains(secret) && !stdout.contains(secret),
            "{secret} printed"
        );
    }

    // Fixed, with a flag over the environment: valid, and the flag is in effect.
    std::fs::write(&cfg, "[server]\ndata_dir = \"/tmp/elsewhere\"\n").unwrap();
    let d = dir.path().join("data");
    let out = run_tracegate(
        &["validate", "--config", c, "--data-dir", d.to_str().unwrap()],
        &[],
        CMD_TIMEOUT,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("{c}: the configuration is valid")),
        "{stdout}"
    );
    assert!(
        stdout.contains("the value of the flag --data-dir is in effect"),
        "{stdout}"
    );
}

#[test]
fn admin_endpoints() {
    let gw = Gateway::start(&[]);
    assert_eq!(get(&format!("{}/healthz", gw.admin_url())).0, 200);
    assert_eq!(get(&format!("{}/readyz", gw.admin_url())).0, 200);
    assert_eq!(get(&format!("{}/nope", gw.admin_url())).0, 404);
    let m = gw.metrics();
    for name in ["tracegate_inflight_bytes_limit", "tracegate_build_info"] {
        assert!(m.contains(name), "missing {name}");
    }
    // The process series, read at the scrape.
    assert!(
        metric_value(&m, "process_resident_memory_bytes") > 1e6,
        "{m}"
    );
    assert!(metric_value(&m, "process_open_fds") > 3.0);
    assert!(metric_value(&m, "process_max_fds") > 0.0);
    assert!(m.contains("process_cpu_seconds_total"));
    // Every family has its HELP.
    let helped: std::collections::HashSet<&str> = m
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let untold: Vec<&str> = m
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|f| !helped.contains(f))
        .collect();
    assert!(untold.is_empty(), "families without HELP: {untold:?}");
}

/// SIGTERM while a request is half-sent: the request still completes with 200, its spans are in
/// the archive, new connections are refused, and the process exits 0.
#[test]
fn sigterm_finishes_in_flight_requests_then_exits_zero() {
    let mut gw = Gateway::start(&[]);
    let key = gw.create_key("drain");
    let body = encode(&request_n("drain", 1, 20));
    let mut s = TcpStream::connect(gw.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "POST /v1/traces HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    let half = body.len() / 2;
    s.write_all(&body[..half]).unwrap();
    s.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let pid = gw.pid() as i32;
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        TcpStream::connect_timeout(&gw.http, Duration::from_secs(2)).is_err(),
        "listener must be closed after SIGTERM"
    );
    s.write_all(&body[half..]).unwrap();
    let mut resp = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        resp.extend_from_slice(&buf[..n]);
        if resp.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&resp);
    assert!(head.starts_with("HTTP/1.1 200"), "response: {head}");
    drop(s);
    let status = gw.terminate();
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(span_names(&gw.archive_spans(Some("drain"))).len(), 20);
}

/// Starts `serve` with stderr to a file and `env`, sends one request with an unknown key (a
/// refusal, logged with the connection's fields), stops it with SIGTERM and returns stderr.
fn serve_stderr(env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
        .args(["--admin-addr", "127.0.0.1:0"])
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut http = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.starts_with("tracegate listening") {
            http = Some(parse_listening_line(&line).1);
            break;
        }
    }
    let http = http.expect("listening line");
    let r = post(
        &format!("http://{http}/v1/traces"),
        &[
            ("authorization", "Bearer tg_nope"),
            ("content-type", "application/x-protobuf"),
        ],
        encode(&request_n("log", 1, 1)),
    );
    assert_eq!(r.0, 401);
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    assert!(wait_timeout(&mut child, CMD_TIMEOUT).is_some_and(|s| s.success()));
    std::fs::read_to_string(&log).unwrap()
}

#[test]
fn logs_are_plain_text_off_a_terminal_or_json_lines_on_request() {
    let text = serve_stderr(&[]);
    assert!(text.contains("tracegate started"), "{text}");
    assert!(!text.contains('\u{1b}'), "ANSI escapes in a file: {text:?}");
    assert!(
        text.contains("conn{listener=\"otlp_http\""),
        "connection fields: {text}"
    );

    let json = serve_stderr(&[("TRACEGATE_LOG__FORMAT", "json")]);
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines
        .iter()
        .all(|l| l["level"].is_string() && l["fields"].is_object()));
    let started = lines
        .iter()
        .find(|l| l["fields"]["message"] == "tracegate started")
        .expect("the start event");
    assert!(started["fields"]["http"].is_string(), "{started}");
    // An event inside a connection carries the connection span's fields (`span`: the one it
    // is in; `spans`: every one from the root).
    let in_conn = |s: &serde_json::Value| s["name"] == "conn" && s["listener"] == "otlp_http";
    assert!(
        lines
            .iter()
            .any(|l| in_conn(&l["span"])
                || l["spans"].as_array().is_some_and(|s| s.iter().any(in_conn))),
        "no event with the conn span's fields: {json}"
    );
}

#[test]
fn archive_cat_and_ls_say_when_there_is_nothing_to_read() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("typo");
    for cmd in ["cat", "ls"] {
        let out = run_tracegate(
            &["archive", cmd, "--data-dir", missing.to_str().unwrap()],
            &[],
            CMD_TIMEOUT,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "archive {cmd}: {err}");
        assert!(err.contains("does not exist"), "archive {cmd}: {err}");
        assert!(!missing.exists(), "archive {cmd} created the data dir");
        let out = run_tracegate(
            &["archive", cmd, "--data-dir", dir.path().to_str().unwrap()],
            &[],
            CMD_TIMEOUT,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "archive {cmd} on an empty dir: {err}");
        assert!(
            err.contains("no archive objects in file://"),
            "archive {cmd}: {err}"
        );
        assert!(out.stdout.is_empty());
    }
}
