//! How far a project's bodies are read ahead of its decodes.
//!
//! A body is read as soon as its credential passes. When a project sends faster than its
//! decodes finish (a burst, or a core stalled for a moment), the bodies read meanwhile wait in
//! memory for a decode slot, and the client, answered later, keeps sending. On a gateway near
//! saturation that backlog fed itself: ~200 MB waited, each body left the cache before its
//! scan, first-touch page faults doubled the system time, and every span cost ~20 % more, so
//! the backlog grew instead of draining (docs/benchmarks.md, issue 21 goal 5).
//!
//! Here a project's next body is read only while the bytes it has waiting for a decode slot
//! are under `limits.read_ahead_bytes_per_project`; otherwise the request waits before its body,
//! in arrival order, and is woken by the decode that takes bytes off the backlog (no polling).
//! The body it has not read stays in the socket, where TCP holds the client. Bodies being read
//! are not counted, so a slow client never holds another request's turn; each read that
//! completes under the bound, and each decode that starts, wakes the next request, so reads
//! never start more slowly than decodes. Per project: one project's backlog never delays
//! another's reads.
//!
//! HTTP/1.1 only (the transports decide, `Arrival::read_ahead`): on HTTP/2, streams share the
//! connection's flow-control window, so a stream left unread could hold the window that the
//! stream woken before it needs to finish its body.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::metrics as m;

/// The projects' read-ahead backlogs.
#[derive(Debug)]
pub struct ReadAhead {
    /// Bytes a project may have waiting for decode before its next body waits (0: no bound).
    limit: usize,
    projects: Mutex<HashMap<Arc<str>, Project>>,
}

#[derive(Debug, Default)]
struct Project {
    /// Bytes read and waiting for a decode slot.
    waiting: usize,
    /// Requests waiting to read their bodies, first come first.
    queue: VecDeque<oneshot::Sender<Turn>>,
}

/// A request's turn to read its body. Dropped unread (refused, the client gone), it passes the
/// turn on.
#[derive(Debug)]
pub struct Turn {
    gate: Option<(Arc<ReadAhead>, Arc<str>)>,
}

/// A read body's bytes on its project's backlog, until its decode starts (drop).
#[derive(Debug)]
pub struct Queued {
    gate: Option<(Arc<ReadAhead>, Arc<str>)>,
    bytes: usize,
}

impl ReadAhead {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            projects: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Project>> {
        self.projects.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `project` may read its next body: at once while its backlog is under the
    /// bound and nobody of it waits. Dropping the future gives up its place.
    pub async fn turn(self: &Arc<Self>, project: &str) -> Turn {
        if self.limit == 0 {
            return Turn { gate: None };
        }
        let key: Arc<str> = Arc::from(project);
        let rx = {
            let mut projects = self.lock();
            match projects.get_mut(project) {
                Some(p) if !p.queue.is_empty() || p.waiting >= self.limit => {
                    let (tx, rx) = oneshot::channel();
                    p.queue.push_back(tx);
                    rx
                }
                _ => {
                    return Turn {
                        gate: Some((self.clone(), key)),
                    }
                }
            }
        };
        metrics::counter!(m::READ_AHEAD_WAITS).increment(1);
        match rx.await {
            Ok(turn) => turn,
            // Senders are only dropped after sending a turn; be safe: read now.
            Err(_) => Turn {
                gate: Some((self.clone(), key)),
            },
        }
    }

    /// `turn`, waited for at most `timeout`; None after it (the place given up).
    pub async fn turn_within(self: &Arc<Self>, project: &str, timeout: Duration) -> Option<Turn> {
        tokio::time::timeout(timeout, self.turn(project)).await.ok()
    }

    /// Wakes `project`'s next waiter if its backlog is under the bound.
    fn pass_on(self: &Arc<Self>, project: &Arc<str>) {
        loop {
            let tx = {
                let mut projects = self.lock();
                let Some(p) = projects.get_mut(project) else {
                    return;
                };
                if p.waiting >= self.limit {
                    return;
                }
                match p.queue.pop_front() {
                    Some(tx) => tx,
                    None => {
                        if p.waiting == 0 {
                            projects.remove(project);
                        }
                        return;
                    }
                }
            };
            // Outside the lock: a waiter that gave up hands its turn back here, not to Drop.
            let turn = Turn {
                gate: Some((self.clone(), project.clone())),
            };
            match tx.send(turn) {
                Ok(()) => return,
                Err(mut unclaimed) => unclaimed.gate = None,
            }
        }
    }

