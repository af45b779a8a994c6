//! The local-directory archive (embedded default): one immutable object per flush and tenant at
//! `<data dir>/archive/<org>/<project>/<yyyy>/<mm>/<dd>/<object id>.tga`, made durable (file
//! and directory fsynced) before the writer acknowledges anything in it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use rand::RngCore;
use tracegate_proto::v1::Batch;

use crate::format;
use crate::fsutil::{create_dir_all_durable, sync_dir};
use crate::layout::{self, safe_segment, OBJECT_EXT};

#[derive(Debug, Clone)]
pub struct LocalArchive {
    root: PathBuf,
    level: i32,
}

impl LocalArchive {
    pub fn new(data_dir: &Path, level: i32) -> Self {
        Self {
            root: data_dir.join("archive"),
            level,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Removes temp files left by a crash mid-write (they were never acknowledged).
    pub fn remove_stale_temp_files(&self) -> Result<usize> {
        let mut n = 0;
        for p in walk(&self.root)? {
            if p.extension().and_then(|e| e.to_str()) == Some("tmp") {
                fs::remove_file(&p)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Writes `batches` as one object per (org, project), named by `group_id`; returns after
    /// every object and its directory entry are on stable storage. An object that already exists
    /// (the same group written again after a crash) is kept, not overwritten or duplicated.
    pub fn write(&self, group_id: &str, batches: &[Batch]) -> Result<Vec<(PathBuf, usize)>> {
        let mut by_tenant: BTreeMap<(&str, &str), Vec<&Batch>> = BTreeMap::new();
        for b in batches {
            by_tenant
                .entry((b.org_id.as_str(), b.project_id.as_str()))
                .or_default()
                .push(b);
        }
        let mut dirs = BTreeSet::new();
        let mut written = Vec::new();
        for ((org, project), group) in by_tenant {
            let ts = group[0].received_at_unix_nano;
            let when = DateTime::<Utc>::from_timestamp_nanos(ts as i64);
            let [org, project, y, m, d, name] =
                layout::object_segments(org, project, when.date_naive(), group_id);
            let dir = self.root.join(org).join(project).join(y).join(m).join(d);
            create_dir_all_durable(&dir)?;
            let path = dir.join(&name);
            if path.exists() {
                dirs.insert(dir);
                continue;
            }
            let bytes = format::encode(&group, self.level)?;
            let mut rnd = [0u8; 6];
            rand::rng().fill_bytes(&mut rnd);
            let tmp = dir.join(format!(".{name}.{}.tmp", hex::encode(rnd)));
            {
                let mut f = fs::File::create(&tmp)
                    .with_context(|| format!("creating {}", tmp.display()))?;
                f.write_all(&bytes)?;
                f.sync_all()
                    .with_context(|| format!("fsync {}", tmp.display()))?;
            }
            // link(2) never replaces an existing name: a concurrent or repeated write of the
            // same group keeps the first object (a conditional put, like S3 If-None-Match).
            let linked = fs::hard_link(&tmp, &path);
            let _ = fs::remove_file(&tmp);
            match linked {
                Ok(()) => written.push((path, bytes.len())),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).with_context(|| format!("linking {}", path.display())),
            }
            dirs.insert(dir);
        }
        for d in dirs {
            sync_dir(&d)?;
        }
        Ok(written)
    }

    /// Every archive object, in path order (tenant, date, time), optionally for one project.
    pub fn list(&self, project: Option<&str>) -> Result<Vec<PathBuf>> {
        let mut out: Vec<PathBuf> = walk(&self.root)?
            .into_iter()
            .filter(|p| p.extension().and_then(|e| e.to_str()) == Some(OBJECT_EXT))
            .filter(|p| match project {
                None => true,
                Some(want) => p
                    .strip_prefix(&self.root)
                    .ok()
                    .and_then(|rel| rel.iter().nth(1))
                    .map(|seg| seg == safe_segment(want).as_str())
                    .unwrap_or(false),
            })
            .collect();
        out.sort();
        Ok(out)
    }

    pub fn read_object(path: &Path) -> Result<Vec<Batch>> {
        let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        format::decode(&bytes, crate::store::MAX_OBJECT_PLAIN_BYTES)
            .with_context(|| format!("decoding {}", path.display()))
    }
}

fn walk(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = match fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("listing {}", d.display())),
        };
        for e in rd {
            let e = e?;
            let ft = e.file_type()?;
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(e.path());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_one_object_per_tenant_and_lists_by_project() {
        let d = tempfile::tempdir().unwrap();
        let a = LocalArchive::new(d.path(), 3);
        let mk = |p: &str| Batch {
            schema_version: 1,
            org_id: "o".into(),
            project_id: p.into(),
            received_at_unix_nano: 1_700_000_000_000_000_000,
            ..Default::default()
        };
        let w = a.write("g:0:1-3", &[mk("p1"), mk("p2"), mk("p1")]).unwrap();
        assert_eq!(w.len(), 2);
        assert!(w[0].0.to_string_lossy().contains("/o/p1/2023/11/14/"));
        let p1 = a.list(Some("p1")).unwrap();
        assert_eq!(p1.len(), 1);
        assert_eq!(LocalArchive::read_object(&p1[0]).unwrap().len(), 2);
        assert_eq!(a.list(None).unwrap().len(), 2);
        // Writing the same group again creates nothing new.
        let again = a.write("g:0:1-3", &[mk("p1"), mk("p2"), mk("p1")]).unwrap();
        assert!(again.is_empty());
        assert_eq!(a.list(None).unwrap().len(), 2);
        assert_eq!(safe_segment(".."), "_");
        assert_eq!(safe_segment("a/b"), "a_b");
    }
}
