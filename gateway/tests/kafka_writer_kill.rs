//! `tracegate write` killed with SIGKILL, every hop a real process.
//!
//! * Mid-batch: the archive sink is made to fail (a file where the tenant's directory must go),
//!   so the writer holds one cut batch and retries it; it is killed, the sink repaired, and the
//!   restarted writer must produce exactly the batch ids that the dead one was writing, even
//!   though more messages arrived meanwhile (which would cut differently). While the sink
//!   fails, the partition is paused (backpressure). A negative control runs the same scenario
//!   but erases the recorded intents while the writer is dead (it commits the same offsets with
//!   empty metadata as an outside group client, as an operator's offset reset would) and must
//!   see different ids: without it the test would prove nothing. The shipped binary has no
//!   switch for this.
//! * Under load: the writer is killed three times while batches flow; afterwards the archive
//!   objects of each partition cover disjoint offset ranges (a rewritten batch is the same batch,
//!   never an overlapping one), every acknowledged span is there, and none twice.
//! * SIGTERM: buffered messages are written and committed before the exit (0), so a restarted
//!   writer does not write them again.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use common::{walk_names, Gateway, Load, TestBroker, Writer};

const SESSION_TIMEOUT_MS: &str = "6000";

/// Archive objects as `topic:partition:first-last` group ids (file `topic_p_f-l.tga`).
fn archived_groups(data_dir: &Path, topic: &str) -> BTreeSet<String> {
    walk_names(&data_dir.join("archive"))
        .into_iter()
        .filter_map(|n| {
            let stem = n.strip_suffix(".tga")?;
            let rest = stem.strip_prefix(&format!("{topic}_"))?;
            let (p, range) = rest.split_once('_')?;
            Some(format!("{topic}:{p}:{range}"))
        })
        .collect()
}

/// `topic:p:f-l` → (p, f, l).
fn parse_group(g: &str) -> (i32, i64, i64) {
    let mut it = g.rsplitn(3, ':');
    let range = it.next().unwrap();
    let p = it.next().unwrap().parse().unwrap();
    let (f, l) = range.split_once('-').unwrap();
    (p, f.parse().unwrap(), l.parse().unwrap())
}

/// Panics unless, per partition, the archived ranges are disjoint.
fn assert_disjoint(groups: &BTreeSet<String>) {
    let mut by_part: BTreeMap<i32, Vec<(i64, i64)>> = BTreeMap::new();
    for g in groups {
        let (p, f, l) = parse_group(g);
        assert!(f <= l, "bad range {g}");
        by_part.entry(p).or_default().push((f, l));
    }
    for (p, mut ranges) in by_part {
        ranges.sort();
        for w in ranges.windows(2) {
            assert!(
                w[0].1 < w[1].0,
                "partition {p}: overlapping batches {:?} and {:?}: a re-read batch was cut \
                 differently (its spans are archived twice)",
                w[0],
                w[1]
            );
        }
    }
}

/// `group=<id>` tokens of the writer's "sink write failed" log lines.
fn failed_groups(w: &Writer) -> BTreeSet<String> {
    w.log_lines("sink write failed")
        .iter()
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|t| t.strip_prefix("group="))
                .map(str::to_string)
        })
        .collect()
}

struct MidBatch {
    failed: BTreeSet<String>,
    archived: BTreeSet<String>,
    resumed_log: Vec<String>,
    records: Vec<serde_json::Value>,
    names: Vec<String>,
}

