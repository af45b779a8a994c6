//! The tools that read tracegate's ClickHouse tables: Grafana's ClickHouse data source and
//! ClickStack run their recorded queries (tools/queries.rs) on tables filled by the real writer
//! and upgraded by `tracegate migrate` from the first schema; tenant-scoped readers
//! (`tracegate migrate tenant-reader`).

mod common;
#[path = "tools/queries.rs"]
mod queries;

use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
use opentelemetry_proto::tonic::trace::v1::{status, Span, Status};
use tracegate::clickhouse::config::ClickHouseConfig;
use tracegate::clickhouse::schema::{render, MIGRATIONS, MIGRATIONS_TABLE};
use tracegate::clickhouse::tenant_access::TenantReader;

const TRACE: [u8; 16] = [
    0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36,
];
const TRACE_HEX: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// A span of TRACE, `ago` before now, lasting `ms`.
fn llm_span(
    id: u64,
    parent: Option<u64>,
    name: &str,
    ago: Duration,
    ms: u64,
    attrs: &[(&str, &str)],
) -> Span {
    let start = now_unix_nano() - ago.as_nanos() as u64;
    Span {
        trace_id: TRACE.to_vec(),
        span_id: span_id(id),
        parent_span_id: parent.map(span_id).unwrap_or_default(),
        name: name.into(),
        kind: 2, // SERVER
        start_time_unix_nano: start,
        end_time_unix_nano: start + ms * 1_000_000,
        attributes: attrs.iter().map(|(k, v)| kv_str(k, v)).collect(),
        ..Default::default()
    }
}

/// An LLM application's request, as its OTel SDK sends it: service `api`, a RUM session.
fn post_spans(gw: &Gateway, key: &str, spans: Vec<Span>) {
    let from = tracegate_spangen::Sender {
        resource: &[("service.name", "api"), ("rum.sessionId", "sess-42")],
        scope: "openinference",
        scope_version: "1.2",
    };
    let req = tracegate_spangen::request_with_spans(spans, &from);
    let r = post_protobuf(gw, key, &req);
    assert_eq!(r.0, 200, "{}", String::from_utf8_lossy(&r.2));
}

/// Migration 1 alone, as an installation made before the parity migration has it.
fn install_first_schema(front: &ChFront, cfg: &ClickHouseConfig) {
    for stmt in MIGRATIONS[0].statements {
        front.query(&render(stmt, cfg));
    }
    front.query(&format!(
        "CREATE TABLE IF NOT EXISTS `{db}`.{MIGRATIONS_TABLE} (version UInt32, name String, \
         applied_at DateTime64(3) DEFAULT now64(3)) ENGINE = MergeTree ORDER BY version",
        db = cfg.database
    ));
    front.query(&format!(
        "INSERT INTO `{}`.{MIGRATIONS_TABLE} (version, name) VALUES (1, 'first')",
        cfg.database
    ));
}

