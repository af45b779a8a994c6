//! The embedded writer's dedup journal: retry-safe ingest across restarts without Kafka
//! (docs/architecture.md, "Duplicates").
//!
//! Kafka's log is the order a new owner reads back; the embedded queue has no log, so this
//! file is one. Before a group's sinks run, its requests' keys are appended as an **intent**
//! and synced (one `fdatasync` per group, not per request); once every sink succeeded a
//! **done** record follows, unsynced: if it is lost in a crash the group is only looked at
//! again. At start-up the records are read back: the keys of done groups fill the window, and
//! an intent without its done record is a group that may or may not have reached the archive
//! (`queue::dedup` finishes it from the archive, or forgets it).
//!
//! Records are `[len u32][crc32 u32][payload]`, little endian; reading stops at the first torn
//! or corrupt record (a crash mid-append) and the file is cut there. Storage is segments named
//! by their creation time: a new one is started at each open, and when the current one is
//! older than the window or holds half of `dedup.max_bytes`, carrying over the intents still
//! unfinished. A segment is deleted once the next one was started more than a window ago (all
//! its records are older than that), or to stay within `dedup.max_bytes`. So the journal holds
//! about one to two windows of requests, ~60 bytes each.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::sync::Arc;

use anyhow::Result;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracegate_archive::fsutil::{create_dir_all_durable, sync_dir};

const INTENT: u8 = 1;
const DONE: u8 = 2;
/// The group reached no sink (its first, the archive, failed): its requests were not stored.
const ABANDONED: u8 = 3;
/// One request in an intent: key, copy (batch id), receive time.
const ENTRY_LEN: usize = 16 + 16 + 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub key: u128,
    pub copy: u128,
    pub at: u64,
    /// `tracegate_pipeline::dedup::tenant_id` of the request's org and project; not stored,
    /// it is the intent's.
    pub tenant: u64,
}

/// A group about to be written: its id, tenant and requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    pub group: String,
    pub org: String,
    pub project: String,
    pub entries: Vec<Entry>,
}

/// What the journal held at start-up.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Requests of groups every sink wrote, in journal order.
    pub stored: Vec<Entry>,
    /// Groups whose sinks may not all have run.
    pub unfinished: Vec<Intent>,
}

pub struct Journal {
    dir: PathBuf,
    /// Shared with callers that sync an intent after releasing the journal (`append_intent`).
    file: Arc<File>,
    /// Segment number of `file`: its creation time in Unix ms.
    seq: u64,
    started: Instant,
    bytes: u64,
    max_age: Duration,
    max_segment_bytes: u64,
    max_bytes: u64,
    /// Intents without their done record, carried into a new segment.
    open: HashMap<String, Intent>,
}

fn segment(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016}.journal"))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Segment numbers (creation times in ms) in `dir`, oldest first.
fn segments(dir: &Path) -> Result<Vec<u64>> {
    let mut seqs: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".journal")?
                .parse()
                .ok()
        })
        .collect();
    seqs.sort();
    Ok(seqs)
}

impl Journal {
    /// Opens (or creates) the journal in `dir`: reads the segments back, then starts a new one.
    /// `max_age`: how long a segment is written before the next is started (the window plus
    /// the clock allowance); `max_bytes`: the bound on all segments.
    pub fn open(dir: &Path, max_age: Duration, max_bytes: u64) -> Result<(Self, Loaded)> {
        create_dir_all_durable(dir)?;
        let seqs = segments(dir)?;
        let mut intents: Vec<Intent> = Vec::new();
        let mut done: HashMap<String, bool> = HashMap::new();
        for &s in &seqs {
            read_segment(&segment(dir, s), &mut intents, &mut done)?;
        }
        let mut loaded = Loaded::default();
        let mut seen = HashMap::new();
        for i in intents {
            // An unfinished intent is carried into every new segment: read it once.
            if seen.insert(i.group.clone(), ()).is_some() {
                continue;
            }
            match done.get(&i.group) {
                Some(true) => loaded.stored.extend(i.entries),
                Some(false) => {}
                None => loaded.unfinished.push(i),
            }
        }
        let seq = now_ms().max(seqs.last().map_or(0, |s| s + 1));
        let mut j = Self {
            dir: dir.to_path_buf(),
            file: Arc::new(create_segment(dir, seq)?),
            seq,
            started: Instant::now(),
            bytes: 0,
            max_age,
            max_segment_bytes: (max_bytes / 2).max(1),
            max_bytes,
            open: HashMap::new(),
        };
        // The unfinished intents go into the new segment, so that deleting old segments does
        // not lose them.
        for i in loaded.unfinished.clone() {
            j.write_intent(&i)?;
        }
        j.file.sync_data()?;
        j.prune()?;
        Ok((j, loaded))
    }

