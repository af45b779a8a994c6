//! Kafka transport end to end, every hop a real process: the OpenTelemetry Rust SDK exporter
//! (OTLP/HTTP protobuf, OTLP/HTTP JSON + gzip, OTLP/gRPC) and raw OTLP posts → `tracegate serve`
//! with `[kafka]` (env `TRACEGATE_KAFKA__*`) → `tracegate-test-broker` → `tracegate write
//! --config FILE` → archive. Every span sent is archived exactly once with its key's project; a
//! request larger than one Kafka message is split and fully delivered; a single span that cannot
//! fit in a message is refused with 413, not dropped silently. Clean zstd / gzip requests are
//! archived as the client's compressed bytes (envelope v2); one too large even compressed is
//! split into plain parts.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::{parse_object_name, walk_names, Gateway, TestBroker, Writer};
use opentelemetry::trace::{Span as _, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{
    Compression, Protocol, SpanExporter, WithExportConfig, WithHttpConfig, WithTonicConfig,
};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;

const TOPIC: &str = "tracegate-e2e";
const SDK_TRACES: usize = 4;
const SDK_SPANS_PER_TRACE: usize = 10;
/// Small message limit so that the big request below must be split.
const MESSAGE_MAX_BYTES: usize = 64 * 1024;

fn sdk_send(exporter: SpanExporter, prefix: &str) {
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name("kafka-e2e").build())
        .build();
    let tracer = provider.tracer("kafka-e2e");
    for t in 0..SDK_TRACES {
        let root = tracer.start(format!("{prefix}-{t}-0"));
        let cx = Context::current_with_span(root);
        for c in 1..SDK_SPANS_PER_TRACE {
            let mut child = tracer.start_with_context(format!("{prefix}-{t}-{c}"), &cx);
            child.set_attribute(KeyValue::new("test.child", c as i64));
            child.end();
        }
        cx.span().end();
    }
    provider.force_flush().expect("force_flush: export failed");
    provider.shutdown().expect("provider shutdown");
}

fn sdk_exporter(gw: &Gateway, key: &str, how: &str, rt: &tokio::runtime::Runtime) -> SpanExporter {
    let bearer = format!("Bearer {key}");
    let timeout = Duration::from_secs(10);
    match how {
        "grpc" => {
            let mut md = tonic::metadata::MetadataMap::new();
            md.insert("authorization", bearer.parse().unwrap());
            let _g = rt.enter();
            SpanExporter::builder()
                .with_tonic()
                .with_endpoint(gw.grpc_url())
                .with_protocol(Protocol::Grpc)
                .with_timeout(timeout)
                .with_metadata(md)
                .build()
                .expect("gRPC exporter")
        }
        _ => {
            let b = SpanExporter::builder()
                .with_http()
                .with_endpoint(gw.traces_url())
                .with_timeout(timeout)
                .with_headers(HashMap::from([("authorization".to_string(), bearer)]));
            let b = if how == "json-gzip" {
                b.with_protocol(Protocol::HttpJson)
                    .with_compression(Compression::Gzip)
            } else {
                b.with_protocol(Protocol::HttpBinary)
            };
            b.build().expect("HTTP exporter")
        }
    }
}