/// An installation with spans from before and after `tracegate migrate` upgrades it, then
/// every recorded Grafana and ClickStack query: all succeed, on old parts and new, and
/// return what the spans say.
#[test]
fn grafana_and_clickstack_queries_run_unchanged_on_an_upgraded_installation() {
    let front = ChFront::start(&[]);
    let cfg = ClickHouseConfig {
        url: front.url(),
        database: "default".into(),
        ..Default::default()
    };
    install_first_schema(&front, &cfg);
    let env = clickhouse_env(&front, "default");
    let gw = Gateway::start(&env_refs(&env));
    // The writer says the schema is behind it (its logs and metrics tables are missing).
    let told = wait_until(Duration::from_secs(20), || {
        gw.logs()
            .contains("ClickHouse schema is at version 1, this writer needs 3")
    });
    assert!(told, "{}", gw.logs());
    let key = gw.create_key("chat");
    let ago = Duration::from_secs(30);
    let mut root = llm_span(
        1,
        None,
        "chat gpt-4o",
        ago,
        20,
        &[("gen_ai.request.model", "gpt-4o"), ("SampleRate", "10")],
    );
    root.status = Some(Status {
        code: status::StatusCode::Error as i32,
        message: "rate limited".into(),
    });
    root.events = vec![Event {
        time_unix_nano: root.start_time_unix_nano + 1_000_000,
        name: "error".into(),
        attributes: vec![kv_str("exception.type", "RateLimitError")],
        ..Default::default()
    }];
    root.links = vec![Link {
        trace_id: trace_id(77),
        span_id: span_id(77),
        attributes: vec![kv_str("link.kind", "retry-of")],
        ..Default::default()
    }];
    let retrieve = llm_span(
        2,
        Some(1),
        "retrieve docs",
        ago,
        5,
        &[("gen_ai.request.model", "gpt-4o")],
    );
    // Written under the first schema: old parts, without the new indexes.
    post_spans(&gw, &key, vec![root, retrieve]);

    let out = migrate(&env);
    assert!(out.contains("migrations applied: [2, 3]"), "{out}");
    assert!(out.contains("migrations already present: [1]"), "{out}");

    // Written under the new one, and another tenant's span under the same trace id.
    let embed = llm_span(
        3,
        Some(1),
        "embed query",
        Duration::ZERO,
        3,
        &[
            ("gen_ai.request.model", "text-embedding-3"),
            ("SampleRate", "5"),
        ],
    );
    post_spans(&gw, &key, vec![embed]);
    let other = gw.create_key("other-tenant");
    post_spans(
        &gw,
        &other,
        vec![llm_span(9, None, "other tenant", Duration::ZERO, 1, &[])],
    );

    let now_s = now_unix_nano() / 1_000_000_000;
    let (from_ms, to_ms) = ((now_s - 3600) * 1000, (now_s + 60) * 1000);
    let prepare = |sql: &str| {
        sql.replace("'abcdefg'", &format!("'{TRACE_HEX}'"))
            .replace("$__fromTime", &format!("toDateTime({})", now_s - 3600))
            .replace("$__toTime", &format!("toDateTime({})", now_s + 60))
            .replace("1739318400000", &from_ms.to_string())
            .replace("1739491200000", &to_ms.to_string())
    };
    let mut failed = Vec::new();
    let mut results = Vec::new();
    for (tool, list) in [
        ("Grafana", queries::GRAFANA),
        ("ClickStack", queries::CLICKSTACK),
    ] {
        for (what, sql) in list {
            match front.try_query(&format!("{} FORMAT JSONEachRow", prepare(sql))) {
                Ok(rows) => results.push(rows),
                Err(e) => failed.push(format!("{tool}: {what}: {e}")),
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} queries failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
    let rows = |i: usize| -> Vec<serde_json::Value> {
        results[i]
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let g = queries::GRAFANA.len();
    // Grafana's trace view: the spans from before the upgrade are inside the lookup's time
    // range (it was rebuilt from the spans), next to the new ones; an unscoped login sees the
    // other tenant's span under that id too (row policies scope it: docs/security.md).
    for (i, (what, _)) in queries::GRAFANA.iter().enumerate().take(4) {
        assert_eq!(rows(i).len(), 4, "{what}: {}", results[i]);
    }
    let detail = rows(1);
    let root = detail
        .iter()
        .find(|r| r["operationName"] == "chat gpt-4o")
        .unwrap();
    assert_eq!(root["statusCode"], 2);
    assert_eq!(root["statusMessage"], "rate limited");
    assert_eq!(root["kind"], "Server");
    assert_eq!(root["instrumentationLibraryName"], "openinference");
    assert!(
        root["logs"].to_string().contains("RateLimitError"),
        "{root}"
    );
    assert!(
        root["references"].to_string().contains("retry-of"),
        "{root}"
    );
    assert!(rows(2)[0]["logs"].is_array());
    // Trace search: the root spans of the last hour (ours and the other tenant's).
    assert_eq!(rows(4).len(), 2, "{}", results[4]);

    let num = |v: &serde_json::Value| -> f64 {
        v.as_f64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .unwrap_or(f64::NAN)
    };
    let first = |i: usize| -> serde_json::Value {
        rows(g + i)[0]
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()
            .clone()
    };
    assert_eq!(num(&first(0)), 10.0, "error spans weighted by SampleRate");
    let p95 = num(&first(1));
    assert!((3e6..=20e6).contains(&p95), "p95 {p95}");
    assert_eq!(rows(g + 2).len(), 1, "bare-term search: {}", results[g + 2]);
    assert_eq!(num(&first(3)), 2.0, "map attribute search");
    assert_eq!(num(&first(4)), 2.0, "items search, old parts included");
    assert_eq!(num(&first(5)), 4.0, "no deployment.environment anywhere");
    assert_eq!(num(&first(6)), 1.0, "event name");
    let text = |i: usize| results[g + i].clone();
    for key in ["gen_ai.request.model", "SampleRate"] {
        assert!(text(7).contains(key), "text-index keys: {}", text(7));
        assert!(text(8).contains(key), "scanned keys: {}", text(8));
    }
    for model in ["gpt-4o", "text-embedding-3"] {
        assert!(text(9).contains(model), "values: {}", text(9));
        assert!(text(10).contains(model), "facets: {}", text(10));
    }
    assert_eq!(rows(g + 11).len(), 4, "waterfall: {}", text(11));
    assert_eq!(num(&first(12)), 4.0, "RUM session");
    for index in [
        "idx_span_attr_items",
        "idx_res_attr_items",
        "idx_lower_span_name",
        "idx_rum_session_id",
    ] {
        assert!(text(13).contains(index), "{index}: {}", text(13));
    }

    // The lookup keeps tenants apart: one row per tenant, each with its own first span.
    let lookup = front.query_json(&format!(
        "SELECT ProjectId, min(Start) AS s FROM default.otel_traces_trace_id_ts \
         WHERE TraceId = '{TRACE_HEX}' GROUP BY ProjectId ORDER BY s"
    ));
    assert_eq!(lookup.len(), 2, "{lookup:?}");
    assert_eq!(lookup[0]["ProjectId"], "chat");
}

/// Every statement `tenant-reader` runs is valid ClickHouse: the engine's own parser reads it
/// back (`formatQuery`). Enforcement cannot be shown on this engine (docs/security.md): chdb
/// is clickhouse-local, whose only access storage is a read-only users.xml, so the command run
/// against it gets ClickHouse's refusal, which it reports naming the statement and never the
/// password.
#[test]
fn tenant_reader_statements_parse_and_the_command_reaches_clickhouse() {
    let front = ChFront::start(&[]);
    let t = TenantReader {
        org: "acme".into(),
        project: "chat-bot".into(),
        user: Some("acme_dash".into()),
        password: Some("s3cret'pw".into()),
    };
    let mut statements = t.statements("tools", None);
    statements.extend(t.statements("tools", Some("prod-eu")));
    assert!(statements.len() >= 8, "{statements:#?}");
    for sql in &statements {
        let quoted = sql.replace('\\', "\\\\").replace('\'', "\\'");
        let formatted = front.query(&format!("SELECT formatQuery('{quoted}')"));
        let first_words: String = sql.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        assert!(formatted.contains(&first_words), "{sql}\n→ {formatted}");
    }

    let mut env = clickhouse_env(&front, "tools");
    migrate(&env);
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "s3cret-pw\n").unwrap();
    env.push(("RUST_LOG".into(), "debug".into()));
    // `tracegate migrate tenant-reader --org acme ARGS`, expected to fail (exit 2): its stderr.
    let tenant_reader = |args: &[&str]| {
        let mut all = vec!["migrate", "tenant-reader", "--org", "acme"];
        all.extend_from_slice(args);
        let out = run_tracegate(&all, &env_refs(&env), CMD_TIMEOUT);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{err}");
        err
    };
    let err = tenant_reader(&[
        "--project",
        "chat-bot",
        "--user",
        "acme_dash",
        "--password-file",
        pw.to_str().unwrap(),
    ]);
    assert!(
        err.contains("ClickHouse statement failed: CREATE ROLE IF NOT EXISTS `tracegate_reader_acme_chat-bot`"),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "{err}");
    // Names are checked before anything is sent.
    let err = tenant_reader(&["--project", "x' OR 1=1"]);
    assert!(err.contains("--project must be"), "{err}");
}

/// Every statement `tracegate migrate --cluster` would run (all migrations, on a server with
/// text indexes) is valid ClickHouse: the engine's own parser reads it back. Running them needs
/// a cluster with Keeper, which cannot be installed here (docs/clickhouse.md, "Clusters"); the
/// writer's side of it (inserts into the `_local` tables) is a unit test in cluster.rs.
#[test]
fn cluster_statements_parse() {
    use tracegate::clickhouse::config::Engine;
    use tracegate::clickhouse::schema::{statements_for, TEXT_INDEX};
    let front = ChFront::start(&[]);
    let cfg = ClickHouseConfig {
        url: front.url(),
        engine: Engine::ReplicatedMergeTree,
        cluster: Some("prod-eu".into()),
        ..Default::default()
    };
    let mut n = 0;
    for m in MIGRATIONS {
        for s in m.statements {
            let s = s.strip_prefix(TEXT_INDEX).unwrap_or(s);
            for sql in statements_for(s, &cfg).unwrap() {
                let quoted = sql.replace('\\', "\\\\").replace('\'', "\\'");
                let formatted = front.query(&format!("SELECT formatQuery('{quoted}')"));
                assert!(
                    formatted.contains("ON CLUSTER") || sql.starts_with("INSERT"),
                    "{sql}\n→ {formatted}"
                );
                n += 1;
            }
        }
    }
    // Migration 1's 4 statements and migration 2's 15, most of them twice (local + Distributed).
    assert!(n >= 25, "{n} statements");

    // The command sends them: this engine has no cluster, and says so for the first one.
    let env = clickhouse_env(&front, "clustered");
    let out = run_tracegate(
        &["migrate", "--cluster", "prod-eu"],
        &env_refs(&env),
        CMD_TIMEOUT,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("ON CLUSTER `prod-eu`") && stderr.contains("CLUSTER_DOESNT_EXIST"),
        "{stderr}"
    );
}
