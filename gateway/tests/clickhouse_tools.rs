//! The tools that read tracegate's ClickHouse tables: tenant-scoped readers
//! (`tracegate migrate tenant-reader`).

mod common;

use common::*;
use tracegate::clickhouse::tenant_access::TenantReader;

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
    let statements = t.statements("tools");
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
    let out = run_tracegate(
        &[
            "migrate",
            "tenant-reader",
            "--org",
            "acme",
            "--project",
            "chat-bot",
            "--user",
            "acme_dash",
            "--password-file",
            pw.to_str().unwrap(),
        ],
        &env_refs(&env),
        CMD_TIMEOUT,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("ClickHouse statement failed: CREATE ROLE IF NOT EXISTS `tracegate_reader_acme_chat-bot`"),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "{err}");
    // Names are checked before anything is sent.
    let out = run_tracegate(
        &[
            "migrate",
            "tenant-reader",
            "--org",
            "acme",
            "--project",
            "x' OR 1=1",
        ],
        &env_refs(&env),
        CMD_TIMEOUT,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--project must be"), "{err}");
}
