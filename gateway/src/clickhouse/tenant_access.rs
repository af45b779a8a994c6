//! Tenant-scoped reads: `tracegate migrate tenant-reader` creates, for one tenant, a ClickHouse
//! role that may read every tracegate table but only that tenant's rows (a row policy per
//! table on `OrgId`/`ProjectId`), and optionally a user holding only that role. ClickHouse
//! enforces it; tracegate is not on the read path.
//!
//! Why roles and row policies: they are ClickHouse's own access control, so Grafana, ClickStack
//! or `clickhouse-client` logged in as the tenant's user are all held to it, and the writer's
//! user (no policy) keeps writing every tenant's rows. A policy is permissive for its role
//! only: a user given two tenants' roles sees both tenants.

use anyhow::{Context, Result};

use super::config::ClickHouseConfig;
use super::schema::TENANT_TABLES;

/// One tenant's read access.
#[derive(Debug, Clone)]
pub struct TenantReader {
    pub org: String,
    pub project: String,
    /// A user to create with the role as its only (default) role.
    pub user: Option<String>,
    /// That user's password (stored by ClickHouse as a SHA-256 hash).
    pub password: Option<String>,
}

impl TenantReader {
    pub fn validate(&self) -> Result<()> {
        tracegate_pipeline::tenant::validate_name("--org", &self.org)?;
        tracegate_pipeline::tenant::validate_name("--project", &self.project)?;
        if let Some(u) = &self.user {
            tracegate_pipeline::tenant::validate_name("--user", u)?;
            if self.password.as_deref().unwrap_or_default().is_empty() {
                anyhow::bail!("--user needs a password (--password-file)");
            }
        }
        Ok(())
    }

    /// The role's name: one per tenant, so granting it twice changes nothing.
    pub fn role(&self) -> String {
        format!("tracegate_reader_{}_{}", self.org, self.project)
    }

    /// The statements, in order; each is idempotent (`IF NOT EXISTS`, GRANT). Names are
    /// validated tenant names (`[A-Za-z0-9._-]`), quoted as identifiers; the org and project
    /// are also string literals, which that alphabet cannot break out of.
    ///
    /// On a cluster (`cluster`) every statement runs `ON CLUSTER`, and the `_local` tables get
    /// the same policy and grant: a query on a `Distributed` table reads them on each shard as
    /// the same user, and the policy that applies is the one on the table read (cluster.rs).
    pub fn statements(&self, db: &str, cluster: Option<&str>) -> Vec<String> {
        let role = self.role();
        let on = cluster.map_or(String::new(), |c| format!(" ON CLUSTER `{c}`"));
        let mut tables: Vec<String> = TENANT_TABLES.iter().map(|t| t.to_string()).collect();
        if cluster.is_some() {
            tables.extend(TENANT_TABLES.iter().map(|t| super::cluster::local(t)));
        }
        let mut out = vec![format!("CREATE ROLE IF NOT EXISTS `{role}`{on}")];
        for table in &tables {
            out.push(format!(
                "CREATE ROW POLICY IF NOT EXISTS `{role}`{on} ON `{db}`.`{table}` AS PERMISSIVE \
                 FOR SELECT USING OrgId = '{}' AND ProjectId = '{}' TO `{role}`",
                self.org, self.project
            ));
            out.push(format!("GRANT{on} SELECT ON `{db}`.`{table}` TO `{role}`"));
        }
        if let Some(user) = &self.user {
            let pw = self.password.as_deref().unwrap_or_default();
            out.push(format!(
                "CREATE USER IF NOT EXISTS `{user}`{on} IDENTIFIED WITH sha256_password BY '{}'",
                sql_string(pw)
            ));
            out.push(format!("GRANT{on} `{role}` TO `{user}`"));
            out.push(format!("ALTER USER `{user}`{on} DEFAULT ROLE `{role}`"));
        }
        out
    }
}

/// A ClickHouse string literal's content: backslash and quote escaped.
fn sql_string(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\'', "\\'")
}

/// Runs the statements against `cfg`'s server (its user needs `ACCESS MANAGEMENT`).
pub async fn create(cfg: &ClickHouseConfig, t: &TenantReader) -> Result<String> {
    t.validate()?;
    let client = cfg.client()?;
    for sql in t.statements(&cfg.database, cfg.cluster.as_deref()) {
        // The password is in the CREATE USER statement: name the statement, never print it.
        let what = sql
            .split(" IDENTIFIED")
            .next()
            .unwrap_or_default()
            .to_string();
        client
            .query(&sql)
            .execute()
            .await
            .with_context(|| format!("ClickHouse statement failed: {what}"))?;
    }
    Ok(t.role())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(user: Option<&str>) -> TenantReader {
        TenantReader {
            org: "acme".into(),
            project: "chat-bot".into(),
            user: user.map(String::from),
            password: user.map(|_| "p'w\\d".into()),
        }
    }

    #[test]
    fn every_tenant_table_gets_a_policy_and_a_grant() {
        let s = reader(None).statements("tracegate", None);
        for table in TENANT_TABLES {
            let policy = s
                .iter()
                .find(|q| q.contains("ROW POLICY") && q.contains(&format!("`{table}`")))
                .unwrap_or_else(|| panic!("no policy on {table}: {s:#?}"));
            assert!(
                policy.contains("USING OrgId = 'acme' AND ProjectId = 'chat-bot'"),
                "{policy}"
            );
            assert!(s.contains(&format!(
                "GRANT SELECT ON `tracegate`.`{table}` TO `tracegate_reader_acme_chat-bot`"
            )));
        }
    }

    #[test]
    fn on_a_cluster_the_local_tables_too_and_everything_on_cluster() {
        let s = reader(Some("u")).statements("tracegate", Some("prod"));
        assert!(s.iter().all(|q| q.contains(" ON CLUSTER `prod`")), "{s:#?}");
        for table in TENANT_TABLES {
            let local = format!("`tracegate`.`{table}_local`");
            assert!(
                s.iter()
                    .any(|q| q.contains("ROW POLICY") && q.contains(&local)),
                "{s:#?}"
            );
        }
    }

    #[test]
    fn the_password_is_escaped_and_names_are_checked() {
        let s = reader(Some("acme_dash")).statements("tracegate", None);
        assert!(s.iter().any(|q| q.contains("BY 'p\\'w\\\\d'")), "{s:#?}");
        let mut bad = reader(None);
        bad.project = "x' OR 1=1 --".into();
        assert!(bad.validate().is_err());
        let mut no_pw = reader(Some("u"));
        no_pw.password = None;
        assert!(no_pw.validate().is_err());
    }
}
