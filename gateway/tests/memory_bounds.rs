//! Memory bounds on the request path, against a real `tracegate serve`:
//! - a body of unknown length (chunked HTTP/1.1) is covered by the in-flight reservation while
//!   it is being read, not only after it was read whole;
//! - `server.max_connections` caps open connections per listener: at the limit a new client
//!   takes the seat of the longest-idle connection, or is refused at once when none is idle;
//! - `limits.prefault_bytes` makes the heap resident before the first request, so a burst of
//!   requests does not page-fault its memory in;
//! - `limits.read_ahead_bytes_per_project`: while a project's bodies wait for decode, its next
//!   HTTP/1.1 bodies wait unread, and every request still gets its answer; gRPC never waits.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn read_status(s: &mut TcpStream) -> Option<u16> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let line = String::from_utf8_lossy(&buf);
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn chunked_body_is_reserved_while_it_is_read() {
    let gw = Gateway::start(&[]);
    let key = gw.create_key(&unique_project("mem"));
    const SPANS: u64 = 12_000;
    let body = encode(&request_n("chunked", 0, SPANS));
    assert!(
        body.len() > 900_000,
        "want a body of about 1 MB, got {}",
        body.len()
    );
    let first = body.len() * 2 / 3;

    let mut s = TcpStream::connect(gw.http).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "POST /v1/traces HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/x-protobuf\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .unwrap();
    for c in body[..first].chunks(64 * 1024) {
        write!(s, "{:x}\r\n", c.len()).unwrap();
        s.write_all(c).unwrap();
        s.write_all(b"\r\n").unwrap();
    }
    s.flush().unwrap();

    // Half-way through the body: its bytes are already counted against the in-flight bound.
    let mut seen = 0.0;
    let reserved = wait_until(Duration::from_secs(10), || {
        seen = gauge(&gw.metrics(), "tracegate_inflight_bytes").unwrap_or(0.0);
        seen >= first as f64
    });
    assert!(
        reserved,
        "in-flight gauge {seen} while {first} bytes of a chunked body were read (want >= {first})"
    );

    let rest = &body[first..];
    write!(s, "{:x}\r\n", rest.len()).unwrap();
    s.write_all(rest).unwrap();
    s.write_all(b"\r\n0\r\n\r\n").unwrap();
    assert_eq!(
        read_status(&mut s),
        Some(200),
        "the completed body is accepted"
    );
    assert!(
        wait_until(Duration::from_secs(10), || gauge(
            &gw.metrics(),
            "tracegate_inflight_bytes"
        ) == Some(0.0)),
        "the reservation is released after the answer"
    );
    let spans = gw.archive_spans(None);
    assert_eq!(
        spans.len() as u64,
        SPANS,
        "every span of the chunked request is archived"
    );
}

#[test]
fn connections_over_the_limit_shed_the_idle_or_are_refused_at_once() {
    let gw = Gateway::start(&[("TRACEGATE_SERVER__MAX_CONNECTIONS", "2")]);
    let key = gw.create_key(&unique_project("seats"));
    let request = b"POST /v1/traces HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
    // Two idle connections take both seats.
    let mut idle: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(gw.http).expect("connect idle"))
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    // A third client is served at once (401: no key): the longest-idle connection gives way.
    let mut third = TcpStream::connect(gw.http).expect("connect third");
    third
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    third.write_all(request).unwrap();
    let started = Instant::now();
    assert_eq!(
        read_status(&mut third),
        Some(401),
        "the third client was not served"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    idle[0]
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(
        idle[0].read(&mut [0u8; 16]).unwrap_or(0),
        0,
        "the longest-idle connection was not closed"
    );
    drop(idle);
    drop(third);
    std::thread::sleep(Duration::from_millis(300));

    // Two connections with a request in flight (body still coming) are never shed: a third
    // is refused at once (closed unanswered), not left waiting in the backlog.
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-protobuf\r\n\
         Authorization: Bearer {key}\r\nContent-Length: 1000\r\n\r\nxx"
    );
    let busy: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(gw.http).expect("connect busy");
            s.write_all(head.as_bytes()).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut fourth = TcpStream::connect(gw.http).expect("connect fourth");
    fourth
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = fourth.write_all(request);
    let started = Instant::now();
    assert_eq!(
        read_status(&mut fourth),
        None,
        "served over max_connections"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the refused client waited {:?} instead of being refused at once",
        started.elapsed()
    );
    drop(busy);
    assert!(gw
        .metrics()
        .lines()
        .any(|l| l.starts_with("tracegate_connections_refused_total")
            && l.contains("reason=\"max_connections\"")
            && !l.ends_with(" 0")));
}

/// Minor page faults of process `pid` so far (field 10 of /proc/PID/stat; the command name in
/// field 2 has no spaces for `tracegate`).
fn minor_faults(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    stat.split_whitespace()
        .nth(9)
        .and_then(|v| v.parse().ok())
        .expect("minflt in /proc/PID/stat")
}

