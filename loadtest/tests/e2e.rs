//! loadtest against a real `tracegate serve` (embedded queue, local archive): the report adds
//! up, the plot is an SVG, `verify` passes on the archive, and fails when an archive object is
//! deleted or corrupted; duplicates are reported; overload refusals (503 + Retry-After) are
//! counted as retryable.

mod common;

use std::path::Path;

use common::{check_report, check_svg, loadtest, loadtest_status, num, read_json, Gateway};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn verify(report: &Path, gw: &Gateway, extra: &[&str]) -> (bool, serde_json::Value) {
    let out_path = report.with_extension("verify.json");
    let mut args = vec![
        "verify",
        "--report",
        s(report),
        "--data-dir",
        s(gw.data_dir()),
        "--out",
        s(&out_path),
    ];
    args.extend_from_slice(extra);
    let out = loadtest_status(&args);
    let code = out.status.code();
    assert!(
        matches!(code, Some(0) | Some(1)),
        "verify crashed or errored: {code:?}"
    );
    (out.status.success(), read_json(&out_path))
}

#[test]
fn http_protobuf_open_loop_report_plot_and_archive_verify() {
    let gw = Gateway::start(&[]);
    let key = gw.create_key("lt", &[]);
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    let plot = dir.path().join("r.svg");
    let pid = gw.pid().to_string();
    let (stdout, _) = loadtest(&[
        "--endpoint",
        &format!("http://{}", gw.http),
        "--api-key",
        &key,
        "--rate",
        "4000",
        "--duration",
        "3s",
        "--spans-per-request",
        "100",
        "--watch-pid",
        &format!("{pid}:gateway"),
        "--report",
        s(&report),
        "--plot",
        s(&plot),
        "--quiet",
    ]);
    assert!(stdout.starts_with("loadtest run_id="), "{stdout}");
    let r = read_json(&report);
    let acked = check_report(&r);
    // 3 s at 4000 spans/s offered = 120 requests of 100 spans, all acked on an idle gateway.
    assert_eq!(num(&r["requests"]["sent"]) as u64, 120, "{}", r["requests"]);
    assert_eq!(acked, 12_000);
    assert_eq!(r["offered_spans_per_sec"], 4000.0);
    let w = &r["watched"][0];
    assert_eq!(w["label"], "gateway");
    assert!(
        num(&w["cpu_secs"]) > 0.0 && num(&w["rss_max_kib"]) > 0.0,
        "{w}"
    );
    assert_eq!(r["series"][0]["rss_kib"].as_array().unwrap().len(), 1);
    check_svg(&plot);

    let (ok, v) = verify(&report, &gw, &["--fail-on-duplicates"]);
    assert!(ok, "{v}");
    assert_eq!(num(&v["acked_found"]) as u64, acked);
    assert_eq!(num(&v["missing_acked"]), 0.0);
    assert_eq!(num(&v["duplicate_copies"]), 0.0);
}

#[test]
fn http_json_gzip_and_grpc_zstd_closed_loop_verify() {
    let gw = Gateway::start(&[]);
    // Two projects: requests alternate between the keys.
    let keys = [gw.create_key("a", &[]), gw.create_key("b", &[])];
    let dir = tempfile::tempdir().unwrap();
    let keyfile = dir.path().join("keys");
    std::fs::write(&keyfile, format!("{}\n# comment\n{}\n", keys[0], keys[1])).unwrap();
    for (name, endpoint, extra) in [
        (
            "json-gzip",
            format!("http://{}", gw.http),
            vec!["--encoding", "json", "--compression", "gzip"],
        ),
        (
            "grpc-zstd",
            format!("http://{}", gw.grpc),
            vec!["--protocol", "grpc", "--compression", "zstd"],
        ),
    ] {
        let report = dir.path().join(format!("{name}.json"));
        let mut args = vec![
            "--endpoint",
            &endpoint,
            "--api-key-file",
            s(&keyfile),
            "--spans",
            "3000",
            "--spans-per-request",
            "64",
            "--concurrency",
            "4",
            "--report",
            s(&report),
            "--quiet",
        ];
        args.extend_from_slice(&extra);
        loadtest(&args);
        let r = read_json(&report);
        // 3000 spans rounded up to whole requests of 64.
        assert_eq!(check_report(&r), 47 * 64, "{name}");
        assert_eq!(r["config"]["projects"], 2);
        let (ok, v) = verify(&report, &gw, &[]);
        assert!(ok, "{name}: {v}");
        assert_eq!(num(&v["acked_found"]) as u64, 47 * 64);
        // Each project's archive holds about half of them.
        let (ok, v) = verify(&report, &gw, &["--project", "a"]);
        assert!(!ok, "one project's objects cannot hold every span");
        let half = num(&v["acked_found"]) as u64;
        assert!(half > 0 && half < 47 * 64, "{v}");
    }
}

