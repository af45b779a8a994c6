//! Kafka over TLS and SASL, as managed services run it (issue 23, item 1): the test broker's
//! front (testkit front.rs) terminates TLS with a throwaway CA and runs SASL the way a broker
//! does, and the gateway and `tracegate write` reach it through librdkafka's OpenSSL build:
//! - SCRAM-SHA-512 inside TLS with the broker verified against a CA file (Confluent Cloud,
//!   Aiven, MSK SCRAM): spans travel gateway → Kafka → writer → archive, each once; a wrong
//!   password is refused, retryably, and no password reaches a log or `/metrics`;
//! - mutual TLS: without the client certificate, or with the wrong CA, nothing gets through;
//! - PLAIN inside TLS (Confluent Cloud's API keys) and OAUTHBEARER with Amazon MSK IAM
//!   tokens for the gateway and the writer, which botocore (what AWS's Python signer uses)
//!   must find correctly signed.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Gateway, TestBroker, TestCa, Writer};

const TOPIC: &str = "tracegate-secure";
const PASSWORD: &str = "pw-Scram-7f3a-secret";
const WRONG_PASSWORD: &str = "pw-Wrong-91c2-secret";

/// POSTs request `r` (10 spans named `<project>-<10r..10r+9>`) once; the status (0 when the
/// connection failed).
fn post(gw: &Gateway, key: &str, project: &str, r: u64) -> u16 {
    let body = common::encode(&common::request_n(project, r * 10, 10));
    let client = common::http_client_with_timeout(Duration::from_secs(30));
    common::try_post(
        &client,
        &gw.traces_url(),
        &[
            ("content-type", "application/x-protobuf"),
            ("authorization", &format!("Bearer {key}")),
        ],
        body,
    )
    .map(|r| r.0)
    .unwrap_or(0)
}

/// Waits until the gateway reports Kafka reachable, then sends `n` requests, each once: all
/// must be acknowledged.
fn send_all(gw: &Gateway, project: &str, n: u64) {
    gw.wait_ready(Duration::from_secs(60));
    let key = gw.create_key(project);
    for r in 0..n {
        assert_eq!(post(gw, &key, project, r), 200, "request {r}");
    }
}

/// A gateway that cannot get through: never ready within `for_`, and a request gets a
/// retryable 503.
fn assert_refused(gw: &Gateway, for_: Duration) {
    let url = format!("{}/readyz", gw.admin_url());
    let ready = || common::get(&url).0 == 200;
    assert!(!common::wait_until(for_, ready), "{url} became ready");
    let key = gw.create_key("refused");
    assert_eq!(post(gw, &key, "refused", 0), 503);
}

/// No secret in the gateway's logs or metrics.
fn assert_secret_free(gw: &Gateway, secrets: &[&str]) {
    let (logs, metrics) = (gw.logs(), gw.metrics());
    for s in secrets {
        assert!(!logs.contains(s), "a secret is in the logs");
        assert!(!metrics.contains(s), "a secret is in /metrics");
    }
}

