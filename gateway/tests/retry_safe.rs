//! Retry-safe ingest over Kafka (issue 22; docs/architecture.md, "Duplicates"): a request sent
//! again — to another gateway process, under another API key of the same project, with another
//! compression, over gRPC instead of HTTP, split into several Kafka messages, and after its
//! partition moved to another writer process — is stored once. The negative control, the same
//! run with `dedup.window_secs = 0`, stores every copy: the check below can fail. The same for
//! the embedded layout, where the copy is sent again while the first is being written, once
//! it is stored, and after a restart on the same data dir.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::{Gateway, TestBroker, Writer};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

/// Small, so that the large request below is split into several messages.
const MESSAGE_MAX_BYTES: usize = 64 * 1024;

/// A request of `n` spans named `prefix-i`, each with a `pad`-byte attribute.
fn request(prefix: &str, n: u64, pad: usize) -> ExportTraceServiceRequest {
    let mut req = common::request_n(prefix, 0, n);
    for s in &mut req.resource_spans[0].scope_spans[0].spans {
        s.attributes
            .push(common::kv_str("llm.prompt", &"p".repeat(pad)));
    }
    req
}

fn names(req: &ExportTraceServiceRequest) -> Vec<String> {
    req.resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .map(|s| s.name.clone())
        .collect()
}

fn ok(status: u16, what: &str) {
    assert_eq!(status, 200, "{what}");
}

