//! Edge hardening, tried as an attacker would, against the real binary:
//! - connections that never send a request (plain TCP, a bare h2c preface) are closed at the
//!   head deadline, and while they fill the connection limit a normal client is still served
//!   (the listener sheds idle connections instead of leaving new ones in the backlog);
//! - keep-alive connections with no request in flight are closed at the idle deadline;
//! - audit refusals of the last aggregation window are written on SIGTERM;
//! - JSON `null` reads as the field's default (proto3 JSON mapping);
//! - a browser's CORS preflight and POST follow `server.cors.allowed_origins`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{closed_by_server, http_client, Gateway};

/// Opens `n` connections to `addr` that each send `first` (maybe nothing) and then stay silent.
fn silent_connections(addr: SocketAddr, n: usize, first: &[u8]) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
            if !first.is_empty() {
                s.write_all(first).expect("write");
            }
            s
        })
        .collect()
}

/// The h2c client preface plus an empty SETTINGS frame: a valid HTTP/2 start, then nothing.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

fn one_span_request(gw: &Gateway, key: &str, name: &str) -> (u16, Duration) {
    let started = Instant::now();
    let r = common::post_protobuf(gw, key, &common::request_n(name, 0, 1));
    (r.0, started.elapsed())
}

#[test]
fn silent_connections_are_closed_and_never_lock_clients_out() {
    let gw = Gateway::start(&[
        ("TRACEGATE_SERVER__MAX_CONNECTIONS", "64"),
        ("TRACEGATE_SERVER__MAX_CONNECTIONS_PER_CLIENT", "0"),
        ("TRACEGATE_SERVER__REQUEST_HEAD_TIMEOUT_MS", "1500"),
    ]);
    let key = gw.create_key("edge-silent");
    for (what, first) in [("plain TCP", &b""[..]), ("h2c preface", H2_PREFACE)] {
        // Three times the connection limit, on both OTLP ports.
        let mut http_idle = silent_connections(gw.http, 192, first);
        let mut grpc_idle = silent_connections(gw.grpc, 192, first);
        // A normal client is served at once: the listener sheds idle connections for it.
        let (status, took) = one_span_request(&gw, &key, &format!("during-{}", what.len()));
        assert_eq!(status, 200, "{what}: a normal request was refused");
        assert!(
            took < Duration::from_secs(1),
            "{what}: a normal request took {took:?} while idle connections filled the limit"
        );
        // Every silent connection is gone by the head deadline (plus slack), on both ports.
        for (port, conns) in [("http", &mut http_idle), ("grpc", &mut grpc_idle)] {
            let still_open = conns
                .iter_mut()
                .map(|s| closed_by_server(s, Duration::from_secs(5)))
                .filter(|closed| !closed)
                .count();
            assert_eq!(
                still_open, 0,
                "{what}: {still_open} silent connections on the {port} port still open"
            );
        }
    }
    let metrics = gw.metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tracegate_connections_shed_total") && !l.ends_with(" 0")),
        "no connection was shed:\n{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("reason=\"head_timeout\"") && !l.ends_with(" 0")),
        "no head timeout counted"
    );
}

#[test]
fn keep_alive_connections_are_closed_when_idle() {
    let gw = Gateway::start(&[("TRACEGATE_SERVER__IDLE_TIMEOUT_MS", "1000")]);
    let key = gw.create_key("edge-idle");
    let body = common::encode(&common::request_n("idle", 0, 1));
    let mut s = TcpStream::connect(gw.http).unwrap();
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-protobuf\r\n\
         Authorization: Bearer {key}\r\nContent-Length: {}\r\n\r\n",
        gw.http,
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body).unwrap();
    let mut resp = [0u8; 12];
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.read_exact(&mut resp).unwrap();
    assert_eq!(&resp, b"HTTP/1.1 200", "the request itself failed");
    let since = Instant::now();
    assert!(
        closed_by_server(&mut s, Duration::from_secs(5)),
        "an idle keep-alive connection was never closed"
    );
    assert!(
        since.elapsed() >= Duration::from_millis(800),
        "closed before the idle deadline ({:?})",
        since.elapsed()
    );
}

