//! The crash test on the full path: OTLP → `tracegate serve` → Kafka (the librdkafka
//! mock cluster in its own process) → `tracegate write` → ClickHouse (chdb behind the test
//! front), with the writer killed -9 repeatedly under load. The writer's groups are offset
//! ranges (`topic:partition:first-last`) that a restarted writer cuts again, and the ClickHouse
//! sink uses them as `insert_deduplication_token`: `count()` must equal the acknowledged spans
//! and `count() - uniqExact(TraceId, SpanId)` must be 0.
//!
//! To make "ClickHouse committed the insert but the writer never learned it" frequent rather
//! than a matter of luck, the front also drops 20 % of insert answers after committing them.
//! The negative control runs the same scenario without deterministic tokens and must see
//! duplicates. Requests are plain, zstd and gzip in turn, so the compressed envelopes the
//! gateway forwards (schema version 2) go through the same kills and dedup.
//!
//! Scale: the figures, 1 000 000 sequence-numbered spans and 20 kills at random moments
//! (`TRACEGATE_TEST_KAFKA_CH_SPANS`, `TRACEGATE_TEST_KAFKA_CH_KILLS` override them). The load is
//! sent in 1 000-span requests, as fast as the gateway takes it, while the writer is killed at
//! random points of its work. The negative control only has to show
//! that duplicates appear, so it runs a tenth of the spans and a quarter of the kills.

mod common;

use std::time::{Duration, Instant};

use common::{ChFront, Gateway, Load, TestBroker, Writer};

const SPANS_PER_REQUEST: u64 = 1000;

struct Outcome {
    acked_spans: u64,
    count: u64,
    uniq: u64,
    kills: usize,
    elapsed: Duration,
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run(topic: &str, db: &str, dedup: bool, spans: u64, kills: usize) -> Outcome {
    let started = Instant::now();
    let broker = TestBroker::start(&[(topic, 8)]);
    let front = ChFront::start(&["--fault-ack-loss", "0.2", "--seed", "11"]);
    let gw_dir = common::temp_dir("tg-kch-gw-");
    let wr_dir = common::temp_dir("tg-kch-wr-");
    let mut env = broker.env(topic);
    env.extend(common::clickhouse_env(&front, db));
    for (k, v) in [
        ("TRACEGATE_KAFKA__SESSION_TIMEOUT_MS", "6000"),
        ("TRACEGATE_KAFKA__BATCH_MAX_AGE_MS", "200"),
        ("TRACEGATE_KAFKA__BATCH_MAX_SPANS", "5000"),
        ("TRACEGATE_KAFKA__PARTITION_KEY", "batch"),
        // Not the default ("none"): payloads compressed by the gateway go through the writer.
        ("TRACEGATE_KAFKA__COMPRESSION", "payload_zstd"),
        (
            "TRACEGATE_CLICKHOUSE__INSERT_DEDUPLICATION",
            if dedup { "true" } else { "false" },
        ),
    ] {
        env.push((k.to_string(), v.to_string()));
    }
    common::migrate(&env);
    let env = common::env_refs(&env);
    let gw = Gateway::start_in(gw_dir.path(), &env);
    let project = common::unique_project(db);
    let key = gw.create_key(&project);
    let mut writer = Writer::start(wr_dir.path(), None, &env);
    let requests = spans.div_ceil(SPANS_PER_REQUEST);
    // Plain, zstd and gzip requests in turn: the compressed ones travel as the client's bytes
    // (envelope schema 2) and the writer decompresses them for ClickHouse.
    let mut load = Load::start_spread(
        &[&gw.traces_url()],
        &key,
        "kch",
        2,
        SPANS_PER_REQUEST,
        Duration::ZERO,
        Duration::from_millis(100),
        &["identity", "zstd", "gzip"],
    );
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
    let mut rnd = |lo: u64, hi: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        lo + seed % (hi - lo)
    };
    let mut loading = true;
    let count_sql = format!(
        "SELECT count(), uniqExact(TraceId, SpanId) FROM {db}.otel_traces \
         WHERE ProjectId = '{project}' FORMAT TSV"
    );
    let read = || -> (u64, u64) {
        let out = front.query(&count_sql);
        let mut it = out.split_whitespace().map(|v| v.parse::<u64>().unwrap());
        (it.next().unwrap(), it.next().unwrap())
    };
    // Kill at random moments while there is still work: each writer lives until it has
    // committed a random 1-3 batches (of at most 5 000 spans; a million spans make at least
    // 200), then a random pause, then -9. So every kill lands in the middle of the run, with
    // batches cut, inserted, archived or committed at that instant.
    // A fast writer can finish the whole load before the last kill: then there is nothing left
    // to kill it in the middle of, and the loop ends (at least two kills must have happened).
    let mut done_kills = 0;
    let mut last_check = Instant::now();
    for k in 0..kills {
        let batches = rnd(1, 4) as f64;
        let mut drained = false;
        let progressed = common::wait_until(Duration::from_secs(120), || {
            if loading && load.acked() as u64 >= requests {
                load.stop();
                loading = false;
            }
            if writer.metric("tracegate_kafka_writer_batches_total") >= batches {
                return true;
            }
            if !loading && last_check.elapsed() > Duration::from_secs(1) {
                last_check = Instant::now();
                drained = read().1 >= load.acked() as u64 * SPANS_PER_REQUEST;
            }
            drained
        });
        assert!(progressed, "kill {k}: the writer made no progress");
        if drained {
            eprintln!("[kafka→clickhouse] every acknowledged span written after {k} kills");
            break;
        }
        std::thread::sleep(Duration::from_millis(rnd(0, 500)));
        writer.kill9();
        writer = Writer::start(wr_dir.path(), None, &env);
        done_kills += 1;
    }
    assert!(
        done_kills >= kills.min(2),
        "only {done_kills} kills landed while there was work"
    );
    let kills = done_kills;
    assert!(common::wait_until(Duration::from_secs(600), || {
        if loading && load.acked() as u64 >= requests {
            load.stop();
            loading = false;
        }
        !loading
    }));
    let acked_spans = load.acked() as u64 * SPANS_PER_REQUEST;
    eprintln!(
        "[kafka→clickhouse] {acked_spans} spans acked after {:?}; {} in ClickHouse",
        started.elapsed(),
        read().1
    );
    // Acknowledged by the gateway = in Kafka; wait for the writer to bring all of it over.
    let deadline = Instant::now() + Duration::from_secs(600);
    while read().1 < acked_spans && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    // The writer drains and exits; then the final figures.
    let s = writer.terminate();
    assert!(s.success(), "writer exit {s}");
    let (count, uniq) = read();
    // The writer's archive holds the envelopes as produced: zstd (v2; the client's, forwarded,
    // or the gateway's for plain bodies, kafka.compression = "payload_zstd") and forwarded gzip
    // (v2). Plain v1 envelopes through the writer: kafka_e2e (requests under 4 KiB).
    let encodings =
        common::envelope_encodings(&common::archive_batches_in(wr_dir.path(), Some(&project)));
    for want in [(2, 1), (2, 2)] {
        assert!(
            encodings.get(&want).is_some_and(|n| *n > 0),
            "no archived envelope with (schema_version, encoding) {want:?}: {encodings:?}"
        );
    }
    Outcome {
        acked_spans,
        count,
        uniq,
        kills,
        elapsed: started.elapsed(),
    }
}