/// How many times each span name of `project` is in the archive, once every name in `want`
/// is there (and a little longer, for late copies).
fn counts(dir: &Path, project: &str, want: &[String]) -> HashMap<String, usize> {
    let (missing, _) = common::wait_for_spans(dir, project, want, Duration::from_secs(60));
    assert!(
        missing.is_empty(),
        "never archived: {:?}",
        &missing[..missing.len().min(5)]
    );
    // Copies would be in the same or the next writer batch (batch_max_age_ms = 200).
    std::thread::sleep(Duration::from_secs(2));
    let mut c = HashMap::new();
    for r in common::archive_spans_in(dir, Some(project)) {
        *c.entry(r["span"]["name"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    c
}

fn copies(c: &HashMap<String, usize>, want: &[String]) -> Vec<usize> {
    let mut v: Vec<usize> = want
        .iter()
        .map(|n| c.get(n).copied().unwrap_or(0))
        .collect();
    v.sort();
    v.dedup();
    v
}

struct Outcome {
    /// Distinct copy counts of the spans sent 4 times, 3 times (split), after the rebalance.
    small: Vec<usize>,
    large: Vec<usize>,
    after_rebalance: Vec<usize>,
    fresh: Vec<usize>,
    repeats_seen: f64,
    replayed: f64,
}

fn run(broker: &TestBroker, topic: &str, window_secs: u64) -> Outcome {
    let (gw_a_dir, gw_b_dir, wr_dir) = (
        common::temp_dir("tg-rs-gwa-"),
        common::temp_dir("tg-rs-gwb-"),
        common::temp_dir("tg-rs-wr-"),
    );
    let mut env = broker.env(topic);
    env.extend(
        [
            (
                "TRACEGATE_KAFKA__MESSAGE_MAX_BYTES",
                MESSAGE_MAX_BYTES.to_string(),
            ),
            // Requests spread over both partitions by their key: a repeat must still meet
            // its first copy.
            ("TRACEGATE_KAFKA__PARTITION_KEY", "batch".into()),
            ("TRACEGATE_KAFKA__BATCH_MAX_AGE_MS", "200".into()),
            ("TRACEGATE_KAFKA__SESSION_TIMEOUT_MS", "6000".into()),
            ("TRACEGATE_DEDUP__WINDOW_SECS", window_secs.to_string()),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    let env = common::env_refs(&env);
    let mut gw_a = Gateway::start_in(gw_a_dir.path(), &env);
    let mut gw_b = Gateway::start_in(gw_b_dir.path(), &env);
    let project = common::unique_project("retry-safe");
    // Two API keys of one project, one per gateway: the tenant, not the key, names a request.
    let key_a = gw_a.create_key(&project);
    let key_b = gw_b.create_key(&project);
    let mut writer = Writer::start(wr_dir.path(), None, &env);
    gw_a.wait_ready(Duration::from_secs(20));
    gw_b.wait_ready(Duration::from_secs(20));

    let small = request("small", 20, 100);
    ok(
        common::post_protobuf(&gw_a, &key_a, &small).0,
        "small, plain, gateway A",
    );
    ok(
        common::post_protobuf_compressed(&gw_b, &key_b, &small, "gzip").0,
        "small again, gzip, gateway B",
    );
    let (code, _) = common::grpc_export(&gw_a, &key_a, small.clone());
    assert_eq!(code, tonic::Code::Ok, "small again, gRPC, gateway A");
    ok(
        common::post_protobuf_compressed(&gw_b, &key_b, &small, "zstd").0,
        "small again, zstd, gateway B",
    );
    // ~160 KB: split into ~3 messages by each gateway.
    let large = request("large", 40, 4000);
    ok(
        common::post_protobuf(&gw_a, &key_a, &large).0,
        "large, gateway A",
    );
    ok(
        common::post_protobuf(&gw_b, &key_b, &large).0,
        "large again, gateway B",
    );
    // Compressed, it fits one message: a copy unsplit where the first was split.
    ok(
        common::post_protobuf_compressed(&gw_a, &key_a, &large, "zstd").0,
        "large again, zstd, gateway A",
    );
    let (small_names, large_names) = (names(&small), names(&large));
    let mut want = small_names.clone();
    want.extend(large_names.iter().cloned());
    let c = counts(wr_dir.path(), &project, &want);
    let (small_copies, large_copies) = (copies(&c, &small_names), copies(&c, &large_names));
    let repeats_seen = writer.metric("tracegate_dedup_repeated_requests_total");

    // The writer leaves; the small request is sent once more while no writer runs, and a new
    // writer process takes the partitions over: it must rebuild the window from the commits.
    let s = writer.terminate();
    assert!(s.success(), "writer exit {s}");
    ok(
        common::post_protobuf_compressed(&gw_b, &key_b, &small, "gzip").0,
        "small once more, between writers",
    );
    let fresh = request("fresh", 10, 100);
    ok(common::post_protobuf(&gw_a, &key_a, &fresh).0, "fresh");
    let mut writer = Writer::start(wr_dir.path(), None, &env);
    let fresh_names = names(&fresh);
    let c = counts(wr_dir.path(), &project, &fresh_names);
    let out = Outcome {
        small: small_copies,
        large: large_copies,
        after_rebalance: copies(&c, &small_names),
        fresh: copies(&c, &fresh_names),
        repeats_seen,
        replayed: writer.metric("tracegate_dedup_replayed_messages_total"),
    };
    for s in [writer.terminate(), gw_a.terminate(), gw_b.terminate()] {
        assert!(s.success(), "exit {s}");
    }
    out
}

#[test]
fn a_request_sent_again_is_stored_once_across_gateways_encodings_splits_and_writers() {
    let broker = TestBroker::start(&[("tracegate-rs-on", 2), ("tracegate-rs-off", 2)]);

    let on = run(&broker, "tracegate-rs-on", 900);
    assert_eq!(on.small, vec![1], "small request: copies per span");
    assert_eq!(on.large, vec![1], "split request: copies per span");
    assert_eq!(on.after_rebalance, vec![1], "after the writer changed");
    assert_eq!(on.fresh, vec![1]);
    // 3 repeats of the small request and every part of the large one's repeat.
    assert!(
        on.repeats_seen >= 5.0,
        "repeats counted: {}",
        on.repeats_seen
    );
    assert!(on.replayed > 0.0, "the new writer rebuilt no window");

    // Negative control: without the window, every copy is stored.
    let off = run(&broker, "tracegate-rs-off", 0);
    assert_eq!(off.small, vec![4], "control: small request");
    assert_eq!(off.large, vec![3], "control: split request");
    assert_eq!(
        off.after_rebalance,
        vec![5],
        "control: after the writer changed"
    );
    assert_eq!(off.fresh, vec![1]);
    assert_eq!(off.repeats_seen, 0.0);
}

/// The embedded layout: a client whose answer never came (it gave up before the group was
/// written) sends the request again while the first copy is being written, again once it is
/// stored, and again after the gateway restarted on the same data dir. Returns the copies per
/// span in the archive.
fn embedded_run(window_secs: u64) -> Vec<usize> {
    let dir = common::temp_dir("tg-rs-emb-");
    let env = [
        ("TRACEGATE_DEDUP__WINDOW_SECS", window_secs.to_string()),
        // Each group waits 1.5 s, so the first answer comes after the client gave up.
        ("TRACEGATE_WRITER__MAX_WAIT_MS", "1500".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut gw = Gateway::start_in(dir.path(), &env);
    let project = common::unique_project("retry-safe-emb");
    let key = gw.create_key(&project);
    let req = request("emb", 20, 100);
    let auth = format!("Bearer {key}");
    let headers = [
        ("content-type", "application/x-protobuf"),
        ("authorization", auth.as_str()),
    ];
    let impatient = common::http_client_with_timeout(Duration::from_millis(300));
    let first = common::try_post(&impatient, &gw.traces_url(), &headers, common::encode(&req));
    assert!(
        first.is_err(),
        "the first answer came in time: {:?}",
        first.map(|r| r.0)
    );
    // While the first copy is being written…
    ok(
        common::post_protobuf_compressed(&gw, &key, &req, "gzip").0,
        "again while the first copy is written",
    );
    // …once it is stored…
    ok(
        common::post_protobuf_compressed(&gw, &key, &req, "zstd").0,
        "again once stored",
    );
    // …and after a restart.
    let s = gw.terminate();
    assert!(s.success(), "exit {s}");
    let mut gw = Gateway::start_in(dir.path(), &env);
    let (code, _) = common::grpc_export(&gw, &key, req.clone());
    assert_eq!(code, tonic::Code::Ok, "again after the restart, gRPC");
    let want = names(&req);
    let c = counts(dir.path(), &project, &want);
    let s = gw.terminate();
    assert!(s.success(), "exit {s}");
    copies(&c, &want)
}

#[test]
fn embedded_a_request_whose_answer_was_lost_is_stored_once_across_a_restart() {
    assert_eq!(embedded_run(900), vec![1], "copies per span");
    // Negative control: every copy is stored.
    assert_eq!(embedded_run(0), vec![4], "control: copies per span");
}
