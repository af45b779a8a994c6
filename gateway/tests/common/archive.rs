//! API keys (`tracegate keys create`) and reading what the archive holds (`tracegate archive cat`, object files and names).

use super::*;

/// `tracegate keys create --project P --data-dir D` -> the key (last non-empty stdout line).
pub fn create_key_in(data_dir: &Path, project: &str) -> String {
    let dir = data_dir.to_str().expect("utf-8 data dir");
    let out = run_tracegate(
        &["keys", "create", "--project", project, "--data-dir", dir],
        &[],
        CMD_TIMEOUT,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tracegate keys create --project {project} failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let key = stdout
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or_else(|| panic!("keys create printed no key; stdout: {stdout:?}"))
        .to_string();
    key
}

/// `tracegate archive cat [--project P] --data-dir D`, one JSON value per non-empty line.
pub fn archive_spans_in(data_dir: &Path, project: Option<&str>) -> Vec<serde_json::Value> {
    archive_cat(data_dir, project, &[])
}

/// `tracegate archive cat [--project P]` of the archive `env` configures (S3, KMS), one JSON
/// value per line.
pub fn archive_spans_env(
    data_dir: &Path,
    env: &[(String, String)],
    project: Option<&str>,
) -> Vec<serde_json::Value> {
    archive_spans_env_within(data_dir, env, project, CMD_TIMEOUT)
}

/// [`archive_spans_env`] given `timeout` (reading a million spans back from moto takes minutes).
pub fn archive_spans_env_within(
    data_dir: &Path,
    env: &[(String, String)],
    project: Option<&str>,
    timeout: std::time::Duration,
) -> Vec<serde_json::Value> {
    let mut args = vec!["archive", "cat"];
    if let Some(p) = project {
        args.extend(["--project", p]);
    }
    let mut a: Vec<&str> = args.to_vec();
    a.extend(["--data-dir", data_dir.to_str().expect("utf-8 data dir")]);
    let out = run_tracegate(&a, &env_refs(env), timeout);
    assert!(
        out.status.success(),
        "tracegate {a:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

/// The spans of the ClickHouse dead-letter area (`archive cat --dead-letters`).
pub fn dead_letter_spans_in(data_dir: &Path) -> Vec<serde_json::Value> {
    archive_cat(data_dir, None, &["--dead-letters"])
}

pub(crate) fn archive_cat(
    data_dir: &Path,
    project: Option<&str>,
    extra: &[&str],
) -> Vec<serde_json::Value> {
    let dir = data_dir.to_str().expect("utf-8 data dir");
    let mut args = vec!["archive", "cat"];
    args.extend_from_slice(extra);
    if let Some(p) = project {
        args.push("--project");
        args.push(p);
    }
    args.push("--data-dir");
    args.push(dir);
    let out = run_tracegate(&args, &[], Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tracegate {args:?} failed: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("archive cat printed a non-JSON line ({e}): {l:?}"))
        })
        .collect()
}

/// Every envelope archived under `data_dir` (read with the library, as `archive cat` does),
/// optionally only `project`'s: to check envelope fields `archive cat` does not print.
pub fn archive_batches_in(
    data_dir: &Path,
    project: Option<&str>,
) -> Vec<tracegate_proto::v1::Batch> {
    use tracegate_archive::store::{ArchiveStore, Filter};
    let cfg = tracegate::cli::CommonArgs {
        config: None,
        data_dir: Some(data_dir.to_path_buf()),
    }
    .load()
    .expect("config for the archive");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let store = ArchiveStore::open(&cfg.archive_settings(), false).expect("open the archive");
        let filter = Filter {
            project: project.map(str::to_string),
            from: None,
            to: None,
        };
        let mut out = Vec::new();
        for o in store.list(&filter).await.expect("list the archive") {
            let c = store.read(&o).await.expect("read an archive object");
            out.extend(
                c.batches
                    .into_iter()
                    .map(|(_, b)| b)
                    .filter(|b| project.is_none_or(|p| p == b.project_id)),
            );
        }
        out
    })
}

/// (schema_version, otlp_request_encoding) of every envelope, counted.
pub fn envelope_encodings(
    batches: &[tracegate_proto::v1::Batch],
) -> std::collections::BTreeMap<(u32, i32), usize> {
    let mut m = std::collections::BTreeMap::new();
    for b in batches {
        *m.entry((b.schema_version, b.otlp_request_encoding))
            .or_default() += 1;
    }
    m
}

/// Span names found in archive records (`record["span"]["name"]`).
pub fn span_names(records: &[serde_json::Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| {
            r["span"]["name"]
                .as_str()
                .unwrap_or_else(|| panic!("archive record without span.name: {r}"))
                .to_string()
        })
        .collect()
}

