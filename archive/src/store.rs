//! The archive store: encrypted v2 objects (`crypto`) on a local directory, S3, GCS or Azure
//! Blob Storage (`cloud.rs`), through `object_store`.
//!
//! Object key: `<prefix>/<org>/<project>/<yyyy>/<mm>/<dd>/<group id>.tga`, the date being the UTC
//! date of the group's first batch, so every object of one writer group shares a directory and
//! the key depends only on the group. Objects are created with a conditional put
//! (`PutMode::Create`: `If-None-Match: *` on S3, `link(2)` locally, file and directories
//! fsynced), so a group written again (a retry, or a Kafka range re-read after a crash) keeps its
//! first object and adds none. In the cloud every object is written under the tenant's
//! customer-managed key (`archive.tenant_kms_key_ids`) else the deployment's
//! (`archive.kms_key_id`) else the store's default (`cloud.rs`: SSE-KMS, CMEK, encryption
//! scope); that is on top of the client-side envelope encryption.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use chrono::{DateTime, NaiveDate, Utc};
use futures_util::future::BoxFuture;
use futures_util::{StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use prost::Message;
use tracegate_proto::v1::Batch;

use crate::cloud::Cloud;
use crate::config::{ArchiveConfig, ArchiveUrl};
use crate::crypto::{self, EncryptionContext, Provider};
use crate::format;
use crate::fsutil::create_dir_all_durable;
use crate::keys::KeyManager;
use tracegate_pipeline::{Sink, WriteGroup};

use crate::layout::{self, safe_segment, DEAD_LETTER_SEGMENT};

/// The most a reader inflates one archive object to. A group is at most `writer.max_batch_bytes`
/// (64 MiB by default) of batches, and an object holds one project's part of it; 1 GiB leaves
/// room for any sensible setting while refusing a decompression bomb planted in the bucket.
pub const MAX_OBJECT_PLAIN_BYTES: usize = 1 << 30;

/// Counters the archive sink keeps (the gateway describes them with its other metrics).
pub const OBJECTS_WRITTEN: &str = "tracegate_archive_objects_written_total";
pub const BYTES_WRITTEN: &str = "tracegate_archive_bytes_written_total";

/// What opening an archive needs from the process's configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `[archive]`.
    pub archive: ArchiveConfig,
    /// `server.data_dir`: the local archive and the keyring default to places under it.
    pub data_dir: PathBuf,
    /// zstd level of object payloads (`writer.compression_level`).
    pub compression_level: i32,
}

impl Settings {
    /// The default archive under `data_dir` (a local directory and keyring), zstd level 1 (the
    /// writer's default).
    pub fn local(data_dir: &Path) -> Self {
        Self {
            archive: ArchiveConfig::default(),
            data_dir: data_dir.to_path_buf(),
            compression_level: 1,
        }
    }

    /// A reader's settings from a gateway or writer config file: its `[archive]` section and
    /// `server.data_dir` (`data_dir`, when given, wins). Only the file is read: for a reader
    /// outside the gateway (the load tool's `verify`) that needs no more than where the archive
    /// is and which keys open it; `TRACEGATE_*` overrides are the gateway's own loader's.
    pub fn from_config_file(path: &Path, data_dir: Option<&Path>) -> Result<Self> {
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct Server {
            data_dir: Option<PathBuf>,
        }
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct File {
            server: Server,
            archive: ArchiveConfig,
        }
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file: File =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let data_dir = data_dir
            .map(Path::to_path_buf)
            .or(file.server.data_dir)
            .with_context(|| {
                format!(
                    "{} sets no server.data_dir: give the data directory",
                    path.display()
                )
            })?;
        file.archive
            .validate(&data_dir)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(Self {
            archive: file.archive,
            data_dir,
            compression_level: 1,
        })
    }
}

/// Tenants of one group written concurrently.
const TENANT_CONCURRENCY: usize = 8;

/// Where an object is and what its key says.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectInfo {
    pub date: NaiveDate,
    /// The group id as it appears in the key (sanitised).
    pub name: String,
    pub org: String,
    pub project: String,
    pub location: ObjPath,
    pub size: u64,
}

/// A decrypted object.
#[derive(Debug)]
pub struct ObjectContents {
    pub info: ObjectInfo,
    /// 1 (plain, `TGA1`) or 2 (encrypted, `TGA2`).
    pub format: u8,
    /// The writer group id (v2: from the encryption context; v1: the file name).
    pub group_id: String,
    /// Batches of the whole group, every tenant (v2 only).
    pub group_batches: Option<u32>,
    pub provider: Option<Provider>,
    pub key_id: Option<String>,
    /// (index of the batch in its group, batch), in group order.
    pub batches: Vec<(u32, Batch)>,
}

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub project: Option<String>,
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
}

