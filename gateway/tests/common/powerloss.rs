//! A power cut, simulated: `tests/powerloss/shim.c` is preloaded into a gateway and logs what
//! it made durable under its data dir (created names, fsyncs of files and directories); after
//! a kill -9, [`PowerLoss::cut`] takes away what a power cut could: a file or directory whose
//! name no fsync of its parent directory covered is removed, and a file is cut back to the
//! length its last fsync covered (0 when it was created in this run and never synced).
//!
//! What it does not model: an in-place overwrite of synced bytes (nothing under a gateway's
//! data dir rewrites a file in place: the archive writes new objects, the journal appends, the
//! key file is replaced by rename) and a removal that a power cut undoes (removals are taken as
//! durable at once). A kernel keeps at least what this keeps, so code that survives this
//! survives those cuts.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What a cut took away.
#[derive(Debug, Default, Clone)]
pub struct Cut {
    pub removed: usize,
    pub truncated: usize,
    pub bytes_lost: u64,
    /// The first few paths cut (relative to the data dir), for the test's log.
    pub paths: Vec<String>,
}

impl Cut {
    fn note(&mut self, root: &Path, path: &Path, what: &str) {
        if self.paths.len() < 8 {
            let rel = path.strip_prefix(root).unwrap_or(path);
            self.paths.push(format!("{what} {}", rel.display()));
        }
    }
}

pub struct PowerLoss {
    so: PathBuf,
    log: PathBuf,
    dir: PathBuf,
    _work: tempfile::TempDir,
}

#[derive(Default)]
struct Log {
    /// Path → (seq, ino) of its latest naming (C or L).
    names: HashMap<PathBuf, (u64, u64)>,
    /// Inode → seq of its latest creation (C).
    created: HashMap<u64, u64>,
    /// Inode → (seq, size) of every fsync of it.
    synced: HashMap<u64, Vec<(u64, u64)>>,
    /// Inode → size when first opened in this run (an existing file).
    opened: HashMap<u64, u64>,
    /// Directory inode → seq of its latest fsync.
    dir_synced: HashMap<u64, u64>,
}

impl PowerLoss {
    /// Builds the shim (the C compiler the build needs anyway) for `dir`, a data dir.
    pub fn new(dir: &Path) -> Self {
        let work = tempfile::Builder::new()
            .prefix("tg-powerloss-")
            .tempdir()
            .unwrap();
        let so = work.path().join("shim.so");
        let src = super::manifest_dir().join("tests/powerloss/shim.c");
        let out = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
            .args(["-shared", "-fPIC", "-O1", "-o"])
            .arg(&so)
            .arg(&src)
            .args(["-ldl", "-lpthread"])
            .output()
            .expect("running the C compiler");
        assert!(
            out.status.success(),
            "building {}: {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            so,
            log: work.path().join("durable.log"),
            dir: dir.canonicalize().unwrap(),
            _work: work,
        }
    }

    /// The environment that preloads the shim into a process.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("LD_PRELOAD".into(), self.so.display().to_string()),
            ("TG_PL_DIR".into(), self.dir.display().to_string()),
            ("TG_PL_LOG".into(), self.log.display().to_string()),
        ]
    }

    fn read_log(&self) -> Log {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut log = Log::default();
        for line in text.lines() {
            let f: Vec<&str> = line.splitn(5, ' ').collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            let (seq, ino) = (num(1), num(2));
            match f[0] {
                "C" | "L" => {
                    let path = PathBuf::from(f.get(3).copied().unwrap_or_default());
                    log.names.insert(path, (seq, ino));
                    if f[0] == "C" {
                        log.created.insert(ino, seq);
                    }
                }
                "O" => {
                    log.opened.entry(ino).or_insert(num(3));
                }
                "S" => log.synced.entry(ino).or_default().push((seq, num(3))),
                "D" => {
                    log.dir_synced.insert(ino, seq);
                }
                _ => {}
            }
        }
        log
    }

    /// Takes away what was not durable (module doc). Call it after the process was killed.
    pub fn cut(&self) -> Cut {
        let log = self.read_log();
        let mut cut = Cut::default();
        cut_dir(&log, &self.dir, &self.dir, &mut cut);
        cut
    }
}

/// The durable length of inode `ino` (now `len` long), or None when all of it is.
fn durable_len(log: &Log, ino: u64, len: u64) -> Option<u64> {
    let born = log.created.get(&ino).copied();
    let synced = log
        .synced
        .get(&ino)
        .and_then(|v| v.iter().rev().find(|(s, _)| born.is_none_or(|b| *s > b)))
        .map(|&(_, size)| size);
    let keep = match (born, synced) {
        (Some(_), s) => s.unwrap_or(0),
        (None, Some(s)) => s.max(log.opened.get(&ino).copied().unwrap_or(0)),
        (None, None) => log.opened.get(&ino).copied()?,
    };
    (keep < len).then_some(keep)
}

fn cut_dir(log: &Log, root: &Path, dir: &Path, cut: &mut Cut) {
    let Ok(parent) = std::fs::metadata(dir) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(md) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let named_at = log
            .names
            .get(&path)
            .filter(|(_, ino)| *ino == md.ino())
            .map(|(seq, _)| *seq);
        let name_durable =
            named_at.is_none_or(|n| log.dir_synced.get(&parent.ino()).is_some_and(|&d| d > n));
        if !name_durable {
            cut.removed += 1;
            cut.bytes_lost += md.len();
            cut.note(root, &path, "removed");
            if md.is_dir() {
                std::fs::remove_dir_all(&path).unwrap();
            } else {
                std::fs::remove_file(&path).unwrap();
            }
            continue;
        }
        if md.is_dir() {
            cut_dir(log, root, &path, cut);
        } else if md.is_file() {
            if let Some(keep) = durable_len(log, md.ino(), md.len()) {
                cut.truncated += 1;
                cut.bytes_lost += md.len() - keep;
                cut.note(
                    root,
                    &path,
                    &format!("cut to {keep} of {} bytes:", md.len()),
                );
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .unwrap()
                    .set_len(keep)
                    .unwrap();
            }
        }
    }
}