#[test]
fn kafka_writer_killed_repeatedly_exactly_once_in_clickhouse() {
    let spans = env_or("TRACEGATE_TEST_KAFKA_CH_SPANS", 1_000_000);
    let kills = env_or("TRACEGATE_TEST_KAFKA_CH_KILLS", 20) as usize;
    let o = run("tracegate-kch", "kch", true, spans, kills);
    eprintln!(
        "[kafka→clickhouse] {} kills: acked {} spans, count {}, uniq {} in {:?}",
        o.kills, o.acked_spans, o.count, o.uniq, o.elapsed
    );
    assert!(o.acked_spans >= spans, "the load was acknowledged in full");
    assert_eq!(
        o.uniq, o.acked_spans,
        "every acknowledged span is in ClickHouse"
    );
    assert_eq!(
        o.count, o.acked_spans,
        "count() equals the acknowledged spans"
    );
    assert_eq!(o.count - o.uniq, 0, "no duplicates");
}

#[test]
fn kafka_negative_control_without_tokens_duplicates() {
    let spans = env_or("TRACEGATE_TEST_KAFKA_CH_SPANS", 1_000_000) / 10;
    let kills = (env_or("TRACEGATE_TEST_KAFKA_CH_KILLS", 20) as usize / 4).max(2);
    let o = run("tracegate-kch-nc", "kch_nc", false, spans, kills);
    eprintln!(
        "[kafka→clickhouse, no tokens] {} kills: acked {} spans, count {}, uniq {} in {:?}",
        o.kills, o.acked_spans, o.count, o.uniq, o.elapsed
    );
    assert_eq!(o.uniq, o.acked_spans);
    assert!(
        o.count > o.uniq,
        "negative control: without deterministic tokens the rewrites must duplicate"
    );
}