fn run_mid_batch_kill(topic: &str, erase_intents: bool) -> MidBatch {
    let broker = TestBroker::start(&[(topic, 2)]);
    let gw_dir = common::temp_dir("tg-kwk-gw-");
    let wr_dir = common::temp_dir("tg-kwk-wr-");
    let mut env = broker.env(topic);
    env.extend([
        (
            "TRACEGATE_KAFKA__SESSION_TIMEOUT_MS".to_string(),
            SESSION_TIMEOUT_MS.to_string(),
        ),
        (
            "TRACEGATE_KAFKA__BATCH_MAX_AGE_MS".to_string(),
            "300".to_string(),
        ),
        (
            "TRACEGATE_KAFKA__BATCH_MAX_SPANS".to_string(),
            "30".to_string(),
        ),
    ]);
    let env_refs = common::env_refs(&env);
    let gw = Gateway::start_in(gw_dir.path(), &env_refs);
    let project = common::unique_project("kafka-wkill");
    let key = gw.create_key(&project);

    // Break the archive sink: the org directory cannot be created where a file is.
    let blocker = wr_dir.path().join("archive").join("default");
    std::fs::create_dir_all(blocker.parent().unwrap()).unwrap();
    std::fs::write(&blocker, b"not a directory").unwrap();
    let mut writer = Writer::start(wr_dir.path(), None, &env_refs);
    assert!(
        common::wait_until(Duration::from_secs(20), || {
            common::get(&format!("{}/readyz", gw.admin_url())).0 == 200
        }),
        "gateway never ready"
    );

    // Wave 1: two requests, cut together by age into one batch that cannot be written.
    let mut names = Vec::new();
    for i in 0..2 {
        let r = common::post_protobuf(&gw, &key, &common::request_n(&format!("w1-{i}"), 0, 10));
        assert_eq!(r.0, 200);
        names.extend((0..10).map(|j| format!("w1-{i}-{j}")));
    }
    assert!(
        common::wait_until(Duration::from_secs(30), || writer
            .log_lines("sink write failed")
            .len()
            >= 2),
        "the writer never tried (and retried) the broken sink"
    );
    let failed = failed_groups(&writer);
    assert_eq!(
        failed.len(),
        1,
        "one batch in flight per partition, got {failed:?}"
    );

    // Wave 2 arrives behind it: with the sink stuck the partition is paused.
    for i in 0..5 {
        let r = common::post_protobuf(&gw, &key, &common::request_n(&format!("w2-{i}"), 0, 10));
        assert_eq!(r.0, 200);
        names.extend((0..10).map(|j| format!("w2-{i}-{j}")));
    }
    let paused = common::wait_until(Duration::from_secs(15), || {
        writer.metric("tracegate_kafka_writer_paused_partitions") >= 1.0
    });
    assert!(
        paused,
        "a partition waiting behind a failing sink was not paused"
    );
    assert_eq!(
        failed_groups(&writer),
        failed,
        "the stuck batch must be retried as the same batch"
    );
    assert!(
        common::get(&format!("http://{}/readyz", writer.admin)).0 == 503,
        "writer /readyz must be 503 while its sink fails"
    );

    writer.kill9();
    std::fs::remove_file(&blocker).unwrap();
    if erase_intents {
        erase_intents_of(&broker.bootstrap, topic, 2);
    }
    let mut writer = Writer::start(wr_dir.path(), None, &env_refs);
    let (missing, records) =
        common::wait_for_spans(wr_dir.path(), &project, &names, Duration::from_secs(60));
    assert!(
        missing.is_empty(),
        "spans missing after the restart: {missing:?}"
    );
    let archived = archived_groups(wr_dir.path(), topic);
    let resumed_log = writer.log_lines("resuming a batch that was cut before");
    let s = writer.terminate();
    assert!(s.success(), "writer exit {s}");
    MidBatch {
        failed,
        archived,
        resumed_log,
        records,
        names,
    }
}

#[test]
fn writer_killed_mid_batch_rewrites_the_same_batch_ids() {
    let r = run_mid_batch_kill("tracegate-wkill", false);
    eprintln!(
        "[wkill] dead writer was writing {:?}; archive now has {:?}",
        r.failed, r.archived
    );
    for g in &r.failed {
        assert!(
            r.archived.contains(g),
            "the restarted writer did not produce batch {g} again; archive: {:?}",
            r.archived
        );
    }
    assert!(
        !r.resumed_log.is_empty(),
        "the restarted writer did not resume the recorded batch"
    );
    assert_disjoint(&r.archived);
    // Nothing duplicated, nothing missing.
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for rec in &r.records {
        *counts
            .entry(rec["span"]["name"].as_str().unwrap())
            .or_default() += 1;
    }
    assert_eq!(counts.len(), r.names.len());
    assert!(counts.values().all(|n| *n == 1), "duplicated spans");
}