/// With the defaults (`kafka.producers = 2`, `kafka.small_batch_bytes` > 0), the gateway has
/// three librdkafka clients, and only the small batches' one runs under SCHED_BATCH
/// (kafka/sched.rs): one `rdk:main` of three, some of the broker threads (its bootstrap broker
/// at least), none of the async workers.
fn only_the_small_batches_producer_is_batch_scheduled(pid: u32) {
    let mut rdk = Vec::new();
    let mut others = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap();
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let tid: i32 = t.file_name().to_string_lossy().parse().unwrap();
        // SAFETY: a plain system call about a thread id (0 or -1 if it has just ended).
        let policy = unsafe { libc::sched_getscheduler(tid) };
        if comm.starts_with("rdk:") {
            rdk.push((comm.trim().to_string(), policy));
        } else if comm.starts_with("tokio-rt-worker") {
            assert_eq!(policy, libc::SCHED_OTHER, "an async worker: {comm}");
            others += 1;
        }
    }
    assert!(others > 0, "no async worker found");
    assert!(
        rdk.iter().any(|(c, _)| c == "rdk:main")
            && rdk.iter().any(|(c, _)| c.starts_with("rdk:broker")),
        "librdkafka's threads: {rdk:?}"
    );
    let count = |name: &str, policy: i32| {
        rdk.iter()
            .filter(|(c, p)| c.starts_with(name) && *p == policy)
            .count()
    };
    let why = format!(
        "librdkafka's threads and their policies (SCHED_BATCH = {}): {rdk:?}",
        libc::SCHED_BATCH
    );
    assert_eq!(count("rdk:main", libc::SCHED_BATCH), 1, "{why}");
    assert_eq!(count("rdk:main", libc::SCHED_OTHER), 2, "{why}");
    assert!(count("rdk:broker", libc::SCHED_BATCH) > 0, "{why}");
    assert!(count("rdk:broker", libc::SCHED_OTHER) > 0, "{why}");
}