/// A project name unique within this machine run (tests share nothing, but be safe).
pub fn unique_project(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{n}-{}", std::process::id(), t % 1_000_000_000)
}

/// Deterministic, non-zero 16-byte trace id for `n`.
pub fn trace_id(n: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&0x7472_6163_6567_6174u64.to_be_bytes()); // "tracegat"
    v.extend_from_slice(&(n + 1).to_be_bytes());
    v
}

/// Waits (bounded) until the archive under `data_dir` holds every name in `want` for
/// `project`; returns the names still missing (empty = all there) and the records read.
pub fn wait_for_spans(
    data_dir: &Path,
    project: &str,
    want: &[String],
    timeout: Duration,
) -> (Vec<String>, Vec<serde_json::Value>) {
    let deadline = Instant::now() + timeout;
    loop {
        let records = archive_spans_in(data_dir, Some(project));
        let have: std::collections::HashSet<&str> = records
            .iter()
            .filter_map(|r| r["span"]["name"].as_str())
            .collect();
        let missing: Vec<String> = want
            .iter()
            .filter(|n| !have.contains(n.as_str()))
            .cloned()
            .collect();
        if missing.is_empty() || Instant::now() >= deadline {
            return (missing, records);
        }
        thread::sleep(Duration::from_millis(500));
    }
}

/// `tracegate keys create --project P --data-dir D EXTRA...` (e.g. `--vpce vpce-1`,
/// `--cidr 10.0.0.0/8`); returns the secret (last stdout line).
pub fn create_key_with(data_dir: &Path, project: &str, extra: &[&str]) -> String {
    let dir = data_dir.to_str().expect("utf-8 data dir");
    let mut args = vec!["keys", "create", "--project", project, "--data-dir", dir];
    args.extend_from_slice(extra);
    let out = run_tracegate(&args, &[], CMD_TIMEOUT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tracegate {args:?} failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or_else(|| panic!("keys create printed no key; stdout: {stdout:?}"))
        .to_string()
}

/// `keys create --org O --project P`: the key.
pub fn create_key_for_org(data_dir: &Path, org: &str, project: &str) -> String {
    let out = tracegate_ok(
        data_dir,
        &["keys", "create", "--org", org, "--project", project],
        &[],
    );
    out.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .expect("a key")
        .to_string()
}

/// File names under `dir`, recursively.
pub fn walk_names(dir: &Path) -> Vec<String> {
    walk_files(dir)
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
        .collect()
}

/// File paths under `dir`, recursively.
pub fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Archive object name `<topic>_<partition>_<first>-<last>.tga` (a Kafka group id) →
/// (partition, first, last).
pub fn parse_object_name(name: &str) -> Option<(i32, i64, i64)> {
    let stem = name.strip_suffix(".tga")?;
    let (rest, range) = stem.rsplit_once('_')?;
    let (_, partition) = rest.rsplit_once('_')?;
    let (first, last) = range.split_once('-')?;
    Some((
        partition.parse().ok()?,
        first.parse().ok()?,
        last.parse().ok()?,
    ))
}

/// What an application on an SDK's defaults sent for `tag` (`{tag}-span-0..2`,
/// `{tag}-log-0..2`, counter `{tag}.requests`) is archived under `project`, each item once;
/// returns the archived metrics (`archive cat --signal metrics`).
pub fn assert_all_three_signals(
    data_dir: &Path,
    project: &str,
    tag: &str,
    what: &str,
) -> Vec<serde_json::Value> {
    let want = |kind: &str| {
        (0..3)
            .map(|i| format!("{tag}-{kind}-{i}"))
            .collect::<Vec<_>>()
    };
    let mut spans = span_names(&archive_spans_in(data_dir, Some(project)));
    spans.sort();
    assert_eq!(spans, want("span"), "{what}");
    let logs = archive_cat(data_dir, Some(project), &["--signal", "logs"]);
    let mut bodies: Vec<String> = logs
        .iter()
        .filter_map(|l| l["log"]["body"]["stringValue"].as_str().map(String::from))
        .collect();
    bodies.sort();
    assert_eq!(bodies, want("log"), "{what}");
    let metrics = archive_cat(data_dir, Some(project), &["--signal", "metrics"]);
    let names: Vec<&str> = metrics
        .iter()
        .filter_map(|m| m["metric"]["name"].as_str())
        .collect();
    assert_eq!(names, [format!("{tag}.requests")], "{what}: {metrics:#?}");
    metrics
}