/// Commits every partition's committed offset again with empty metadata, as a member of the
/// writer's group (it joins, which also evicts the dead writer once its session expires): the
/// intents are gone, the offsets stay. Retries until the broker has handed it the partitions.
fn erase_intents_of(bootstrap: &str, topic: &str, partitions: i32) {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "tracegate-writer")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", SESSION_TIMEOUT_MS)
        .create()
        .expect("group client");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut all = TopicPartitionList::new();
    for p in 0..partitions {
        all.add_partition(topic, p);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let _ = consumer.poll(Duration::from_millis(200));
        let assigned = consumer.assignment().map(|a| a.count()).unwrap_or(0);
        if assigned == partitions as usize {
            let attempt = consumer
                .committed_offsets(all.clone(), Duration::from_secs(5))
                .and_then(|got| {
                    let mut erased = TopicPartitionList::new();
                    for e in got.elements() {
                        if let Offset::Offset(o) = e.offset() {
                            erased
                                .add_partition_offset(topic, e.partition(), Offset::Offset(o))
                                .expect("offset");
                        }
                    }
                    assert!(erased.count() > 0, "the dead writer had committed nothing");
                    consumer.commit(&erased, CommitMode::Sync)?;
                    // Read back: the metadata must really be gone.
                    let after = consumer.committed_offsets(all.clone(), Duration::from_secs(5))?;
                    Ok(after.elements().iter().all(|e| e.metadata().is_empty()))
                });
            if let Ok(true) = attempt {
                consumer.unsubscribe();
                return;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "could not erase the writer's intents within 60 s"
        );
    }
}

/// Negative control: with the intents erased, the restarted writer cuts the backlog by its
/// limits and the batch the dead writer was writing never reappears under its id.
#[test]
fn negative_control_without_intents_the_batch_ids_change() {
    let r = run_mid_batch_kill("tracegate-wkill-nc", true);
    eprintln!(
        "[wkill-nc] dead writer was writing {:?}; archive now has {:?}",
        r.failed, r.archived
    );
    assert!(
        r.failed.iter().all(|g| !r.archived.contains(g)),
        "without intents the same ids came back anyway ({:?}): the main test would prove nothing",
        r.failed
    );
}

#[test]
fn writer_kill9_under_load_leaves_disjoint_batches_and_loses_nothing() {
    const TOPIC: &str = "tracegate-wkill-load";
    let broker = TestBroker::start(&[(TOPIC, 2)]);
    let gw_dir = common::temp_dir("tg-kwl-gw-");
    let wr_dir = common::temp_dir("tg-kwl-wr-");
    let mut env = broker.env(TOPIC);
    env.extend([
        (
            "TRACEGATE_KAFKA__SESSION_TIMEOUT_MS".to_string(),
            SESSION_TIMEOUT_MS.to_string(),
        ),
        (
            "TRACEGATE_KAFKA__BATCH_MAX_AGE_MS".to_string(),
            "100".to_string(),
        ),
        (
            "TRACEGATE_KAFKA__BATCH_MAX_SPANS".to_string(),
            "200".to_string(),
        ),
        (
            "TRACEGATE_KAFKA__PARTITION_KEY".to_string(),
            "batch".to_string(),
        ),
    ]);
    let env = common::env_refs(&env);
    let gw = Gateway::start_in(gw_dir.path(), &env);
    let project = common::unique_project("kafka-wkill-load");
    let key = gw.create_key(&project);
    let mut writer = Writer::start(wr_dir.path(), None, &env);
    let mut load = Load::start(
        &gw.traces_url(),
        &key,
        "wl",
        2,
        10,
        Duration::from_millis(20),
        Duration::from_millis(100),
    );
    for k in 0..3 {
        // Let the (re)started writer get its partitions and write a few batches, then kill it.
        let wrote = common::wait_until(Duration::from_secs(40), || {
            writer.metric("tracegate_kafka_writer_batches_total") >= 5.0
        });
        assert!(wrote, "kill {k}: the writer wrote no batches");
        std::thread::sleep(Duration::from_millis(150 + 170 * k as u64));
        writer.kill9();
        eprintln!("[wkill-load] writer killed ({k})");
        writer = Writer::start(wr_dir.path(), None, &env);
    }
    assert!(common::wait_until(Duration::from_secs(40), || {
        writer.metric("tracegate_kafka_writer_batches_total") >= 5.0
    }));
    load.stop();
    let want = load.acked_span_names();
    let (missing, records) =
        common::wait_for_spans(wr_dir.path(), &project, &want, Duration::from_secs(60));
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged spans missing; first {:?}",
        missing.len(),
        want.len(),
        &missing[..missing.len().min(5)]
    );
    let groups = archived_groups(wr_dir.path(), TOPIC);
    eprintln!(
        "[wkill-load] {} spans acked, {} archive objects",
        want.len(),
        groups.len()
    );
    assert_disjoint(&groups);
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for rec in &records {
        *counts
            .entry(rec["span"]["name"].as_str().unwrap())
            .or_default() += 1;
    }
    let dupes: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(
        dupes.is_empty(),
        "spans archived twice across writer kills (the gateway never failed, so nothing was \
         sent twice): {dupes:?}"
    );
    let s = writer.terminate();
    assert!(s.success(), "writer exit {s}");
}

