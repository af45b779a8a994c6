//! What every benchmark shares: the request it measures (`realistic_request`, from
//! `tracegate_spangen`: 20 string attributes with random values + 1 int, ~1.2 KB/span), the
//! per-CPU-second measurement each prints before criterion runs, and the allocator tuning.

/// One request of `n` realistic spans (`tracegate_spangen`, the generator the load tool and the
/// tests share); `seed` makes ids and values differ between requests.
pub use tracegate_spangen::realistic_request;

/// CPU time of the calling thread, in seconds (`CLOCK_THREAD_CPUTIME_ID`): unlike wall time it
/// does not count the time other processes on a shared machine take from this thread.
pub fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Runs `f` `rounds` times (after one warm-up call), prints and returns `spans` per CPU-second
/// of this thread, and the CPU time per call.
pub fn per_cpu_second<T>(
    label: &str,
    spans: usize,
    rounds: usize,
    mut f: impl FnMut() -> T,
) -> f64 {
    std::hint::black_box(f());
    let t0 = thread_cpu_seconds();
    for _ in 0..rounds {
        std::hint::black_box(f());
    }
    let secs = (thread_cpu_seconds() - t0).max(1e-9);
    let rate = (rounds * spans) as f64 / secs;
    eprintln!(
        "{label}: {rate:.0} spans per CPU-second ({:.1} µs CPU per call, {rounds} calls)",
        secs / rounds as f64 * 1e6
    );
    rate
}

/// Tunes glibc malloc as the `tracegate` binary does at start-up (`tracegate::alloc`), unless
/// `TRACEGATE_BENCH_DEFAULT_MALLOC=1` asks for glibc's defaults (to measure the difference).
pub fn tune_allocator_like_the_binary() {
    if std::env::var_os("TRACEGATE_BENCH_DEFAULT_MALLOC").is_some_and(|v| v == "1") {
        eprintln!("allocator: glibc defaults (TRACEGATE_BENCH_DEFAULT_MALLOC=1)");
    } else {
        tracegate::alloc::tune_malloc();
        eprintln!("allocator: tuned as the tracegate binary (tracegate::alloc)");
    }
}
