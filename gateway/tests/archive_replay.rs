//! `tracegate archive replay` into ClickHouse (the chdb front, docs/testing.md):
//! - two tenants send concurrently, so writer groups hold both and are archived as one object
//!   per tenant; replay rebuilds each group whole (same id, same batches, same order);
//! - a replay over data that is still there adds nothing (same dedup tokens);
//! - after TRUNCATE, replay restores exactly the archived spans, and a second replay adds
//!   nothing;
//! - `--project` replays the groups holding that project, and only what is missing comes back.

mod common;

use std::collections::BTreeSet;
use std::thread;
use std::time::Duration;

use common::*;

fn rows(front: &ChFront, db: &str) -> (u64, u64) {
    let out = front.query(&format!(
        "SELECT count(), uniqExact(ProjectId, TraceId, SpanId) FROM {db}.otel_traces FORMAT TSV"
    ));
    let mut it = out.split_whitespace().map(|v| v.parse::<u64>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

fn span_keys_in_clickhouse(front: &ChFront, db: &str) -> BTreeSet<(String, String)> {
    front
        .query(&format!(
            "SELECT ProjectId, SpanName FROM {db}.otel_traces FORMAT TSV"
        ))
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(p, n)| (p.to_string(), n.to_string()))
        .collect()
}

fn replay(data: &std::path::Path, env: &[(String, String)], extra: &[&str]) -> String {
    let today = chrono::Utc::now().date_naive();
    let from = (today - chrono::Duration::days(1)).to_string();
    let to = (today + chrono::Duration::days(1)).to_string();
    let mut args = vec!["archive", "replay", "--from", &from, "--to", &to];
    args.extend_from_slice(extra);
    tracegate_ok(data, &args, env)
}

#[test]
fn replay_after_truncate_restores_exactly_the_archive_and_again_adds_nothing() {
    let front = ChFront::start(&[]);
    let db = "replay";
    let mut env = clickhouse_env(&front, db);
    let out = migrate(&env);
    assert!(out.contains("migrations applied"), "{out}");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let ka = create_key_in(data, "ra");
    let kb = create_key_in(data, "rb");
    env.push(("TRACEGATE_WRITER__MAX_WAIT_MS".into(), "100".into()));
    let mut gw = Gateway::start_in(data, &env_refs(&env));

    // Both tenants at once.
    let mut handles = vec![];
    for (key, p) in [(ka, "ra"), (kb, "rb")] {
        for t in 0..3u64 {
            let url = gw.traces_url();
            let key = key.clone();
            handles.push(thread::spawn(move || {
                let client = http_client_with_timeout(Duration::from_secs(60));
                let auth = format!("Bearer {key}");
                // Plain, zstd and gzip bodies (one client thread each): the compressed ones are
                // archived as sent (envelope v2), decompressed for ClickHouse and on replay.
                let encoding = ["identity", "zstd", "gzip"][t as usize];
                for i in 0..6u64 {
                    let first = (t * 6 + i) * 7;
                    let plain = encode(&request_n(p, first, 7));
                    let body = match encoding {
                        "zstd" => zstd::encode_all(&plain[..], 3).unwrap(),
                        "gzip" => gzip(&plain),
                        _ => plain,
                    };
                    let r = try_post(
                        &client,
                        &url,
                        &[
                            ("authorization", auth.as_str()),
                            ("content-type", "application/x-protobuf"),
                            ("content-encoding", encoding),
                        ],
                        body,
                    )
                    .expect("post");
                    assert_eq!(r.0, 200, "{}", String::from_utf8_lossy(&r.2));
                }
            }));
        }
    }
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(gw.terminate().code(), Some(0));
    let total = 2 * 3 * 6 * 7;

    // What the archive holds is what ClickHouse holds.
    let archived: BTreeSet<(String, String)> = archive_spans_in(data, None)
        .iter()
        .map(|r| {
            (
                r["project_id"].as_str().unwrap().to_string(),
                r["span"]["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(archived.len(), total);
    let encodings = envelope_encodings(&archive_batches_in(data, None));
    assert_eq!(
        encodings.into_iter().collect::<Vec<_>>(),
        vec![((1, 0), 12), ((2, 1), 12), ((2, 2), 12)]
    );
    assert_eq!(rows(&front, db), (total as u64, total as u64));
    assert_eq!(span_keys_in_clickhouse(&front, db), archived);
    let ls = tracegate_ok(data, &["archive", "ls"], &[]);
    let groups: BTreeSet<&str> = ls
        .lines()
        .map(|l| l.split('\t').next().unwrap().rsplit('/').next().unwrap())
        .collect();
    // The embedded writer's groups hold one project each (fair lanes, queue/embedded.rs), so
    // every group is one object here. Groups that span tenants (the Kafka writer's offset
    // ranges) are rebuilt in their original order by `archive/replay.rs`, tested there
    // (`rebuilds_groups_exactly_and_detects_missing_objects`).
    assert_eq!(
        groups.len(),
        ls.lines().count(),
        "an embedded group held two tenants:\n{ls}"
    );

    // Replay over data already there: same tokens, nothing added.
    let out = replay(data, &env, &[]);
    assert!(out.contains("failed=0"), "{out}");
    assert!(out.contains(&format!("spans={total} ")), "{out}");
    assert_eq!(rows(&front, db), (total as u64, total as u64));

    // Truncate; replay one project: its groups come back whole (ra's batches that share them
    // too), nothing outside the archive.
    front.query(&format!("TRUNCATE TABLE {db}.otel_traces"));
    assert_eq!(rows(&front, db).0, 0);
    let out = replay(data, &env, &["--project", "rb"]);
    assert!(out.contains("failed=0"), "{out}");
    let rb = front.query(&format!(
        "SELECT count() FROM {db}.otel_traces WHERE ProjectId = 'rb' FORMAT TSV"
    ));
    assert_eq!(rb.trim(), (total / 2).to_string(), "{out}");
    let partial = span_keys_in_clickhouse(&front, db);
    assert!(partial.is_subset(&archived));
    assert_eq!(
        rows(&front, db).0,
        rows(&front, db).1,
        "duplicates after --project replay"
    );

    // Replay everything: exactly the archived spans; again: nothing more.
    let out = replay(data, &env, &[]);
    assert!(out.contains("failed=0"), "{out}");
    assert_eq!(rows(&front, db), (total as u64, total as u64), "{out}");
    assert_eq!(span_keys_in_clickhouse(&front, db), archived);
    replay(data, &env, &[]);
    assert_eq!(rows(&front, db), (total as u64, total as u64));

    // Negative control: the same replay without dedup tokens duplicates every span, so the
    // checks above could fail.
    let mut no_dedup = env.clone();
    no_dedup.push((
        "TRACEGATE_CLICKHOUSE__INSERT_DEDUPLICATION".into(),
        "false".into(),
    ));
    replay(data, &no_dedup, &[]);
    assert_eq!(rows(&front, db), (2 * total as u64, total as u64));
}

#[test]
fn replay_without_a_sink_says_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let out = tracegate_run(
        dir.path(),
        &[
            "archive",
            "replay",
            "--from",
            "2024-01-01",
            "--to",
            "2024-01-02",
        ],
        &[],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nothing to replay into") && err.contains("clickhouse.url"),
        "{err}"
    );
}