#[test]
fn refusals_just_before_sigterm_reach_the_audit_log() {
    // The default aggregation window (10 s) is far longer than this test's life.
    let mut gw = Gateway::start(&[]);
    const REFUSALS: u64 = 3;
    for _ in 0..REFUSALS {
        let r = common::post(
            &gw.traces_url(),
            &[("content-type", "application/x-protobuf")],
            common::encode(&common::request_n("anon", 0, 1)),
        );
        assert_eq!(r.0, 401);
    }
    let status = gw.terminate();
    assert!(status.success(), "exit {status}");
    let audit = std::fs::read_to_string(gw.data_dir.join("audit.log")).unwrap_or_default();
    let counted: u64 = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "auth.refused" && e["reason"] == "missing_credential")
        .map(|e| e["count"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(
        counted, REFUSALS,
        "refusals sent just before SIGTERM are missing from the audit log:\n{audit}"
    );
}

#[test]
fn json_null_reads_as_the_default() {
    let gw = Gateway::start(&[]);
    let key = gw.create_key("edge-null");
    let auth = format!("Bearer {key}");
    let send = |body: &str| {
        common::post(
            &gw.traces_url(),
            &[
                ("content-type", "application/json"),
                ("authorization", &auth),
            ],
            body.as_bytes().to_vec(),
        )
    };
    let r = send(
        r#"{"resourceSpans":[{"resource":null,"schemaUrl":null,"scopeSpans":[{"scope":null,"spans":[
            {"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"nullish",
             "kind":null,"attributes":null,"events":null,"links":null,"status":null,
             "traceState":null,"parentSpanId":null,
             "startTimeUnixNano":"1700000000000000000","endTimeUnixNano":"1700000001000000000"}]}]}]}"#,
    );
    assert_eq!(r.0, 200, "{}", String::from_utf8_lossy(&r.2));
    let body: serde_json::Value = serde_json::from_slice(&r.2).unwrap();
    assert!(body.get("partialSuccess").is_none(), "{body}");
    assert_eq!(send(r#"{"resourceSpans":null}"#).0, 200);
    // A null list element is still malformed.
    assert_eq!(send(r#"{"resourceSpans":[null]}"#).0, 400);
    let spans = gw.archive_spans(Some("edge-null"));
    assert_eq!(common::span_names(&spans), vec!["nullish"]);
}

/// The connection deadlines hold on the gRPC port as well: an h2 connection that made one
/// request and then only answers PINGs is closed at the idle deadline (GOAWAY, then close).
#[test]
fn grpc_connections_idle_after_a_request_are_closed() {
    let gw = Gateway::start(&[("TRACEGATE_SERVER__IDLE_TIMEOUT_MS", "1000")]);
    let key = gw.create_key("edge-grpc-idle");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(gw.grpc).await.unwrap();
        let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
        let driver = tokio::spawn(conn);
        let req = http::Request::builder()
            .method("POST")
            .uri(format!(
                "http://{}/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                gw.grpc
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("authorization", format!("Bearer {key}"))
            .body(())
            .unwrap();
        let msg = common::encode(&common::request_n("grpc-idle", 0, 1));
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        framed.extend_from_slice(&msg);
        let (resp, mut send) = client.send_request(req, false).unwrap();
        send.send_data(framed.into(), true).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        while let Some(chunk) = body.data().await {
            chunk.unwrap();
        }
        let trailers = body.trailers().await.unwrap().unwrap_or_default();
        assert_eq!(
            trailers.get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"0"[..])
        );
        // Idle now: the server must end the connection (the driver future resolves).
        let ended = tokio::time::timeout(Duration::from_secs(8), driver).await;
        assert!(ended.is_ok(), "the idle h2 connection was never closed");
    });
}

/// Reads an HTTP/1.1 response head from `s` (status, head text); `None` on EOF or timeout.
fn response_head(s: &mut TcpStream) -> Option<(u16, String)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => return None,
        }
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, text))
}

