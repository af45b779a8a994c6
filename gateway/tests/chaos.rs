//! Chaos across processes (issue 22, short form): the production layout on loopback, each part
//! its own process — the test broker, two gateways, two writers, ClickHouse (the chdb front),
//! S3 and KMS (moto), the PostgreSQL key store —
//! under a load of sequence-numbered spans from clients with OTLP retry semantics (every
//! failed or unanswered request is sent again, the same bytes, to the other gateway), while
//! faults fall on a seeded schedule: kill -9 of a gateway, kill -9 of a writer, the broker down
//! and up, broker round trips slowed, the ClickHouse front killed and restarted, S3 and KMS
//! (moto, the archive's store and keys) unreachable, the PostgreSQL key store stopped;
//! throughout,
//! proxies in front of the gateways cut 5 % of the answers after the gateway acknowledged (the
//! request is durable, the client never hears it), and the front loses 10 % of insert answers.
//!
//! The archive is on S3 under a KMS key (moto), written by both writers.
//!
//! The oracle: every acknowledged span is in ClickHouse exactly once (`count() =
//! uniqExact(TraceId, SpanId)` = the acknowledged spans, and every acknowledged name present)
//! and in the archive exactly once; the writers' committed offsets reached the end of the log
//! and every span of every message below them is stored. The negative control, the same run with `dedup.window_secs
//! = 0`, must store some span twice, or the oracle proves nothing.
//!
//! Scale: `TRACEGATE_TEST_CHAOS_REQUESTS` requests of 100 spans (default 1 000: 100 000 spans),
//! seed `TRACEGATE_TEST_CHAOS_SEED`. The long form is the same test with more requests
//! (docs/reliability.md).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{ChFront, Gateway, Load, Moto, PgKeys, SwitchProxy, TestBroker, Writer};

const SPANS_PER_REQUEST: u64 = 100;
const TOPIC_PARTITIONS: i32 = 4;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64: the fault schedule, reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

struct Outcome {
    acked_spans: u64,
    ch_count: u64,
    ch_uniq: u64,
    ch_missing: usize,
    archive_twice: usize,
    archive_missing: usize,
    faults: HashMap<&'static str, usize>,
    answers_cut: u64,
    /// Spans of messages below the committed offsets that are not in storage.
    logged_not_stored: usize,
    committed: i64,
    log_end: i64,
}

/// How long the broker stays up after the writers' group last changed (a writer killed or
/// started, the broker down). librdkafka's mock cluster (2.12.1, `rdkafka_mock_cgrp.c`,
/// `rd_assert(!member->resp)`) aborts when a member sends JoinGroup again while its first is
/// pending, which is what a broker outage during a rebalance makes a consumer do; a rebalance
/// after a kill waits for the dead member's session (6 s here). A real broker answers the
/// second JoinGroup; the mock dies and takes the run with it (seen in a long-form run).
const GROUP_SETTLE: Duration = Duration::from_secs(10);

struct Layout {
    broker: TestBroker,
    /// When the writers' consumer group last changed (see [`GROUP_SETTLE`]).
    group_changed: Instant,
    front: ChFront,
    _moto: Moto,
    /// The gateways' key store.
    keys: PgKeys,
    /// In front of S3 and of KMS (both moto): switched down for the "S3 failing" fault.
    s3: SwitchProxy,
    kms: SwitchProxy,
    gateways: Vec<Gateway>,
    proxies: Vec<SwitchProxy>,
    writers: Vec<Writer>,
    env: Vec<(String, String)>,
}

