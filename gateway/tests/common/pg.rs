//! A throwaway PostgreSQL cluster (scripts/pg.sh) and SQL helpers.

use super::*;

/// Path of `scripts/pg.sh`.
pub fn pg_script() -> PathBuf {
    super::manifest_dir().join("../scripts/pg.sh")
}

pub(crate) fn pg_sh(args: &[&str]) -> Output {
    pg_sh_env(args, &[])
}

fn pg_sh_env(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(pg_script()).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_command(cmd, &format!("scripts/pg.sh {args:?}"), PG_SCRIPT_TIMEOUT)
}

/// The PostgreSQL server bin dir (`scripts/pg.sh pgbin`). Panics with an install hint when the
/// server is not installed: the PostgreSQL tests must fail, never skip silently.
pub fn pg_bin() -> PathBuf {
    let out = pg_sh(&["pgbin"]);
    if !out.status.success() {
        panic!(
            "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin, so the \
             PostgreSQL key store tests cannot run. Install them with \
             `apt-get install -y postgresql` (.ci/run does this). scripts/pg.sh said: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A PostgreSQL cluster started with `scripts/pg.sh start` in a temp dir; stopped (fast) and
/// removed on drop.
pub struct PgCluster {
    dir: tempfile::TempDir,
    /// `postgres://tracegate_admin:PASS@127.0.0.1:PORT/tracegate` (superuser).
    pub admin_url: String,
    running: bool,
}

impl PgCluster {
    /// initdb + start on a free loopback port, with database `tracegate`.
    pub fn start() -> PgCluster {
        Self::start_with(&[])
    }

    /// Like `start`, with `ssl = on` and this certificate, and TCP clients limited to TLS.
    pub fn start_tls(cert: &Path, key: &Path) -> PgCluster {
        Self::start_with(&[("PG_SSL_CERT", cert), ("PG_SSL_KEY", key)])
    }

    fn start_with(env: &[(&str, &Path)]) -> PgCluster {
        pg_bin();
        // Short path: the unix socket lives inside the dir. pg.sh chowns it to the server's OS
        // user when we run as root.
        let dir = tempfile::Builder::new()
            .prefix("tg-pg-")
            .tempdir_in("/tmp")
            .expect("create PostgreSQL temp dir");
        let t = Instant::now();
        let admin_url = Self::run_start(dir.path(), env);
        eprintln!(
            "[harness] PostgreSQL started in {:?} at {}",
            t.elapsed(),
            redact_url(&admin_url)
        );
        PgCluster {
            dir,
            admin_url,
            running: true,
        }
    }

    fn run_start(dir: &Path, env: &[(&str, &Path)]) -> String {
        let d = dir.to_str().expect("utf-8 dir");
        let out = pg_sh_env(&["start", d], env);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "scripts/pg.sh start {d} failed ({}):\n{}\n{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        let url = stdout
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .unwrap_or_default()
            .to_string();
        assert!(
            url.starts_with("postgres://"),
            "scripts/pg.sh start printed no URL: {stdout:?}"
        );
        url
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `scripts/pg.sh stop` (fast shutdown: clients are disconnected).
    pub fn stop(&mut self) {
        let d = self.dir.path().to_str().expect("utf-8 dir");
        let out = pg_sh(&["stop", d]);
        assert!(
            out.status.success(),
            "scripts/pg.sh stop {d} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.running = false;
    }

    /// Starts a stopped cluster again, on the same port (so clients' URLs stay valid).
    pub fn restart(&mut self) {
        let url = Self::run_start(self.dir.path(), &[]);
        assert_eq!(url, self.admin_url, "PostgreSQL came back with another URL");
        self.running = true;
    }

    /// `postgres://USER:PASSWORD@<same host:port/db as the admin URL>`.
    pub fn url_for(&self, user: &str, password: &str) -> String {
        let (_, rest) = self
            .admin_url
            .split_once('@')
            .expect("admin URL has user@host");
        format!("postgres://{user}:{password}@{rest}")
    }

    /// Runs `sql` (one or more statements, simple protocol) as the admin; panics on error.
    pub fn admin_exec(&self, sql: &str) {
        pg_batch(&self.admin_url, sql).unwrap_or_else(|e| panic!("SQL {sql:?} failed: {e}"));
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.running {
            let d = self.dir.path().to_string_lossy().into_owned();
            let _ = pg_sh(&["stop", &d]);
        }
    }
}

/// The URL without its password, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..s + 3], user, &url[at..])
        }
        _ => url.to_string(),
    }
}

/// Runs `f` with a fresh tokio-postgres connection to `url`, on a private current-thread
/// runtime (so it can be called from plain `#[test]`s). Connect and query are bounded (10 s).
pub fn with_pg<T>(
    url: &str,
    f: impl for<'c> FnOnce(
        &'c tokio_postgres::Client,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<T, tokio_postgres::Error>> + 'c>,
    >,
) -> Result<T, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let (client, conn) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_postgres::connect(url, tokio_postgres::NoTls),
        )
        .await
        .map_err(|_| format!("timed out connecting to {}", redact_url(url)))?
        .map_err(|e| format!("connecting to {}: {e}", redact_url(url)))?;
        let driver = tokio::spawn(conn);
        let r = tokio::time::timeout(Duration::from_secs(10), f(&client))
            .await
            .map_err(|_| "query timed out".to_string())?
            .map_err(|e| match e.as_db_error() {
                Some(db) => format!("{} ({}): {}", db.severity(), db.code().code(), db.message()),
                None => e.to_string(),
            });
        drop(client);
        let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
        r
    })
}

