//! Retry-safe ingest: what makes two envelopes the same request, and the window in which a
//! writer remembers the requests it stored (docs/architecture.md, "Duplicates").
//!
//! An OTLP exporter that gets no answer (timeout, a gateway killed in a rollout, an answer
//! lost on the way) sends the same request again, and without this both copies are stored.
//! The gateway gives every envelope a **key**: xxh3-128 over the tenant and the request's
//! decompressed bytes, so a request sent again is the same key whatever its compression or
//! transport, and two tenants never share one. Every part of a request split into several
//! Kafka messages carries the request's key (a copy sent again may be split differently, or
//! not at all when it came compressed).
//!
//! A writer reads envelopes in one order (a Kafka partition's offsets, the embedded queue's
//! group order) and keeps a [`Window`] of the keys it has seen, with the copy (batch id) it
//! stored and how many of that copy's parts it has read. An envelope of another copy is a
//! **repeat**, not stored again, when the stored copy is complete (every part read) and was
//! seen within `window` of the envelope's `received_at` (the gateway still acknowledged the
//! repeat: its first copy is durable). A copy whose parts did not all reach the log (its
//! gateway answered an error after some were written) is not complete: the next copy is
//! stored whole, so nothing is lost, and the parts of the first are then stored twice. The
//! decision depends only on the
//! envelopes before it in that order whose time is within the window, so whoever reads the
//! same order again (the next owner of a partition, the embedded writer after a restart)
//! decides the same way once it has read back from [`Window::replay_from`].
//!
//! The window's memory (`dedup.max_bytes`) is shared by the tenants whose requests it holds,
//! and a tenant's share is protected: when it is full, the entry that goes early is the oldest
//! of the tenant holding the most (ties: the larger tenant id), so a tenant that floods the
//! window pushes out its own entries, never those of a tenant holding less than an equal
//! share. This choice depends only on the envelopes already in the window, like the rest.
//!
//! xxh3 is not a cryptographic hash. A collision would drop a request, so the key is 128 bits
//! (for 10⁸ keys in a window the chance of any collision is ~10⁻²³) and bound to the tenant:
//! to make another tenant's request disappear, a client would need that request's exact bytes.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use twox_hash::XxHash3_128;

/// Length of a key in `tracegate.v1.Batch.dedup_key`.
pub const KEY_LEN: usize = 16;

/// Memory one remembered envelope costs (map entry + order entry, with the hash map's spare
/// slots): what `dedup.max_bytes` is divided by.
pub const ENTRY_BYTES: usize = 112;

/// Checks between two expiries of every tenant's queue (module `Window::expire`).
const SWEEP_EVERY: usize = 1024;

/// How far apart the clocks of gateways (and the order of envelopes relative to their times)
/// may be without changing a decision: entries are kept this long past the window.
pub const MAX_SKEW: Duration = Duration::from_secs(120);

/// Digest of a request's decompressed bytes (protobuf or JSON, as the client encoded them).
pub fn digest(plain: &[u8]) -> u128 {
    XxHash3_128::oneshot(plain)
}

/// The key of a request of tenant `org`/`project` whose decompressed bytes have `digest`.
pub fn request_key(org: &str, project: &str, digest: u128) -> [u8; KEY_LEN] {
    let mut buf = Vec::with_capacity(org.len() + project.len() + 2 + KEY_LEN);
    buf.extend_from_slice(org.as_bytes());
    buf.push(0);
    buf.extend_from_slice(project.as_bytes());
    buf.push(0);
    buf.extend_from_slice(&digest.to_le_bytes());
    XxHash3_128::oneshot(&buf).to_le_bytes()
}

/// The tenant an envelope counts against in the window's memory ([`Envelope::tenant`]).
pub fn tenant_id(org: &str, project: &str) -> u64 {
    let mut buf = Vec::with_capacity(org.len() + project.len() + 1);
    buf.extend_from_slice(org.as_bytes());
    buf.push(0);
    buf.extend_from_slice(project.as_bytes());
    XxHash3_128::oneshot(&buf) as u64
}

/// A key as a number, or None when it is absent (an envelope from a build without retry-safe
/// ingest: never a repeat) or malformed.
pub fn key_u128(key: &[u8]) -> Option<u128> {
    <[u8; KEY_LEN]>::try_from(key).ok().map(u128::from_le_bytes)
}

/// Whether an envelope repeats one seen before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    New,
    Repeat,
}

/// What the window holds for a key: its latest occurrence and the copy that was stored.
#[derive(Debug, Clone, Copy)]
struct Entry {
    at: u64,
    position: i64,
    /// Batch id of the stored copy, its part count (1 when unsplit) and parts read.
    copy: u128,
    parts: u32,
    read: u32,
}

