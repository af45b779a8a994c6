//! The Kafka writer's sinks failing under load: it archives to S3 with envelope keys from KMS
//! (both from moto) and inserts into ClickHouse (chdb behind the test front), and KMS, then S3,
//! then ClickHouse become unreachable in turn:
//! - the writer retries the same batch and commits no offset past it (the group's committed
//!   offsets, read from the broker, stand still for the whole outage), and no batch completes;
//! - its memory stays bounded (the consumer pauses the partitions whose next batch waits);
//! - once the service is back it carries on, and in the end every acknowledged span is in the
//!   archive exactly once (one object per offset range, the ranges disjoint) and in ClickHouse
//!   exactly once (`count()` = `uniqExact(TraceId, SpanId)` = acknowledged spans).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const TOPIC: &str = "tracegate-archive-down";
const PARTITIONS: i32 = 4;
const GROUP: &str = "tracegate-writer";
/// The writer's buffer bound (`kafka.writer_max_buffered_bytes`): far below what piles up in
/// Kafka during the outages.
const BUFFER_BOUND: u64 = 1 << 20;

/// The writer group's committed offsets, read from the broker (OffsetFetch; this client does
/// not join the group).
fn committed(bootstrap: &str) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", GROUP)
        .create()
        .expect("offset reader");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(TOPIC, p);
    }
    let got = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    (0..PARTITIONS)
        .map(|p| match got.find_partition(TOPIC, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => -1,
        })
        .collect()
}