impl Filter {
    fn matches(&self, o: &ObjectInfo) -> bool {
        self.project
            .as_deref()
            .is_none_or(|p| safe_segment(p) == o.project)
            && self.from.is_none_or(|d| o.date >= d)
            && self.to.is_none_or(|d| o.date <= d)
    }
}

/// One object written by `write_group`.
#[derive(Debug, Clone)]
pub struct Written {
    pub location: ObjPath,
    pub bytes: usize,
    pub key_id: String,
    /// The SSE-KMS key it was stored under (S3).
    pub sse_kms_key_id: Option<String>,
}

enum Backend {
    Local {
        root: PathBuf,
        /// None while the directory does not exist (a reader finds nothing).
        store: Option<Arc<dyn ObjectStore>>,
    },
    Cloud {
        /// `s3://bucket`, `gs://bucket`, `az://container`.
        root: String,
        cloud: Cloud,
        /// Reads and lists (no key headers needed).
        read: Arc<dyn ObjectStore>,
        /// Writers by key (None: the store's default key).
        writers: Mutex<HashMap<Option<String>, Arc<dyn ObjectStore>>>,
    },
}

pub struct ArchiveStore {
    backend: Backend,
    prefix: Vec<String>,
    keys: Arc<KeyManager>,
    cfg: ArchiveConfig,
    level: i32,
}

impl std::fmt::Debug for ArchiveStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// A cloud archive's backend and its prefix segments.
fn cloud_backend(
    root: String,
    cloud: Cloud,
    prefix: &str,
    timeout: Duration,
) -> Result<(Backend, Vec<String>)> {
    let read = cloud
        .reader(timeout)
        .with_context(|| format!("the archive store at {root}"))?;
    let prefix = prefix
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let writers = Mutex::new(HashMap::new());
    Ok((
        Backend::Cloud {
            root,
            cloud,
            read,
            writers,
        },
        prefix,
    ))
}

impl ArchiveStore {
    /// Opens the configured archive. `for_writing` creates the local directory and the keyring
    /// (keyring provider) and removes temp files left by a crash.
    pub fn open(settings: &Settings, for_writing: bool) -> Result<Self> {
        let cfg = &settings.archive;
        let data_dir = &settings.data_dir;
        let keys = Arc::new(KeyManager::new(cfg, data_dir));
        let url = cfg
            .parsed_url(data_dir)
            .map_err(|e| anyhow::anyhow!("archive.url: {e}"))?;
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let (backend, prefix) = match url {
            ArchiveUrl::Local(root) => {
                if for_writing {
                    create_dir_all_durable(&root)?;
                    let n = remove_stale_temp_files(&root)?;
                    if n > 0 {
                        tracing::info!(
                            count = n,
                            "removed unacknowledged archive temp files from an earlier crash"
                        );
                    }
                }
                let store: Option<Arc<dyn ObjectStore>> = if root.is_dir() {
                    Some(Arc::new(
                        LocalFileSystem::new_with_prefix(&root)
                            .with_context(|| format!("archive directory {}", root.display()))?
                            .with_fsync(true),
                    ))
                } else {
                    None
                };
                (Backend::Local { root, store }, vec![])
            }
            ArchiveUrl::S3 { bucket, prefix } => cloud_backend(
                format!("s3://{bucket}"),
                Cloud::s3(&bucket, timeout),
                &prefix,
                timeout,
            )?,
            ArchiveUrl::Gcs { bucket, prefix } => cloud_backend(
                format!("gs://{bucket}"),
                Cloud::gcs(&bucket, timeout),
                &prefix,
                timeout,
            )?,
            ArchiveUrl::Azure { container, prefix } => cloud_backend(
                format!("az://{container}"),
                Cloud::azure(&container, timeout),
                &prefix,
                timeout,
            )?,
        };
        if for_writing {
            keys.prepare_for_writing()?;
        }
        Ok(Self {
            backend,
            prefix,
            keys,
            cfg: cfg.clone(),
            level: settings.compression_level,
        })
    }

