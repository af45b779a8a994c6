//! The PostgreSQL key store over TLS, as RDS, Cloud SQL and Azure require it: a real server
//! with `ssl = on` that refuses unencrypted TCP (scripts/pg.sh, pg_hba `hostssl`), a throwaway
//! CA, and libpq's URL parameters (`sslmode`, `sslrootcert`) in `auth.database_url` and
//! `--database-url`. Each mode does what libpq's does; a wrong CA or host name is refused with
//! the reason and never with the password.

mod common;

use std::path::Path;

use common::*;

/// The admin URL with `host` and the query `q`.
fn url(pg: &PgCluster, host: &str, q: &str) -> String {
    let u = pg.admin_url.replace("@127.0.0.1:", &format!("@{host}:"));
    if q.is_empty() {
        u
    } else {
        format!("{u}?{q}")
    }
}

fn keys(url: &str, data: &Path, args: &[&str]) -> std::process::Output {
    let mut a = vec!["keys"];
    a.extend_from_slice(args);
    let d = data.to_str().unwrap();
    a.extend_from_slice(&[
        "--store",
        "postgres",
        "--database-url",
        url,
        "--data-dir",
        d,
    ]);
    run_tracegate(&a, &[("TRACEGATE_AUTH__PEPPER", PEPPER)], CMD_TIMEOUT)
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn key_store_over_tls_in_every_sslmode() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("tracegate test PostgreSQL CA");
    // For the name `localhost` only: reached as 127.0.0.1, the name does not match.
    let (ca_pem, cert, key) = ca.write_server_files(dir.path(), "pg", &["localhost"]);
    let pg = PgCluster::start_tls(&cert, &key);
    let password = pg
        .admin_url
        .split(':')
        .nth(2)
        .unwrap()
        .split('@')
        .next()
        .unwrap()
        .to_string();
    let ca_q = format!("sslrootcert={}", ca_pem.display());
    let full = url(&pg, "localhost", &format!("sslmode=verify-full&{ca_q}"));

    // verify-full: the chain and the name check out; the whole CLI works over it.
    let out = keys(&full, dir.path(), &["migrate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = keys(&full, dir.path(), &["create", "--project", "tls-project"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (_, secret) = id_and_secret(&String::from_utf8_lossy(&out.stdout));

    // The server takes no unencrypted connection: sslmode=disable (and no sslmode) fail.
    for plain in [
        url(&pg, "127.0.0.1", "sslmode=disable"),
        pg.admin_url.clone(),
    ] {
        let out = keys(&plain, dir.path(), &["list"]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains("no encryption"), "{}", stderr(&out));
    }
    // require and prefer: encrypted, the certificate not checked (libpq's meaning).
    for q in ["sslmode=require", "sslmode=prefer"] {
        let out = keys(&url(&pg, "127.0.0.1", q), dir.path(), &["list"]);
        assert!(out.status.success(), "{q}: {}", stderr(&out));
    }
    // verify-ca: the chain is checked, the name (127.0.0.1) is not.
    let ca_only = url(&pg, "127.0.0.1", &format!("sslmode=verify-ca&{ca_q}"));
    let out = keys(&ca_only, dir.path(), &["list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // verify-full by address: the certificate is not for 127.0.0.1.
    let by_address = url(&pg, "127.0.0.1", &format!("sslmode=verify-full&{ca_q}"));
    let out = keys(&by_address, dir.path(), &["list"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not valid for name"),
        "{}",
        stderr(&out)
    );
    // Another CA: refused, in both verifying modes.
    let rogue = TestCa::new("someone else's CA");
    let rogue_pem = dir.path().join("rogue.pem");
    std::fs::write(&rogue_pem, rogue.pem()).unwrap();
    for mode in ["verify-ca", "verify-full"] {
        let u = url(
            &pg,
            "localhost",
            &format!("sslmode={mode}&sslrootcert={}", rogue_pem.display()),
        );
        let out = keys(&u, dir.path(), &["list"]);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(err.contains("UnknownIssuer"), "{mode}: {err}");
        assert!(!err.contains(&password), "the password in an error: {err}");
    }

    // The gateway's key store over verify-full: the key created above authenticates.
    let gw = Gateway::start(&[
        ("TRACEGATE_AUTH__STORE", "postgres"),
        ("TRACEGATE_AUTH__DATABASE_URL", &full),
        ("TRACEGATE_AUTH__PEPPER", PEPPER),
    ]);
    let r = post_protobuf(&gw, &secret, &request_n("tls", 0, 5));
    assert_eq!(r.0, 200, "{}", String::from_utf8_lossy(&r.2));
    let r = post_protobuf(&gw, "tg_0000000000000000_nope", &request_n("tls", 0, 5));
    assert_eq!(r.0, 401);
}