    /// Deletes the segments no longer needed: those whose successor was started more than
    /// `max_age` ago, then the oldest while all of them exceed `max_bytes`.
    fn prune(&self) -> Result<()> {
        let seqs = segments(&self.dir)?;
        let old = now_ms().saturating_sub(self.max_age.as_millis() as u64);
        let mut keep = Vec::new();
        for (i, &s) in seqs.iter().enumerate() {
            if s != self.seq && seqs.get(i + 1).is_some_and(|&next| next <= old) {
                remove(&segment(&self.dir, s))?;
            } else {
                keep.push(s);
            }
        }
        let size = |s: &u64| std::fs::metadata(segment(&self.dir, *s)).map_or(0, |m| m.len());
        let mut total: u64 = keep.iter().map(size).sum();
        for s in keep {
            if total <= self.max_bytes || s == self.seq {
                break;
            }
            total -= size(&s);
            remove(&segment(&self.dir, s))?;
        }
        Ok(())
    }

    /// Appends `i` and syncs it: after this returns, a crash cannot lose it.
    #[cfg(test)]
    pub fn intent(&mut self, i: &Intent) -> Result<()> {
        self.append_intent(i)?.sync_data()?;
        Ok(())
    }

    /// Appends `i` unsynced and returns the segment it is in: `sync_data` on it makes the
    /// intent durable. The caller syncs after releasing the journal, so one group's fsync
    /// (slow on a busy disk, and a busy project's runs at the idle I/O priority) never holds up
    /// another group's append or done record; with the sync under the lock, a quiet project's
    /// group would wait for a noisy project's fsync to end.
    pub fn append_intent(&mut self, i: &Intent) -> Result<Arc<File>> {
        self.rotate_if_due()?;
        self.write_intent(i)?;
        Ok(self.file.clone())
    }

    fn write_intent(&mut self, i: &Intent) -> Result<()> {
        let mut p = Vec::with_capacity(16 + i.group.len() + i.entries.len() * ENTRY_LEN);
        p.push(INTENT);
        put_str(&mut p, &i.group);
        put_str(&mut p, &i.org);
        put_str(&mut p, &i.project);
        p.extend_from_slice(&(i.entries.len() as u32).to_le_bytes());
        for e in &i.entries {
            p.extend_from_slice(&e.key.to_le_bytes());
            p.extend_from_slice(&e.copy.to_le_bytes());
            p.extend_from_slice(&e.at.to_le_bytes());
        }
        self.append(&p)?;
        self.open.insert(i.group.clone(), i.clone());
        Ok(())
    }

    /// Records that every sink wrote `group` (not synced: losing it only means the group is
    /// looked at again after a crash).
    pub fn done(&mut self, group: &str) -> Result<()> {
        self.resolve(group, DONE)
    }

    /// Records that `group` reached no sink, so its requests were not stored (not synced
    /// either: the archive is looked at again after a crash).
    pub fn abandoned(&mut self, group: &str) -> Result<()> {
        self.resolve(group, ABANDONED)
    }

    fn resolve(&mut self, group: &str, kind: u8) -> Result<()> {
        self.open.remove(group);
        let mut p = vec![kind];
        put_str(&mut p, group);
        self.append(&p)
    }

