//! ClickHouse over HTTPS (`clickhouse.url = "https://…"`, `[clickhouse.tls]`), against the chdb
//! engine behind a TLS front with a throwaway CA: migrations, inserts and deduplication tokens
//! work over TLS, with a CA file, a server-name override and mutual TLS; a wrong CA or name
//! stops start-up with the reason.

mod common;

use std::path::Path;

use common::*;

fn env_with(front: &ChFront, url: &str, tls: &[(&str, &Path)]) -> Vec<(String, String)> {
    let mut env = clickhouse_env(front, "tls");
    for (k, v) in env.iter_mut() {
        if k == "TRACEGATE_CLICKHOUSE__URL" {
            *v = url.to_string();
        }
    }
    for (key, path) in tls {
        env.push((
            format!("TRACEGATE_CLICKHOUSE__TLS__{}", key.to_ascii_uppercase()),
            path.display().to_string(),
        ));
    }
    env
}

/// Spans through a gateway whose embedded writer inserts over TLS; then the archive replayed
/// to ClickHouse with the original tokens: nothing doubles.
fn inserts_and_replay_once(front: &ChFront, env: &[(String, String)], project: &str) {
    let gw = Gateway::start(&env_refs(env));
    let key = gw.create_key(project);
    for r in 0..3 {
        let resp = post_protobuf(&gw, &key, &request_n(project, r * 100, 100));
        assert_eq!(resp.0, 200, "{}", String::from_utf8_lossy(&resp.2));
    }
    let count = || {
        front.query_u64(&format!(
            "SELECT count() FROM tls.otel_traces WHERE ProjectId = '{project}'"
        ))
    };
    assert_eq!(count(), 300);
    let data = gw.data_dir.clone();
    drop(gw);
    let today = chrono::Utc::now().date_naive();
    let from = (today - chrono::Duration::days(1)).to_string();
    let to = (today + chrono::Duration::days(1)).to_string();
    tracegate_ok(
        &data,
        &["archive", "replay", "--from", &from, "--to", &to],
        env,
    );
    assert_eq!(
        count(),
        300,
        "replayed with the same tokens over TLS: no duplicate"
    );
}

#[test]
fn https_with_a_ca_file_a_server_name_and_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("tracegate test ClickHouse CA");
    // A certificate for a name the URL does not use (an endpoint reached by address).
    let (ca_pem, cert, key) = ca.write_server_files(dir.path(), "ch", &["clickhouse.test"]);
    let front = ChFront::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let url = format!("https://127.0.0.1:{}", front.tls_port.unwrap());
    let env = env_with(
        &front,
        &url,
        &[
            ("ca_file", &ca_pem),
            ("server_name", Path::new("clickhouse.test")),
        ],
    );
    assert!(migrate(&env).contains("migrations applied: [1, 2, 3]"));
    inserts_and_replay_once(&front, &env, "over-tls");

    // The same server without the name override: the certificate is not for 127.0.0.1, and
    // start-up says so instead of retrying inserts forever.
    let wrong_name = env_with(&front, &url, &[("ca_file", &ca_pem)]);
    let out = run_tracegate(&["migrate"], &env_refs(&wrong_name), CMD_TIMEOUT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("certificate"), "{err}");
    let err = serve_fails(&[], &env_refs(&wrong_name));
    assert!(
        err.contains("clickhouse.url: TLS with") && err.contains("not valid for name"),
        "{err}"
    );

    // Another CA: refused the same way.
    let rogue = TestCa::new("someone else's CA");
    let rogue_pem = dir.path().join("rogue.pem");
    std::fs::write(&rogue_pem, rogue.pem()).unwrap();
    let wrong_ca = env_with(
        &front,
        &url,
        &[
            ("ca_file", &rogue_pem),
            ("server_name", Path::new("clickhouse.test")),
        ],
    );
    let out = run_tracegate(&["migrate"], &env_refs(&wrong_ca), CMD_TIMEOUT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("UnknownIssuer"), "{err}");
}

#[test]
fn mutual_tls_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("tracegate test ClickHouse CA");
    let (ca_pem, cert, key) = ca.write_server_files(dir.path(), "ch", &["127.0.0.1"]);
    let (client_cert, client_key) = ca.leaf(7, false);
    let (cc, ck) = (
        dir.path().join("client.pem"),
        dir.path().join("client-key.pem"),
    );
    std::fs::write(&cc, client_cert).unwrap();
    std::fs::write(&ck, client_key).unwrap();
    let front = ChFront::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--tls-client-ca",
        ca_pem.to_str().unwrap(),
    ]);
    let url = format!("https://127.0.0.1:{}", front.tls_port.unwrap());
    // Without a client certificate the server refuses the handshake.
    let anonymous = env_with(&front, &url, &[("ca_file", &ca_pem)]);
    let out = run_tracegate(&["migrate"], &env_refs(&anonymous), CMD_TIMEOUT);
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let env = env_with(
        &front,
        &url,
        &[("ca_file", &ca_pem), ("cert_file", &cc), ("key_file", &ck)],
    );
    assert!(migrate(&env).contains("migrations applied: [1, 2, 3]"));
    inserts_and_replay_once(&front, &env, "mtls");
}