#[test]
fn verify_finds_deleted_and_corrupted_archive_objects() {
    let gw = Gateway::start(&[]);
    let key = gw.create_key("lt", &[]);
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    // One request at a time: several writer groups, so several objects.
    loadtest(&[
        "--endpoint",
        &format!("http://{}", gw.http),
        "--api-key",
        &key,
        "--spans",
        "2000",
        "--spans-per-request",
        "100",
        "--concurrency",
        "1",
        "--report",
        s(&report),
        "--quiet",
    ]);
    let (ok, v) = verify(&report, &gw, &[]);
    assert!(ok, "{v}");
    let objects = gw.archive_objects();
    assert!(objects.len() >= 3, "want several objects, got {objects:?}");

    // Negative control 1: one object deleted → its spans are missing.
    std::fs::remove_file(&objects[0]).unwrap();
    let (ok, v) = verify(&report, &gw, &[]);
    assert!(!ok, "verify passed with an object deleted: {v}");
    let missing = num(&v["missing_acked"]) as u64;
    assert!(missing >= 100 && missing.is_multiple_of(100), "{v}");
    assert_eq!(num(&v["acked_found"]) as u64 + missing, 2000);

    // Negative control 2: one byte of another object flipped → unreadable, reported.
    let mut b = std::fs::read(&objects[1]).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x40;
    std::fs::write(&objects[1], b).unwrap();
    let (ok, v) = verify(&report, &gw, &[]);
    assert!(!ok);
    let errs = v["read_errors"].as_array().unwrap();
    assert_eq!(errs.len(), 1, "{v}");
    assert!(num(&v["missing_acked"]) as u64 > missing, "{v}");

    // Negative control 3: an acked range the gateway never saw (a forged report entry).
    let mut r = read_json(&report);
    r["acked_ranges"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!([1_000_001, 1_000_010]));
    let forged = dir.path().join("forged.json");
    std::fs::write(&forged, serde_json::to_vec(&r).unwrap()).unwrap();
    let (ok, v) = verify(&forged, &gw, &[]);
    assert!(!ok);
    assert!(v["missing_examples"]
        .as_array()
        .unwrap()
        .iter()
        .all(|x| num(x) as u64 <= 2000 || (1_000_001..=1_000_010).contains(&(num(x) as u64))));
}

#[test]
fn duplicates_are_reported() {
    let gw = Gateway::start(&[]);
    let key = gw.create_key("lt", &[]);
    let dir = tempfile::tempdir().unwrap();
    let ep = format!("http://{}", gw.http);
    let mut reports = vec![];
    // The same run id and span count twice: every span is sent twice.
    for i in 0..2 {
        let report = dir.path().join(format!("r{i}.json"));
        loadtest(&[
            "--endpoint",
            &ep,
            "--api-key",
            &key,
            "--run-id",
            "00000000000d0b1e",
            "--spans",
            "1000",
            "--spans-per-request",
            "50",
            "--concurrency",
            "2",
            "--report",
            s(&report),
            "--quiet",
        ]);
        reports.push(report);
    }
    let (ok, v) = verify(&reports[0], &gw, &[]);
    assert!(ok, "duplicates alone do not fail by default: {v}");
    assert_eq!(num(&v["duplicated_spans"]), 1000.0, "{v}");
    assert_eq!(num(&v["duplicate_copies"]), 1000.0);
    assert!(v["store_dedups"].as_str().unwrap().starts_with("no"));
    let (ok, _) = verify(&reports[0], &gw, &["--fail-on-duplicates"]);
    assert!(!ok, "--fail-on-duplicates must fail on duplicates");
}