fn env<'a>(pairs: &'a [(String, String)], more: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v = common::env_refs(pairs);
    v.extend_from_slice(more);
    v
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn scram_inside_tls_carries_spans_once_and_keeps_the_password_secret() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("kafka-ca");
    let (ca_file, cert, key) = ca.write_server_files(dir.path(), "broker", &["127.0.0.1"]);
    let user = format!("writer:{PASSWORD}");
    let broker = TestBroker::start_with(
        &[(TOPIC, 2)],
        &[
            "--tls-cert",
            path(&cert),
            "--tls-key",
            path(&key),
            "--sasl-user",
            &user,
        ],
    );
    let pw_file = dir.path().join("kafka-password");
    std::fs::write(&pw_file, format!("{PASSWORD}\n")).unwrap();
    let base = broker.env(TOPIC);
    let common_env = [
        ("TRACEGATE_KAFKA__SECURITY_PROTOCOL", "sasl_ssl"),
        ("TRACEGATE_KAFKA__TLS__CA_FILE", path(&ca_file)),
        ("TRACEGATE_KAFKA__SASL__MECHANISM", "SCRAM-SHA-512"),
        ("TRACEGATE_KAFKA__SASL__USERNAME", "writer"),
    ];
    // The gateway reads the password from a file, the writer from the environment.
    let mut gw_env = env(&base, &common_env);
    gw_env.push(("TRACEGATE_KAFKA__SASL__PASSWORD_FILE", path(&pw_file)));
    let mut wr_env = env(&base, &common_env);
    wr_env.push(("TRACEGATE_KAFKA__SASL__PASSWORD", PASSWORD));

    let mut gw = Gateway::start(&gw_env);
    send_all(&gw, "scram", 20);
    let wr_dir = tempfile::tempdir().unwrap();
    let mut writer = Writer::start(wr_dir.path(), None, &wr_env);
    let want: Vec<String> = (0..200).map(|i| format!("scram-{i}")).collect();
    let (missing, records) =
        common::wait_for_spans(wr_dir.path(), "scram", &want, Duration::from_secs(90));
    assert!(missing.is_empty(), "missing {} spans", missing.len());
    assert_eq!(records.len(), 200, "a span archived twice");

    // The wrong password: refused at the broker, a retryable answer to the client.
    let mut bad_env = env(&base, &common_env);
    bad_env.push(("TRACEGATE_KAFKA__SASL__PASSWORD", WRONG_PASSWORD));
    let mut bad = Gateway::start(&bad_env);
    assert_refused(&bad, Duration::from_secs(5));
    assert!(
        bad.logs().contains("SASL"),
        "the refusal is not explained in the logs"
    );
    assert_secret_free(&gw, &[PASSWORD]);
    assert_secret_free(&bad, &[WRONG_PASSWORD, PASSWORD]);
    let wr_logs = writer.stderr.lock().unwrap().join("\n");
    assert!(
        !wr_logs.contains(PASSWORD),
        "a secret is in the writer's logs"
    );
    assert!(!writer.metrics().unwrap_or_default().contains(PASSWORD));

    assert!(bad.terminate().success());
    assert!(gw.terminate().success());
    assert!(writer.terminate().success());
}

#[test]
fn mutual_tls_needs_the_client_certificate_and_the_right_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("kafka-ca");
    let (ca_file, cert, key) = ca.write_server_files(dir.path(), "broker", &["127.0.0.1"]);
    let clients = TestCa::new("kafka-clients");
    let clients_ca = dir.path().join("clients-ca.pem");
    std::fs::write(&clients_ca, clients.pem()).unwrap();
    let (c_cert, c_key) = clients.leaf(7, false);
    let (c_cert_file, c_key_file) = (dir.path().join("c.pem"), dir.path().join("c-key.pem"));
    std::fs::write(&c_cert_file, c_cert).unwrap();
    std::fs::write(&c_key_file, c_key).unwrap();
    let broker = TestBroker::start_with(
        &[(TOPIC, 1)],
        &[
            "--tls-cert",
            path(&cert),
            "--tls-key",
            path(&key),
            "--tls-client-ca",
            path(&clients_ca),
        ],
    );
    let base = broker.env(TOPIC);
    let tls = [
        ("TRACEGATE_KAFKA__SECURITY_PROTOCOL", "ssl"),
        ("TRACEGATE_KAFKA__TLS__CA_FILE", path(&ca_file)),
    ];
    let mut with_cert = env(&base, &tls);
    with_cert.push(("TRACEGATE_KAFKA__TLS__CERT_FILE", path(&c_cert_file)));
    with_cert.push(("TRACEGATE_KAFKA__TLS__KEY_FILE", path(&c_key_file)));
    let mut gw = Gateway::start(&with_cert);
    send_all(&gw, "mtls", 3);

    // No client certificate: the front ends the handshake.
    let mut anonymous = Gateway::start(&env(&base, &tls));
    assert_refused(&anonymous, Duration::from_secs(5));
    // A CA that did not sign the broker: the gateway refuses the broker.
    let mut wrong_ca = env(&base, &[("TRACEGATE_KAFKA__SECURITY_PROTOCOL", "ssl")]);
    wrong_ca.push(("TRACEGATE_KAFKA__TLS__CA_FILE", path(&clients_ca)));
    wrong_ca.push(("TRACEGATE_KAFKA__TLS__CERT_FILE", path(&c_cert_file)));
    wrong_ca.push(("TRACEGATE_KAFKA__TLS__KEY_FILE", path(&c_key_file)));
    let mut unverified = Gateway::start(&wrong_ca);
    assert_refused(&unverified, Duration::from_secs(5));
    assert!(
        unverified.logs().contains("certificate verify failed"),
        "the refusal is not explained in the logs"
    );
    for g in [&mut gw, &mut anonymous, &mut unverified] {
        assert!(g.terminate().success());
    }
}

