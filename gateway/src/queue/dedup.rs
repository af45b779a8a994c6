//! Retry-safe ingest in the embedded queue (docs/architecture.md, "Duplicates").
//!
//! A request is admitted before it is queued: a repeat of a copy stored within the window is
//! answered at once and not stored again; a repeat of a copy still being written waits for
//! that copy's answer and gets the same one; anything else is queued as new. Before a group's
//! sinks run, its keys go into the journal (`journal.rs`, synced); once they all succeeded, the
//! keys join the window. After a crash, the groups the journal left unfinished are finished
//! from the archive by [`recover`] (their keys count as in flight until then, so a retry that
//! arrives meanwhile waits for the outcome instead of being stored twice).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Result;
use tokio::sync::oneshot;
use tracegate_archive::layout::safe_segment;
use tracegate_archive::store::{ArchiveStore, Filter};
use tracegate_pipeline::dedup::{key_u128, tenant_id, Envelope, Window, MAX_SKEW};
use tracegate_pipeline::Sink;
use tracegate_proto::v1::Batch;

use super::journal::{Entry, Intent, Journal};
use crate::config::DedupConfig;
use crate::metrics as m;

type Answer = Result<(), String>;

/// What to do with a request.
pub enum Admit {
    New,
    /// Its first copy is stored: answer 200 without storing it.
    Repeat,
    /// Its first copy is being written: answer what that copy gets.
    Wait(oneshot::Receiver<Answer>),
}

struct State {
    window: Window,
    /// Keys of copies being written or recovered, with the repeats waiting for them.
    inflight: HashMap<u128, Vec<oneshot::Sender<Answer>>>,
    position: i64,
}

impl State {
    fn record(&mut self, e: &Entry, max_entries: usize) {
        self.position += 1;
        let env = Envelope {
            key: e.key,
            copy: e.copy,
            parts: 1,
            at: e.at,
            position: self.position,
            tenant: e.tenant,
        };
        let early = self.window.evicted_early;
        self.window.check(env, max_entries);
        if self.window.evicted_early > early {
            metrics::counter!(m::DEDUP_EVICTED_EARLY).increment(self.window.evicted_early - early);
        }
        metrics::gauge!(m::DEDUP_WINDOW_REQUESTS).set(self.window.len() as f64);
    }
}

pub struct Dedup {
    state: Mutex<State>,
    journal: Mutex<Journal>,
    max_entries: usize,
}

fn entry(b: &Batch) -> Option<Entry> {
    Some(Entry {
        key: key_u128(&b.dedup_key)?,
        copy: key_u128(&b.batch_id).unwrap_or(0),
        at: b.received_at_unix_nano,
        tenant: tenant_id(&b.org_id, &b.project_id),
    })
}