/// One envelope as the window sees it.
#[derive(Debug, Clone, Copy)]
pub struct Envelope {
    pub key: u128,
    /// Batch id: the same for every part of one copy, another for a copy sent again.
    pub copy: u128,
    /// `part_count` (0 when unsplit).
    pub parts: u32,
    /// `received_at_unix_nano`.
    pub at: u64,
    /// Its place in the order (a Kafka offset, the embedded journal's sequence number).
    pub position: i64,
    /// [`tenant_id`] of its org and project: whose share of the window it takes.
    pub tenant: u64,
}

/// One occurrence in a tenant's queue: `at`, `position`, key.
type Occurrence = (u64, i64, u128);

/// The keys seen within the window, in the order they were seen.
#[derive(Debug)]
pub struct Window {
    window_ns: u64,
    keep_ns: u64,
    last: HashMap<u128, Entry>,
    /// Every occurrence, per tenant, oldest first; entries superseded in `last` are dropped
    /// when they reach the front.
    tenants: HashMap<u64, VecDeque<Occurrence>>,
    /// Occurrences in `tenants`, over all of them (what `max_entries` bounds).
    occurrences: usize,
    /// Checks since every tenant's queue was last expired by time.
    since_sweep: usize,
    newest: u64,
    /// Entries dropped before their time to stay within the byte bound.
    pub evicted_early: u64,
}

impl Envelope {
    /// The same envelope as another copy (tests).
    #[cfg(test)]
    fn with_copy(self, copy: u128) -> Self {
        Self { copy, ..self }
    }
}

impl Window {
    pub fn new(window: Duration) -> Self {
        let window_ns = window.as_nanos().min(u128::from(u64::MAX / 4)) as u64;
        Self {
            window_ns,
            keep_ns: window_ns + MAX_SKEW.as_nanos() as u64,
            last: HashMap::new(),
            tenants: HashMap::new(),
            occurrences: 0,
            since_sweep: 0,
            newest: 0,
            evicted_early: 0,
        }
    }

    /// Decides whether `e` repeats a stored copy (module doc), and records it as its key's
    /// latest occurrence either way, so a request repeated every few minutes stays a repeat
    /// (its first copy is the one stored). `max_entries` bounds memory: above it the oldest
    /// entries go early (counted in `evicted_early`).
    pub fn check(&mut self, e: Envelope, max_entries: usize) -> Seen {
        let parts = e.parts.max(1);
        let fresh = Entry {
            at: e.at,
            position: e.position,
            copy: e.copy,
            parts,
            read: 1,
        };
        let seen = match self.last.get_mut(&e.key) {
            Some(x) if e.at.abs_diff(x.at) <= self.window_ns => {
                let seen = if x.copy == e.copy {
                    // Another part of the copy being stored.
                    x.read = x.read.saturating_add(1);
                    Seen::New
                } else if x.read >= x.parts {
                    Seen::Repeat
                } else {
                    // The stored copy is incomplete: store this one whole instead.
                    *x = fresh;
                    Seen::New
                };
                x.at = e.at;
                x.position = e.position;
                seen
            }
            _ => {
                self.last.insert(e.key, fresh);
                Seen::New
            }
        };
        self.tenants
            .entry(e.tenant)
            .or_default()
            .push_back((e.at, e.position, e.key));
        self.occurrences += 1;
        self.newest = self.newest.max(e.at);
        self.expire(e.tenant, max_entries.max(1));
        seen
    }

    /// Whether `e` would be a repeat, without recording it: for a writer that records only
    /// the copies it has made durable (the embedded queue), and asks before writing.
    pub fn is_repeat(&self, e: &Envelope) -> bool {
        self.last.get(&e.key).is_some_and(|x| {
            e.at.abs_diff(x.at) <= self.window_ns && x.copy != e.copy && x.read >= x.parts
        })
    }

    /// Drops what is past the window: from `tenant`'s queue at every check, from every
    /// tenant's once per [`SWEEP_EVERY`] checks (a tenant that stopped sending); then, over
    /// `max_entries`, the oldest occurrences of the tenant holding the most (module doc).
    fn expire(&mut self, tenant: u64, max_entries: usize) {
        let horizon = self.newest.saturating_sub(self.keep_ns);
        self.since_sweep += 1;
        if self.since_sweep >= SWEEP_EVERY {
            self.since_sweep = 0;
            let all: Vec<u64> = self.tenants.keys().copied().collect();
            for t in all {
                self.pop_while(t, |at| at < horizon);
            }
        } else {
            self.pop_while(tenant, |at| at < horizon);
        }
        while self.occurrences > max_entries {
            let Some(heaviest) = self
                .tenants
                .iter()
                .map(|(&t, q)| (q.len(), t))
                .max()
                .map(|(_, t)| t)
            else {
                break;
            };
            let mut first = true;
            self.pop_while(heaviest, |_| std::mem::take(&mut first));
        }
    }