/// SIGTERM: the writer cuts and writes what it has buffered (its age limit is far away),
/// commits it, and exits 0; a restarted writer of the same group does not write it again.
#[test]
fn writer_sigterm_flushes_commits_and_exits_0() {
    const TOPIC: &str = "tracegate-wterm";
    let broker = TestBroker::start(&[(TOPIC, 2)]);
    let gw_dir = common::temp_dir("tg-kwt-gw-");
    let wr_dir = common::temp_dir("tg-kwt-wr-");
    let mut env = broker.env(TOPIC);
    env.extend([
        (
            "TRACEGATE_KAFKA__SESSION_TIMEOUT_MS".to_string(),
            SESSION_TIMEOUT_MS.to_string(),
        ),
        (
            "TRACEGATE_KAFKA__BATCH_MAX_AGE_MS".to_string(),
            "600000".to_string(),
        ),
    ]);
    let env_refs = common::env_refs(&env);
    let gw = Gateway::start_in(gw_dir.path(), &env_refs);
    let project = common::unique_project("kafka-wterm");
    let key = gw.create_key(&project);
    let mut writer = Writer::start(wr_dir.path(), None, &env_refs);
    assert!(
        common::wait_until(Duration::from_secs(20), || {
            common::get(&format!("{}/readyz", gw.admin_url())).0 == 200
        }),
        "gateway never ready"
    );
    let mut names = Vec::new();
    for i in 0..3 {
        let r = common::post_protobuf(&gw, &key, &common::request_n(&format!("t{i}"), 0, 10));
        assert_eq!(r.0, 200);
        names.extend((0..10).map(|j| format!("t{i}-{j}")));
    }
    // All three consumed and buffered (not written: the age limit is 10 minutes away).
    let buffered = common::wait_until(Duration::from_secs(30), || {
        writer.metric("tracegate_kafka_writer_buffered_bytes") > 0.0
            && writer.metric("tracegate_kafka_consumer_lag_messages") == 0.0
    });
    assert!(buffered, "the writer never buffered the messages");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(writer.metric("tracegate_kafka_writer_batches_total"), 0.0);
    assert!(common::archive_spans_in(wr_dir.path(), None).is_empty());
    let s = writer.terminate();
    assert!(s.success(), "writer SIGTERM exit status {s}");
    let (missing, _) =
        common::wait_for_spans(wr_dir.path(), &project, &names, Duration::from_secs(1));
    assert!(missing.is_empty(), "not flushed on SIGTERM: {missing:?}");

    // The flush was committed: a new writer of the group starts after it.
    let mut env2 = env.clone();
    env2.push((
        "TRACEGATE_KAFKA__BATCH_MAX_AGE_MS".to_string(),
        "200".to_string(),
    ));
    let mut writer = Writer::start(wr_dir.path(), None, &common::env_refs(&env2));
    let r = common::post_protobuf(&gw, &key, &common::request_n("after", 0, 10));
    assert_eq!(r.0, 200);
    names.extend((0..10).map(|j| format!("after-{j}")));
    let (missing, records) =
        common::wait_for_spans(wr_dir.path(), &project, &names, Duration::from_secs(60));
    assert!(missing.is_empty(), "{missing:?}");
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for rec in &records {
        *counts
            .entry(rec["span"]["name"].as_str().unwrap())
            .or_default() += 1;
    }
    assert!(
        counts.values().all(|n| *n == 1),
        "spans written twice after a clean shutdown: {counts:?}"
    );
    assert_disjoint(&archived_groups(wr_dir.path(), TOPIC));
    let s = writer.terminate();
    assert!(s.success(), "writer exit {s}");
}