/// Page faults a gateway takes for 16 concurrent ~1 MB requests, after one request to warm it.
/// Every request is a different one: a repeat would be answered without being stored
/// (retry-safe ingest) and hold no memory.
fn faults_for_a_burst(gw: &Gateway) -> u64 {
    let key = gw.create_key(&unique_project("prefault"));
    let bodies: Vec<Vec<u8>> = (0..17)
        .map(|i| encode(&request_n(&format!("prefault-{i}"), 0, 12_000)))
        .collect();
    let auth = format!("Bearer {key}");
    let send = |body: Vec<u8>| {
        let r = post(
            &gw.traces_url(),
            &[
                ("content-type", "application/x-protobuf"),
                ("authorization", &auth),
            ],
            body,
        );
        assert_eq!(r.0, 200, "{}", String::from_utf8_lossy(&r.2));
    };
    send(bodies[16].clone());
    let before = minor_faults(gw.pid());
    std::thread::scope(|s| {
        for b in &bodies[..16] {
            s.spawn(|| send(b.clone()));
        }
    });
    minor_faults(gw.pid()) - before
}

#[test]
fn prefault_makes_the_heap_resident_before_the_first_burst() {
    const PREFAULT: u64 = 96 << 20;
    let plain = Gateway::start(&[]);
    let warm = Gateway::start(&[("TRACEGATE_LIMITS__PREFAULT_BYTES", &PREFAULT.to_string())]);
    let (rss_plain, rss_warm) = (
        rss_bytes(plain.pid()).unwrap(),
        rss_bytes(warm.pid()).unwrap(),
    );
    assert!(
        rss_warm >= rss_plain + PREFAULT * 9 / 10,
        "RSS at start: {rss_warm} with prefault_bytes = {PREFAULT}, {rss_plain} without"
    );
    // The burst holds ~16 MB of bodies at once (plus the embedded queue's copies): without
    // prefault most of it is new heap, page-faulted in; with it, it is already resident.
    let (f_plain, f_warm) = (faults_for_a_burst(&plain), faults_for_a_burst(&warm));
    eprintln!("RSS at start {rss_plain} / {rss_warm} bytes; burst faults {f_plain} / {f_warm} (without / with prefault)");
    assert!(
        f_plain > 2_000 && f_warm * 4 < f_plain,
        "minor faults for the burst: {f_warm} with prefault, {f_plain} without"
    );
}

/// Requests of one project, one of each `tag`'s spans invalid (so each takes the slow decode
/// path, tens of milliseconds for ~4 MB), sent 10 ms apart over HTTP/1.1 or gRPC, each answered
/// 200 / OK with its invalid span rejected; returns the gateway's read-ahead waits after them.
fn staggered(gw: &Gateway, key: &str, tag: &str, grpc: bool) -> f64 {
    const SPANS: u64 = 48_000;
    let requests: Vec<_> = (0..REQUESTS)
        .map(|i| {
            let mut req = request_n(&format!("{tag}-{i}"), 0, SPANS);
            req.resource_spans[0].scope_spans[0].spans[0].trace_id = Vec::new();
            req
        })
        .collect();
    let auth = format!("Bearer {key}");
    std::thread::scope(|s| {
        for req in requests {
            let auth = &auth;
            s.spawn(move || {
                if grpc {
                    assert_eq!(grpc_export(gw, key, req).0, tonic::Code::Ok);
                } else {
                    let headers = [
                        ("content-type", "application/x-protobuf"),
                        ("authorization", auth.as_str()),
                    ];
                    let r = post(&gw.traces_url(), &headers, encode(&req));
                    assert_eq!(r.0, 200, "{}", String::from_utf8_lossy(&r.2));
                    let rejected = decode_response(&r.2)
                        .partial_success
                        .map(|p| p.rejected_spans);
                    assert_eq!(rejected, Some(1));
                }
            });
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let m = gw.metrics();
    assert_eq!(
        metric_value(&m, "tracegate_admission_refused_total"),
        0.0,
        "a request was refused instead of waiting"
    );
    metric_value(&m, "tracegate_read_ahead_waits_total")
}

const REQUESTS: u64 = 12;

#[test]
fn a_project_behind_on_decode_leaves_its_next_bodies_unread_until_a_decode_starts() {
    // One decode at a time, and a bound of one byte: while one body decodes and another waits
    // for the slot, every further body of the project waits unread.
    let gw = Gateway::start(&[
        ("TRACEGATE_LIMITS__DECODE_CONCURRENCY", "1"),
        ("TRACEGATE_LIMITS__READ_AHEAD_BYTES_PER_PROJECT", "1"),
    ]);
    let key = gw.create_key(&unique_project("readahead"));
    // gRPC streams share their connection's window: they are never held.
    let waits = staggered(&gw, &key, "grpc", true);
    assert_eq!(waits, 0.0, "gRPC requests waited for read-ahead");
    let waits = staggered(&gw, &key, "http", false);
    assert!(
        waits >= 1.0,
        "{REQUESTS} requests 10 ms apart, each decoding for tens of ms in one slot, and none \
         waited before its body"
    );
    let spans = metric_value(&gw.metrics(), "tracegate_spans_accepted_total");
    assert_eq!(
        spans,
        (2 * REQUESTS * 47_999) as f64,
        "every valid span accepted"
    );
    eprintln!("{waits} of {REQUESTS} HTTP/1.1 requests waited before their body");
}