#[test]
fn refused_requests_get_no_100_continue_and_are_not_drained() {
    let gw = Gateway::start(&[]);
    let key = gw.create_key("edge-expect");
    let cases = [
        // No key, 1 GiB declared.
        (None, 1u64 << 30, 401),
        // A key, but over max_request_bytes (32 MiB) declared.
        (Some(key.as_str()), 64 << 20, 413),
    ];
    for (key, len, want) in cases {
        let mut s = TcpStream::connect(gw.http).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let auth = key
            .map(|k| format!("Authorization: Bearer {k}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "POST /v1/traces HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-protobuf\r\n\
             {auth}Expect: 100-continue\r\nContent-Length: {len}\r\n\r\n"
        );
        s.write_all(head.as_bytes()).unwrap();
        let (status, text) = response_head(&mut s).expect("no answer");
        assert_eq!(
            status, want,
            "expected {want} before any body, got:\n{text}"
        );
        assert!(
            text.to_ascii_lowercase().contains("connection: close"),
            "the refusal does not close the connection:\n{text}"
        );
        // Answered and closed: nothing of the body is waited for.
        let started = Instant::now();
        assert!(
            closed_by_server(&mut s, Duration::from_secs(3)),
            "not closed"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the server waited for the body"
        );
    }
}

/// Writes a request head declaring `len` body bytes plus the first `send` of them, and keeps
/// the connection open (the request stays in flight).
fn partial_request(addr: SocketAddr, key: &str, len: usize, send: usize) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-protobuf\r\n\
         Authorization: Bearer {key}\r\nContent-Length: {len}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    // The server may refuse and close before everything is written.
    let _ = s.write_all(&vec![0x0a; send]);
    s
}

#[test]
fn one_project_cannot_starve_another() {
    let gw = Gateway::start(&[
        ("TRACEGATE_LIMITS__MAX_REQUEST_BYTES", "1048576"),
        ("TRACEGATE_LIMITS__MAX_INFLIGHT_BYTES", "4194304"),
    ]);
    let quiet = gw.create_key("edge-quiet");
    let noisy = gw.create_key("edge-noisy");
    // 1. Declared, not sent: twelve requests of the noisy project declare 1 MiB each (three
    //    times the whole budget) and send one byte. They hold almost nothing.
    let trickle: Vec<TcpStream> = (0..12)
        .map(|_| partial_request(gw.http, &noisy, 1 << 20, 1))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..5 {
        let (status, took) = one_span_request(&gw, &quiet, &format!("quiet-a{i}"));
        assert_eq!(
            status, 200,
            "the quiet project was refused while another only declared bytes"
        );
        assert!(took < Duration::from_secs(1), "took {took:?}");
    }
    drop(trickle);
    // 2. Sent: the noisy project really sends 900 KB on each of eight requests. It gets its share
    //    (1 MiB: a quarter of the budget, at least one request) and 429 beyond it; the quiet
    //    project is still served.
    let mut held = Vec::new();
    let mut refused_429 = 0;
    for _ in 0..8 {
        let mut s = partial_request(gw.http, &noisy, 1 << 20, 900_000);
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        match response_head(&mut s) {
            Some((429, text)) => {
                assert!(text.to_ascii_lowercase().contains("retry-after"), "{text}");
                refused_429 += 1;
            }
            Some((st, text)) => panic!("noisy request answered {st}:\n{text}"),
            // Closed: refused while the client was still writing (its answer lost to the reset).
            None if closed_by_server(&mut s, Duration::from_millis(300)) => refused_429 += 1,
            None => held.push(s),
        }
    }
    assert!(
        refused_429 >= 6,
        "the noisy project got only {refused_429} refusals: no share enforced"
    );
    assert!(!held.is_empty(), "the noisy project got nothing in flight");
    for i in 0..5 {
        let (status, took) = one_span_request(&gw, &quiet, &format!("quiet-b{i}"));
        assert_eq!(
            status, 200,
            "the quiet project was refused while the noisy one used its share"
        );
        assert!(took < Duration::from_secs(1), "took {took:?}");
    }
    drop(held);
    let spans = gw.archive_spans(Some("edge-quiet"));
    assert_eq!(spans.len(), 10);
}