#[test]
fn overload_refusals_are_retryable_with_retry_after() {
    // One ~125 KB request in flight at most (max_inflight_bytes = max_request_bytes = 192 KiB),
    // offered 16 at a time: most attempts are refused with 503 + Retry-After.
    let gw = Gateway::start(&[
        ("TRACEGATE_LIMITS__MAX_REQUEST_BYTES", "196608"),
        ("TRACEGATE_LIMITS__MAX_INFLIGHT_BYTES", "196608"),
    ]);
    let key = gw.create_key("lt", &[]);
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    loadtest(&[
        "--endpoint",
        &format!("http://{}", gw.http),
        "--api-key",
        &key,
        "--rate",
        "40000",
        "--concurrency",
        "32",
        "--duration",
        "2s",
        "--spans-per-request",
        "100",
        "--max-retries",
        "2",
        "--retry-max-ms",
        "200",
        "--report",
        s(&report),
        "--quiet",
    ]);
    let r = read_json(&report);
    check_report(&r);
    // The open loop ends on time even when the server cannot keep up: requests still waiting
    // for one of the 32 slots at the end are counted as due but not sent, never queued on.
    assert!(num(&r["elapsed_secs"]) < 10.0, "{}", r["elapsed_secs"]);
    let rf = &r["refusals"];
    let retryable = num(&rf["retryable"]) as u64;
    assert!(retryable > 0, "no refusals under 10x overload: {r}");
    assert_eq!(
        num(&rf["retryable_with_retry_after"]) as u64,
        retryable,
        "{rf}"
    );
    assert_eq!(
        num(&r["responses"]["http_503"]) as u64,
        retryable,
        "{}",
        r["responses"]
    );
    assert!(
        rf["final_by_status"].as_object().unwrap().is_empty(),
        "{rf}"
    );
    assert!(num(&r["requests"]["retries"]) > 0.0);
    // Requests that ran out of retries are refused, not lost: verify accepts their absence.
    let (ok, v) = verify(&report, &gw, &[]);
    assert!(ok, "{v}");
    assert_eq!(
        num(&v["refused_spans"]) as u64,
        num(&r["spans"]["refused"]) as u64
    );
}

#[test]
fn verify_against_clickhouse_finds_loss_and_duplicates() {
    // Embedded gateway with the ClickHouse sink: a 200 means the spans are in the archive and
    // inserted (the chdb front: a real ClickHouse engine behind the test-only HTTP front).
    let ch = common::ChFront::start();
    let env = [
        ("TRACEGATE_CLICKHOUSE__URL", ch.url.as_str()),
        ("TRACEGATE_CLICKHOUSE__DATABASE", "lt"),
        ("TRACEGATE_CLICKHOUSE__INSERT_INTERVAL_MS", "50"),
    ];
    let mig = common::run_bounded(
        std::process::Command::new(common::tracegate_bin())
            .arg("migrate")
            .envs(env),
        std::time::Duration::from_secs(120),
    );
    assert!(mig.status.success(), "migrate: {mig:?}");
    let gw = Gateway::start(&env);
    let key = gw.create_key("lt", &[]);
    let dir = tempfile::tempdir().unwrap();
    let ep = format!("http://{}", gw.http);
    let run = |name: &str| -> std::path::PathBuf {
        let report = dir.path().join(name);
        loadtest(&[
            "--endpoint",
            &ep,
            "--api-key",
            &key,
            "--run-id",
            "00000000c0ffee01",
            "--spans",
            "2000",
            "--spans-per-request",
            "100",
            "--concurrency",
            "4",
            "--report",
            s(&report),
            "--quiet",
        ]);
        report
    };
    let report = run("r.json");
    assert_eq!(check_report(&read_json(&report)), 2000);
    let ch_verify = |extra: &[&str]| -> (bool, serde_json::Value) {
        let out_path = dir.path().join("v.json");
        let mut args = vec![
            "verify",
            "--report",
            s(&report),
            "--clickhouse",
            &ch.url,
            "--database",
            "lt",
            "--out",
            s(&out_path),
        ];
        args.extend_from_slice(extra);
        let out = loadtest_status(&args);
        assert!(matches!(out.status.code(), Some(0) | Some(1)), "{out:?}");
        (out.status.success(), read_json(&out_path))
    };
    let (ok, v) = ch_verify(&["--fail-on-duplicates"]);
    assert!(ok, "{v}");
    assert_eq!(num(&v["acked_found"]), 2000.0);

    // Negative control: rows of 10 spans deleted → reported missing, exit 1.
    ch.sql(
        "DELETE FROM lt.otel_traces WHERE TraceId LIKE '00000000c0ffee01%' \
         AND SpanId IN ('0000000000000005','0000000000000006','0000000000000007',\
         '0000000000000008','0000000000000009','000000000000000a','000000000000000b',\
         '000000000000000c','000000000000000d','000000000000000e')",
    );
    let (ok, v) = ch_verify(&[]);
    assert!(!ok, "verify passed with rows deleted: {v}");
    assert_eq!(num(&v["missing_acked"]), 10.0, "{v}");
    assert_eq!(num(&v["missing_examples"][0]), 5.0);

    // The same spans sent again: ClickHouse keeps both copies (different writer groups).
    run("again.json");
    let (ok, v) = ch_verify(&[]);
    assert!(ok, "{v}");
    assert_eq!(num(&v["duplicate_copies"]), 1990.0, "{v}");
    let (ok, _) = ch_verify(&["--fail-on-duplicates"]);
    assert!(!ok);
}