    /// Pops `tenant`'s oldest occurrences while `pop(at)` says so; a popped occurrence that is
    /// still its key's latest removes the key (counted in `evicted_early` when it was not yet
    /// past the window).
    fn pop_while(&mut self, tenant: u64, mut pop: impl FnMut(u64) -> bool) {
        let horizon = self.newest.saturating_sub(self.keep_ns);
        let Some(q) = self.tenants.get_mut(&tenant) else {
            return;
        };
        while let Some(&(at, position, key)) = q.front() {
            if !pop(at) {
                break;
            }
            q.pop_front();
            self.occurrences -= 1;
            if self.last.get(&key).is_some_and(|x| x.position == position) {
                self.last.remove(&key);
                if at >= horizon {
                    self.evicted_early += 1;
                }
            }
        }
        if q.is_empty() {
            self.tenants.remove(&tenant);
        }
    }

    /// Where a reader must start to rebuild this window: the position of its oldest entry
    /// (None when it is empty). Decisions after that point need nothing older.
    pub fn replay_from(&self) -> Option<i64> {
        self.tenants
            .values()
            .filter_map(|q| q.front().map(|&(_, p, _)| p))
            .min()
    }

    /// Keys remembered.
    pub fn len(&self) -> usize {
        self.last.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    /// An unsplit envelope: key `key`, copy `copy`, at `secs`, position `pos`.
    fn one(key: u128, copy: u128, secs: u64, pos: i64) -> Envelope {
        Envelope {
            key,
            copy,
            parts: 0,
            at: secs * S,
            position: pos,
            tenant: 0,
        }
    }

    #[test]
    fn keys_depend_on_tenant_and_bytes() {
        let d = digest(b"request");
        assert_eq!(request_key("o", "p", d), request_key("o", "p", d));
        assert_ne!(request_key("o", "p", d), request_key("o", "q", d));
        assert_ne!(request_key("o", "p", d), request_key("op", "", d));
        assert_ne!(
            request_key("o", "p", d),
            request_key("o", "p", digest(b"other"))
        );
        let k = request_key("o", "p", d);
        assert_eq!(key_u128(&k), Some(u128::from_le_bytes(k)));
        assert_eq!(key_u128(b""), None);
    }

    #[test]
    fn repeats_within_the_window_only() {
        let mut w = Window::new(Duration::from_secs(60));
        assert_eq!(w.check(one(1, 10, 100, 0), 100), Seen::New);
        assert_eq!(w.check(one(2, 20, 100, 1), 100), Seen::New);
        assert!(w.is_repeat(&one(1, 11, 150, 2)));
        assert!(!w.is_repeat(&one(1, 10, 150, 2)), "the stored copy itself");
        assert_eq!(w.check(one(1, 11, 150, 2), 100), Seen::Repeat);
        // An earlier clock on another gateway is still within the window.
        assert_eq!(w.check(one(2, 21, 90, 3), 100), Seen::Repeat);
        // 1 was last seen at 150 s: 211 s is outside.
        assert_eq!(w.check(one(1, 12, 211, 4), 100), Seen::New);
        assert_eq!(w.check(one(1, 13, 212, 5), 100), Seen::Repeat);
    }

    #[test]
    fn a_copy_counts_once_all_its_parts_are_read() {
        let part = |copy, parts, pos| Envelope {
            key: 7,
            copy,
            parts,
            at: 100 * S,
            position: pos,
            tenant: 0,
        };
        let mut w = Window::new(Duration::from_secs(60));
        // Copy A in 3 parts, of which 2 reached the log; then copy B unsplit (it came
        // compressed); then copy C in 3 parts, and a copy D.
        assert_eq!(w.check(part(0xA, 3, 0), 100), Seen::New);
        assert_eq!(w.check(part(0xA, 3, 1), 100), Seen::New);
        assert_eq!(w.check(part(0xB, 0, 2), 100), Seen::New, "A is incomplete");
        assert_eq!(w.check(part(0xC, 3, 3), 100), Seen::Repeat, "B is complete");
        assert_eq!(w.check(part(0xC, 3, 4), 100), Seen::Repeat);
        assert_eq!(w.check(part(0xD, 0, 5), 100), Seen::Repeat);
        // A complete split copy makes the next copy a repeat, part by part.
        let mut w = Window::new(Duration::from_secs(60));
        for pos in 0..3 {
            assert_eq!(w.check(part(0xA, 3, pos), 100), Seen::New);
        }
        assert_eq!(w.check(part(0xB, 0, 3), 100), Seen::Repeat);
    }

    #[test]
    fn old_entries_expire_and_the_replay_point_moves() {
        let mut w = Window::new(Duration::from_secs(60));
        w.check(one(1, 1, 0, 10), 100);
        w.check(one(2, 2, 1, 11), 100);
        assert_eq!(w.replay_from(), Some(10));
        // 60 s window + 120 s skew: an entry at 1 s goes once something after 181 s is seen.
        w.check(one(3, 3, 182, 12), 100);
        assert_eq!(w.replay_from(), Some(12));
        assert_eq!(w.len(), 1);
        assert_eq!(w.evicted_early, 0);
    }

    #[test]
    fn a_replay_from_the_replay_point_decides_the_same() {
        // A log of keys (some repeated, some split in parts, times moving on); the decisions
        // of a reader that saw it all must equal those of a reader that starts at the replay
        // point taken at position 1500.
        let log: Vec<Envelope> = (0..2000u64)
            .map(|i| {
                let r = (i ^ 0x9e37_79b9).wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
                Envelope {
                    key: u128::from(r % 150),
                    copy: u128::from(i / 2),
                    parts: if r % 3 == 0 { 2 } else { 0 },
                    at: i * S / 2,
                    position: i as i64,
                    tenant: r % 3,
                }
            })
            .collect();
        let mut full = Window::new(Duration::from_secs(60));
        let mut decisions = Vec::new();
        let mut cut = None;
        for (pos, e) in log.iter().enumerate() {
            if pos == 1500 {
                cut = full.replay_from();
            }
            decisions.push(full.check(*e, usize::MAX));
        }
        let from = cut.unwrap() as usize;
        assert!(from > 0 && from < 1500, "{from}");
        let mut replay = Window::new(Duration::from_secs(60));
        for (pos, e) in log.iter().enumerate().skip(from) {
            let d = replay.check(*e, usize::MAX);
            if pos >= 1500 {
                assert_eq!(d, decisions[pos], "position {pos}");
            }
        }
        assert!(decisions[1500..].contains(&Seen::Repeat));
        assert!(decisions[1500..].contains(&Seen::New));
    }

    #[test]
    fn the_bound_evicts_early_and_counts_it() {
        let mut w = Window::new(Duration::from_secs(600));
        for i in 0..10 {
            w.check(one(i, i, i as u64, i as i64), 4);
        }
        assert_eq!(w.len(), 4);
        assert_eq!(w.evicted_early, 6);
        assert_eq!(
            w.check(one(0, 99, 11, 10), 4),
            Seen::New,
            "evicted, so stored again"
        );
    }

    #[test]
    fn a_flooding_tenant_evicts_its_own_entries_first() {
        let env = |tenant, key, secs, pos| Envelope {
            tenant,
            ..one(key, key, secs, pos)
        };
        let mut w = Window::new(Duration::from_secs(600));
        // The quiet tenant stores 3 requests, then the noisy one 1000 in a window of 10.
        for k in 0..3 {
            w.check(env(1, k, 0, k as i64), 10);
        }
        for k in 100..1100 {
            w.check(env(2, k, 1, k as i64), 10);
        }
        assert_eq!(w.len(), 10);
        assert_eq!(w.evicted_early, 993);
        for k in 0..3 {
            assert!(
                w.is_repeat(&env(1, k, 2, 0).with_copy(99)),
                "quiet {k} kept"
            );
        }
        assert!(w.is_repeat(&env(2, 1099, 2, 0).with_copy(99)));
        assert!(
            !w.is_repeat(&env(2, 1090, 2, 0).with_copy(99)),
            "noisy's oldest went"
        );
        // The replay point is the quiet tenant's oldest entry, not the noisy one's.
        assert_eq!(w.replay_from(), Some(0));
        // Two tenants over an equal share: the larger share gives way, the other keeps 5.
        for k in 3..10 {
            w.check(env(1, k, 3, 2000 + k as i64), 10);
        }
        assert_eq!(w.len(), 10);
        let quiet = (0..10).filter(|&k| w.is_repeat(&env(1, k, 4, 0).with_copy(99)));
        assert_eq!(quiet.count(), 5);
    }

    #[test]
    fn an_idle_tenant_expires_by_time() {
        let mut w = Window::new(Duration::from_secs(60));
        w.check(one(1, 1, 0, 0), 100);
        let busy = |k: u64, secs| Envelope {
            tenant: 7,
            ..one(u128::from(k), u128::from(k), secs, k as i64 + 1)
        };
        for k in 0..(SWEEP_EVERY as u64 + 1) {
            w.check(busy(k % 50, 200), 100);
        }
        assert_eq!(
            w.replay_from().map(|p| p > 0),
            Some(true),
            "tenant 0's entry expired"
        );
    }
}
