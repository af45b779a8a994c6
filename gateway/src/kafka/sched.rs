//! librdkafka's threads of the small batches' producer under `SCHED_BATCH`, so that waking
//! them never preempts the async worker (docs/benchmarks.md, "Issue 21", sessions 23 and 24).
//!
//! Why: the gateway hands each message to librdkafka's broker thread, and a woken thread of
//! the normal policy preempts the running one. On a busy core the broker thread then ran once
//! per message, sending a produce request with a message or two, and every request paid two
//! context switches and its own round trip. A `SCHED_BATCH` thread is never woken into the
//! core ahead of the running thread: the broker thread runs when the worker waits or its time
//! slice ends, and takes every message queued by then into one produce request. Its share of
//! the core is unchanged (same weight); only the wake-up preemption goes. Measured with every
//! producer so: 64-span requests +25–40 % spans per gateway CPU-second, but 512-span ones
//! −1–13 % at max: a ~600 KB message fills a produce request alone, so there is nothing to
//! gather. Hence only the producer of batches under `kafka.small_batch_bytes` (producer.rs).
//!
//! Linux threads inherit the policy of the thread that creates them, and librdkafka creates
//! its threads from the thread that creates the client (its main and bootstrap broker threads)
//! or from its main thread (brokers learned later); so the client is created on a short-lived
//! thread that switched itself to `SCHED_BATCH`, and the policy reaches every thread of that
//! client without naming them. Elsewhere than Linux, nothing changes.

/// Runs `f` on a new thread under `SCHED_BATCH`; the threads `f` starts inherit it. Returns
/// `f`'s result and whether the policy could be set (a sandbox may forbid it: then `f` ran
/// under the normal policy).
pub fn inheriting_batch<T: Send>(f: impl FnOnce() -> T + Send) -> (T, bool) {
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            let set = set_batch();
            (f(), set)
        });
        match h.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

#[cfg(target_os = "linux")]
fn set_batch() -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain system call on the calling thread (pid 0) with a valid parameter.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn set_batch() -> bool {
    false
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn policy() -> i32 {
        // SAFETY: plain system call on the calling thread.
        unsafe { libc::sched_getscheduler(0) }
    }

    #[test]
    fn threads_started_inside_inherit_the_batch_policy_and_the_caller_keeps_its_own() {
        let before = policy();
        let ((inside, grandchild), set) = inheriting_batch(|| {
            let grandchild = std::thread::spawn(policy).join().unwrap();
            (policy(), grandchild)
        });
        assert!(set, "an unprivileged thread may always choose SCHED_BATCH");
        assert_eq!(inside, libc::SCHED_BATCH);
        assert_eq!(
            grandchild,
            libc::SCHED_BATCH,
            "inherited by the threads it starts"
        );
        assert_eq!(policy(), before, "the calling thread is untouched");
    }
}