impl Layout {
    fn start(topic: &str, db: &str, window_secs: u64, gw_dir: &Path, wr_dir: &Path) -> Layout {
        let broker = TestBroker::start(&[(topic, TOPIC_PARTITIONS)]);
        let front = ChFront::start(&["--fault-ack-loss", "0.1", "--seed", "5"]);
        // The archive on S3 with a KMS key, both moto, each behind a switch.
        let moto = Moto::start();
        moto.create_bucket("chaos");
        let kms_key = moto.create_kms_key();
        let moto_addr = moto.endpoint.trim_start_matches("http://").parse().unwrap();
        let (s3, kms) = (SwitchProxy::start(moto_addr), SwitchProxy::start(moto_addr));
        let keys = PgKeys::start();
        let mut env = broker.env(topic);
        env.extend(common::clickhouse_env(&front, db));
        env.extend(keys.env().into_iter().map(|(k, v)| (k.to_string(), v)));
        env.extend(moto.env());
        env.extend([
            ("AWS_ENDPOINT_URL_S3".into(), s3.url()),
            ("AWS_ENDPOINT_URL_KMS".into(), kms.url()),
            ("TRACEGATE_ARCHIVE__URL".into(), format!("s3://chaos/{db}")),
            ("TRACEGATE_ARCHIVE__KEY_PROVIDER".into(), "aws-kms".into()),
            ("TRACEGATE_ARCHIVE__KMS_KEY_ID".into(), kms_key),
            ("TRACEGATE_ARCHIVE__TIMEOUT_MS".into(), "1000".into()),
        ]);
        for (k, v) in [
            ("TRACEGATE_KAFKA__SESSION_TIMEOUT_MS", "6000".to_string()),
            ("TRACEGATE_KAFKA__BATCH_MAX_AGE_MS", "200".into()),
            ("TRACEGATE_KAFKA__BATCH_MAX_SPANS", "5000".into()),
            ("TRACEGATE_KAFKA__PARTITION_KEY", "batch".into()),
            ("TRACEGATE_KAFKA__DELIVERY_TIMEOUT_MS", "3000".into()),
            ("TRACEGATE_DEDUP__WINDOW_SECS", window_secs.to_string()),
        ] {
            env.push((k.to_string(), v));
        }
        common::migrate(&env);
        let refs = common::env_refs(&env);
        // Both gateways on one data dir (a Kafka gateway writes nothing there that the other
        // reads); their keys are in PostgreSQL.
        let gateways: Vec<Gateway> = (0..2).map(|_| Gateway::start_in(gw_dir, &refs)).collect();
        let proxies = gateways
            .iter()
            .map(|g| {
                let p = SwitchProxy::start(g.http);
                p.set_answer_loss(0.05);
                p
            })
            .collect();
        let writers = (0..2).map(|_| Writer::start(wr_dir, None, &refs)).collect();
        for g in &gateways {
            g.wait_ready(Duration::from_secs(20));
        }
        Layout {
            broker,
            group_changed: Instant::now(),
            front,
            _moto: moto,
            keys,
            s3,
            kms,
            gateways,
            proxies,
            writers,
            env,
        }
    }

    /// One fault from the schedule; returns its name.
    fn fault(&mut self, rng: &mut Rng, gw_dir: &Path, wr_dir: &Path) -> &'static str {
        let refs = common::env_refs(&self.env);
        match rng.below(7) {
            0 => {
                let i = rng.below(2) as usize;
                let g = &mut self.gateways[i];
                let (http, grpc) = (g.http.to_string(), g.grpc.to_string());
                g.kill9();
                std::thread::sleep(Duration::from_millis(rng.below(500)));
                self.gateways[i] = Gateway::start_with_addrs(gw_dir, &http, &grpc, &refs);
                "gateway kill -9"
            }
            1 => {
                let i = rng.below(2) as usize;
                self.writers[i].kill9();
                std::thread::sleep(Duration::from_millis(rng.below(500)));
                self.writers[i] = Writer::start(wr_dir, None, &refs);
                self.group_changed = Instant::now();
                "writer kill -9"
            }
            2 => {
                let settled = self.group_changed + GROUP_SETTLE;
                std::thread::sleep(settled.saturating_duration_since(Instant::now()));
                self.broker.cmd("down 1");
                std::thread::sleep(Duration::from_millis(500 + rng.below(1500)));
                self.broker.cmd("up 1");
                self.group_changed = Instant::now();
                "broker down"
            }
            3 => {
                self.broker.cmd("rtt 1 200");
                std::thread::sleep(Duration::from_millis(1000 + rng.below(1000)));
                self.broker.cmd("rtt 1 0");
                "broker slow"
            }
            4 => {
                self.s3.set_down(true);
                self.kms.set_down(true);
                std::thread::sleep(Duration::from_millis(500 + rng.below(1500)));
                self.s3.set_down(false);
                self.kms.set_down(false);
                "s3 and kms down"
            }
            5 => {
                // Cached keys keep working; a gateway restarted meanwhile answers 503 until
                // PostgreSQL is back.
                self.keys.pg.stop();
                std::thread::sleep(Duration::from_millis(500 + rng.below(1500)));
                self.keys.pg.restart();
                "postgres down"
            }
            _ => {
                self.front.kill9();
                std::thread::sleep(Duration::from_millis(500 + rng.below(1500)));
                self.front.restart();
                "clickhouse down"
            }
        }
    }
}