#[test]
fn plain_and_msk_iam_tokens_inside_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("kafka-ca");
    let (ca_file, cert, key) = ca.write_server_files(dir.path(), "broker", &["127.0.0.1"]);
    let tokens = dir.path().join("tokens.log");
    let user = format!("APIKEY1:{PASSWORD}");
    let broker = TestBroker::start_with(
        &[(TOPIC, 1)],
        &[
            "--tls-cert",
            path(&cert),
            "--tls-key",
            path(&key),
            "--sasl-user",
            &user,
            "--sasl-oauthbearer-log",
            path(&tokens),
        ],
    );
    let base = broker.env(TOPIC);
    let sasl_ssl = [
        ("TRACEGATE_KAFKA__SECURITY_PROTOCOL", "sasl_ssl"),
        ("TRACEGATE_KAFKA__TLS__CA_FILE", path(&ca_file)),
    ];
    // Confluent Cloud's shape: PLAIN with an API key and secret.
    let mut plain = env(&base, &sasl_ssl);
    plain.extend_from_slice(&[
        ("TRACEGATE_KAFKA__SASL__MECHANISM", "PLAIN"),
        ("TRACEGATE_KAFKA__SASL__USERNAME", "APIKEY1"),
        ("TRACEGATE_KAFKA__SASL__PASSWORD", PASSWORD),
    ]);
    let mut gw = Gateway::start(&plain);
    send_all(&gw, "plain", 3);
    assert_secret_free(&gw, &[PASSWORD]);

    // MSK IAM: the token is signed with the process's AWS credentials (here from the
    // environment, the first source of the SDK's chain).
    const KEY_ID: &str = "AKIATRACEGATETEST01";
    const SECRET: &str = "msk/Secret+Key0123456789abcdefghijklmnop";
    const SESSION: &str = "IQoJb3JpZ2luX2VjEMSK-session-token/0123+456==";
    let mut iam = env(&base, &sasl_ssl);
    iam.extend_from_slice(&[
        ("TRACEGATE_KAFKA__SASL__MECHANISM", "OAUTHBEARER"),
        ("TRACEGATE_KAFKA__SASL__AWS_REGION", "eu-west-1"),
        ("AWS_ACCESS_KEY_ID", KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
        ("AWS_SESSION_TOKEN", SESSION),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]);
    let mut msk = Gateway::start(&iam);
    send_all(&msk, "msk", 3);
    // The writer's consumer authenticates the same way (its own token refresher).
    let wr_dir = tempfile::tempdir().unwrap();
    let mut writer = Writer::start(wr_dir.path(), None, &iam);
    let want: Vec<String> = (0..30).map(|i| format!("msk-{i}")).collect();
    let (missing, _) = common::wait_for_spans(wr_dir.path(), "msk", &want, Duration::from_secs(90));
    assert!(missing.is_empty(), "the MSK IAM writer archived nothing");
    let logged = std::fs::read_to_string(&tokens).expect("the broker logged no token");
    let token = logged.lines().last().expect("a token").to_string();
    let python = common::moto_python();
    let out = common::run_command(
        {
            let mut c = std::process::Command::new(&python);
            c.arg(common::manifest_dir().join("tests/tools/msk_token_check.py"))
                .args([&token, KEY_ID, SECRET, SESSION]);
            c
        },
        "msk_token_check.py",
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "botocore does not agree with the token: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The secret key never leaves the process; the token (a credential while it lives) is
    // not logged either.
    assert_secret_free(&msk, &[SECRET, SESSION, &token]);
    let wr_logs = writer.stderr.lock().unwrap().join("\n");
    for secret in [SECRET, SESSION] {
        assert!(
            !wr_logs.contains(secret),
            "a secret is in the writer's logs"
        );
    }
    assert!(gw.terminate().success());
    assert!(msk.terminate().success());
    assert!(writer.terminate().success());
}