    /// The ClickHouse dead-letter area of the configured archive: the same backend, keys (keyring
    /// or KMS, per tenant) and encryption as the archive, under [`DEAD_LETTER_SEGMENT`].
    pub fn open_dead_letters(settings: &Settings, for_writing: bool) -> Result<Self> {
        let mut store = Self::open(settings, for_writing)?;
        store.prefix.push(DEAD_LETTER_SEGMENT.to_string());
        Ok(store)
    }

    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Local { root, .. } => {
                let path = self.prefix.iter().fold(root.clone(), |p, s| p.join(s));
                format!("file://{}", path.display())
            }
            Backend::Cloud { root, .. } => format!("{root}/{}", self.prefix.join("/")),
        }
    }

    pub fn keys(&self) -> &KeyManager {
        &self.keys
    }

    fn reader(&self) -> Option<&Arc<dyn ObjectStore>> {
        match &self.backend {
            Backend::Local { store, .. } => store.as_ref(),
            Backend::Cloud { read, .. } => Some(read),
        }
    }

    fn writer_for(
        &self,
        org: &str,
        project: &str,
    ) -> Result<(Arc<dyn ObjectStore>, Option<String>)> {
        match &self.backend {
            Backend::Local { store, root } => Ok((
                store
                    .clone()
                    .with_context(|| format!("archive directory {} is missing", root.display()))?,
                None,
            )),
            Backend::Cloud { cloud, writers, .. } => {
                let key = self.cfg.kms_key_for(org, project).map(str::to_string);
                let mut w = writers.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(s) = w.get(&key) {
                    return Ok((s.clone(), key));
                }
                let timeout = Duration::from_millis(self.cfg.timeout_ms);
                let s = cloud.writer(key.as_deref(), timeout)?;
                w.insert(key.clone(), s.clone());
                Ok((s, key))
            }
        }
    }

    fn object_path(&self, org: &str, project: &str, date: NaiveDate, group_id: &str) -> ObjPath {
        let mut parts: Vec<String> = self.prefix.clone();
        parts.extend(layout::object_segments(org, project, date, group_id));
        ObjPath::from_iter(parts)
    }

    /// Writes `group` as one encrypted object per tenant; returns the objects it created (an
    /// object that already exists is the same group written before: kept, not counted).
    pub async fn write_group(&self, group: Arc<WriteGroup>) -> Result<Vec<Written>> {
        let Some(first) = group.batches.first() else {
            return Ok(vec![]);
        };
        let date =
            DateTime::<Utc>::from_timestamp_nanos(first.received_at_unix_nano as i64).date_naive();
        let mut by_tenant: BTreeMap<(String, String), Vec<u32>> = BTreeMap::new();
        for (i, b) in group.batches.iter().enumerate() {
            by_tenant
                .entry((b.org_id.clone(), b.project_id.clone()))
                .or_default()
                .push(i as u32);
        }
        let writes: Vec<_> = by_tenant
            .into_iter()
            .map(|((org, project), idx)| self.write_tenant(group.clone(), org, project, date, idx))
            .collect();
        let results: Vec<Option<Written>> = futures_util::stream::iter(writes)
            .buffer_unordered(TENANT_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(results.into_iter().flatten().collect())
    }

    async fn write_tenant(
        &self,
        group: Arc<WriteGroup>,
        org: String,
        project: String,
        date: NaiveDate,
        idx: Vec<u32>,
    ) -> Result<Option<Written>> {
        let region = group.batches[idx[0] as usize].region.clone();
        if let Some(b) = idx
            .iter()
            .map(|&i| &group.batches[i as usize])
            .find(|b| b.region != region)
        {
            bail!(
                "group {}: tenant {org}/{project} has batches of regions {region:?} and {:?}",
                group.id,
                b.region
            );
        }
        let (org, project) = (org.as_str(), project.as_str());
        let ctx = EncryptionContext::new(org, project, &region, &group.id);
        let key = self
            .keys
            .new_key(org, project, &ctx)
            .await
            .with_context(|| format!("data key for {org}/{project}"))?;
        let location = self.object_path(org, project, date, &group.id);
        let level = self.level;
        let key_id = key.key_id.clone();
        let group_batches = group.batches.len() as u32;
        let bytes = tracegate_pipeline::cpu::run(group.class, move || -> Result<Vec<u8>> {
            let records: Vec<(u32, &Batch)> = idx
                .iter()
                .map(|&i| (i, &group.batches[i as usize]))
                .collect();
            let seal = crypto::SealKey {
                provider: key.provider,
                key_id: &key.key_id,
                wrapped_key: &key.wrapped,
                data_key: &key.plaintext,
                context: &ctx,
                group_batches,
            };
            crypto::seal_records(&seal, &records, level)
        })
        .await??;
        let (store, sse) = self.writer_for(org, project)?;
        let len = bytes.len();
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match store
            .put_opts(&location, PutPayload::from(bytes), opts)
            .await
        {
            Ok(_) => Ok(Some(Written {
                location,
                bytes: len,
                key_id,
                sse_kms_key_id: sse,
            })),
            Err(object_store::Error::AlreadyExists { .. }) => {
                tracing::debug!(object = %location, "archive object exists already (group written before)");
                Ok(None)
            }
            Err(e) => Err(anyhow::Error::new(e).context(format!(
                "writing archive object {location} to {}",
                self.describe()
            ))),
        }
    }

    /// Every object (optionally filtered), ordered by date, group, tenant.
    pub async fn list(&self, filter: &Filter) -> Result<Vec<ObjectInfo>> {
        let Some(store) = self.reader() else {
            return Ok(vec![]);
        };
        let prefix = if self.prefix.is_empty() {
            None
        } else {
            Some(ObjPath::from_iter(self.prefix.clone()))
        };
        let metas: Vec<object_store::ObjectMeta> = store
            .list(prefix.as_ref())
            .try_collect()
            .await
            .with_context(|| format!("listing {}", self.describe()))?;
        let mut out: Vec<ObjectInfo> = metas
            .into_iter()
            .filter_map(|meta| self.parse_location(&meta.location, meta.size))
            .filter(|o| filter.matches(o))
            .collect();
        out.sort();
        Ok(out)
    }

    fn parse_location(&self, location: &ObjPath, size: u64) -> Option<ObjectInfo> {
        let parts: Vec<String> = location.parts().map(|p| p.as_ref().to_string()).collect();
        if parts.get(..self.prefix.len())? != &self.prefix[..] {
            return None;
        }
        let key = layout::parse_segments(&parts[self.prefix.len()..])?;
        Some(ObjectInfo {
            date: key.date,
            name: key.name,
            org: key.org,
            project: key.project,
            location: location.clone(),
            size,
        })
    }

    /// Reads, decrypts and checks one object.
    pub async fn read(&self, info: &ObjectInfo) -> Result<ObjectContents> {
        let store = self.reader().context("archive directory is missing")?;
        let bytes = store
            .get(&info.location)
            .await
            .with_context(|| format!("reading {}", info.location))?
            .bytes()
            .await
            .with_context(|| format!("reading {}", info.location))?;
        self.decode(info, &bytes)
            .await
            .with_context(|| format!("archive object {}", info.location))
    }

    /// Decodes an object read from `info`'s location (v1 or v2).
    pub async fn decode(&self, info: &ObjectInfo, bytes: &[u8]) -> Result<ObjectContents> {
        if bytes.starts_with(format::MAGIC) {
            let batches = format::decode(bytes, MAX_OBJECT_PLAIN_BYTES)?;
            return Ok(ObjectContents {
                info: info.clone(),
                format: 1,
                group_id: info.name.clone(),
                group_batches: None,
                provider: None,
                key_id: None,
                batches: batches
                    .into_iter()
                    .enumerate()
                    .map(|(i, b)| (i as u32, b))
                    .collect(),
            });
        }
        if !bytes.starts_with(crypto::MAGIC) {
            bail!("not a tracegate archive object (bad magic)");
        }
        let parsed = crypto::parse(bytes)?;
        let h = &parsed.header;
        // The object must be bound to the tenant and group its location names.
        let group = h.context.get(crypto::CTX_GROUP).to_string();
        let mut expected = h.context.clone();
        expected.0.insert(crypto::CTX_ORG.into(), info.org.clone());
        expected
            .0
            .insert(crypto::CTX_PROJECT.into(), info.project.clone());
        crypto::check_context(&h.context, &expected)?;
        if safe_segment(&group) != info.name {
            bail!(
                "encryption context mismatch: the object is bound to group {group:?}, but its \
                 name says {:?}",
                info.name
            );
        }
        let data_key = self.keys.unwrap(h).await?;
        let payload = crypto::open(&parsed, &data_key)?;
        let records = crypto::decode_payload(payload, parsed.header.codec, MAX_OBJECT_PLAIN_BYTES)?;
        let mut batches = Vec::with_capacity(records.len());
        for (i, body) in records {
            let b = Batch::decode(body).context("decoding batch record")?;
            if b.schema_version > tracegate_proto::BATCH_SCHEMA_VERSION {
                bail!(
                    "batch schema version {} is newer than this build",
                    b.schema_version
                );
            }
            if b.org_id != h.context.get(crypto::CTX_ORG)
                || b.project_id != h.context.get(crypto::CTX_PROJECT)
                || b.region != h.context.get(crypto::CTX_REGION)
            {
                bail!(
                    "encryption context mismatch: a batch of {}/{} (region {}) in an object bound to {}",
                    b.org_id,
                    b.project_id,
                    b.region,
                    h.context
                );
            }
            batches.push((i, b));
        }
        Ok(ObjectContents {
            info: info.clone(),
            format: 2,
            group_id: group,
            group_batches: Some(h.group_batches),
            provider: Some(h.provider),
            key_id: Some(h.key_id.clone()),
            batches,
        })
    }
}