fn run(window_secs: u64, requests: u64, seed: u64) -> Outcome {
    let tag = if window_secs > 0 { "on" } else { "off" };
    let (topic, db) = (format!("tracegate-chaos-{tag}"), format!("chaos_{tag}"));
    let (gw_dir, wr_dir) = (
        common::temp_dir("tg-chaos-gw-"),
        common::temp_dir("tg-chaos-wr-"),
    );
    let mut l = Layout::start(&topic, &db, window_secs, gw_dir.path(), wr_dir.path());
    let project = common::unique_project(&format!("chaos-{tag}"));
    let (_, key) = l.keys.create(&project);
    let urls: Vec<String> = l
        .proxies
        .iter()
        .map(|p| format!("{}/v1/traces", p.url()))
        .collect();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let mut load = Load::start_spread(
        &urls,
        &key,
        "chaos",
        4,
        SPANS_PER_REQUEST,
        // ~20 requests/s: the run lasts long enough (~50 s at the default size) for a score of
        // faults of every kind to land in the middle of it.
        Duration::from_millis(200),
        Duration::from_millis(200),
        &["identity", "zstd", "gzip"],
    );
    let mut rng = Rng(seed | 1);
    let mut faults: HashMap<&'static str, usize> = HashMap::new();
    let started = Instant::now();
    // ~15 requests/s get through the faults: 10 minutes plus 100 ms per request.
    let deadline = Duration::from_secs(600) + Duration::from_millis(100) * requests as u32;
    while (load.acked() as u64) < requests {
        assert!(
            started.elapsed() < deadline,
            "only {} of {requests} requests acknowledged in {deadline:?}",
            load.acked()
        );
        std::thread::sleep(Duration::from_millis(500 + rng.below(1500)));
        let f = l.fault(&mut rng, gw_dir.path(), wr_dir.path());
        *faults.entry(f).or_default() += 1;
    }
    load.stop();
    let acked = load.acked_span_names();
    let acked_spans = acked.len() as u64;
    eprintln!(
        "[chaos {tag}] {} requests acknowledged in {:?}; faults {faults:?}; retried {}",
        load.acked(),
        started.elapsed(),
        load.log.lock().unwrap().retried
    );

    // Everything acknowledged reaches ClickHouse (bounded wait), then a little longer for
    // late copies.
    let count_sql = format!(
        "SELECT count(), uniqExact(TraceId, SpanId) FROM {db}.otel_traces \
         WHERE ProjectId = '{project}' FORMAT TSV"
    );
    let read = || -> (u64, u64) {
        let out = l.front.try_query(&count_sql).unwrap_or_default();
        let v: Vec<u64> = out
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        (
            v.first().copied().unwrap_or(0),
            v.get(1).copied().unwrap_or(0),
        )
    };
    common::wait_until(Duration::from_secs(180), || read().1 >= acked_spans);
    std::thread::sleep(Duration::from_secs(3));
    // The writers drain what they buffered and commit it (SIGTERM), so the log check below
    // sees their last offsets.
    for w in &mut l.writers {
        let s = w.terminate();
        assert!(s.success(), "writer exit {s}");
    }
    let (ch_count, ch_uniq) = read();
    let names_sql = format!(
        "SELECT DISTINCT SpanName FROM {db}.otel_traces WHERE ProjectId = '{project}' FORMAT TSV"
    );
    let in_ch: std::collections::HashSet<String> = l
        .front
        .query(&names_sql)
        .lines()
        .map(str::to_string)
        .collect();
    let ch_missing = acked.iter().filter(|n| !in_ch.contains(*n)).count();
    // The archive: every acknowledged span once.
    let mut counts: HashMap<String, usize> = HashMap::new();
    // Read back from moto through KMS: the short form takes seconds, the long form minutes.
    let read_for = Duration::from_secs(30) + Duration::from_millis(50) * requests as u32;
    for r in common::archive_spans_env_within(wr_dir.path(), &l.env, Some(&project), read_for) {
        *counts
            .entry(r["span"]["name"].as_str().unwrap_or_default().to_string())
            .or_default() += 1;
    }
    let archive_missing = acked.iter().filter(|n| !counts.contains_key(*n)).count();
    let archive_twice = counts.values().filter(|n| **n > 1).count();
    // Offsets: everything the writers committed is stored. Every span of every message below
    // the committed offsets (acknowledged or not, first copy or repeat) is in ClickHouse and
    // the archive, and the writers drained the log.
    let (committed, ends, logged) = common::committed_log_span_names(
        &l.broker.bootstrap,
        "tracegate-writer",
        &topic,
        TOPIC_PARTITIONS,
    );
    let logged_not_stored = logged
        .iter()
        .filter(|n| !in_ch.contains(*n) || !counts.contains_key(*n))
        .count();
    eprintln!("[chaos {tag}] committed {committed} of {ends} messages; {} spans in them, {logged_not_stored} not stored", logged.len());
    let answers_cut = l
        .proxies
        .iter()
        .map(|p| p.cut.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    for g in &mut l.gateways {
        let s = g.terminate();
        assert!(s.success(), "gateway exit {s}");
    }
    Outcome {
        acked_spans,
        ch_count,
        ch_uniq,
        ch_missing,
        archive_twice,
        archive_missing,
        faults,
        answers_cut,
        logged_not_stored,
        committed,
        log_end: ends,
    }
}

#[test]
fn chaos_every_acknowledged_span_once_in_clickhouse_and_the_archive() {
    let requests = env_or("TRACEGATE_TEST_CHAOS_REQUESTS", 1000);
    let seed = env_or("TRACEGATE_TEST_CHAOS_SEED", 22);
    let on = run(900, requests, seed);
    eprintln!(
        "[chaos on] acked {} spans; ClickHouse count {} uniq {}; {} answers cut; faults {:?}",
        on.acked_spans, on.ch_count, on.ch_uniq, on.answers_cut, on.faults
    );
    assert!(
        on.answers_cut > 0,
        "no answer was cut: the run proved nothing"
    );
    assert!(
        on.faults.len() >= 3,
        "too few kinds of faults: {:?}",
        on.faults
    );
    assert_eq!(
        on.ch_missing, 0,
        "acknowledged spans missing from ClickHouse"
    );
    assert_eq!(
        on.archive_missing, 0,
        "acknowledged spans missing from the archive"
    );
    assert_eq!(on.ch_count, on.ch_uniq, "a span is in ClickHouse twice");
    assert!(on.ch_uniq >= on.acked_spans);
    assert_eq!(on.archive_twice, 0, "a span is in the archive twice");
    assert_eq!(
        on.logged_not_stored, 0,
        "committed offsets passed spans not in storage"
    );
    assert_eq!(
        on.committed, on.log_end,
        "the writers did not drain the log"
    );

    // Negative control: the same chaos without the window stores copies.
    let off = run(0, requests / 4, seed);
    eprintln!(
        "[chaos off] acked {} spans; ClickHouse count {} uniq {}; archive: {} spans twice",
        off.acked_spans, off.ch_count, off.ch_uniq, off.archive_twice
    );
    assert_eq!(off.ch_missing, 0);
    assert!(
        off.ch_count > off.ch_uniq && off.archive_twice > 0,
        "the control stored no copy: the oracle cannot see duplicates"
    );
}
