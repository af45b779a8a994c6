//! The ClickHouse schema (docs/clickhouse.md) as versioned, idempotent migrations, applied by
//! `tracegate migrate`.
//!
//! The tables and their columns are in `tables.rs`.
//!
//! Every migration is a list of statements that are safe to run twice (`IF NOT EXISTS`), and
//! its version is recorded in `<db>.tracegate_schema_migrations` once all of them succeeded. A
//! run that dies half-way is simply run again. Settings that are configuration rather than
//! schema history (retention) are reconciled on every run.

use anyhow::{Context, Result};

use super::config::{ClickHouseConfig, Engine};

pub const SPANS_TABLE: &str = Table::Spans.name();
pub const PAYLOADS_TABLE: &str = Table::Payloads.name();
pub const MIGRATIONS_TABLE: &str = "tracegate_schema_migrations";

pub use super::tables::{Table, TABLES};

/// Every table holding tenants' rows (each has `OrgId` and `ProjectId`): the tables a tenant
/// reader's row policies cover (`tenant_access.rs`).
pub const TENANT_TABLES: &[&str] = &[
    SPANS_TABLE,
    PAYLOADS_TABLE,
    "otel_traces_trace_id_ts",
    Table::Logs.name(),
    Table::LogPayloads.name(),
    Table::Gauge.name(),
    Table::Sum.name(),
    Table::Histogram.name(),
    Table::ExpHistogram.name(),
    Table::Summary.name(),
];