    fn append(&mut self, payload: &[u8]) -> Result<()> {
        let mut rec = Vec::with_capacity(8 + payload.len());
        rec.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        rec.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        rec.extend_from_slice(payload);
        (&*self.file).write_all(&rec)?;
        self.bytes += rec.len() as u64;
        Ok(())
    }

    fn rotate_if_due(&mut self) -> Result<()> {
        if self.started.elapsed() < self.max_age && self.bytes < self.max_segment_bytes {
            return Ok(());
        }
        let next = now_ms().max(self.seq + 1);
        self.file.sync_data()?;
        self.file = Arc::new(create_segment(&self.dir, next)?);
        self.seq = next;
        self.started = Instant::now();
        self.bytes = 0;
        let open: Vec<Intent> = self.open.values().cloned().collect();
        for i in open {
            self.write_intent(&i)?;
        }
        self.file.sync_data()?;
        self.prune()
    }
}

fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

fn create_segment(dir: &Path, seq: u64) -> Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(segment(dir, seq))?;
    sync_dir(dir)?;
    Ok(f)
}

fn put_str(p: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    p.extend_from_slice(&(b.len() as u16).to_le_bytes());
    p.extend_from_slice(b);
}

/// A cursor over one record's payload; None past its end (a corrupt record).
struct Cur<'a>(&'a [u8]);

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn u128(&mut self) -> Option<u128> {
        Some(u128::from_le_bytes(self.take(16)?.try_into().ok()?))
    }
    fn str(&mut self) -> Option<String> {
        let n = self.u16()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

fn parse_intent(c: &mut Cur) -> Option<Intent> {
    let (group, org, project) = (c.str()?, c.str()?, c.str()?);
    let tenant = tracegate_pipeline::dedup::tenant_id(&org, &project);
    let n = c.u32()? as usize;
    if c.0.len() != n.checked_mul(ENTRY_LEN)? {
        return None;
    }
    let entries = (0..n)
        .map(|_| {
            Some(Entry {
                key: c.u128()?,
                copy: c.u128()?,
                at: c.u64()?,
                tenant,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Intent {
        group,
        org,
        project,
        entries,
    })
}

/// Reads one segment's records into `intents` / `done` (group → stored, or abandoned), and
/// cuts the file after the last whole one.
fn read_segment(
    path: &Path,
    intents: &mut Vec<Intent>,
    done: &mut HashMap<String, bool>,
) -> Result<()> {
    let mut buf = Vec::new();
    File::open(path)?.read_to_end(&mut buf)?;
    let mut at = 0usize;
    while buf.len() - at >= 8 {
        let len = u32::from_le_bytes(buf[at..at + 4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(buf[at + 4..at + 8].try_into().unwrap_or_default());
        let Some(payload) = buf.get(at + 8..at + 8 + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc || payload.is_empty() {
            break;
        }
        let mut c = Cur(&payload[1..]);
        match payload[0] {
            INTENT => match parse_intent(&mut c) {
                Some(i) => intents.push(i),
                None => break,
            },
            k @ (DONE | ABANDONED) => match c.str() {
                Some(g) => {
                    done.insert(g, k == DONE);
                }
                None => break,
            },
            _ => break,
        }
        at += 8 + len;
    }
    if at < buf.len() {
        tracing::warn!(path = %path.display(), kept = at, dropped = buf.len() - at, "dedup journal: a torn or corrupt tail was cut");
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(at as u64)?;
        f.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(group: &str, keys: &[u128]) -> Intent {
        Intent {
            group: group.into(),
            org: "o".into(),
            project: "p".into(),
            entries: keys
                .iter()
                .map(|&k| Entry {
                    key: k,
                    copy: k + 100,
                    at: 42,
                    tenant: tracegate_pipeline::dedup::tenant_id("o", "p"),
                })
                .collect(),
        }
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn done_groups_are_stored_and_the_rest_unfinished_across_reopens() {
        let d = tempfile::tempdir().unwrap();
        let (mut j, l) = Journal::open(d.path(), DAY, 1 << 30).unwrap();
        assert!(l.stored.is_empty() && l.unfinished.is_empty());
        j.intent(&intent("g1", &[1, 2])).unwrap();
        j.done("g1").unwrap();
        j.intent(&intent("g2", &[3])).unwrap();
        j.intent(&intent("lost", &[5])).unwrap();
        j.abandoned("lost").unwrap();
        drop(j);
        let (mut j, l) = Journal::open(d.path(), DAY, 1 << 30).unwrap();
        let keys: Vec<u128> = l.stored.iter().map(|e| e.key).collect();
        assert_eq!(keys, vec![1, 2]);
        assert_eq!(l.unfinished, vec![intent("g2", &[3])]);
        j.done("g2").unwrap();
        drop(j);
        // Every segment is younger than the window: all of it is read back.
        let (_, l) = Journal::open(d.path(), DAY, 1 << 30).unwrap();
        assert!(l.unfinished.is_empty());
        assert_eq!(
            l.stored.iter().map(|e| e.key).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        // With a window of 0, segments started before the last are dropped.
        std::thread::sleep(Duration::from_millis(5));
        let (_, _) = Journal::open(d.path(), Duration::ZERO, 1 << 30).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let (_, l) = Journal::open(d.path(), Duration::ZERO, 1 << 30).unwrap();
        assert!(l.stored.is_empty(), "{:?}", l.stored);
    }

    #[test]
    fn a_torn_tail_is_cut_and_what_came_before_is_kept() {
        let d = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(d.path(), DAY, 1 << 30).unwrap();
        j.intent(&intent("g1", &[1])).unwrap();
        j.done("g1").unwrap();
        j.intent(&intent("g2", &[2, 3])).unwrap();
        let path = segment(d.path(), j.seq);
        drop(j);
        // A crash mid-append: the last record loses its end.
        let len = std::fs::metadata(&path).unwrap().len();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 5).unwrap();
        let (_, l) = Journal::open(d.path(), DAY, 1 << 30).unwrap();
        assert_eq!(l.stored.iter().map(|e| e.key).collect::<Vec<_>>(), vec![1]);
        assert!(l.unfinished.is_empty());
        // A flipped byte is caught by the checksum the same way.
        let (mut j, _) = Journal::open(d.path(), DAY, 1 << 30).unwrap();
        j.intent(&intent("g3", &[4])).unwrap();
        let path = segment(d.path(), j.seq);
        drop(j);
        let mut b = std::fs::read(&path).unwrap();
        let last = b.len() - 1;
        b[last] ^= 0xff;
        std::fs::write(&path, b).unwrap();
        let (_, l) = Journal::open(d.path(), DAY, 1 << 30).unwrap();
        assert!(l.unfinished.is_empty(), "{:?}", l.unfinished);
    }

    #[test]
    fn rotation_stays_within_the_bound_and_carries_unfinished_intents() {
        let d = tempfile::tempdir().unwrap();
        // Tiny segments: every intent rotates, and the bound keeps about two.
        let (mut j, _) = Journal::open(d.path(), DAY, 300).unwrap();
        j.intent(&intent("open", &[9])).unwrap();
        for g in 0..5u128 {
            let name = format!("g{g}");
            j.intent(&intent(&name, &[g])).unwrap();
            j.done(&name).unwrap();
        }
        let files = std::fs::read_dir(d.path()).unwrap().count();
        assert!(files <= 3, "{files} segments");
        drop(j);
        let (_, l) = Journal::open(d.path(), DAY, 300).unwrap();
        assert_eq!(l.unfinished, vec![intent("open", &[9])]);
        // Only the newest groups survive the bound.
        assert!(l.stored.len() < 5, "{:?}", l.stored);
        assert!(l.stored.iter().any(|e| e.key == 4));
    }
}
