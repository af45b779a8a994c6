//! The schema on a ClickHouse cluster (`tracegate migrate --cluster NAME`, or
//! `clickhouse.cluster`): the same versioned migrations, rewritten statement by statement.
//!
//! - Each table becomes `<name>_local`, `Replicated*MergeTree`, created `ON CLUSTER` on every
//!   replica of every shard (the replica path is the server's default,
//!   `/clickhouse/tables/{uuid}/{shard}`; ON CLUSTER gives all replicas one UUID).
//! - A `Distributed` table under the original name reads all shards, sharded by
//!   `cityHash64(TraceId)` (metrics: `cityHash64(ServiceName, MetricName)`) for the rows
//!   written through it: Grafana, ClickStack and tenant readers query the names they know.
//! - The trace-id lookup's materialized view runs on each shard, `_local` to `_local`.
//! - The writer inserts into the `_local` tables of the replica it talks to (`sink.rs`,
//!   [`insert_table`]): replicas of one shard share the deduplication log through Keeper, so a
//!   retry on another replica of the same shard is dropped; a writer's `clickhouse.url` lists
//!   the replicas of one shard.
//!
//! Statements are rewritten by their shape; a shape this file does not know is an error, so a
//! new migration cannot silently skip the cluster.

use anyhow::{bail, Result};

/// The table a writer inserts `table`'s rows into.
pub fn insert_table(table: &str, cluster: Option<&str>) -> String {
    match cluster {
        Some(_) => local(table),
        None => table.to_string(),
    }
}

pub fn local(table: &str) -> String {
    format!("{table}_local")
}

/// `text` after `prefix` when it starts with it, split at the end of the next `` `db`.name ``:
/// (name, rest).
fn after<'a>(text: &'a str, prefix: &str, db: &str) -> Option<(&'a str, &'a str)> {
    let rest = text.strip_prefix(prefix)?;
    let rest = rest.strip_prefix(&format!("`{db}`."))?;
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '(')
        .unwrap_or(rest.len());
    Some((&rest[..end], &rest[end..]))
}

/// Every `` `db`.name `` in `sql` for a table of `tables` becomes `` `db`.name_local ``.
fn localize(sql: &str, db: &str, tables: &[&str]) -> String {
    let mut out = sql.to_string();
    for t in tables {
        for end in [" ", "\n", "\r", "\t", "(", ")"] {
            out = out.replace(
                &format!("`{db}`.{t}{end}"),
                &format!("`{db}`.{}{end}", local(t)),
            );
        }
        if out.ends_with(&format!("`{db}`.{t}")) {
            out = format!("{}{}", out, "_local");
        }
    }
    out
}

/// How the Distributed table over `table` shards the rows written through it: by trace id
/// where a table has one, a metric's series by its service and name.
fn shard_key(table: &str) -> &'static str {
    if table.starts_with("otel_metrics_") {
        "cityHash64(ServiceName, MetricName)"
    } else {
        "cityHash64(TraceId)"
    }
}

