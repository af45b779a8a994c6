//! Decode slots shared fairly between projects.
//!
//! Decoding is the gateway's CPU (`limits.decode_concurrency` requests at once, one per core by
//! default). With one first-come queue, a project that offers four times the gateway's capacity
//! keeps the queue full, and a quiet project's request waits behind all of it (measured with
//! `scripts/bench-load.sh attack`: p99 from 12 ms to 580 ms). Here each project waits in its
//! own queue and a freed slot goes to the next project in turn (round robin over the projects
//! that are waiting), so a quiet project's request waits for at most one request of each busy
//! project, whatever their backlog. Within a project the order stays first come, first served.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Decode slots of each CPU class (`tracegate_pipeline::cpu`): a busy project's requests take bulk slots, the
/// others interactive ones, so a quiet project's request never waits for a busy project's
/// decode to finish. Each class holds `limits.decode_concurrency` slots; memory stays bounded by
/// the in-flight bytes, which every request holds before it asks for a slot.
#[derive(Debug, Clone)]
pub struct DecodeSlots {
    pub interactive: Arc<FairSlots>,
    pub bulk: Arc<FairSlots>,
}

impl DecodeSlots {
    pub fn new(slots: usize) -> Self {
        Self {
            interactive: FairSlots::new(slots),
            bulk: FairSlots::new(slots),
        }
    }
}

/// The slots and the projects waiting for one.
#[derive(Debug)]
pub struct FairSlots {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    free: usize,
    /// Waiters by project, first come first.
    waiting: HashMap<Arc<str>, VecDeque<oneshot::Sender<Slot>>>,
    /// Projects with waiters, in the order they get the next slots.
    turn: VecDeque<Arc<str>>,
}

/// One decode slot; freed (handed to the next waiting project) on drop.
#[derive(Debug)]
pub struct Slot {
    owner: Option<Arc<FairSlots>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(slots) = self.owner.take() {
            slots.release();
        }
    }
}

impl FairSlots {
    pub fn new(slots: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                free: slots.max(1),
                ..Default::default()
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a slot in `project`'s turn. Dropping the future gives up its place; a slot
    /// handed to a future that was dropped goes to the next waiter.
    pub async fn acquire(self: &Arc<Self>, project: &str) -> Slot {
        let rx = {
            let mut st = self.lock();
            if st.free > 0 && st.turn.is_empty() {
                st.free -= 1;
                return Slot {
                    owner: Some(self.clone()),
                };
            }
            let (tx, rx) = oneshot::channel();
            let key: Arc<str> = Arc::from(project);
            let queue = st.waiting.entry(key.clone()).or_default();
            queue.push_back(tx);
            if queue.len() == 1 {
                st.turn.push_back(key);
            }
            rx
        };
        match rx.await {
            Ok(slot) => slot,
            // The sender is only dropped with a slot in it or by `release` handing the slot on;
            // never without one while this future waits. Be safe anyway: take a fresh turn.
            Err(_) => Box::pin(self.acquire(project)).await,
        }
    }

    /// The next waiter in turn, or None (the slot becomes free).
    fn next_waiter(st: &mut State) -> Option<oneshot::Sender<Slot>> {
        while let Some(project) = st.turn.pop_front() {
            let Some(queue) = st.waiting.get_mut(&project) else {
                continue;
            };
            let Some(tx) = queue.pop_front() else {
                st.waiting.remove(&project);
                continue;
            };
            if queue.is_empty() {
                st.waiting.remove(&project);
            } else {
                st.turn.push_back(project);
            }
            return Some(tx);
        }
        None
    }

    fn release(self: Arc<Self>) {
        loop {
            let tx = {
                let mut st = self.lock();
                match Self::next_waiter(&mut st) {
                    Some(tx) => tx,
                    None => {
                        st.free += 1;
                        return;
                    }
                }
            };
            // Outside the lock: a waiter that gave up hands the slot back here, not to Drop.
            match tx.send(Slot {
                owner: Some(self.clone()),
            }) {
                Ok(()) => return,
                Err(mut unclaimed) => {
                    unclaimed.owner = None;
                }
            }
        }
    }

    /// Slots free now (for tests and metrics).
    pub fn free(&self) -> usize {
        self.lock().free
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_quiet_project_is_served_before_a_noisy_backlog() {
        let slots = FairSlots::new(1);
        let held = slots.acquire("noisy").await;
        // Ten noisy requests queue first, then one quiet request.
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..10 {
            let (s, o) = (slots.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _slot = s.acquire("noisy").await;
                o.lock().unwrap().push(format!("noisy-{i}"));
            }));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let (s, o) = (slots.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let _slot = s.acquire("quiet").await;
            o.lock().unwrap().push("quiet".to_string());
        }));
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        let quiet_at = order.iter().position(|n| n == "quiet").unwrap();
        assert!(
            quiet_at <= 1,
            "quiet waited behind {quiet_at} noisy requests: {order:?}"
        );
        // Within the noisy project, first come first served.
        let noisy: Vec<_> = order.iter().filter(|n| *n != "quiet").cloned().collect();
        let want: Vec<_> = (0..10).map(|i| format!("noisy-{i}")).collect();
        assert_eq!(noisy, want);
        assert_eq!(slots.free(), 1);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_passes_its_slot_on() {
        let slots = FairSlots::new(1);
        let held = slots.acquire("a").await;
        let s = slots.clone();
        let gone = tokio::spawn(async move { s.acquire("b").await });
        tokio::time::sleep(Duration::from_millis(5)).await;
        gone.abort();
        let _ = gone.await;
        let s = slots.clone();
        let next = tokio::spawn(async move { s.acquire("c").await });
        tokio::time::sleep(Duration::from_millis(5)).await;
        drop(held);
        let slot = tokio::time::timeout(Duration::from_secs(2), next)
            .await
            .expect("the slot was lost with the waiter that gave up")
            .unwrap();
        assert_eq!(slots.free(), 0);
        drop(slot);
        assert_eq!(slots.free(), 1);
    }
}