/// `dir/writer.toml` for a writer of `topic` on `broker` in consumer group `group`, short
/// batches and sessions for tests, plus `extra` lines of `[kafka]`.
fn writer_toml(
    dir: &std::path::Path,
    broker: &TestBroker,
    topic: &str,
    group: &str,
    extra: &str,
) -> std::path::PathBuf {
    let cfg = dir.join("writer.toml");
    std::fs::write(
        &cfg,
        format!(
            "[kafka]\nbrokers = \"{}\"\ntopic = \"{topic}\"\ngroup_id = \"{group}\"\n\
             batch_max_age_ms = 200\nsession_timeout_ms = 6000\n{extra}",
            broker.bootstrap
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn otel_exporter_to_gateway_to_broker_to_writer_to_archive() {
    let broker = TestBroker::start(&[(TOPIC, 4)]);
    let gw_dir = common::temp_dir("tg-kafka-gw-");
    let wr_dir = common::temp_dir("tg-kafka-wr-");

    let mut env = broker.env(TOPIC);
    env.push((
        "TRACEGATE_KAFKA__MESSAGE_MAX_BYTES".into(),
        MESSAGE_MAX_BYTES.to_string(),
    ));
    // Not the default ("none"): this test covers the gateway compressing plain payloads too.
    env.push(("TRACEGATE_KAFKA__COMPRESSION".into(), "payload_zstd".into()));
    let mut gw = Gateway::start_in(gw_dir.path(), &common::env_refs(&env));

    // The writer reads a config file (brokers/topic from it, not from the env).
    let cfg = writer_toml(
        wr_dir.path(),
        &broker,
        TOPIC,
        "e2e",
        &format!("message_max_bytes = {MESSAGE_MAX_BYTES}\n"),
    );
    let mut writer = Writer::start(&wr_dir.path().join("data"), Some(&cfg), &[]);
    let archive_dir = wr_dir.path().join("data");

    let p1 = common::unique_project("kafka-sdk");
    let p2 = common::unique_project("kafka-raw");
    let k1 = gw.create_key(&p1);
    let k2 = gw.create_key(&p2);
    assert!(
        common::wait_until(Duration::from_secs(20), || common::get(&format!(
            "{}/readyz",
            gw.admin_url()
        ))
        .0 == 200),
        "gateway /readyz never became 200 with the broker up"
    );

    // 1. The real OTel exporter, three ways, project p1.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut want: BTreeMap<String, &str> = BTreeMap::new();
    for how in ["http-protobuf", "json-gzip", "grpc"] {
        sdk_send(sdk_exporter(&gw, &k1, how, &rt), &format!("sdk-{how}"));
        for t in 0..SDK_TRACES {
            for c in 0..SDK_SPANS_PER_TRACE {
                want.insert(format!("sdk-{how}-{t}-{c}"), p1.as_str());
            }
        }
    }
    rt.shutdown_timeout(Duration::from_secs(5));

    // 2. Raw posts, project p2: JSON, protobuf, and one request that needs several messages.
    let r = common::post_json(&gw, &k2, &common::request_n("raw-json", 0, 20));
    assert_eq!(r.0, 200, "JSON post: {:?}", String::from_utf8_lossy(&r.2));
    only_the_small_batches_producer_is_batch_scheduled(gw.pid());
    let r = common::post_protobuf(&gw, &k2, &common::request_n("raw-pb", 0, 20));
    assert_eq!(r.0, 200, "protobuf post");
    let mut big = common::request_n("raw-big", 0, 120);
    for s in &mut big.resource_spans[0].scope_spans[0].spans {
        s.attributes
            .push(common::kv_str("gen_ai.prompt", &"p".repeat(3000)));
    }
    assert!(common::encode(&big).len() > 4 * MESSAGE_MAX_BYTES);
    let r = common::post_protobuf(&gw, &k2, &big);
    assert_eq!(
        r.0,
        200,
        "big (split) post: {:?}",
        String::from_utf8_lossy(&r.2)
    );
    // Compressed requests: clean ones travel as the client's zstd / gzip bytes (envelope v2).
    // The big one compresses below one message and goes unsplit; the incompressible one does
    // not fit compressed either and is split (decompressed, parts plain).
    for (prefix, enc) in [("raw-zstd", "zstd"), ("raw-gzip", "gzip")] {
        let r = common::post_protobuf_compressed(&gw, &k2, &common::request_n(prefix, 0, 20), enc);
        assert_eq!(r.0, 200, "{enc} post: {:?}", String::from_utf8_lossy(&r.2));
    }
    let mut big_z = common::request_n("raw-big-zstd", 0, 120);
    for s in &mut big_z.resource_spans[0].scope_spans[0].spans {
        s.attributes
            .push(common::kv_str("gen_ai.prompt", &"p".repeat(3000)));
    }
    let r = common::post_protobuf_compressed(&gw, &k2, &big_z, "zstd");
    assert_eq!(
        r.0,
        200,
        "big zstd post: {:?}",
        String::from_utf8_lossy(&r.2)
    );
    let mut noisy = common::request_n("raw-noisy-gzip", 0, 120);
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for s in &mut noisy.resource_spans[0].scope_spans[0].spans {
        let text = noise(&mut x, 3000, b"abcdefghijklmnopqrstuvwxyz");
        s.attributes.push(common::kv_str("gen_ai.prompt", &text));
    }
    assert!(common::gzip(&common::encode(&noisy)).len() > 2 * MESSAGE_MAX_BYTES);
    let r = common::post_protobuf_compressed(&gw, &k2, &noisy, "gzip");
    assert_eq!(
        r.0,
        200,
        "noisy gzip post: {:?}",
        String::from_utf8_lossy(&r.2)
    );
    for (prefix, n) in [
        ("raw-json", 20),
        ("raw-pb", 20),
        ("raw-big", 120),
        ("raw-zstd", 20),
        ("raw-gzip", 20),
        ("raw-big-zstd", 120),
        ("raw-noisy-gzip", 120),
    ] {
        for i in 0..n {
            want.insert(format!("{prefix}-{i}"), p2.as_str());
        }
    }

    // 3. One span that cannot fit in any message: refused, never silently dropped.
    let mut huge = common::request_n("raw-huge", 0, 2);
    huge.resource_spans[0].scope_spans[0].spans[1]
        .attributes
        .push(common::kv_str(
            "gen_ai.completion",
            // Incompressible, so it is too large for a message also once zstd'ed
            // (kafka.compression = "payload_zstd").
            &incompressible(2 * MESSAGE_MAX_BYTES),
        ));
    let r = common::post_protobuf(&gw, &k2, &huge);
    assert_eq!(
        r.0, 413,
        "a span larger than kafka.message_max_bytes must be refused with 413"
    );
    let body = String::from_utf8_lossy(&r.2);
    assert!(
        body.contains("kafka.message_max_bytes"),
        "413 body should name the limit: {body}"
    );

    // Every span, exactly once, under its project.
    let names: Vec<String> = want.keys().cloned().collect();
    let p1_names: Vec<String> = want
        .iter()
        .filter(|(_, p)| **p == p1)
        .map(|(n, _)| n.clone())
        .collect();
    let p2_names: Vec<String> = want
        .iter()
        .filter(|(_, p)| **p == p2)
        .map(|(n, _)| n.clone())
        .collect();
    let (missing1, _) =
        common::wait_for_spans(&archive_dir, &p1, &p1_names, Duration::from_secs(60));
    let (missing2, _) =
        common::wait_for_spans(&archive_dir, &p2, &p2_names, Duration::from_secs(60));
    assert!(
        missing1.is_empty() && missing2.is_empty(),
        "spans missing from the archive: {} of {p1} (first {:?}), {} of {p2} (first {:?})",
        missing1.len(),
        missing1.first(),
        missing2.len(),
        missing2.first()
    );
    let all = common::archive_spans_in(&archive_dir, None);
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for r in &all {
        let name = r["span"]["name"].as_str().unwrap().to_string();
        let project = r["project_id"].as_str().unwrap();
        let expected = want.get(&name).copied();
        assert_eq!(
            expected,
            Some(project),
            "span {name} archived under {project}: {r}"
        );
        *counts.entry(name).or_default() += 1;
    }
    let dupes: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(
        dupes.is_empty(),
        "duplicated spans without any failure: {dupes:?}"
    );
    assert_eq!(counts.len(), names.len());
    assert!(
        !counts.keys().any(|n| n.starts_with("raw-huge")),
        "the refused request was archived"
    );

    // The archived envelopes of p2: compressed ones forwarded (zstd: the two clean zstd posts,
    // gzip: the small one); zstd by the gateway (kafka.compression = "payload_zstd"): the
    // plain "raw-big" post; the rest plain (under 4 KiB, and the split parts).
    let batches = common::archive_batches_in(&archive_dir, Some(&p2));
    let encodings = common::envelope_encodings(&batches);
    assert_eq!(encodings.get(&(2, 1)), Some(&3), "{encodings:?}");
    assert_eq!(encodings.get(&(2, 2)), Some(&1), "{encodings:?}");
    assert_eq!(encodings.keys().len(), 3, "{encodings:?}");
    for b in &batches {
        let plain =
            tracegate_otlp::envelope::plain_request(b, tracegate_otlp::envelope::MAX_PLAIN_BYTES)
                .expect("archived payload readable");
        if b.otlp_request_encoding != 0 {
            assert!(b.otlp_request.len() * 4 < plain.len(), "not compressed");
            assert_eq!(b.part_count, 0, "a compressed envelope is never a part");
        }
    }

    // Objects are named by the deterministic offset range `topic:partition:first-last`.
    let objects: Vec<String> = walk_names(&archive_dir.join("archive"));
    assert!(!objects.is_empty());
    for o in &objects {
        assert!(
            parse_object_name(o).is_some(),
            "archive object {o} is not named <topic>_<partition>_<first>-<last>.tga"
        );
    }

    let gm = gw.metrics();
    assert!(
        common::metric_value(&gm, "tracegate_kafka_split_batches_total") >= 1.0,
        "{gm}"
    );
    assert!(common::metric_value(&gm, "tracegate_kafka_produced_messages_total") >= 10.0);
    assert!(common::metric_value(&gm, "tracegate_kafka_brokers_up") >= 1.0);
    assert!(gm.contains("tracegate_kafka_delivery_duration_seconds_bucket"));
    assert!(writer.metric("tracegate_kafka_writer_batches_total") >= 1.0);
    assert!(writer.metric("tracegate_kafka_writer_spans_total") >= names.len() as f64);
    assert_eq!(
        common::get(&format!("http://{}/readyz", writer.admin)).0,
        200
    );

    let s = writer.terminate();
    assert!(s.success(), "writer SIGTERM exit status {s}");
    let s = gw.terminate();
    assert!(s.success(), "gateway SIGTERM exit status {s}");
}

#[test]
fn kafka_config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    // `write` without a [kafka] section.
    let out = common::run_tracegate(&["write", "--data-dir", d], &[], common::CMD_TIMEOUT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("kafka"), "{err}");
    // A bad broker list, from the environment, for both commands.
    for cmd in [
        &["write", "--data-dir", d][..],
        &["serve", "--data-dir", d][..],
    ] {
        let out = common::run_tracegate(
            cmd,
            &[("TRACEGATE_KAFKA__BROKERS", "no-port")],
            common::CMD_TIMEOUT,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("kafka.brokers"),
            "{cmd:?}: {err}"
        );
    }
    // An unknown key in the section, from a file.
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[kafka]\nbrokers = \"127.0.0.1:9\"\nbatch_max_spanz = 3\n",
    )
    .unwrap();
    let out = common::run_tracegate(
        &["write", "--config", cfg.to_str().unwrap(), "--data-dir", d],
        &[],
        common::CMD_TIMEOUT,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("batch_max_spanz"),
        "{err}"
    );
}

/// Envelopes produced straight to the topic: plain (v1), forwarded zstd / gzip (v2) and one of
/// a future schema version (one past this build's). The writer archives the readable ones (decoding the compressed
/// payloads for `archive cat`), quarantines the newer one byte for byte (never dropped, never
/// misread) and goes on past it.
#[test]
fn writer_reads_compressed_envelopes_and_quarantines_a_newer_schema() {
    use prost::Message as _;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use tracegate_proto::v1::{Batch, PayloadEncoding};

    const Q_TOPIC: &str = "tracegate-e2e-q";
    let broker = TestBroker::start(&[(Q_TOPIC, 1)]);
    let wr_dir = common::temp_dir("tg-kafka-q-");
    let cfg = writer_toml(wr_dir.path(), &broker, Q_TOPIC, "q", "");
    let data = wr_dir.path().join("data");
    let project = common::unique_project("kafka-q");
    let envelope = |prefix: &str, encoding: PayloadEncoding, version: u32| {
        let plain = common::encode(&common::request_n(prefix, 0, 5));
        let (body, plain_len) = match encoding {
            PayloadEncoding::Identity => (plain.clone(), 0),
            PayloadEncoding::Zstd => (zstd::encode_all(&plain[..], 3).unwrap(), plain.len()),
            PayloadEncoding::Gzip => (common::gzip(&plain), plain.len()),
        };
        Batch {
            schema_version: version,
            batch_id: prefix.as_bytes().to_vec().into(),
            org_id: "org-q".into(),
            project_id: project.clone(),
            span_count: 5,
            otlp_request: body.into(),
            otlp_request_encoding: encoding as i32,
            otlp_request_plain_len: plain_len as u64,
            ..Default::default()
        }
        .encode_to_vec()
    };
    let values = [
        envelope("q-plain", PayloadEncoding::Identity, 1),
        envelope("q-zstd", PayloadEncoding::Zstd, 2),
        envelope(
            "q-future",
            PayloadEncoding::Zstd,
            tracegate_proto::BATCH_SCHEMA_VERSION + 1,
        ),
        envelope("q-gzip", PayloadEncoding::Gzip, 2),
    ];
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .create()
        .unwrap();
    for v in &values {
        producer
            .send(BaseRecord::<[u8], [u8]>::to(Q_TOPIC).payload(&v[..]))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    let mut writer = Writer::start(&data, Some(&cfg), &[]);
    let want: Vec<String> = ["q-plain", "q-zstd", "q-gzip"]
        .iter()
        .flat_map(|p| (0..5).map(move |i| format!("{p}-{i}")))
        .collect();
    let (missing, _) = common::wait_for_spans(&data, &project, &want, Duration::from_secs(60));
    assert!(missing.is_empty(), "missing from the archive: {missing:?}");
    let names = common::span_names(&common::archive_spans_in(&data, Some(&project)));
    assert_eq!(names.len(), want.len(), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("q-future")));
    // The archive keeps the envelopes as produced.
    let encodings = common::envelope_encodings(&common::archive_batches_in(&data, Some(&project)));
    assert_eq!(
        encodings.into_iter().collect::<Vec<_>>(),
        vec![((1, 0), 1), ((2, 1), 1), ((2, 2), 1)]
    );
    let q = data
        .join("kafka-quarantine")
        .join(Q_TOPIC)
        .join("0-2.schema_too_new.bin");
    assert!(
        common::wait_until(Duration::from_secs(10), || q.exists()),
        "no quarantine file {}",
        q.display()
    );
    assert_eq!(std::fs::read(&q).unwrap(), values[2]);
    assert_eq!(
        writer.metric("tracegate_kafka_writer_quarantined_messages_total"),
        1.0
    );
    let s = writer.terminate();
    assert!(s.success(), "writer SIGTERM exit status {s}");
}

/// `n` pseudo-random alphanumeric characters (zstd cannot shrink them much).
fn incompressible(n: usize) -> String {
    noise(
        &mut 0x9E37_79B9_7F4A_7C15,
        n,
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
    )
}

/// `n` characters of `alphabet` picked by a xorshift64 generator whose state is `x`.
fn noise(x: &mut u64, n: usize, alphabet: &[u8]) -> String {
    (0..n)
        .map(|_| {
            *x ^= *x << 13;
            *x ^= *x >> 7;
            *x ^= *x << 17;
            char::from(alphabet[(*x % alphabet.len() as u64) as usize])
        })
        .collect()
}

/// A plain request of several hundred KB arrives in several frames and is joined into a buffer
/// with room before it; with the defaults (no payload compression, 1 MB messages) its Kafka
/// message is written around it there (`kafka::split::message_in_room`), and the writer reads
/// every span of it once.
#[test]
fn a_large_plain_request_is_produced_from_the_buffer_it_was_read_into() {
    const TOPIC: &str = "tracegate-room";
    let broker = TestBroker::start(&[(TOPIC, 2)]);
    let gw_dir = common::temp_dir("tg-room-gw-");
    let wr_dir = common::temp_dir("tg-room-wr-");
    let env = broker.env(TOPIC);
    let mut gw = Gateway::start_in(gw_dir.path(), &common::env_refs(&env));
    let cfg = writer_toml(wr_dir.path(), &broker, TOPIC, "room", "");
    let mut writer = Writer::start(&wr_dir.path().join("data"), Some(&cfg), &[]);
    let project = common::unique_project("kafka-room");
    let key = gw.create_key(&project);
    gw.wait_ready(Duration::from_secs(20));

    let mut req = common::request_n("room", 0, 200);
    for s in &mut req.resource_spans[0].scope_spans[0].spans {
        s.attributes
            .push(common::kv_str("gen_ai.prompt", &"p".repeat(3000)));
    }
    // Over hyper's ~400 KB read buffer (so several frames), under one 1 MB message.
    let len = common::encode(&req).len();
    assert!((500_000..900_000).contains(&len), "{len} bytes");
    let r = common::post_protobuf(&gw, &key, &req);
    assert_eq!(r.0, 200, "{:?}", String::from_utf8_lossy(&r.2));
    let gm = gw.metrics();
    assert!(
        common::metric_value(&gm, "tracegate_kafka_in_place_messages_total") >= 1.0,
        "the message was not written in the body's buffer: {gm}"
    );
    assert_eq!(
        common::metric_value(&gm, "tracegate_kafka_split_batches_total"),
        0.0
    );

    let want: Vec<String> = (0..200).map(|i| format!("room-{i}")).collect();
    let (missing, records) = common::wait_for_spans(
        &wr_dir.path().join("data"),
        &project,
        &want,
        Duration::from_secs(60),
    );
    assert!(
        missing.is_empty(),
        "missing spans: {:?}",
        &missing[..missing.len().min(5)]
    );
    assert_eq!(records.len(), want.len(), "every span exactly once");
    for r in &records {
        let attrs = r["span"]["attributes"].to_string();
        assert!(
            attrs.contains(&"p".repeat(3000)),
            "the prompt arrived whole: {r}"
        );
    }
    let s = writer.terminate();
    assert!(s.success(), "writer SIGTERM exit status {s}");
    let s = gw.terminate();
    assert!(s.success(), "gateway SIGTERM exit status {s}");
}
