//! Auth and tenancy through the real binary: control-plane token attacks, per-project quotas,
//! spoofed tenant headers and attributes, scope and region refusals, and the audit trail.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use proptest::prelude::*;

const ISS: &str = "https://control-plane.test";
const AUD: &str = "tracegate";

struct Signer {
    kid: String,
    der: Vec<u8>,
    public: [u8; 32],
}

fn signer(kid: &str, seed: u8) -> Signer {
    let sk = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
    Signer {
        kid: kid.into(),
        der: sk.to_pkcs8_der().unwrap().as_bytes().to_vec(),
        public: sk.verifying_key().to_bytes(),
    }
}

fn jwks(signers: &[&Signer]) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let keys: Vec<_> = signers
        .iter()
        .map(|s| serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": b64.encode(s.public), "kid": s.kid, "alg": "EdDSA", "use": "sig"}))
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims(project: &str) -> serde_json::Value {
    serde_json::json!({
        "iss": ISS, "aud": AUD, "iat": now(), "exp": now() + 300, "nbf": now() - 5,
        "sub": "svc-1", "jti": "t-1", "org_id": "acme", "project_id": project, "region": "local",
        "scope": "traces:write",
    })
}

fn sign(s: &Signer, c: &serde_json::Value) -> String {
    let mut h = Header::new(Algorithm::EdDSA);
    h.kid = Some(s.kid.clone());
    jsonwebtoken::encode(&h, c, &EncodingKey::from_ed_der(&s.der)).unwrap()
}

fn send(gw: &Gateway, credential: &str, marker: &str) -> u16 {
    let req = request_n(marker, 1, 2);
    try_post(
        &http_client(),
        &gw.traces_url(),
        &[
            ("authorization", format!("Bearer {credential}").as_str()),
            ("content-type", "application/x-protobuf"),
        ],
        encode(&req),
    )
    .map(|r| r.0)
    .unwrap_or(0)
}

#[test]
fn control_plane_tokens_and_attacks() {
    let dir = tempfile::tempdir().unwrap();
    let good = signer("k1", 7);
    let rogue = signer("k1", 9); // same kid, different key
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks(&[&good])).unwrap();
    let data = dir.path().join("data");
    let gw = Gateway::start_in(
        &data,
        &[
            ("TRACEGATE_TOKENS__JWKS", jwks_path.to_str().unwrap()),
            ("TRACEGATE_TOKENS__ISSUER", ISS),
            ("TRACEGATE_TOKENS__AUDIENCE", AUD),
            ("TRACEGATE_TOKENS__MAX_LIFETIME_SECS", "3600"),
            ("TRACEGATE_TOKENS__MIN_REFETCH_INTERVAL_SECS", "1"),
            ("TRACEGATE_AUDIT__AGGREGATE_WINDOW_MS", "100"),
        ],
    );
    // A valid token works and its project is stamped.
    assert_eq!(send(&gw, &sign(&good, &claims("tok-proj")), "tok-ok"), 200);
    let spans = gw.archive_spans(Some("tok-proj"));
    assert_eq!(spans.len(), 2);
    assert_eq!(spans[0]["org_id"], "acme");

    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload = b64.encode(claims("tok-proj").to_string());
    let none = format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        payload
    );
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("k1".into());
    let hs256_with_public_key = jsonwebtoken::encode(
        &hs,
        &claims("tok-proj"),
        &EncodingKey::from_secret(&good.public),
    )
    .unwrap();
    let mut c = claims("tok-proj");
    c["aud"] = "someone-else".into();
    let wrong_aud = sign(&good, &c);
    let mut c = claims("tok-proj");
    c["iss"] = "https://evil".into();
    let wrong_iss = sign(&good, &c);
    let mut c = claims("tok-proj");
    c["exp"] = (now() - 3600).into();
    c["iat"] = (now() - 3700).into();
    let expired = sign(&good, &c);
    let mut c = claims("tok-proj");
    c["nbf"] = (now() + 3600).into();
    let not_yet = sign(&good, &c);
    let mut c = claims("tok-proj");
    c["exp"] = (now() + 86_400 * 30).into();
    let too_long = sign(&good, &c);
    let forged = sign(&rogue, &claims("tok-proj"));
    let mut unknown_kid = signer("k-unknown", 7);
    unknown_kid.kid = "k-unknown".into();
    let unknown = sign(&unknown_kid, &claims("tok-proj"));
    let mut c = claims("tok-proj");
    c.as_object_mut().unwrap().remove("project_id");
    let no_project = sign(&good, &c);
    let cases = [
        ("alg_none", none),
        ("hs256_public_key", hs256_with_public_key),
        ("wrong_aud", wrong_aud),
        ("wrong_iss", wrong_iss),
        ("expired", expired),
        ("not_yet_valid", not_yet),
        ("lifetime_too_long", too_long),
        ("bad_signature", forged),
        ("unknown_kid", unknown),
        ("missing_project", no_project),
    ];
    for (name, token) in &cases {
        assert_eq!(
            send(&gw, token, &format!("attack-{name}")),
            401,
            "{name} must be refused"
        );
    }
    // Wrong scope and wrong region are 403.
    let mut c = claims("tok-proj");
    c["scope"] = "metrics:write".into();
    assert_eq!(send(&gw, &sign(&good, &c), "attack-scope"), 403);
    let mut c = claims("tok-proj");
    c["region"] = "us-east-1".into();
    assert_eq!(send(&gw, &sign(&good, &c), "attack-region"), 403);
    // Nothing from the refused requests was stored.
    assert_eq!(
        gw.archive_spans(None)
            .iter()
            .filter(|s| s["span"]["name"]
                .as_str()
                .unwrap_or("")
                .starts_with("attack-"))
            .count(),
        0
    );
    // Refusals reach the audit log (aggregated), and no token text is in it.
    std::thread::sleep(Duration::from_millis(400));
    let audit = std::fs::read_to_string(data.join("audit.log")).unwrap();
    for reason in [
        "token_alg_not_allowed",
        "token_wrong_audience",
        "token_wrong_issuer",
        "token_expired",
        "token_not_yet_valid",
        "token_lifetime_too_long",
        "token_bad_signature",
        "token_unknown_kid",
        "missing_scope",
        "wrong_region",
    ] {
        assert!(audit.contains(reason), "audit log lacks {reason}:\n{audit}");
    }
    for (_, token) in &cases {
        assert!(!audit.contains(token.as_str()));
    }
    // A rotated JWKS (new kid) is picked up on first use of the new kid.
    let next = signer("k2", 11);
    std::fs::write(&jwks_path, jwks(&[&good, &next])).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(send(&gw, &sign(&next, &claims("tok-proj")), "tok-k2"), 200);
}

