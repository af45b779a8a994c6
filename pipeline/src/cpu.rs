//! Where CPU-heavy work runs: decoding a request and writing a group (compression, encryption,
//! the file write and its fsync), in one of two classes.
//!
//! Fair queues (decode slots, writer lanes) decide *which* project's work starts next; once
//! started, work competes for the CPU and the disk as threads, and the kernel shares them
//! between threads, not projects. A project that offers four times the gateway's capacity keeps
//! several threads busy, and a quiet project's decode or write — and the async workers that read
//! its request and answer it — get a fraction of the core (measured with
//! `scripts/bench-load.sh attack`: the quiet project's p99 stayed at 300 ms with fair queues
//! alone; docs/reliability.md).
//!
//! So the work of a *busy* project (one that holds more than a quarter of its in-flight share,
//! or has a write backlog) runs as [`Class::Bulk`] on threads of their own, scheduled
//! `SCHED_IDLE` with the idle I/O class: it takes whatever CPU and disk time the async workers
//! and the interactive work leave, which is all of it when nobody else is sending. Everything
//! else runs as [`Class::Interactive`] on tokio's blocking pool at normal priority. Nothing is
//! dropped or reordered within a project; a busy project only waits more when others need the
//! machine (and then its in-flight share fills and it gets 429s, which is the point).

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::{Builder, Runtime};
use tokio::task::JoinError;

/// How urgent a piece of CPU work is (see the module comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Class {
    #[default]
    Interactive,
    Bulk,
}

/// Runs `f` on a thread of `class`; resolves with its result, or an error if it panicked.
pub async fn run<T, F>(class: Class, f: F) -> Result<T, JoinError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match class {
        Class::Interactive => tokio::task::spawn_blocking(f).await,
        Class::Bulk => bulk().spawn_blocking(f).await,
    }
}

/// Runs the future `f` as a task of `class`: a bulk task is polled by the bulk runtime, so the
/// blocking work it starts through tokio (an `object_store` file write and its fsync) runs on
/// bulk threads too. Measured: a busy project's group writes on normal threads kept the quiet
/// project's archive write p99 at 10–12 ms against 3 ms alone (docs/benchmarks.md).
pub async fn run_task<T, F>(class: Class, f: F) -> Result<T, JoinError>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    match class {
        Class::Interactive => Ok(f.await),
        Class::Bulk => bulk().spawn(f).await,
    }
}

/// The bulk runtime. Its tasks may use timers and sockets (a sink's HTTP client), so both
/// drivers are on. It lives as long as the process (a static is never dropped, so it is never
/// shut down from inside an async context).
fn bulk() -> &'static Runtime {
    static BULK: OnceLock<Runtime> = OnceLock::new();
    BULK.get_or_init(|| {
        Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .thread_name("tracegate-bulk")
            .on_thread_start(lower_priority)
            .build()
            .expect("starting the bulk thread pool")
    })
}

/// The idle I/O class (`IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT`; linux/ioprio.h).
#[cfg(target_os = "linux")]
const IOPRIO_IDLE: libc::c_int = 3 << 13;
#[cfg(target_os = "linux")]
const IOPRIO_WHO_PROCESS: libc::c_int = 1;

/// Puts the calling thread in the idle classes. `SCHED_IDLE` (weight 3 against a normal
/// thread's 1 024, and a waking normal thread preempts it at once) measured better than
/// `nice` +19 (weight 15): quiet p99 26–28 ms → 22–25 ms; nice +10 was 33 ms. The idle I/O class
/// keeps a busy project's writeback behind other fsyncs (mq-deadline and BFQ honour it; the
/// deadline scheduler still ages it in). Neither needs a privilege on Linux; a failure only
/// costs fairness, so it falls back to `nice` +19 and is logged once.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: the calls take a thread id (0: the caller) and a pointer to a local that
        // outlives them.
        let ok = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::c_int;
            let cpu = libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) == 0
                || libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19) == 0;
            let io = libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, tid, IOPRIO_IDLE) == 0;
            cpu && io
        };
        if !ok {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(error = %std::io::Error::last_os_error(), "could not lower the priority of bulk threads");
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This thread's scheduling policy and I/O priority class.
    #[cfg(target_os = "linux")]
    fn my_classes() -> (i32, i64) {
        // SAFETY: as above.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::c_int;
            let io = libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, tid);
            (libc::sched_getscheduler(0), io >> 13)
        }
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn bulk_work_runs_in_the_idle_classes_and_interactive_work_does_not() {
        let base = my_classes();
        assert_eq!(
            run(Class::Bulk, my_classes).await.unwrap(),
            (libc::SCHED_IDLE, 3)
        );
        assert_eq!(run(Class::Interactive, my_classes).await.unwrap(), base);
        // A bulk task is polled on a bulk thread, and so is the blocking work it starts.
        let polled = run_task(Class::Bulk, async { my_classes() }).await.unwrap();
        assert_eq!(polled, (libc::SCHED_IDLE, 3));
        let blocking = run_task(Class::Bulk, async {
            tokio::task::spawn_blocking(my_classes).await.unwrap()
        });
        assert_eq!(blocking.await.unwrap(), (libc::SCHED_IDLE, 3));
        let here = run_task(Class::Interactive, async { my_classes() }).await;
        assert_eq!(here.unwrap(), base);
    }

    #[tokio::test]
    async fn bulk_tasks_have_timers() {
        let slept = run_task(Class::Bulk, async {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            7
        });
        assert_eq!(slept.await.unwrap(), 7);
    }

    #[tokio::test]
    async fn a_panic_is_an_error_not_a_crash() {
        let r = run(Class::Bulk, || -> u8 { panic!("boom") }).await;
        assert!(r.is_err());
        assert_eq!(run(Class::Bulk, || 7).await.unwrap(), 7);
        let r: Result<(), _> = run_task(Class::Bulk, async { panic!("boom") }).await;
        assert!(r.is_err());
    }
}