#[test]
fn a_trickled_body_is_cut_at_the_minimum_rate() {
    // Default pace: 30 s for the whole body, at least 1 KiB/s after the first 5 s.
    let gw = Gateway::start(&[]);
    let key = gw.create_key("edge-slow");
    let mut s = partial_request(gw.http, &key, 100_000, 10);
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let started = Instant::now();
    let (status, text) = response_head(&mut s).expect("no answer to a trickled body");
    let took = started.elapsed();
    assert_eq!(status, 400, "{text}");
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(9),
        "cut after {took:?}, not at the rate deadline (~5 s)"
    );
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    // A body that keeps the pace is not cut: 100 KB sent as 10 KB every 700 ms.
    let body = common::encode(&common::request_n("paced", 0, 800));
    let mut s = partial_request(gw.http, &key, body.len(), 0);
    for chunk in body.chunks(body.len().div_ceil(10)) {
        std::thread::sleep(Duration::from_millis(700));
        s.write_all(chunk).unwrap();
    }
    let (status, text) = response_head(&mut s).expect("no answer to a paced body");
    assert_eq!(status, 200, "{text}");
}

/// What a browser does before the OTel web SDK's first export: a preflight, then the POST,
/// both from the page's origin. Allowed origins get the CORS headers (no credentials ever),
/// others a 403 preflight and no `Access-Control-*` header on anything; without
/// `[server.cors]` a preflight is a 405 as before.
#[test]
fn browser_preflight_and_post_follow_the_allowed_origins() {
    let origins = r#"["https://app.example.com", "https://*.corp.example"]"#;
    let gw = Gateway::start(&[("TRACEGATE_SERVER__CORS__ALLOWED_ORIGINS", origins)]);
    let key = gw.create_key("browser");
    let client = http_client();
    let preflight = |origin: &str| {
        client
            .request(reqwest::Method::OPTIONS, gw.traces_url())
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type,x-api-key")
            .send()
            .unwrap()
    };
    let r = preflight("https://team.corp.example");
    assert_eq!(r.status(), 204);
    let h = r.headers();
    assert_eq!(
        h["access-control-allow-origin"],
        "https://team.corp.example"
    );
    assert_eq!(h["access-control-allow-methods"], "POST");
    let allowed = h["access-control-allow-headers"].to_str().unwrap();
    assert!(
        allowed.contains("content-type") && allowed.contains("x-api-key"),
        "{allowed}"
    );
    assert!(h.contains_key("access-control-max-age"));
    assert!(!h.contains_key("access-control-allow-credentials"));
    let r = preflight("https://evil.example");
    assert_eq!(r.status(), 403);
    assert!(!r
        .headers()
        .keys()
        .any(|k| k.as_str().starts_with("access-control-")));

    let post_from = |origin: &str, key: &str| {
        client
            .post(gw.traces_url())
            .header("origin", origin)
            .header("content-type", "application/json")
            .header("x-api-key", key)
            .body(r#"{"resourceSpans":[]}"#)
            .send()
            .unwrap()
    };
    let r = post_from("https://app.example.com", &key);
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(r.headers()["vary"], "origin");
    // An error the page must be able to read carries the headers too.
    let r = post_from("https://app.example.com", "tg_wrong");
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let r = post_from("https://evil.example", &key);
    assert!(!r.headers().contains_key("access-control-allow-origin"));

    let plain = Gateway::start(&[]);
    let r = client
        .request(reqwest::Method::OPTIONS, plain.traces_url())
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .unwrap();
    assert_eq!(r.status(), 405);
}