/// A CA and a leaf for 127.0.0.1 (openssl CLI): (ca.pem, leaf.pem, leaf.key).
fn make_certs(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let script = r#"set -e
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem \
  -days 2 -subj /CN=loadtest-ca -addext basicConstraints=critical,CA:TRUE \
  -addext keyUsage=critical,keyCertSign
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout leaf.key -out leaf.csr \
  -subj /CN=localhost
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' > ext
openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out leaf.pem -days 2 -extfile ext
"#;
    let out = common::run_bounded(
        std::process::Command::new("sh")
            .args(["-c", script])
            .current_dir(dir),
        std::time::Duration::from_secs(60),
    );
    assert!(out.status.success(), "openssl: {out:?}");
    (
        dir.join("ca.pem"),
        dir.join("leaf.pem"),
        dir.join("leaf.key"),
    )
}

#[test]
fn tls_with_ca_cert_and_llm_shape() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key_file) = make_certs(dir.path());
    let gw = Gateway::start(&[
        ("TRACEGATE_TLS__CERT_FILE", s(&cert)),
        ("TRACEGATE_TLS__KEY_FILE", s(&key_file)),
    ]);
    let key = gw.create_key("lt", &[]);
    for (name, endpoint, proto) in [
        ("http", format!("https://{}", gw.http), "http"),
        ("grpc", format!("https://{}", gw.grpc), "grpc"),
    ] {
        let report = dir.path().join(format!("{name}.json"));
        // LLM spans: prompt and completion of 10-64 KiB each.
        loadtest(&[
            "--endpoint",
            &endpoint,
            "--protocol",
            proto,
            "--ca-cert",
            s(&ca),
            "--api-key",
            &key,
            "--shape",
            "llm",
            "--llm-min-bytes",
            "10240",
            "--llm-max-bytes",
            "65536",
            "--spans",
            "64",
            "--spans-per-request",
            "8",
            "--concurrency",
            "2",
            "--report",
            s(&report),
            "--quiet",
        ]);
        let r = read_json(&report);
        assert_eq!(check_report(&r), 64, "{name}");
        // 8 spans x 2 values of >= 10 KiB each.
        assert!(num(&r["request_bytes"]) > 8.0 * 2.0 * 10240.0, "{name}");
        let (ok, v) = verify(&report, &gw, &[]);
        assert!(ok, "{name}: {v}");
    }
    // Negative control: without --ca-cert the gateway's certificate is not trusted.
    let report = dir.path().join("untrusted.json");
    let out = loadtest_status(&[
        "--endpoint",
        &format!("https://{}", gw.http),
        "--api-key",
        &key,
        "--spans",
        "16",
        "--spans-per-request",
        "8",
        "--report",
        s(&report),
        "--quiet",
    ]);
    assert!(out.status.success());
    let r = read_json(&report);
    assert_eq!(num(&r["requests"]["acked"]), 0.0, "{r}");
    assert!(!r["refusals"]["errors_by_kind"]
        .as_object()
        .unwrap()
        .is_empty());
}

