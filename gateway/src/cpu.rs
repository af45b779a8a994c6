//! Where CPU-heavy work runs: decoding a request and compressing/encrypting an archive object,
//! in one of two classes.
//!
//! Fair queues (decode slots, writer lanes) decide *which* project's work starts next; once
//! started, work competes for the CPU as threads, and the kernel shares the CPU between threads,
//! not projects. A project that offers four times the gateway's capacity keeps several threads
//! busy, and a quiet project's decode or write — and the async workers that read its request and
//! answer it — get a fraction of the core (measured with `scripts/bench-load.sh attack`: the
//! quiet project's p99 stayed at 300 ms with fair queues alone; docs/reliability.md).
//!
//! So the work of a *busy* project (one that holds more than a quarter of its in-flight share,
//! or has a write backlog) runs as [`Class::Bulk`] on threads of their own at a lower OS priority
//! (`nice` +10): it takes whatever CPU the async workers and the interactive work leave, which
//! is all of it when nobody else is sending. Everything else runs as [`Class::Interactive`] on
//! tokio's blocking pool at normal priority. Nothing is dropped or reordered within a project;
//! a busy project only waits more when others need the CPU.

use std::sync::OnceLock;

use tokio::runtime::{Builder, Runtime};

/// How urgent a piece of CPU work is (see the module comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Class {
    #[default]
    Interactive,
    Bulk,
}

/// The `nice` increment of bulk threads: at +10 a thread weighs about 1/10 of a normal one
/// (the kernel's CFS weights 1024 vs 110), enough for interactive work to go first without
/// starving bulk work.
const BULK_NICE: i32 = 19;

/// Runs `f` on a thread of `class`; resolves with its result, or an error if it panicked.
pub async fn run<T, F>(class: Class, f: F) -> Result<T, tokio::task::JoinError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match class {
        Class::Interactive => tokio::task::spawn_blocking(f).await,
        Class::Bulk => bulk().spawn_blocking(f).await,
    }
}

/// The bulk runtime: only its blocking pool is used. It lives as long as the process (a static
/// is never dropped, so it is never shut down from inside an async context).
fn bulk() -> &'static Runtime {
    static BULK: OnceLock<Runtime> = OnceLock::new();
    BULK.get_or_init(|| {
        Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tracegate-bulk")
            .on_thread_start(lower_priority)
            .build()
            .expect("starting the bulk thread pool")
    })
}

/// Lowers the calling thread's priority. On Linux `setpriority(PRIO_PROCESS, tid)` applies to
/// one thread; raising niceness needs no privilege. Failure only costs fairness: logged once.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority take no pointers and cannot violate memory safety.
        let rc = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, BULK_NICE)
        };
        if rc != 0 {
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

    #[cfg(target_os = "linux")]
    fn my_nice() -> i32 {
        // SAFETY: as above.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::getpriority(libc::PRIO_PROCESS, tid)
        }
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn bulk_work_runs_at_a_lower_priority_and_interactive_work_does_not() {
        let base = my_nice();
        let bulk = run(Class::Bulk, my_nice).await.unwrap();
        let interactive = run(Class::Interactive, my_nice).await.unwrap();
        assert_eq!(interactive, base);
        assert_eq!(bulk, (base + BULK_NICE).min(19));
    }

    #[tokio::test]
    async fn a_panic_is_an_error_not_a_crash() {
        let r = run(Class::Bulk, || -> u8 { panic!("boom") }).await;
        assert!(r.is_err());
        assert_eq!(run(Class::Bulk, || 7).await.unwrap(), 7);
    }
}