/// Runs `sql` (simple protocol, may hold several statements) as whoever `url` names. The error
/// text carries the SQLSTATE, e.g. `ERROR (42501): permission denied for table api_keys`.
pub fn pg_batch(url: &str, sql: &str) -> Result<(), String> {
    let sql = sql.to_string();
    with_pg(url, move |c| {
        Box::pin(async move { c.batch_execute(&sql).await })
    })
}

/// Runs one statement with text parameters; returns the number of rows affected.
pub fn pg_execute(url: &str, sql: &str, params: &[&str]) -> Result<u64, String> {
    let sql = sql.to_string();
    let params: Vec<String> = params.iter().map(|s| s.to_string()).collect();
    with_pg(url, move |c| {
        Box::pin(async move {
            let p: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                .iter()
                .map(|s| s as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            c.execute(sql.as_str(), &p).await
        })
    })
}

/// Runs a query whose columns are all text (cast in SQL with `::text`); returns the rows.
pub fn pg_query_text(url: &str, sql: &str, params: &[&str]) -> Result<Vec<Vec<String>>, String> {
    let sql = sql.to_string();
    let params: Vec<String> = params.iter().map(|s| s.to_string()).collect();
    with_pg(url, move |c| {
        Box::pin(async move {
            let p: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                .iter()
                .map(|s| s as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            let rows = c.query(sql.as_str(), &p).await?;
            Ok(rows
                .iter()
                .map(|r| {
                    (0..r.len())
                        .map(|i| r.get::<_, Option<String>>(i).unwrap_or_default())
                        .collect()
                })
                .collect())
        })
    })
}

/// Path of the test broker binary (librdkafka's mock cluster in a process). It belongs to the
/// `tracegate-testkit` package, so cargo does not hand its path to this package's tests: it sits
/// beside the `tracegate` binary in the same target directory (`cargo test --workspace` and
/// `cargo build --workspace` build it).
pub fn broker_bin() -> std::path::PathBuf {
    let dir = std::path::Path::new(bin())
        .parent()
        .expect("the tracegate binary has a directory");
    let path = dir.join(format!(
        "tracegate-test-broker{}",
        std::env::consts::EXE_SUFFIX
    ));
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build -p tracegate-testkit` (same profile as the tests)",
        path.display()
    );
    path
}

/// 32 bytes of pepper shared by the gateway and the CLI (keys are hashed under it).
pub const PEPPER: &str = "5f1c2a9e8b7d6c5f4e3d2c1b0a99887766554433221100ffeeddccbbaa998877";
pub const GW_ROLE: &str = "tracegate_gw";
pub const GW_PASSWORD: &str = "gw-test-password";
/// Cache TTL of the gateways of [`PgKeys`]: long enough that only a NOTIFY can explain a
/// revocation taking effect during a test.
pub const CACHE_TTL_MS: &str = "600000";

/// A migrated PostgreSQL key store with the gateway's read-only login role, and the CLI
/// (`tracegate keys … --store postgres`) that manages its keys.
pub struct PgKeys {
    pub pg: PgCluster,
    pub gw_url: String,
    /// Where the CLI keeps its (file) audit log; never the repo's cwd.
    cli_dir: tempfile::TempDir,
}

impl PgKeys {
    pub fn start() -> PgKeys {
        let pg = PgCluster::start();
        let cli_dir = tempfile::tempdir().unwrap();
        let db = PgKeys {
            gw_url: pg.url_for(GW_ROLE, GW_PASSWORD),
            pg,
            cli_dir,
        };
        let out = db.keys_ok(&["migrate"]);
        assert!(out.contains("migrations applied: [1]"), "migrate: {out}");
        db.pg.admin_exec(&format!(
            "CREATE ROLE {GW_ROLE} LOGIN PASSWORD '{GW_PASSWORD}' IN ROLE tracegate_gateway"
        ));
        db
    }

    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("TRACEGATE_AUTH__STORE", "postgres".into()),
            ("TRACEGATE_AUTH__DATABASE_URL", self.gw_url.clone()),
            ("TRACEGATE_AUTH__PEPPER", PEPPER.into()),
            ("TRACEGATE_AUTH__CACHE_TTL_MS", CACHE_TTL_MS.into()),
        ]
    }

    /// `tracegate keys ARGS --store postgres --database-url <admin> --data-dir <cli dir>` with
    /// the gateway's env (same pepper); returns the output.
    pub fn keys(&self, args: &[&str]) -> std::process::Output {
        let mut a = vec!["keys"];
        a.extend_from_slice(args);
        let dir = self.cli_dir.path().to_str().unwrap();
        a.extend_from_slice(&[
            "--store",
            "postgres",
            "--database-url",
            &self.pg.admin_url,
            "--data-dir",
            dir,
        ]);
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run_tracegate(&a, &env, CMD_TIMEOUT)
    }

    pub fn keys_ok(&self, args: &[&str]) -> String {
        let out = self.keys(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "tracegate keys {args:?} failed: {}\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// `keys create --project P` → (key id, secret).
    pub fn create(&self, project: &str) -> (String, String) {
        let out = self.keys_ok(&["create", "--project", project]);
        id_and_secret(&out)
    }

    pub fn gateway(&self) -> Gateway {
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Gateway::start(&env)
    }
}

/// Parses `key_id: <id>` and the secret (last non-empty line) from `keys create|rotate`.
pub fn id_and_secret(out: &str) -> (String, String) {
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("key_id: "))
        .unwrap_or_else(|| panic!("no `key_id:` line in {out:?}"))
        .trim()
        .to_string();
    let secret = out
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap()
        .to_string();
    assert!(
        secret.starts_with("tg_") && secret.contains(&id),
        "last line is not a key for {id}: {out:?}"
    );
    (id, secret)
}