#[test]
fn region_scope_and_expiry_of_api_keys() {
    let gw = Gateway::start(&[("TRACEGATE_GATEWAY__REGION", "eu-west-1")]);
    let d = gw.data_dir.to_str().unwrap().to_string();
    let key = |extra: &[&str]| -> String {
        let mut args = vec![
            "keys",
            "create",
            "--project",
            "reg",
            "--data-dir",
            d.as_str(),
        ];
        args.extend_from_slice(extra);
        let out = run_tracegate(
            &args,
            &[("TRACEGATE_GATEWAY__REGION", "eu-west-1")],
            CMD_TIMEOUT,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .to_string()
    };
    assert_eq!(send(&gw, &key(&[]), "reg-ok"), 200);
    let us = key(&["--region", "us-east-1"]);
    let r = try_post(
        &http_client(),
        &gw.traces_url(),
        &[
            ("x-api-key", us.as_str()),
            ("content-type", "application/x-protobuf"),
        ],
        encode(&request_n("reg-us", 1, 1)),
    )
    .unwrap();
    assert_eq!(r.0, 403);
    assert!(
        String::from_utf8_lossy(&r.2).contains("us-east-1"),
        "message names the key's region"
    );
    assert_eq!(
        send(&gw, &key(&["--scopes", "logs:write"]), "reg-scope"),
        403
    );
    assert_eq!(send(&gw, &key(&["--expires-in", "1s"]), "reg-exp-ok"), 200);
    let short = key(&["--expires-in", "1s"]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(send(&gw, &short, "reg-expired"), 401);
    assert_eq!(
        send(&gw, &key(&["--cidr", "10.0.0.0/8"]), "reg-cidr-denied"),
        403
    );
    assert_eq!(
        send(&gw, &key(&["--cidr", "127.0.0.0/8"]), "reg-cidr-ok"),
        200
    );
    let names = span_names(&gw.archive_spans(None));
    assert!(names.iter().any(|n| n.starts_with("reg-cidr-ok")));
    assert!(names.iter().all(|n| !n.starts_with("reg-us")
        && !n.starts_with("reg-scope")
        && !n.starts_with("reg-expired")
        && !n.starts_with("reg-cidr-denied")));
}

/// A project with a 5 000 spans/s quota offered 10 000 spans/s gets 5 000 ± 10 % accepted, while a
/// second project sending 1 000 spans/s sees no refusals.
#[test]
fn per_project_quota_isolates_noisy_project() {
    let gw = Gateway::start(&[]);
    let d = gw.data_dir.to_str().unwrap().to_string();
    let mk = |project: &str, quota: &str| -> String {
        let out = run_tracegate(
            &[
                "keys",
                "create",
                "--project",
                project,
                "--spans-per-sec",
                quota,
                "--burst-ms",
                "200",
                "--data-dir",
                &d,
            ],
            &[],
            CMD_TIMEOUT,
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .to_string()
    };
    let noisy = mk("noisy", "5000");
    let quiet = mk("quiet", "5000");
    let url = gw.traces_url();
    let duration = Duration::from_secs(4);
    let run = move |key: String, spans_per_req: u64, reqs_per_sec: u64| {
        let url = url.clone();
        std::thread::spawn(move || {
            let client = http_client();
            let body = encode(&request_n("quota", 1, spans_per_req));
            let start = Instant::now();
            let (mut ok, mut limited, mut other, mut sent) = (0u64, 0u64, 0u64, 0u64);
            let mut retry_after_seen = false;
            while start.elapsed() < duration {
                // Open-loop pacing.
                let due = Duration::from_secs_f64(sent as f64 / reqs_per_sec as f64);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
                sent += 1;
                let r = client
                    .post(&url)
                    .header("x-api-key", &key)
                    .header("content-type", "application/x-protobuf")
                    .body(body.clone())
                    .send();
                match r.map(|r| (r.status().as_u16(), r.headers().contains_key("retry-after"))) {
                    Ok((200, _)) => ok += spans_per_req,
                    Ok((429, ra)) => {
                        limited += 1;
                        retry_after_seen |= ra;
                    }
                    _ => other += 1,
                }
            }
            (ok, limited, other, retry_after_seen, start.elapsed())
        })
    };
    let noisy_t = run(noisy, 100, 100); // 10 000 spans/s offered
    let quiet_t = run(quiet, 10, 100); // 1 000 spans/s offered
    let (n_ok, n_lim, n_other, n_ra, n_el) = noisy_t.join().unwrap();
    let (q_ok, q_lim, q_other, _, _) = quiet_t.join().unwrap();
    let rate = n_ok as f64 / n_el.as_secs_f64();
    eprintln!("noisy accepted {rate:.0} spans/s ({n_lim} refused), quiet accepted {q_ok} spans, {q_lim} refused");
    assert_eq!(n_other, 0);
    assert!(
        n_lim > 0 && n_ra,
        "noisy project must see 429 with Retry-After"
    );
    assert!(
        (4500.0..=5500.0).contains(&rate),
        "noisy project got {rate:.0} spans/s, want 5000 ± 10 %"
    );
    assert_eq!(
        (q_lim, q_other),
        (0, 0),
        "quiet project must see no refusals"
    );
    // The quiet client really sent (it may fall behind its pace on a loaded machine).
    assert!(q_ok >= 1000, "quiet project sent too little: {q_ok}");
}

fn spoof_request(marker: &str, attrs: &[(String, String)]) -> ExportTraceServiceRequest {
    let mut req = request_n(marker, 1, 2);
    let res = req.resource_spans[0]
        .resource
        .get_or_insert_with(Resource::default);
    for (k, v) in attrs {
        res.attributes.push(KeyValue {
            key: k.clone(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.clone())),
            }),
            ..Default::default()
        });
    }
    req
}