/// `INSERT INTO db.table (`c1`, …) FORMAT RowBinary`.
pub fn insert_sql(database: &str, table: &str, columns: &[&'static str]) -> String {
    let cols: Vec<String> = columns.iter().map(|c| format!("`{c}`")).collect();
    format!(
        "INSERT INTO `{database}`.`{table}` ({}) FORMAT RowBinary",
        cols.join(", ")
    )
}

pub use super::migrations::{Migration, MIGRATIONS, TEXT_INDEX};

/// Tables whose TTL follows `clickhouse.ttl_days`, with the column their TTL is computed from
/// (every table of the schema: cluster.rs gives each a `_local` twin).
pub(crate) const TTL_TABLES: &[(&str, &str)] = &[
    (SPANS_TABLE, "toDateTime(Timestamp)"),
    (PAYLOADS_TABLE, "toDateTime(Timestamp)"),
    ("otel_traces_trace_id_ts", "Start"),
    (Table::Logs.name(), "toDateTime(Timestamp)"),
    (Table::LogPayloads.name(), "toDateTime(Timestamp)"),
    (Table::Gauge.name(), "toDateTime(TimeUnix)"),
    (Table::Sum.name(), "toDateTime(TimeUnix)"),
    (Table::Histogram.name(), "toDateTime(TimeUnix)"),
    (Table::ExpHistogram.name(), "toDateTime(TimeUnix)"),
    (Table::Summary.name(), "toDateTime(TimeUnix)"),
];

fn ttl_clause(column: &str, days: u32) -> String {
    if days == 0 {
        String::new()
    } else {
        format!("TTL {column} + toIntervalDay({days})")
    }
}

/// A migration statement with its placeholders filled in from the config.
pub fn render(sql: &str, cfg: &ClickHouseConfig) -> String {
    let (engine, dedup) = match cfg.engine {
        Engine::MergeTree => (
            "MergeTree".to_string(),
            format!(
                "non_replicated_deduplication_window = {}",
                cfg.deduplication_window
            ),
        ),
        Engine::ReplicatedMergeTree => (
            "ReplicatedMergeTree".to_string(),
            format!(
                "replicated_deduplication_window = {}",
                cfg.deduplication_window
            ),
        ),
    };
    sql.replace("{db}", &cfg.database)
        .replace("{engine}", &engine)
        .replace("{ttl}", &ttl_clause("toDateTime(Timestamp)", cfg.ttl_days))
        .replace("{ttl_start}", &ttl_clause("Start", cfg.ttl_days))
        .replace(
            "{ttl_time_unix}",
            &ttl_clause("toDateTime(TimeUnix)", cfg.ttl_days),
        )
        .replace("{dedup}", &dedup)
        .replace(
            "{agg_engine}",
            match cfg.engine {
                Engine::MergeTree => "AggregatingMergeTree",
                Engine::ReplicatedMergeTree => "ReplicatedAggregatingMergeTree",
            },
        )
}

/// The statements one migration statement becomes: itself rendered, or on a cluster its
/// cluster forms (cluster.rs).
pub fn statements_for(stmt: &str, cfg: &ClickHouseConfig) -> Result<Vec<String>> {
    let sql = render(stmt, cfg);
    match &cfg.cluster {
        None => Ok(vec![sql]),
        Some(c) => {
            let tables: Vec<&str> = TTL_TABLES.iter().map(|(t, _)| *t).collect();
            super::cluster::rewrite(&sql, &cfg.database, c, &tables)
        }
    }
}

/// Whether a ClickHouse `version()` has text indexes (`TYPE text`, 26.2 and later). Older
/// servers keep migration 1's bloom filters on the attribute values, as the Collector does.
fn has_text_index(version: &str) -> bool {
    let mut parts = version
        .trim()
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (26, 2)
}

/// Outcome of `migrate`, printed by `tracegate migrate`.
#[derive(Debug, Default)]
pub struct MigrateReport {
    pub applied: Vec<u32>,
    pub already: Vec<u32>,
    pub ttl_changed: Vec<String>,
}

async fn text(client: &clickhouse::Client, sql: &str) -> Result<String> {
    let bytes = client
        .query(sql)
        .fetch_bytes("TabSeparated")?
        .collect()
        .await
        .with_context(|| format!("ClickHouse query failed: {sql}"))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

async fn exec(client: &clickhouse::Client, sql: &str) -> Result<()> {
    client.query(sql).execute().await.with_context(|| {
        format!(
            "ClickHouse statement failed: {}",
            sql.lines().next().unwrap_or_default()
        )
    })
}

/// The newest migration applied to `cfg`'s database (an error when there is none, or
/// ClickHouse cannot be asked).
pub async fn applied_version(cfg: &ClickHouseConfig) -> Result<u32> {
    let client = cfg.client()?;
    let sql = format!(
        "SELECT max(version) FROM `{}`.{MIGRATIONS_TABLE}",
        cfg.database
    );
    let out = text(&client, &sql).await?;
    out.trim()
        .parse()
        .with_context(|| format!("unexpected answer {out:?} to {sql}"))
}

/// Creates or upgrades the schema. Idempotent: a second run applies nothing.
pub async fn migrate(cfg: &ClickHouseConfig) -> Result<MigrateReport> {
    let client = cfg.client()?;
    let db = &cfg.database;
    // On a cluster every table is replicated, and every statement runs ON CLUSTER.
    let mut cfg = cfg.clone();
    if cfg.cluster.is_some() {
        cfg.engine = Engine::ReplicatedMergeTree;
    }
    let cfg = &cfg;
    let on = match &cfg.cluster {
        Some(c) => format!(" ON CLUSTER `{c}`"),
        None => String::new(),
    };
    exec(
        &client,
        &format!("CREATE DATABASE IF NOT EXISTS `{db}`{on}"),
    )
    .await?;
    exec(
        &client,
        &format!(
            "CREATE TABLE IF NOT EXISTS `{db}`.{MIGRATIONS_TABLE}{on} (version UInt32, name String, \
             applied_at DateTime64(3) DEFAULT now64(3)) ENGINE = {} ORDER BY version",
            match cfg.engine {
                Engine::MergeTree => "MergeTree",
                Engine::ReplicatedMergeTree => "ReplicatedMergeTree",
            }
        ),
    )
    .await?;
    let done: Vec<u32> = text(
        &client,
        &format!("SELECT DISTINCT version FROM `{db}`.{MIGRATIONS_TABLE} ORDER BY version"),
    )
    .await?
    .lines()
    .filter_map(|l| l.trim().parse().ok())
    .collect();
    let text_index = has_text_index(&text(&client, "SELECT version()").await?);
    let mut report = MigrateReport::default();
    for m in MIGRATIONS {
        if done.contains(&m.version) {
            report.already.push(m.version);
            continue;
        }
        for stmt in m.statements {
            let stmt = match stmt.strip_prefix(TEXT_INDEX) {
                Some(_) if !text_index => continue,
                Some(rest) => rest,
                None => stmt,
            };
            for sql in statements_for(stmt, cfg)? {
                exec(&client, &sql).await?;
            }
        }
        exec(
            &client,
            &format!(
                "INSERT INTO `{db}`.{MIGRATIONS_TABLE} (version, name) VALUES ({}, '{}')",
                m.version,
                m.name.replace('\'', "\\'")
            ),
        )
        .await?;
        report.applied.push(m.version);
    }
    // Retention is configuration: bring each table's TTL to `clickhouse.ttl_days`.
    for (table, column) in TTL_TABLES {
        let table = &super::cluster::insert_table(table, cfg.cluster.as_deref());
        let engine_full = text(
            &client,
            &format!(
                "SELECT engine_full FROM system.tables WHERE database = '{db}' AND name = '{table}'"
            ),
        )
        .await?;
        let want = ttl_clause(column, cfg.ttl_days);
        let has_ttl = engine_full.contains(" TTL ");
        let matches = if cfg.ttl_days == 0 {
            !has_ttl
        } else {
            engine_full.contains(&format!("toIntervalDay({})", cfg.ttl_days))
        };
        if !matches {
            let sql = if cfg.ttl_days == 0 {
                format!("ALTER TABLE `{db}`.{table}{on} REMOVE TTL")
            } else {
                format!("ALTER TABLE `{db}`.{table}{on} MODIFY {want}")
            };
            exec(&client, &sql).await?;
            report.ttl_changed.push(table.to_string());
        }
    }
    Ok(report)
}

/// `tracegate migrate`: applies the migrations and prints what it did.
pub async fn migrate_command(
    cfg: &crate::config::Config,
    out: &mut impl std::io::Write,
) -> Result<()> {
    let ch = cfg.clickhouse.as_ref().context(
        "tracegate migrate needs a [clickhouse] section (clickhouse.url, e.g. TRACEGATE_CLICKHOUSE__URL)",
    )?;
    let r = migrate(ch).await?;
    writeln!(out, "database: {}", ch.database)?;
    if let Some(c) = &ch.cluster {
        writeln!(out, "cluster: {c}")?;
    }
    writeln!(out, "migrations applied: {:?}", r.applied)?;
    writeln!(out, "migrations already present: {:?}", r.already)?;
    writeln!(out, "ttl updated: {:?}", r.ttl_changed)?;
    writeln!(
        out,
        "schema version: {}",
        MIGRATIONS.last().map(|m| m.version).unwrap_or(0)
    )?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_fills_every_placeholder() {
        let cfg = ClickHouseConfig {
            url: "http://127.0.0.1:8123".into(),
            ..Default::default()
        };
        for m in MIGRATIONS {
            for s in m.statements {
                let r = render(s, &cfg);
                assert!(!r.contains('{') || !r.contains("{db}"), "{r}");
                assert!(!r.contains("{ttl") && !r.contains("{dedup}") && !r.contains("{engine}"));
                assert!(!r.contains("{agg_engine}"), "{r}");
            }
        }
    }

    #[test]
    fn text_indexes_from_26_2() {
        assert!(has_text_index("26.9.2.1\n"));
        assert!(has_text_index("26.2.1"));
        assert!(has_text_index("27.1"));
        assert!(!has_text_index("26.1.5.3"));
        assert!(!has_text_index("25.12.1"));
        assert!(!has_text_index("garbage"));
    }

    #[test]
    fn versions_are_increasing() {
        let v: Vec<u32> = MIGRATIONS.iter().map(|m| m.version).collect();
        assert!(v.windows(2).all(|w| w[0] < w[1]));
    }
}