/// Removes object_store staging files (`<name>#<n>`) and v1 temp files (`.<name>.<rnd>.tmp`)
/// left by a crash mid-write: they were never acknowledged.
pub fn remove_stale_temp_files(root: &Path) -> Result<usize> {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = match std::fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("listing {}", d.display())),
        };
        for e in rd {
            let e = e?;
            let ft = e.file_type()?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() && (name.contains('#') || name.ends_with(".tmp")) {
                std::fs::remove_file(e.path())?;
                n += 1;
            }
        }
    }
    Ok(n)
}

/// The archive as a writer sink.
pub struct StoreSink {
    store: Arc<ArchiveStore>,
}

impl StoreSink {
    pub fn new(store: Arc<ArchiveStore>) -> Self {
        Self { store }
    }
}

impl Sink for StoreSink {
    fn name(&self) -> &'static str {
        "archive"
    }

    fn write(&self, group: Arc<WriteGroup>) -> BoxFuture<'static, anyhow::Result<()>> {
        let store = self.store.clone();
        Box::pin(async move {
            let written = store.write_group(group).await?;
            for w in &written {
                metrics::counter!(OBJECTS_WRITTEN).increment(1);
                metrics::counter!(BYTES_WRITTEN).increment(w.bytes as u64);
            }
            Ok(())
        })
    }
}

