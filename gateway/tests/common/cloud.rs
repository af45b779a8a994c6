//! Google Cloud Storage and Azure Blob Storage emulators (scripts/cloud-emulators.sh: Azurite
//! from npm, gcp-storage-emulator from PyPI), started per test.

use super::*;

/// The bucket the GCS emulator creates at start.
pub const GCS_BUCKET: &str = "tgarchive";
/// The container tests create in Azurite.
pub const AZURE_CONTAINER: &str = "tracegate-archive";

fn cloud_sh(args: &[&str]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(super::manifest_dir().join("../scripts/cloud-emulators.sh"))
        .args(args);
    run_command(
        cmd,
        &format!("scripts/cloud-emulators.sh {args:?}"),
        MOTO_SCRIPT_TIMEOUT,
    )
}

fn last_line(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{what} failed ({}): {stdout}\n{}\n(.ci/run installs the emulators; \
         `bash scripts/cloud-emulators.sh install` does it by hand)",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or_default()
        .to_string()
}

/// A running emulator: `kind` is "azure" or "gcs".
pub struct CloudEmulator {
    dir: tempfile::TempDir,
    pub kind: &'static str,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
}

impl CloudEmulator {
    pub fn start(kind: &'static str) -> CloudEmulator {
        let dir = tempfile::Builder::new()
            .prefix("tg-cloud-")
            .tempdir()
            .expect("emulator temp dir");
        let d = dir.path().to_str().expect("utf-8 dir").to_string();
        let pid = std::process::id().to_string();
        let out = cloud_sh(&["start", kind, &d, &pid]);
        let endpoint = last_line(&out, "scripts/cloud-emulators.sh start");
        assert!(endpoint.starts_with("http://127.0.0.1:"), "{endpoint:?}");
        if kind == "azure" {
            last_line(
                &cloud_sh(&["container", &endpoint, AZURE_CONTAINER]),
                "creating the Azure container",
            );
        }
        CloudEmulator {
            dir,
            kind,
            endpoint,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.endpoint
            .trim_start_matches("http://")
            .parse()
            .expect("emulator address")
    }

    /// Where the emulator keeps what it stores.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The environment that points tracegate's archive at this emulator through `endpoint`
    /// (e.g. a recording proxy before it), under `prefix`.
    pub fn env_for(&self, endpoint: &str, prefix: &str) -> Vec<(String, String)> {
        match self.kind {
            "azure" => vec![
                ("AZURE_STORAGE_USE_EMULATOR".into(), "true".into()),
                ("AZURITE_BLOB_STORAGE_URL".into(), endpoint.into()),
                (
                    "TRACEGATE_ARCHIVE__URL".into(),
                    format!("az://{AZURE_CONTAINER}/{prefix}"),
                ),
            ],
            _ => vec![
                (
                    "GOOGLE_SERVICE_ACCOUNT_KEY".into(),
                    format!(
                        r#"{{"gcs_base_url": "{endpoint}", "disable_oauth": true, "client_email": "", "private_key": "", "private_key_id": ""}}"#
                    ),
                ),
                (
                    "TRACEGATE_ARCHIVE__URL".into(),
                    format!("gs://{GCS_BUCKET}/{prefix}"),
                ),
            ],
        }
    }
}

impl Drop for CloudEmulator {
    fn drop(&mut self) {
        let d = self.dir.path().to_str().unwrap_or_default().to_string();
        let _ = cloud_sh(&["stop", &d]);
    }
}

/// `%XX` decoded (object_store percent-encodes object names, `/` and `.` included, for GCS).
fn percent_decoded(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every `PUT <path>` request in `wire` (bytes as sent; the path percent-decoded) with the
/// value of `header`.
pub fn puts(wire: &[u8], header: &str) -> Vec<(String, Option<String>)> {
    let text = String::from_utf8_lossy(wire);
    let mut out = Vec::new();
    for (at, _) in text.match_indices("PUT /") {
        let head = &text[at..];
        let Some(end) = head.find("\r\n\r\n") else {
            continue;
        };
        let mut lines = head[..end].split("\r\n");
        let path = percent_decoded(
            lines
                .next()
                .and_then(|l| l.split(' ').nth(1))
                .unwrap_or_default(),
        );
        let value = lines.find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(header).then(|| v.trim().to_string())
        });
        out.push((path, value));
    }
    out
}