impl Dedup {
    /// Opens the journal in `dir` and rebuilds the window from it. Returns the groups left
    /// unfinished, for [`recover`]; until then their keys are in flight.
    pub fn open(dir: &Path, cfg: &DedupConfig, window: Duration) -> Result<(Self, Vec<Intent>)> {
        let (journal, loaded) = Journal::open(dir, window + MAX_SKEW, cfg.max_bytes as u64)?;
        let max_entries = cfg.max_entries();
        let mut state = State {
            window: Window::new(window),
            inflight: HashMap::new(),
            position: 0,
        };
        for e in loaded.stored {
            state.record(&e, max_entries);
        }
        for i in &loaded.unfinished {
            for e in &i.entries {
                state.inflight.insert(e.key, Vec::new());
            }
        }
        tracing::info!(
            requests = state.window.len(),
            unfinished_groups = loaded.unfinished.len(),
            "dedup window rebuilt from the journal"
        );
        let d = Self {
            state: Mutex::new(state),
            journal: Mutex::new(journal),
            max_entries,
        };
        Ok((d, loaded.unfinished))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn admit(&self, b: &Batch) -> Admit {
        let Some(e) = entry(b) else {
            return Admit::New;
        };
        let mut s = self.lock();
        if let Some(waiting) = s.inflight.get_mut(&e.key) {
            let (tx, rx) = oneshot::channel();
            waiting.push(tx);
            return Admit::Wait(rx);
        }
        let env = Envelope {
            key: e.key,
            copy: e.copy,
            parts: 1,
            at: e.at,
            position: s.position,
            tenant: e.tenant,
        };
        if s.window.is_repeat(&env) {
            metrics::counter!(m::DEDUP_REPEATS).increment(1);
            metrics::counter!(m::DEDUP_REPEATED_SPANS).increment(u64::from(b.span_count));
            return Admit::Repeat;
        }
        s.inflight.insert(e.key, Vec::new());
        Admit::New
    }

    /// Before a group's sinks run: its requests' keys, synced to the journal.
    pub fn intent(&self, group: &str, batches: &[Batch]) -> Result<()> {
        let Some(first) = batches.first() else {
            return Ok(());
        };
        let entries: Vec<Entry> = batches.iter().filter_map(entry).collect();
        if entries.is_empty() {
            return Ok(());
        }
        let i = Intent {
            group: group.to_string(),
            org: first.org_id.clone(),
            project: first.project_id.clone(),
            entries,
        };
        let segment = self
            .journal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .append_intent(&i)?;
        // Outside the lock (journal.rs, `append_intent`).
        segment.sync_data()?;
        Ok(())
    }

    /// After a group's sinks (or its recovery). `stored`: every sink wrote it, so its keys
    /// join the window; else `reached_storage` says whether its first sink (the archive) did,
    /// which leaves the group to [`recover`] at the next start instead of forgetting it. The
    /// repeats waiting for these keys get `answer`.
    pub fn finish(&self, group: &str, entries: &[Entry], answer: &Answer, reached_storage: bool) {
        let journal = {
            let mut j = self.journal.lock().unwrap_or_else(|p| p.into_inner());
            match (answer, reached_storage) {
                (Ok(()), _) => j.done(group),
                (Err(_), false) => j.abandoned(group),
                (Err(_), true) => Ok(()),
            }
        };
        if let Err(e) = journal {
            // The group is found unfinished after a restart, and looked at in the archive.
            tracing::warn!(group, error = %format!("{e:#}"), "dedup journal write failed");
        }
        let mut s = self.lock();
        for e in entries {
            if let Some(waiting) = s.inflight.remove(&e.key) {
                for w in waiting {
                    let _ = w.send(answer.clone());
                }
            }
            if answer.is_ok() {
                s.record(e, self.max_entries);
            }
        }
    }

    /// A request admitted as new that never reached a group (refused when queued).
    pub fn abandon(&self, dedup_key: &[u8], why: &str) {
        let Some(key) = key_u128(dedup_key) else {
            return;
        };
        if let Some(waiting) = self.lock().inflight.remove(&key) {
            for w in waiting {
                let _ = w.send(Err(why.to_string()));
            }
        }
    }

    /// The entries of `batches` (what [`Dedup::finish`] takes).
    pub fn entries(batches: &[Batch]) -> Vec<Entry> {
        batches.iter().filter_map(entry).collect()
    }
}

/// A group between its intent and its end: [`Unfinished::finish`] records the outcome; if the
/// write never gets there (a panic in a sink unwinds through it), dropping it answers the
/// group's repeats with an error, as its own requests get, and leaves the intent to the next
/// start, so no repeat waits forever on a copy nobody writes.
pub struct Unfinished {
    dedup: Arc<Dedup>,
    group: String,
    entries: Vec<Entry>,
    finished: bool,
}

impl Unfinished {
    pub fn new(dedup: Arc<Dedup>, group: &str, batches: &[Batch]) -> Self {
        Self {
            dedup,
            group: group.to_string(),
            entries: Dedup::entries(batches),
            finished: false,
        }
    }

    pub fn dedup(&self) -> &Arc<Dedup> {
        &self.dedup
    }

