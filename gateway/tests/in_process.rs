//! The gateway started in-process with `app::run` on port-0 listeners (as `main` does, without
//! a child process): for tests that need the pipeline, not a process boundary. The CLI (`keys
//! create`, `archive cat`) still runs as the real binary, on the same data dir.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn in_process_gateway_acknowledges_archives_and_drains_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let project = unique_project("inproc");
    let key = create_key_in(dir.path(), &project);
    let gw = InProcess::start(dir.path());
    assert!(
        wait_until(Duration::from_secs(10), || get(&format!(
            "http://{}/readyz",
            gw.admin
        ))
        .0 == 200),
        "never ready"
    );
    let url = format!("http://{}/v1/traces", gw.http);
    let bearer = format!("Bearer {key}");
    let headers = [
        ("content-type", "application/x-protobuf"),
        ("authorization", bearer.as_str()),
    ];
    let (status, _, body) = post(&url, &headers, encode(&request_n("ip", 0, 12)));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(decode_response(&body).partial_success, None);
    // A wrong key is refused and nothing of it is stored.
    let wrong = [
        ("content-type", "application/x-protobuf"),
        ("authorization", "Bearer tg_not_a_key"),
    ];
    let (status, _, _) = post(&url, &wrong, encode(&request_n("wrong", 100, 3)));
    assert_eq!(status, 401);
    gw.shutdown().expect("app::run returned an error");

    let mut names = span_names(&archive_spans_in(dir.path(), Some(&project)));
    names.sort();
    let mut want: Vec<String> = (0..12).map(|i| format!("ip-{i}")).collect();
    want.sort();
    assert_eq!(
        names, want,
        "every acknowledged span archived once, nothing else"
    );
}

#[test]
fn in_process_invalid_spans_are_rejected_one_by_one_and_the_rest_kept() {
    let dir = tempfile::tempdir().unwrap();
    let key = create_key_in(dir.path(), "partial");
    let gw = InProcess::start(dir.path());
    let bearer = format!("Bearer {key}");
    let mut spans: Vec<_> = (0..5)
        .map(|i| span(trace_id(900), span_id(900 + i), &format!("p-{i}")))
        .collect();
    spans[1].trace_id = vec![1, 2, 3]; // not 16 bytes
    spans[3].span_id = vec![0; 8]; // all zero
    let headers = [
        ("content-type", "application/x-protobuf"),
        ("authorization", bearer.as_str()),
    ];
    let (status, _, body) = post(
        &gw.traces_url(),
        &headers,
        encode(&request_with_spans(spans)),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let partial = decode_response(&body)
        .partial_success
        .expect("partial_success for the rejected spans");
    assert_eq!(partial.rejected_spans, 2);
    assert!(!partial.error_message.is_empty());
    // An unsupported content type is refused whole, before the body is read.
    let text = [
        ("content-type", "text/plain"),
        ("authorization", bearer.as_str()),
    ];
    assert_eq!(post(&gw.traces_url(), &text, b"hello".to_vec()).0, 415);
    gw.shutdown().expect("app::run returned an error");
    let mut names = span_names(&archive_spans_in(dir.path(), Some("partial")));
    names.sort();
    assert_eq!(names, vec!["p-0", "p-2", "p-4"], "the valid spans, once");
}