/// Files under `dir` (recursively) whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    hits.push(p);
                }
            }
        }
    }
    hits
}

/// What `archive_through_gateway` saw.
pub struct CloudRun {
    /// Each object's PUT path and the key header it carried.
    pub objects: Vec<(String, Option<String>)>,
}

/// Two tenants (acme/web, default/api) send 3 requests of 10 spans each through `tracegate
/// serve` archiving to `emu` (through a recording proxy) with `keys` (extra `TRACEGATE_ARCHIVE__*`
/// settings). Checks that every span reads back once (`archive cat`), one object per request
/// and tenant, and no span name in clear in the emulator's storage.
pub fn archive_through_gateway(
    emu: &CloudEmulator,
    keys: &[(String, String)],
    key_header: &str,
) -> CloudRun {
    let kind = emu.kind;
    let tap = SwitchProxy::start_recording(emu.addr());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let k_acme = create_key_for_org(data, "acme", "web");
    let k_default = create_key_for_org(data, "default", "api");
    let mut env = emu.env_for(&tap.url(), "arch");
    env.extend_from_slice(keys);
    let mut gw = Gateway::start_in(data, &env_refs(&env));
    let mut sent = std::collections::BTreeSet::new();
    for i in 0..3u64 {
        for (key, p) in [(&k_acme, "web"), (&k_default, "api")] {
            let req = request_n(&format!("{kind}{p}"), i * 10, 10);
            let (status, _, body) = post_protobuf(&gw, key, &req);
            assert_eq!(status, 200, "{kind}: {}", String::from_utf8_lossy(&body));
            sent.extend((i * 10..i * 10 + 10).map(|n| format!("{kind}{p}-{n}")));
        }
    }
    assert_eq!(gw.terminate().code(), Some(0));

    let records = archive_spans_env(data, &env, None);
    let names = span_names(&records);
    assert_eq!(names.len(), sent.len(), "{kind}: a span archived twice");
    assert_eq!(
        names.into_iter().collect::<std::collections::BTreeSet<_>>(),
        sent,
        "{kind}"
    );
    let ls = tracegate_ok(data, &["archive", "ls"], &env);
    assert_eq!(
        ls.lines().count(),
        6,
        "{kind}: one object per request: {ls}"
    );
    let clear = files_containing(&emu.data_dir(), format!("{kind}web-1").as_bytes());
    assert!(clear.is_empty(), "{kind}: plaintext in {clear:?}");

    let wire = tap.sent.lock().unwrap().clone();
    let objects: Vec<_> = puts(&wire, key_header)
        .into_iter()
        .filter(|(path, _)| path.ends_with(".tga"))
        .collect();
    assert_eq!(objects.len(), 6, "{kind}: {objects:?}");
    CloudRun { objects }
}

/// The store as a library against `emu`: a group written twice keeps its first object and adds
/// none (the create-only put). Sets the process's environment for the store: call it last in a
/// binary whose only test it is (no other thread reads the environment then).
pub fn assert_create_only(emu: &CloudEmulator, url: &str) {
    for (k, v) in emu.env_for(&emu.endpoint, "lib") {
        std::env::set_var(k, v);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tracegate::config::Config::default();
    cfg.server.data_dir = dir.path().to_path_buf();
    cfg.archive.url = url.to_string();
    cfg.validate().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store =
            tracegate_archive::store::ArchiveStore::open(&cfg.archive_settings(), true).unwrap();
        let batch = tracegate_proto::v1::Batch {
            schema_version: 1,
            org_id: "acme".into(),
            project_id: "web".into(),
            batch_id: vec![7; 16].into(),
            span_count: 1,
            received_at_unix_nano: 1_700_000_000_000_000_000,
            ..Default::default()
        };
        let group = std::sync::Arc::new(tracegate_pipeline::WriteGroup {
            id: "traces:1:5-6".into(),
            batches: vec![batch],
            class: Default::default(),
        });
        assert_eq!(store.write_group(group.clone()).await.unwrap().len(), 1);
        let again = store.write_group(group).await.unwrap();
        assert!(
            again.is_empty(),
            "the second write replaced the object: {again:?}"
        );
        let objs = store
            .list(&tracegate_archive::store::Filter::default())
            .await
            .unwrap();
        assert_eq!(objs.len(), 1);
    });
}