    /// See [`Dedup::finish`].
    pub fn finish(mut self, answer: &Answer, reached_storage: bool) {
        self.finished = true;
        self.dedup
            .finish(&self.group, &self.entries, answer, reached_storage);
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if !self.finished {
            let answer = Err("the write did not finish".to_string());
            self.dedup.finish(&self.group, &self.entries, &answer, true);
        }
    }
}

/// Finishes the groups the journal left unfinished (a crash between the intent and the done
/// record): a group whose archive objects exist is written again through every sink (the
/// archive keeps its first object, ClickHouse drops the insert by its token) and its requests
/// count as stored; a group with no object never reached storage, its clients got no 200, and
/// it is forgotten. An archive that cannot be read is retried.
pub async fn recover(
    dedup: Arc<Dedup>,
    store: ArchiveStore,
    sinks: Vec<Arc<dyn Sink>>,
    intents: Vec<Intent>,
) {
    for i in intents {
        let mut attempt = 0;
        let stored = loop {
            match recover_one(&store, &sinks, &i).await {
                Ok(stored) => break stored,
                Err(e) => {
                    let wait = tracegate_pipeline::Backoff::DEFAULT.delay(attempt);
                    tracing::warn!(group = %i.group, error = %format!("{e:#}"), retry_in_ms = wait.as_millis() as u64, "recovering an unfinished group failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        };
        tracing::info!(group = %i.group, stored, requests = i.entries.len(), "unfinished group recovered");
        let answer = if stored {
            Ok(())
        } else {
            Err("the first copy was not stored; send it again".to_string())
        };
        dedup.finish(&i.group, &i.entries, &answer, false);
    }
}

async fn recover_one(store: &ArchiveStore, sinks: &[Arc<dyn Sink>], i: &Intent) -> Result<bool> {
    let first = i.entries.iter().map(|e| e.at).min().unwrap_or(0);
    let from =
        chrono::DateTime::from_timestamp_nanos(first as i64).date_naive() - chrono::Days::new(1);
    let filter = Filter {
        project: Some(i.project.clone()),
        from: Some(from),
        to: None,
    };
    let name = safe_segment(&i.group);
    let objects: Vec<_> = store
        .list(&filter)
        .await?
        .into_iter()
        .filter(|o| o.name == name)
        .collect();
    let Some(o) = objects.first() else {
        return Ok(false);
    };
    let planned = crate::archive::replay::PlannedGroup {
        date: o.date,
        name,
        objects,
    };
    let group = Arc::new(crate::archive::replay::assemble(store, &planned).await?);
    for s in sinks {
        s.write(group.clone()).await?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::embedded::EmbeddedQueue;
    use crate::queue::journal::Journal;
    use bytes::Bytes;
    use futures_util::future::BoxFuture;
    use tracegate_archive::store::{Settings, StoreSink};
    use tracegate_pipeline::{BatchQueue, Class, WriteGroup};

    /// Records the batch ids it is handed; fails while `fail` is set; takes `delay` per write.
    #[derive(Default)]
    struct Rec {
        ids: Mutex<Vec<Bytes>>,
        fail: std::sync::atomic::AtomicBool,
        delay_ms: u64,
    }
    impl Sink for Rec {
        fn name(&self) -> &'static str {
            "rec"
        }
        fn write(&self, g: Arc<WriteGroup>) -> BoxFuture<'static, Result<()>> {
            let fail = self.fail.load(std::sync::atomic::Ordering::SeqCst);
            if !fail {
                let mut ids = self.ids.lock().unwrap();
                ids.extend(g.batches.iter().map(|b| b.batch_id.clone()));
            }
            let delay = Duration::from_millis(self.delay_ms);
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                anyhow::ensure!(!fail, "disk full");
                Ok(())
            })
        }
    }

    /// A copy of the request `key` (batch id `copy`).
    fn batch(key: u8, copy: u8) -> Batch {
        Batch {
            schema_version: 1,
            batch_id: Bytes::from(vec![copy; 16]),
            dedup_key: Bytes::from(vec![key; 16]),
            org_id: "org1".into(),
            project_id: "proj1".into(),
            span_count: 2,
            received_at_unix_nano: 1_700_000_000_000_000_000 + u64::from(copy),
            ..Default::default()
        }
    }

    fn open(dir: &Path) -> (Arc<Dedup>, Vec<Intent>) {
        let (d, u) = Dedup::open(dir, &DedupConfig::default(), Duration::from_secs(900)).unwrap();
        (Arc::new(d), u)
    }

    fn queue(
        rec: &Arc<Rec>,
        d: &Arc<Dedup>,
    ) -> (EmbeddedQueue, super::super::embedded::WriterHandle) {
        let cfg = crate::config::WriterConfig {
            max_wait_ms: 1,
            ..Default::default()
        };
        EmbeddedQueue::start(cfg, vec![rec.clone() as Arc<dyn Sink>], Some(d.clone()))
    }

    #[tokio::test]
    async fn repeats_are_acknowledged_without_storing_also_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Arc::new(Rec::default());
        let (d, _) = open(dir.path());
        let (q, h) = queue(&rec, &d);
        q.publish(batch(1, 10), Class::Interactive).await.unwrap();
        q.publish(batch(1, 11), Class::Interactive).await.unwrap();
        q.publish(batch(2, 20), Class::Interactive).await.unwrap();
        assert_eq!(
            *rec.ids.lock().unwrap(),
            vec![Bytes::from(vec![10; 16]), Bytes::from(vec![20; 16])]
        );
        h.shutdown().await;
        drop((q, d));
        // A new process on the same data dir knows both requests.
        let rec = Arc::new(Rec::default());
        let (d, unfinished) = open(dir.path());
        assert!(unfinished.is_empty());
        let (q, h) = queue(&rec, &d);
        q.publish(batch(1, 12), Class::Interactive).await.unwrap();
        q.publish(batch(2, 21), Class::Interactive).await.unwrap();
        q.publish(batch(3, 30), Class::Interactive).await.unwrap();
        assert_eq!(*rec.ids.lock().unwrap(), vec![Bytes::from(vec![30; 16])]);
        h.shutdown().await;
    }

    /// The window's memory is shared by tenants, and a tenant's share is kept: one project
    /// storing 200 requests in a window of 16 does not make another's retries stored twice.
    #[tokio::test]
    async fn a_flooding_project_does_not_shorten_anothers_window() {
        let dir = tempfile::tempdir().unwrap();
        let of = |project: &str, key: u8, copy: u8| Batch {
            project_id: project.into(),
            ..batch(key, copy)
        };
        let cfg = DedupConfig {
            max_bytes: 16 * tracegate_pipeline::dedup::ENTRY_BYTES,
            ..Default::default()
        };
        let (d, _) = Dedup::open(dir.path(), &cfg, Duration::from_secs(900)).unwrap();
        let d = Arc::new(d);
        let rec = Arc::new(Rec::default());
        let (q, h) = queue(&rec, &d);
        for key in 0..4 {
            q.publish(of("quiet", 250 + key, 1), Class::Interactive)
                .await
                .unwrap();
        }
        for key in 0..200 {
            q.publish(of("noisy", key, 1), Class::Interactive)
                .await
                .unwrap();
        }
        let stored = |rec: &Rec| rec.ids.lock().unwrap().len();
        assert_eq!(stored(&rec), 204);
        // The quiet project's retries are answered without storing; the noisy project's
        // oldest requests were forgotten (its own share), its newest are kept.
        for key in 0..4 {
            q.publish(of("quiet", 250 + key, 2), Class::Interactive)
                .await
                .unwrap();
        }
        q.publish(of("noisy", 199, 2), Class::Interactive)
            .await
            .unwrap();
        assert_eq!(stored(&rec), 204);
        q.publish(of("noisy", 0, 2), Class::Interactive)
            .await
            .unwrap();
        assert_eq!(
            stored(&rec),
            205,
            "the noisy project's oldest was forgotten"
        );
        h.shutdown().await;
    }

    #[tokio::test]
    async fn a_repeat_of_a_copy_in_flight_gets_its_answer() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Arc::new(Rec {
            delay_ms: 200,
            ..Default::default()
        });
        let (d, _) = open(dir.path());
        let (q, h) = queue(&rec, &d);
        let q = Arc::new(q);
        let first = tokio::spawn({
            let q = q.clone();
            async move { q.publish(batch(1, 10), Class::Interactive).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        q.publish(batch(1, 11), Class::Interactive).await.unwrap();
        first.await.unwrap().unwrap();
        assert_eq!(rec.ids.lock().unwrap().len(), 1);
        // A failed first copy fails its repeat too, and the next copy is stored.
        rec.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        let first = tokio::spawn({
            let q = q.clone();
            async move { q.publish(batch(2, 20), Class::Interactive).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(q.publish(batch(2, 21), Class::Interactive).await.is_err());
        assert!(first.await.unwrap().is_err());
        rec.fail.store(false, std::sync::atomic::Ordering::SeqCst);
        q.publish(batch(2, 22), Class::Interactive).await.unwrap();
        assert_eq!(rec.ids.lock().unwrap().len(), 2);
        h.shutdown().await;
    }

    /// Panics in its write while `armed`.
    struct Panicky(std::sync::atomic::AtomicBool);
    impl Sink for Panicky {
        fn name(&self) -> &'static str {
            "panicky"
        }
        fn write(&self, _: Arc<WriteGroup>) -> BoxFuture<'static, Result<()>> {
            let armed = self.0.load(std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                assert!(!armed, "a sink bug");
                Ok(())
            })
        }
    }

    #[tokio::test]
    async fn a_write_that_panics_fails_its_repeats_instead_of_stranding_them() {
        let dir = tempfile::tempdir().unwrap();
        let (d, _) = open(dir.path());
        let sink = Arc::new(Panicky(std::sync::atomic::AtomicBool::new(true)));
        let cfg = crate::config::WriterConfig {
            max_wait_ms: 1,
            ..Default::default()
        };
        let (q, h) =
            EmbeddedQueue::start(cfg, vec![sink.clone() as Arc<dyn Sink>], Some(d.clone()));
        let q = Arc::new(q);
        let first = tokio::spawn({
            let q = q.clone();
            async move { q.publish(batch(1, 10), Class::Interactive).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let repeat = tokio::time::timeout(
            Duration::from_secs(5),
            q.publish(batch(1, 11), Class::Interactive),
        )
        .await
        .expect("the repeat was stranded");
        assert!(repeat.is_err());
        assert!(first.await.unwrap().is_err());
        sink.0.store(false, std::sync::atomic::Ordering::SeqCst);
        q.publish(batch(1, 12), Class::Interactive).await.unwrap();
        h.shutdown().await;
    }

    #[tokio::test]
    async fn recovery_finishes_archived_groups_and_forgets_the_rest() {
        let data = tempfile::tempdir().unwrap();
        let journal_dir = data.path().join("dedup");
        let settings = Settings::local(data.path());
        let archive: Arc<dyn Sink> = Arc::new(StoreSink::new(Arc::new(
            ArchiveStore::open(&settings, true).unwrap(),
        )));
        // A crash after group "g-archived" reached the archive and before its other sinks;
        // "g-lost" was journaled but reached nothing.
        let group = |id: &str, b: Batch| WriteGroup {
            id: id.into(),
            batches: vec![b],
            class: Class::Interactive,
        };
        archive
            .write(Arc::new(group("g-archived", batch(1, 10))))
            .await
            .unwrap();
        {
            let (mut j, _) =
                Journal::open(&journal_dir, Duration::from_secs(900), 1 << 30).unwrap();
            for (id, b) in [("g-archived", batch(1, 10)), ("g-lost", batch(2, 20))] {
                let g = group(id, b);
                j.intent(&Intent {
                    group: g.id.clone(),
                    org: "org1".into(),
                    project: "proj1".into(),
                    entries: Dedup::entries(&g.batches),
                })
                .unwrap();
            }
        }
        let (d, unfinished) = open(&journal_dir);
        assert_eq!(unfinished.len(), 2);
        // Until recovered, a repeat waits.
        let Admit::Wait(waiting) = d.admit(&batch(1, 11)) else {
            panic!("a repeat of an unfinished group must wait");
        };
        let rec = Arc::new(Rec::default());
        let sinks = vec![archive.clone(), rec.clone() as Arc<dyn Sink>];
        let store = ArchiveStore::open(&settings, false).unwrap();
        recover(d.clone(), store, sinks, unfinished).await;
        assert_eq!(
            *rec.ids.lock().unwrap(),
            vec![Bytes::from(vec![10; 16])],
            "the archived group went on to the next sink"
        );
        assert_eq!(waiting.await.unwrap(), Ok(()));
        assert!(matches!(d.admit(&batch(1, 12)), Admit::Repeat));
        assert!(
            matches!(d.admit(&batch(2, 21)), Admit::New),
            "the lost group is forgotten"
        );
        // And it stays so after another restart.
        drop(d);
        let (d, unfinished) = open(&journal_dir);
        assert!(unfinished.is_empty());
        assert!(matches!(d.admit(&batch(1, 13)), Admit::Repeat));
        assert!(matches!(d.admit(&batch(2, 22)), Admit::New));
    }
}
