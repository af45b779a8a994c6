//! The encrypted archive through the real binary, against S3 and KMS from moto (scripts/moto.sh):
//! - every object of a run decrypts (`archive ls|cat`), is stored with SSE-KMS under the tenant's
//!   customer-managed key (else the deployment's), and its envelope names the same KMS key;
//! - an object copied to another tenant's path, or with one byte flipped anywhere, is refused
//!   with a clear error;
//! - keyring rotation on a `file://` archive: objects before and after decrypt;
//! - KMS down, then S3 down: nothing is acknowledged (503), readiness drops, memory stays
//!   bounded, and once both are back requests are archived again.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

fn names(records: &[serde_json::Value]) -> BTreeSet<String> {
    span_names(records).into_iter().collect()
}

fn cat(
    data: &std::path::Path,
    env: &[(String, String)],
    project: Option<&str>,
) -> Vec<serde_json::Value> {
    common::archive_spans_env(data, env, project)
}

/// A failure message that says what is wrong with the object.
fn is_clear(err: &str) -> bool {
    [
        "integrity check failed",
        "encryption context mismatch",
        "bad magic",
        "corrupt archive",
        "unsupported archive",
        "unknown key provider",
        "KMS refused",
    ]
    .iter()
    .any(|m| err.contains(m))
}

#[test]
fn s3_sse_kms_per_tenant_keys_every_object_decrypts_and_tampering_is_refused() {
    let moto = Moto::start();
    let bucket = "tg-archive";
    moto.create_bucket(bucket);
    let deploy_key = moto.create_kms_key();
    let acme_key = moto.create_kms_key();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let k_acme = create_key_for_org(data, "acme", "web");
    let k_default = create_key_for_org(data, "default", "api");

    let mut env = moto.env();
    env.extend([
        (
            "TRACEGATE_ARCHIVE__URL".into(),
            format!("s3://{bucket}/arch"),
        ),
        ("TRACEGATE_ARCHIVE__KEY_PROVIDER".into(), "aws-kms".into()),
        ("TRACEGATE_ARCHIVE__KMS_KEY_ID".into(), deploy_key.clone()),
        (
            "TRACEGATE_ARCHIVE__TENANT_KMS_KEY_IDS".into(),
            format!("{{acme=\"{acme_key}\"}}"),
        ),
    ]);
    let mut gw = Gateway::start_in(data, &env_refs(&env));
    let mut sent = BTreeSet::new();
    for i in 0..4u64 {
        for (key, p) in [(&k_acme, "web"), (&k_default, "api")] {
            let req = request_n(p, i * 10, 10);
            let (status, _, body) = post_protobuf(&gw, key, &req);
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            sent.extend((i * 10..i * 10 + 10).map(|n| format!("{p}-{n}")));
        }
    }
    assert_eq!(gw.terminate().code(), Some(0));

    // Every object: SSE-KMS with the tenant's key (acme) or the deployment's (default).
    let keys = moto.list_keys(bucket, "arch/");
    assert_eq!(keys.len(), 8, "one object per request and tenant: {keys:?}");
    for k in &keys {
        let want = if k.starts_with("arch/acme/web/") {
            &acme_key
        } else {
            assert!(k.starts_with("arch/default/api/"), "{k}");
            &deploy_key
        };
        let (sse, kms_key) = moto.sse_of(bucket, k);
        assert_eq!(sse, "aws:kms", "{k}");
        assert_eq!(&kms_key, want, "{k}");
    }

    // Every object decrypts; its envelope is wrapped by the same KMS key.
    let ls = tracegate_ok(data, &["archive", "ls"], &env);
    assert_eq!(ls.lines().count(), 8, "{ls}");
    for line in ls.lines() {
        let want = if line.starts_with("arch/acme/") {
            &acme_key
        } else {
            &deploy_key
        };
        assert!(line.contains("\tv2\t"), "{line}");
        assert!(line.contains(&format!("aws-kms:{want}")), "{line}");
        assert!(line.ends_with("spans=10"), "{line}");
    }
    let records = cat(data, &env, None);
    assert_eq!(names(&records), sent);
    assert_eq!(records.len(), sent.len());
    assert!(records
        .iter()
        .all(|r| (r["org_id"] == "acme") == (r["project_id"] == "web")));

    // Replay (dry run) rebuilds every group from S3.
    let today = chrono::Utc::now().date_naive();
    let (from, to) = (
        (today - chrono::Duration::days(1)).to_string(),
        (today + chrono::Duration::days(1)).to_string(),
    );
    let out = tracegate_ok(
        data,
        &[
            "archive",
            "replay",
            "--from",
            &from,
            "--to",
            &to,
            "--dry-run",
        ],
        &env,
    );
    assert!(
        out.contains("replay: groups=8 objects=8 batches=8 spans=80 failed=0"),
        "{out}"
    );

    // Another tenant's context: acme's object copied under default/api does not decrypt.
    let src = keys
        .iter()
        .find(|k| k.contains("/acme/web/"))
        .unwrap()
        .clone();
    let original = moto.get_object(bucket, &src);
    let stolen = src.replace("/acme/web/", "/default/api/");
    moto.put_object(bucket, &stolen, &original);
    let out = tracegate_run(data, &["archive", "cat", "--project", "api"], &env);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("encryption context mismatch"), "{err}");
    assert!(err.contains(&stolen), "the error names the object: {err}");
    moto.boto(&format!(
        "s3.delete_object(Bucket={bucket:?}, Key={stolen:?})"
    ));

    // One flipped byte anywhere (magic, header fields, wrapped key, ciphertext, tag): refused.
    let n = original.len();
    for pos in [0, 5, 9, 12, 40, 100, n / 2, n - 17, n - 1] {
        let mut bad = original.clone();
        bad[pos] ^= 0x01;
        moto.put_object(bucket, &src, &bad);
        let out = tracegate_run(data, &["archive", "ls", "--project", "web"], &env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "flip at {pos} of {n} was not detected"
        );
        assert!(is_clear(&err), "flip at {pos}: unclear error: {err}");
    }
    moto.put_object(bucket, &src, &original);
    assert_eq!(cat(data, &env, Some("web")).len(), 40);
}