#[test]
fn compare_two_gateways_side_by_side_with_fixed_prompts() {
    // Two real gateways with their own keys; `compare` loads each in alternating order and
    // prints both side by side. `--attr-bytes` gives every span one 4 KiB prompt.
    let (a, b) = (Gateway::start(&[]), Gateway::start(&[]));
    let (ka, kb) = (a.create_key("pa", &[]), b.create_key("pb", &[]));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("compare.json");
    let ta = format!("first=http://{},pid={},key={ka}", a.http, a.pid());
    let tb = format!("second=http://{},pid={},key={kb}", b.http, b.pid());
    let (stdout, _) = loadtest(&[
        "compare",
        "--target",
        &ta,
        "--target",
        &tb,
        "--rounds",
        "2",
        "--pause",
        "100ms",
        "--spans",
        "640",
        "--spans-per-request",
        "32",
        "--attr-bytes",
        "4096",
        "--concurrency",
        "2",
        "--compare-report",
        s(&out),
    ]);
    let j = read_json(&out);
    let rows = j["rows"].as_array().unwrap();
    let order: Vec<&str> = rows.iter().map(|r| r["label"].as_str().unwrap()).collect();
    assert_eq!(
        order,
        ["first", "second", "second", "first"],
        "alternating rounds"
    );
    for (r, rep) in rows.iter().zip(j["reports"].as_array().unwrap()) {
        assert_eq!(check_report(rep), 640, "{r}");
        assert!(num(&r["spans_per_sec"]) > 0.0, "{r}");
        assert!(
            num(&r["spans_per_cpu_sec"]) > 0.0,
            "pid= gives the per-core figure: {r}"
        );
        // 32 spans of > 4 KiB each: the uncompressed bytes per CPU-second follow.
        let per_span = num(&rep["request_bytes"]) / 32.0;
        assert!(per_span > 4096.0, "{per_span}");
        let bytes = num(&r["bytes_per_cpu_sec"]);
        assert!((bytes / num(&r["spans_per_cpu_sec"]) - per_span).abs() < 1.0);
        assert_eq!(num(&r["requests_failed"]), 0.0, "{r}");
    }
    // Every acked span of each run is in the archive of the gateway it was sent to.
    for (i, (r, rep)) in rows
        .iter()
        .zip(j["reports"].as_array().unwrap())
        .enumerate()
    {
        let path = dir.path().join(format!("run{i}.json"));
        std::fs::write(&path, serde_json::to_vec(rep).unwrap()).unwrap();
        let gw = if r["label"] == "first" { &a } else { &b };
        let (ok, v) = verify(&path, gw, &[]);
        assert!(ok, "{r}: {v}");
        assert_eq!(num(&v["acked_found"]) as u64, 640);
    }
    // The table and one line per target.
    assert!(
        stdout.contains("vs first: spans/s 1.00x, per cpu-s 1.00x"),
        "{stdout}"
    );
    for label in ["first", "second"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("loadtest compare target={label} rounds=2 ")))
            .unwrap_or_else(|| panic!("no summary line for {label}: {stdout}"));
        assert!(line.contains("requests_failed=0"), "{line}");
    }
}

/// `--signal logs` and `--signal metrics`, over OTLP/HTTP (JSON) and gRPC: every request is
/// acked and the gateway counts exactly the records and data points sent, each request's ids
/// its own (the gateway's retry-safe ingest would drop a repeated request).
#[test]
fn logs_and_metrics_signals_are_sent_and_counted() {
    let gw = Gateway::start(&[]);
    let key = gw.create_key("lt-signals", &[]);
    let counter = |name: &str| -> f64 {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(&gw.admin).expect("admin port");
        write!(c, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut body = String::new();
        c.read_to_string(&mut body).expect("/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    };
    let mut expected = (0.0, 0.0);
    for (signal, protocol, endpoint, encoding) in [
        ("logs", "grpc", format!("http://{}", gw.grpc), "protobuf"),
        ("logs", "http", format!("http://{}", gw.http), "json"),
        ("metrics", "grpc", format!("http://{}", gw.grpc), "protobuf"),
        ("metrics", "http", format!("http://{}", gw.http), "json"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let report = dir.path().join("r.json");
        loadtest(&[
            "--endpoint",
            &endpoint,
            "--protocol",
            protocol,
            "--encoding",
            encoding,
            "--signal",
            signal,
            "--api-key",
            &key,
            "--max-requests",
            "6",
            "--spans-per-request",
            "30",
            "--report",
            s(&report),
            "--quiet",
        ]);
        let r = read_json(&report);
        assert_eq!(check_report(&r), 180, "{signal} over {protocol}");
        assert_eq!(r["config"]["signal"], signal);
        if signal == "logs" {
            expected.0 += 180.0;
        } else {
            expected.1 += 180.0;
        }
        // verify reads spans only: it says so instead of reporting them all lost.
        let out = loadtest_status(&[
            "verify",
            "--report",
            s(&report),
            "--data-dir",
            s(gw.data_dir()),
        ]);
        assert_eq!(out.status.code(), Some(2), "{signal}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("verify counts spans"));
    }
    assert_eq!(counter("tracegate_log_records_accepted_total"), expected.0);
    assert_eq!(counter("tracegate_data_points_accepted_total"), expected.1);
}