    /// Bytes `project` has waiting for decode.
    #[cfg(test)]
    fn waiting(&self, project: &str) -> usize {
        self.lock().get(project).map_or(0, |p| p.waiting)
    }
}

impl Turn {
    /// The body is read: its `bytes` join the project's backlog until its decode starts. If
    /// the backlog is still under the bound, the next waiter may read too.
    pub fn read(mut self, bytes: usize) -> Queued {
        let Some((gate, project)) = self.gate.take() else {
            return Queued { gate: None, bytes };
        };
        gate.lock().entry(project.clone()).or_default().waiting += bytes;
        gate.pass_on(&project);
        Queued {
            gate: Some((gate, project)),
            bytes,
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some((gate, project)) = self.gate.take() {
            gate.pass_on(&project);
        }
    }
}

impl Queued {
    /// On no backlog: a request that never waits (HTTP/2, gRPC, no bound).
    pub fn none() -> Self {
        Self {
            gate: None,
            bytes: 0,
        }
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        let Some((gate, project)) = self.gate.take() else {
            return;
        };
        if let Some(p) = gate.lock().get_mut(&project) {
            p.waiting = p.waiting.saturating_sub(self.bytes);
        }
        gate.pass_on(&project);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn is_waiting(t: &tokio::task::JoinHandle<Turn>) -> bool {
        tokio::time::sleep(Duration::from_millis(20)).await;
        !t.is_finished()
    }

    #[tokio::test]
    async fn a_body_waits_while_its_project_is_behind_and_goes_when_a_decode_starts() {
        let gate = ReadAhead::new(100);
        let first = gate.turn("busy").await.read(150);
        assert_eq!(gate.waiting("busy"), 150);
        let g = gate.clone();
        let second = tokio::spawn(async move { g.turn("busy").await });
        assert!(is_waiting(&second).await, "read past the bound");
        // Another project is not held by this one's backlog.
        let other = tokio::time::timeout(Duration::from_secs(1), gate.turn("quiet"))
            .await
            .expect("a quiet project waited for a busy one");
        drop(other);
        // The decode of the first body starts: the second may read.
        drop(first);
        let turn = tokio::time::timeout(Duration::from_secs(1), second)
            .await
            .expect("not woken by the decode")
            .unwrap();
        assert_eq!(gate.waiting("busy"), 0);
        drop(turn.read(10));
        assert_eq!(gate.waiting("busy"), 0);
        assert!(gate.lock().is_empty(), "{:?}", gate.lock());
    }

    #[tokio::test]
    async fn waiters_read_in_arrival_order_and_a_read_under_the_bound_wakes_the_next() {
        let gate = ReadAhead::new(100);
        let held = gate.turn("p").await.read(100);
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (g, o) = (gate.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let turn = g.turn("p").await;
                o.lock().unwrap().push(i);
                // Each body is small: its read leaves room, so the next waiter goes too.
                turn.read(1)
            }));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(held);
        let mut queued = Vec::new();
        for t in tasks {
            queued.push(
                tokio::time::timeout(Duration::from_secs(1), t)
                    .await
                    .expect("a waiter was never woken")
                    .unwrap(),
            );
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
        assert_eq!(gate.waiting("p"), 5);
        drop(queued);
        assert_eq!(gate.waiting("p"), 0);
    }

    #[tokio::test]
    async fn a_turn_given_up_or_dropped_unread_passes_on() {
        let gate = ReadAhead::new(10);
        let held = gate.turn("p").await.read(10);
        let g = gate.clone();
        let gone = tokio::spawn(async move { g.turn("p").await });
        tokio::time::sleep(Duration::from_millis(5)).await;
        let g = gate.clone();
        let refused = tokio::spawn(async move { drop(g.turn("p").await) });
        tokio::time::sleep(Duration::from_millis(5)).await;
        let g = gate.clone();
        let last = tokio::spawn(async move { g.turn("p").await });
        assert!(is_waiting(&last).await);
        gone.abort();
        let _ = gone.await;
        drop(held);
        // The first waiter is gone; the second is refused before its body: the third reads.
        refused.await.unwrap();
        let turn = tokio::time::timeout(Duration::from_secs(1), last)
            .await
            .expect("a turn was lost")
            .unwrap();
        drop(turn);
        assert!(gate.lock().is_empty(), "{:?}", gate.lock());
    }

    #[tokio::test]
    async fn a_wait_past_its_timeout_ends_and_leaves_the_queue_working() {
        let gate = ReadAhead::new(10);
        let held = gate.turn("p").await.read(10);
        let short = gate.turn_within("p", Duration::from_millis(30)).await;
        assert!(short.is_none(), "read past the bound");
        let g = gate.clone();
        let next = tokio::spawn(async move { g.turn_within("p", Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(held);
        let turn = next.await.unwrap().expect("the next waiter was not woken");
        drop(turn);
        assert!(gate.lock().is_empty(), "{:?}", gate.lock());
    }

    #[tokio::test]
    async fn no_bound_never_waits() {
        let gate = ReadAhead::new(0);
        let _a = gate.turn("p").await.read(1 << 30);
        let _b = tokio::time::timeout(Duration::from_secs(1), gate.turn("p"))
            .await
            .expect("waited with no bound");
    }
}