#[test]
fn keyring_rotation_on_a_file_url_keeps_old_objects_readable() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let archive = dir.path().join("elsewhere/archive");
    let env = vec![(
        "TRACEGATE_ARCHIVE__URL".to_string(),
        format!("file://{}", archive.display()),
    )];
    let key = create_key_in(&data, "rot");
    let mut gw = Gateway::start_in(&data, &env_refs(&env));
    for i in 0..3 {
        assert_eq!(
            post_protobuf(&gw, &key, &request_n("before", i * 5, 5)).0,
            200
        );
    }
    // Rotate while the gateway runs: it picks the new key up for its next object.
    let out = tracegate_ok(&data, &["archive", "rotate-key"], &env);
    let new_key = out.lines().last().unwrap().trim().to_string();
    assert!(new_key.starts_with("kr-"), "{out}");
    for i in 0..3 {
        assert_eq!(
            post_protobuf(&gw, &key, &request_n("after", i * 5, 5)).0,
            200
        );
    }
    assert_eq!(gw.terminate().code(), Some(0));

    let keys = tracegate_ok(&data, &["archive", "keys"], &env);
    assert_eq!(keys.lines().count(), 2, "{keys}");
    assert!(keys.contains(&format!("{new_key}\t")) && keys.contains("active"));
    let ls = tracegate_ok(&data, &["archive", "ls"], &env);
    assert_eq!(ls.lines().count(), 6, "{ls}");
    let used: BTreeSet<&str> = ls.lines().map(|l| l.split('\t').nth(3).unwrap()).collect();
    assert_eq!(used.len(), 2, "objects before and after rotation: {used:?}");
    assert!(used.contains(format!("keyring:{new_key}").as_str()));
    assert!(ls.lines().all(|l| l.contains("/rot/")));
    // The objects are where archive.url says, not under the data dir.
    assert!(!data.join("archive").exists());
    let records = cat(&data, &env, Some("rot"));
    assert_eq!(records.len(), 30);
    assert!(names(&records).contains("before-0") && names(&records).contains("after-14"));
    // Without the keyring the objects cannot be read, and the error says why.
    std::fs::rename(data.join("archive-keyring.json"), dir.path().join("kr.bak")).unwrap();
    let out = tracegate_run(&data, &["archive", "cat"], &env);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no keyring"));
}

/// Sends from `threads` clients until `stop`; counts statuses, remembers acknowledged spans.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    acked: Arc<Mutex<BTreeSet<String>>>,
    handles: Vec<thread::JoinHandle<()>>,
}