#[test]
fn kafka_writer_retries_while_kms_s3_or_clickhouse_is_down_commits_nothing_and_stays_bounded() {
    let moto = Moto::start();
    let bucket = "tg-kafka-down";
    moto.create_bucket(bucket);
    let kms_key = moto.create_kms_key();
    let moto_addr = moto.endpoint.trim_start_matches("http://").parse().unwrap();
    let s3p = SwitchProxy::start(moto_addr);
    let mut front = ChFront::start(&[]);
    let kmsp = SwitchProxy::start(moto_addr);
    let broker = TestBroker::start(&[(TOPIC, PARTITIONS)]);
    let gw_dir = tempfile::tempdir().unwrap();
    let wr_dir = tempfile::tempdir().unwrap();

    let mut gw_env = broker.env(TOPIC);
    gw_env.push(("TRACEGATE_KAFKA__PARTITION_KEY".into(), "batch".into()));
    // The outages below pile up a backlog in Kafka; zstd'ed payloads (~20x on these similar
    // spans) keep it within what the mock broker keeps per partition (below).
    gw_env.push(("TRACEGATE_KAFKA__COMPRESSION".into(), "payload_zstd".into()));
    let gw = Gateway::start_in(gw_dir.path(), &env_refs(&gw_env));
    let key = gw.create_key("kdown");

    let mut wr_env = broker.env(TOPIC);
    wr_env.extend(moto.env());
    wr_env.extend([
        ("AWS_ENDPOINT_URL_S3".into(), s3p.url()),
        ("AWS_ENDPOINT_URL_KMS".into(), kmsp.url()),
        ("TRACEGATE_ARCHIVE__URL".into(), format!("s3://{bucket}")),
        ("TRACEGATE_ARCHIVE__KEY_PROVIDER".into(), "aws-kms".into()),
        ("TRACEGATE_ARCHIVE__KMS_KEY_ID".into(), kms_key),
        ("TRACEGATE_ARCHIVE__TIMEOUT_MS".into(), "1000".into()),
        ("TRACEGATE_KAFKA__BATCH_MAX_AGE_MS".into(), "100".into()),
        ("TRACEGATE_KAFKA__BATCH_MAX_SPANS".into(), "500".into()),
        (
            "TRACEGATE_KAFKA__BATCH_MAX_BYTES".into(),
            (BUFFER_BOUND / 4).to_string(),
        ),
        ("TRACEGATE_KAFKA__SESSION_TIMEOUT_MS".into(), "6000".into()),
        ("TRACEGATE_KAFKA__PARTITION_KEY".into(), "batch".into()),
        (
            "TRACEGATE_KAFKA__WRITER_MAX_BUFFERED_BYTES".into(),
            BUFFER_BOUND.to_string(),
        ),
    ]);
    wr_env.extend(clickhouse_env(&front, "kdown"));
    migrate(&wr_env);
    let mut writer = Writer::start(wr_dir.path(), None, &env_refs(&wr_env));

    let mut load = Load::start(
        &gw.traces_url(),
        &key,
        "kdown",
        2,
        // About 8 000 spans/s (~1 MB/s plain): an outage piles up ten times the writer's buffer
        // bound in Kafka, yet, zstd'ed, stays within what the mock broker keeps per partition
        // (~5 MiB; beyond that it drops the oldest messages, which is not what this test is
        // about).
        100,
        Duration::from_millis(20),
        Duration::from_millis(100),
    );
    assert!(
        wait_until(Duration::from_secs(60), || {
            writer.metric("tracegate_kafka_writer_batches_total") >= 3.0
        }),
        "the writer archives nothing while S3 and KMS are up"
    );
    let baseline_rss = rss_kib(writer.pid());
    let mut max_rss = baseline_rss;

    for what in ["kms", "s3", "clickhouse"] {
        match what {
            "kms" => kmsp.set_down(true),
            "s3" => s3p.set_down(true),
            _ => front.kill9(),
        }
        // A batch already past the step that is now cut off may still finish; after that
        // nothing can.
        thread::sleep(Duration::from_secs(2));
        let offsets0 = committed(&broker.bootstrap);
        let batches0 = writer.metric("tracegate_kafka_writer_batches_total");
        let acked0 = load.acked();
        let produced0 = metric_value(&gw.metrics(), "tracegate_kafka_produced_bytes_total");
        let mut max_buffered = 0f64;
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            max_rss = max_rss.max(rss_kib(writer.pid()));
            max_buffered = max_buffered.max(writer.metric("tracegate_kafka_writer_buffered_bytes"));
            thread::sleep(Duration::from_millis(200));
        }
        let backlog =
            metric_value(&gw.metrics(), "tracegate_kafka_produced_bytes_total") - produced0;
        eprintln!(
            "{what} down: {backlog} bytes produced to Kafka in 10 s; writer buffered at most \
             {max_buffered} bytes (bound {BUFFER_BOUND})"
        );
        // One batch beyond the bound can be in flight when the pause takes effect.
        assert!(
            max_buffered <= (2 * BUFFER_BOUND) as f64,
            "{what} down: the writer buffered {max_buffered} bytes (bound {BUFFER_BOUND})"
        );
        let offsets1 = committed(&broker.bootstrap);
        let batches1 = writer.metric("tracegate_kafka_writer_batches_total");
        eprintln!(
            "{what} down: committed {offsets0:?} -> {offsets1:?}, batches {batches0} -> \
             {batches1}, acked requests {acked0} -> {}, max rss {max_rss} KiB",
            load.acked()
        );
        assert!(
            load.acked() > acked0 + 10,
            "{what} down: the gateway must keep accepting (Kafka is up)"
        );
        assert_eq!(
            offsets1, offsets0,
            "{what} down: the writer committed offsets while it could not archive"
        );
        assert_eq!(
            batches1, batches0,
            "{what} down: a batch completed while {what} was unreachable"
        );
        match what {
            "kms" => kmsp.set_down(false),
            "s3" => s3p.set_down(false),
            _ => front.restart(),
        }
        assert!(
            wait_until(Duration::from_secs(60), || {
                writer.metric("tracegate_kafka_writer_batches_total") >= batches1 + 2.0
            }),
            "{what} back: the writer does not recover"
        );
        let offsets2 = committed(&broker.bootstrap);
        assert!(
            offsets2.iter().zip(&offsets1).any(|(a, b)| a > b),
            "{what} back: committed offsets do not advance: {offsets1:?} -> {offsets2:?}"
        );
    }
    // What piled up in Kafka during the outages is not held in memory: the writer's buffer is
    // bounded, and so is librdkafka's pre-fetch queue (a quarter of it, at least 2 fetches).
    assert!(
        max_rss < baseline_rss + 48 * 1024,
        "writer memory grew from {baseline_rss} KiB to {max_rss} KiB during the outages"
    );

    load.stop();
    let want: BTreeSet<String> = load.acked_span_names().into_iter().collect();
    // Everything acknowledged reaches the archive; then the writer drains and exits.
    let last = broker_end_offsets_committed(&broker.bootstrap, &writer);
    assert!(last, "the writer did not catch up with the topic");
    let s = writer.terminate();
    assert!(s.success(), "writer exit {s}");

    let out = tracegate_ok(wr_dir.path(), &["archive", "cat"], &wr_env);
    let records: Vec<serde_json::Value> = out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let names = span_names(&records);
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for n in &names {
        *seen.entry(n.as_str()).or_default() += 1;
    }
    let missing: Vec<_> = want
        .iter()
        .filter(|n| !seen.contains_key(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged spans are not in the archive, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let doubled: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
    assert!(
        doubled.is_empty(),
        "spans archived twice: {:?}",
        &doubled[..doubled.len().min(5)]
    );

    // One object per offset range, and the ranges of a partition never overlap.
    let keys = moto.list_keys(bucket, "");
    let mut ranges: Vec<(i32, i64, i64)> = keys
        .iter()
        .filter_map(|k| k.rsplit('/').next())
        .filter(|n| n.starts_with(&format!("{TOPIC}_")))
        .filter_map(parse_object_name)
        .collect();
    assert_eq!(
        ranges.len(),
        keys.len(),
        "unexpected object names: {keys:?}"
    );
    ranges.sort();
    for w in ranges.windows(2) {
        if w[0].0 == w[1].0 {
            assert!(
                w[0].2 < w[1].1,
                "overlapping archived ranges {:?} and {:?}",
                w[0],
                w[1]
            );
        }
    }
    // Every object is stored with SSE-KMS (one HeadObject each, in one boto3 run).
    let sse = moto.boto(&format!(
        "p = s3.get_paginator('list_objects_v2')\n\
         for page in p.paginate(Bucket={bucket:?}):\n\
         \x20   for o in page.get('Contents', []):\n\
         \x20       h = s3.head_object(Bucket={bucket:?}, Key=o['Key'])\n\
         \x20       print(o['Key'], h.get('ServerSideEncryption', '-'), h.get('SSEKMSKeyId', '-'))"
    ));
    let lines: Vec<&str> = sse.lines().collect();
    assert_eq!(lines.len(), keys.len());
    for l in lines {
        let f: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(f.len(), 3, "{l}");
        assert_eq!(f[1], "aws:kms", "{}: not stored with SSE-KMS", f[0]);
        assert!(f[2].starts_with("arn:aws:kms:"), "{}: no KMS key id", f[0]);
    }

    // And ClickHouse has every acknowledged span once.
    let out = front.query(
        "SELECT count(), uniqExact(TraceId, SpanId) FROM kdown.otel_traces \
         WHERE ProjectId = 'kdown' FORMAT TSV",
    );
    let v: Vec<u64> = out
        .split_whitespace()
        .map(|x| x.parse().expect("count"))
        .collect();
    assert_eq!(
        v,
        vec![want.len() as u64, want.len() as u64],
        "ClickHouse count() and uniqExact must equal the acknowledged spans"
    );
    drop(gw);
}

/// Waits until the writer's committed offsets reach the end of every partition.
fn broker_end_offsets_committed(bootstrap: &str, writer: &Writer) -> bool {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "tracegate-test-watermarks")
        .create()
        .expect("watermark reader");
    wait_until(Duration::from_secs(120), || {
        let ends: Vec<i64> = (0..PARTITIONS)
            .map(|p| {
                c.fetch_watermarks(TOPIC, p, Duration::from_secs(5))
                    .map(|(_, hi)| hi)
                    .unwrap_or(i64::MAX)
            })
            .collect();
        let _ = writer.metric("tracegate_kafka_writer_batches_total");
        committed(bootstrap) == ends
    })
}