/// Whatever tenant the client claims in headers or resource attributes, every stored span
/// carries the key's project and the claiming attributes hold the key's tenant.
#[test]
fn spoofed_tenants_never_stick() {
    let gw = Gateway::start(&[]);
    let key = gw.create_key("honest");
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (
        "[a-z]{1,12}",
        proptest::collection::vec("[a-zA-Z0-9_-]{1,16}", 3),
        prop_oneof![
            Just("project".to_string()),
            Just("tenant".to_string()),
            Just("x-project-id".to_string())
        ],
        0u32..1_000_000,
    );
    let result = runner.run(
        &strategy,
        |(header_project, attr_values, extra_key, case)| {
            let marker = format!("spoof-{case}-{header_project}");
            let attrs = vec![
                ("tracegate.project_id".to_string(), attr_values[0].clone()),
                ("tracegate.org_id".to_string(), attr_values[1].clone()),
                ("tracegate.workspace_id".to_string(), attr_values[2].clone()),
                (extra_key, attr_values[0].clone()),
            ];
            let r = try_post(
                &http_client(),
                &gw.traces_url(),
                &[
                    ("authorization", format!("Bearer {key}").as_str()),
                    ("content-type", "application/x-protobuf"),
                    ("x-tracegate-project", header_project.as_str()),
                    ("x-scope-orgid", header_project.as_str()),
                    ("tracegate-project-id", header_project.as_str()),
                ],
                encode(&spoof_request(&marker, &attrs)),
            )
            .unwrap();
            prop_assert_eq!(r.0, 200);
            let all = gw.archive_spans(None);
            let mine: Vec<_> = all
                .iter()
                .filter(|s| {
                    s["span"]["name"]
                        .as_str()
                        .unwrap_or("")
                        .starts_with(&marker)
                })
                .collect();
            prop_assert_eq!(mine.len(), 2);
            for s in mine {
                prop_assert_eq!(s["project_id"].as_str(), Some("honest"));
                prop_assert_eq!(s["org_id"].as_str(), Some("default"));
                for a in s["resource"]["attributes"].as_array().unwrap() {
                    let v = a["value"]["stringValue"].as_str().unwrap_or("");
                    match a["key"].as_str().unwrap() {
                        "tracegate.project_id" => prop_assert_eq!(v, "honest"),
                        "tracegate.org_id" => prop_assert_eq!(v, "default"),
                        "tracegate.workspace_id" => prop_assert_eq!(v, "default"),
                        _ => {}
                    }
                }
            }
            // No span at all was stored under any project but the key's.
            prop_assert!(all.iter().all(|s| s["project_id"] == "honest"));
            Ok(())
        },
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}