impl Load {
    fn start(gw: &Gateway, key: &str, tag: &str, threads: usize, spans: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let acked = Arc::new(Mutex::new(BTreeSet::new()));
        let mut handles = vec![];
        for t in 0..threads {
            let (stop, ok, refused, acked) =
                (stop.clone(), ok.clone(), refused.clone(), acked.clone());
            let url = gw.traces_url();
            let auth = format!("Bearer {key}");
            let tag = format!("{tag}{t}");
            handles.push(thread::spawn(move || {
                let client = http_client_with_timeout(Duration::from_secs(30));
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let req = request_n(&tag, i * spans, spans);
                    let r = try_post(
                        &client,
                        &url,
                        &[
                            ("authorization", auth.as_str()),
                            ("content-type", "application/x-protobuf"),
                        ],
                        encode(&req),
                    );
                    match r {
                        Ok((200, _, _)) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            let mut a = acked.lock().unwrap();
                            a.extend((i * spans..(i + 1) * spans).map(|n| format!("{tag}-{n}")));
                        }
                        Ok((s, _, _)) => {
                            assert!(s == 503 || s == 500, "unexpected status {s}");
                            refused.fetch_add(1, Ordering::Relaxed);
                            thread::sleep(Duration::from_millis(20));
                        }
                        Err(_) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    i += 1;
                }
            }));
        }
        Load {
            stop,
            ok,
            refused,
            acked,
            handles,
        }
    }

    fn finish(self) -> (u64, u64, BTreeSet<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            h.join().unwrap();
        }
        let acked = self.acked.lock().unwrap().clone();
        (
            self.ok.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
            acked,
        )
    }
}

#[test]
fn kms_or_s3_down_acknowledges_nothing_keeps_memory_bounded_and_recovers() {
    let moto = Moto::start();
    let bucket = "tg-down";
    moto.create_bucket(bucket);
    let kms_key = moto.create_kms_key();
    let moto_addr = moto.endpoint.trim_start_matches("http://").parse().unwrap();
    let s3p = SwitchProxy::start(moto_addr);
    let kmsp = SwitchProxy::start(moto_addr);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let key = create_key_in(data, "down");
    let mut env = moto.env();
    env.extend([
        ("AWS_ENDPOINT_URL_S3".into(), s3p.url()),
        ("AWS_ENDPOINT_URL_KMS".into(), kmsp.url()),
        ("TRACEGATE_ARCHIVE__URL".into(), format!("s3://{bucket}")),
        ("TRACEGATE_ARCHIVE__KEY_PROVIDER".into(), "aws-kms".into()),
        ("TRACEGATE_ARCHIVE__KMS_KEY_ID".into(), kms_key),
        ("TRACEGATE_ARCHIVE__TIMEOUT_MS".into(), "1000".into()),
        (
            "TRACEGATE_LIMITS__MAX_REQUEST_BYTES".into(),
            "4194304".into(),
        ),
        (
            "TRACEGATE_LIMITS__MAX_INFLIGHT_BYTES".into(),
            "16777216".into(),
        ),
        ("TRACEGATE_WRITER__QUEUE_CAPACITY".into(), "64".into()),
    ]);
    let mut gw = Gateway::start_in(data, &env_refs(&env));
    assert_eq!(post_protobuf(&gw, &key, &request_n("up", 0, 10)).0, 200);
    let baseline = rss_kib(gw.pid());

    let mut acked_all: BTreeSet<String> = (0..10).map(|n| format!("up-{n}")).collect();
    let mut max_rss = baseline;
    for (what, proxy) in [("kms", &kmsp), ("s3", &s3p)] {
        proxy.set_down(true);
        let load = Load::start(&gw, &key, &format!("{what}down"), 4, 500);
        let t = Instant::now();
        let mut saw_unready = false;
        while t.elapsed() < Duration::from_secs(8) {
            max_rss = max_rss.max(rss_kib(gw.pid()));
            if get(&format!("{}/readyz", gw.admin_url())).0 != 200 {
                saw_unready = true;
            }
            thread::sleep(Duration::from_millis(100));
        }
        let (ok, refused, acked) = load.finish();
        eprintln!("{what} down: ok={ok} refused={refused} max_rss={max_rss} KiB");
        assert_eq!(ok, 0, "{what} down: {ok} requests were acknowledged");
        assert!(refused > 0, "{what} down: nothing was sent");
        assert!(
            saw_unready,
            "{what} down: /readyz never reported the failing writer"
        );
        assert!(acked.is_empty());
        proxy.set_down(false);
        // Back up: the next flush succeeds (clients retry their refused requests).
        let back = wait_until(Duration::from_secs(30), || {
            post_protobuf(&gw, &key, &request_n(&format!("{what}back"), 0, 10)).0 == 200
        });
        assert!(back, "{what} back: requests are still refused");
        acked_all.extend((0..10).map(|n| format!("{what}back-{n}")));
    }
    assert!(
        max_rss < baseline + 200 * 1024,
        "memory grew from {baseline} KiB to {max_rss} KiB while the archive was down"
    );
    assert_eq!(gw.terminate().code(), Some(0));

    // Every acknowledged span is archived.
    let got = names(&cat(data, &env, None));
    let missing: Vec<_> = acked_all.difference(&got).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not archived: {missing:?}"
    );
}