/// The cluster's statements for one rendered migration statement. `tables` are the schema's
/// tables (those that get a `_local` twin).
pub fn rewrite(sql: &str, db: &str, cluster: &str, tables: &[&str]) -> Result<Vec<String>> {
    let on = format!("ON CLUSTER `{cluster}`");
    if let Some((name, rest)) = after(sql, "CREATE TABLE IF NOT EXISTS ", db) {
        let l = local(name);
        return Ok(vec![
            format!("CREATE TABLE IF NOT EXISTS `{db}`.{l} {on}{rest}"),
            format!(
                "CREATE TABLE IF NOT EXISTS `{db}`.{name} {on} AS `{db}`.{l} \
                 ENGINE = Distributed('{cluster}', '{db}', '{l}', {})",
                shard_key(name)
            ),
        ]);
    }
    if let Some((name, rest)) = after(sql, "CREATE MATERIALIZED VIEW IF NOT EXISTS ", db) {
        return Ok(vec![format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS `{db}`.{name} {on}{}",
            localize(rest, db, tables)
        )]);
    }
    if let Some((name, rest)) = after(sql, "ALTER TABLE ", db) {
        let l = local(name);
        let mut out = vec![format!("ALTER TABLE `{db}`.{l} {on}{rest}")];
        // Readers see columns through the Distributed table: it needs them too (codecs and
        // indexes are storage, the local table's alone).
        let column = rest.trim_start().starts_with("ADD COLUMN");
        if column {
            out.push(format!("ALTER TABLE `{db}`.{name} {on}{rest}"));
        } else if !(rest.trim_start().starts_with("ADD INDEX")
            || rest.trim_start().starts_with("MATERIALIZE INDEX")
            || rest.trim_start().starts_with("MODIFY COLUMN"))
        {
            bail!("no cluster form for: {sql}");
        }
        return Ok(out);
    }
    for kind in ["VIEW", "TABLE"] {
        let prefix = format!("DROP {kind} IF EXISTS ");
        if let Some((name, rest)) = after(sql, &prefix, db) {
            let mut out = vec![format!("DROP {kind} IF EXISTS `{db}`.{name} {on}{rest}")];
            if kind == "TABLE" {
                out.push(format!(
                    "DROP TABLE IF EXISTS `{db}`.{} {on}{rest}",
                    local(name)
                ));
            }
            return Ok(out);
        }
    }
    // Through the Distributed tables: reads every shard, writes sharded.
    if sql.starts_with("INSERT INTO ") {
        return Ok(vec![sql.to_string()]);
    }
    bail!("no cluster form for: {sql}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clickhouse::config::{ClickHouseConfig, Engine};
    use crate::clickhouse::schema::{render, MIGRATIONS, TEXT_INDEX, TTL_TABLES};

    fn tables() -> Vec<&'static str> {
        TTL_TABLES.iter().map(|(t, _)| *t).collect()
    }

    /// Every statement of every migration has a cluster form, and the forms keep each table's
    /// definition while naming only `_local` tables as storage.
    #[test]
    fn every_migration_statement_has_a_cluster_form() {
        let cfg = ClickHouseConfig {
            url: "http://ch:8123".into(),
            engine: Engine::ReplicatedMergeTree,
            ..Default::default()
        };
        for m in MIGRATIONS {
            for s in m.statements {
                let s = s.strip_prefix(TEXT_INDEX).unwrap_or(s);
                let sql = render(s, &cfg);
                let out = rewrite(&sql, "tracegate", "prod", &tables()).unwrap();
                for o in &out {
                    assert!(
                        o.contains("ON CLUSTER `prod`") || o.starts_with("INSERT"),
                        "{o}"
                    );
                    if o.contains("MergeTree") {
                        assert!(o.contains("Replicated"), "{o}");
                        assert!(o.contains("_local ON CLUSTER"), "{o}");
                    }
                }
            }
        }
        let sql = render(MIGRATIONS[0].statements[0], &cfg);
        let out = rewrite(&sql, "tracegate", "prod", &tables()).unwrap();
        assert!(out[0].starts_with(
            "CREATE TABLE IF NOT EXISTS `tracegate`.otel_traces_local ON CLUSTER `prod` ("
        ));
        assert_eq!(
            out[1],
            "CREATE TABLE IF NOT EXISTS `tracegate`.otel_traces ON CLUSTER `prod` AS \
             `tracegate`.otel_traces_local ENGINE = Distributed('prod', 'tracegate', \
             'otel_traces_local', cityHash64(TraceId))"
        );
        let mv = render(MIGRATIONS[0].statements[3], &cfg);
        let out = rewrite(&mv, "tracegate", "prod", &tables()).unwrap();
        assert!(
            out[0].contains("TO `tracegate`.otel_traces_trace_id_ts_local\n"),
            "{}",
            out[0]
        );
        assert!(
            out[0].contains("FROM `tracegate`.otel_traces_local\n"),
            "{}",
            out[0]
        );
    }

    #[test]
    fn unknown_shapes_are_refused() {
        assert!(rewrite("OPTIMIZE TABLE `d`.t", "d", "c", &["t"]).is_err());
        assert!(rewrite("ALTER TABLE `d`.t DELETE WHERE 1", "d", "c", &["t"]).is_err());
        assert_eq!(insert_table("otel_traces", Some("c")), "otel_traces_local");
        assert_eq!(insert_table("otel_traces", None), "otel_traces");
    }
}