/// The archive sink of a writer (`serve`'s embedded writer, `write`'s Kafka writer): opens the
/// configured store for writing.
pub fn archive_sink(settings: &Settings) -> Result<Arc<dyn Sink>> {
    let store = ArchiveStore::open(settings, true)?;
    tracing::info!(archive = %store.describe(), provider = ?settings.archive.key_provider, "archive ready");
    Ok(Arc::new(StoreSink::new(Arc::new(store))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(org: &str, project: &str, n: u32) -> Batch {
        Batch {
            schema_version: 1,
            org_id: org.into(),
            project_id: project.into(),
            region: "local".into(),
            batch_id: vec![n as u8; 16].into(),
            span_count: n,
            received_at_unix_nano: 1_700_000_000_000_000_000 + u64::from(n),
            ..Default::default()
        }
    }

    fn config(dir: &Path) -> Settings {
        Settings::local(dir)
    }

    #[tokio::test]
    async fn local_round_trip_dedup_rotation_and_tamper() {
        let d = tempfile::tempdir().unwrap();
        let cfg = config(d.path());
        let store = ArchiveStore::open(&cfg, true).unwrap();
        let g = Arc::new(WriteGroup {
            id: "t:0:10-12".into(),
            batches: vec![
                batch("o", "p1", 1),
                batch("o", "p2", 2),
                batch("o", "p1", 3),
            ],
            class: Default::default(),
        });
        let w = store.write_group(g.clone()).await.unwrap();
        assert_eq!(w.len(), 2);
        // Same group again: no new object.
        assert!(store.write_group(g.clone()).await.unwrap().is_empty());
        let objs = store.list(&Filter::default()).await.unwrap();
        assert_eq!(objs.len(), 2);
        assert_eq!(objs[0].name, "t_0_10-12");
        assert_eq!(objs[0].location.as_ref(), "o/p1/2023/11/14/t_0_10-12.tga");
        let c = store.read(&objs[0]).await.unwrap();
        assert_eq!(c.format, 2);
        assert_eq!(c.group_id, "t:0:10-12");
        assert_eq!(c.group_batches, Some(3));
        assert_eq!(
            c.batches
                .iter()
                .map(|(i, b)| (*i, b.span_count))
                .collect::<Vec<_>>(),
            vec![(0, 1), (2, 3)]
        );

        // Rotation: objects before and after decrypt.
        let k1 = c.key_id.clone().unwrap();
        crate::keyring::Keyring::rotate(store.keys().keyring_path()).unwrap();
        let g2 = Arc::new(WriteGroup {
            id: "t:0:13-13".into(),
            batches: vec![batch("o", "p1", 4)],
            class: Default::default(),
        });
        store.write_group(g2).await.unwrap();
        let mut keys = std::collections::BTreeSet::new();
        for o in store.list(&Filter::default()).await.unwrap() {
            keys.insert(store.read(&o).await.unwrap().key_id.unwrap());
        }
        assert!(keys.contains(&k1) && keys.len() == 2, "{keys:?}");

        // Filter by project and date.
        let f = Filter {
            project: Some("p2".into()),
            ..Default::default()
        };
        assert_eq!(store.list(&f).await.unwrap().len(), 1);
        let f = Filter {
            from: NaiveDate::from_ymd_opt(2023, 11, 15),
            ..Default::default()
        };
        assert!(store.list(&f).await.unwrap().is_empty());

        // Moved to another tenant's path: refused.
        let root = d.path().join("archive");
        let src = root.join("o/p1/2023/11/14/t_0_10-12.tga");
        let dst_dir = root.join("o/p3/2023/11/14");
        std::fs::create_dir_all(&dst_dir).unwrap();
        std::fs::copy(&src, dst_dir.join("t_0_10-12.tga")).unwrap();
        let moved = store
            .list(&Filter {
                project: Some("p3".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        let e = format!("{:#}", store.read(&moved[0]).await.unwrap_err());
        assert!(e.contains("encryption context mismatch"), "{e}");

        // A flipped byte anywhere fails.
        let bytes = std::fs::read(&src).unwrap();
        for i in (0..bytes.len()).step_by(7) {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(store.decode(&objs[0], &bad).await.is_err(), "flip at {i}");
        }
    }

    #[tokio::test]
    async fn forwarded_zstd_payloads_are_stored_uncompressed_and_read_back() {
        let d = tempfile::tempdir().unwrap();
        let store = ArchiveStore::open(&config(d.path()), true).unwrap();
        let plain = vec![b'x'; 64 << 10];
        let mut b = batch("o", "p", 1);
        b.schema_version = 2;
        b.otlp_request = zstd::encode_all(&plain[..], 3).unwrap().into();
        b.otlp_request_encoding = 1;
        b.otlp_request_plain_len = plain.len() as u64;
        // Incompressible stand-in bytes make the stored object's size visible.
        let noise: Vec<u8> = (0..32u32 << 10)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut big = b.clone();
        big.otlp_request = noise.into();
        let g = Arc::new(WriteGroup {
            id: "t:1:0-1".into(),
            batches: vec![b.clone(), big.clone()],
            class: Default::default(),
        });
        store.write_group(g).await.unwrap();
        let objs = store.list(&Filter::default()).await.unwrap();
        let bytes =
            std::fs::read(d.path().join("archive").join(objs[0].location.as_ref())).unwrap();
        assert_eq!(
            crypto::parse(&bytes).unwrap().header.codec,
            crypto::CODEC_STORED
        );
        assert!(bytes.len() > 32 << 10);
        let c = store.read(&objs[0]).await.unwrap();
        let back: Vec<Batch> = c.batches.into_iter().map(|(_, b)| b).collect();
        assert_eq!(back, vec![b, big]);
    }

    #[tokio::test]
    async fn reads_v1_objects() {
        let d = tempfile::tempdir().unwrap();
        let cfg = config(d.path());
        let v1 = crate::local::LocalArchive::new(d.path(), 3);
        v1.write("embedded-1", &[batch("o", "p", 1)]).unwrap();
        let store = ArchiveStore::open(&cfg, false).unwrap();
        let objs = store.list(&Filter::default()).await.unwrap();
        assert_eq!(objs.len(), 1);
        let c = store.read(&objs[0]).await.unwrap();
        assert_eq!(
            (c.format, c.group_id.as_str(), c.batches.len()),
            (1, "embedded-1", 1)
        );
    }

    #[test]
    fn stale_temp_files_are_removed() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("o/p")).unwrap();
        std::fs::write(d.path().join("o/p/g.tga#1"), b"x").unwrap();
        std::fs::write(d.path().join("o/p/.g.tga.ab.tmp"), b"x").unwrap();
        std::fs::write(d.path().join("o/p/g.tga"), b"x").unwrap();
        assert_eq!(remove_stale_temp_files(d.path()).unwrap(), 2);
        assert!(d.path().join("o/p/g.tga").exists());
    }
}
