//! Process-wide tuning of glibc's allocator for a process that allocates and frees buffers of
//! hundreds of KiB to a few MiB all the time (request bodies, decompressed requests, Kafka
//! messages, RowBinary chunks and their LZ4 frames).
//!
//! With glibc's defaults such buffers are either mmap'ed and unmapped per use (over the 128 KiB
//! mmap threshold) or given back to the kernel by heap trimming soon after they are freed (over
//! the trim threshold), so every new buffer page-faults and is zeroed by the kernel again. The
//! writer bench measured this: LZ4 framing of a 10 240-span group ran at 0.95 M spans per
//! CPU-second with the defaults and 2.3 M with the settings below (docs/benchmarks.md).
//! The cost is that up to `TRIM_THRESHOLD` of freed memory per arena may stay mapped.
//!
//! So the number of arenas is bounded too. glibc gives every thread that meets lock contention
//! an arena of its own, up to 8 per core; tokio's blocking pool (where requests are decoded)
//! starts and retires threads, and each arena keeps its own peak. The 10-minute soak measured
//! RSS ratcheting from 136 to 424 MiB with the defaults and flat at 72 MiB with two arenas
//! (docs/benchmarks.md, "The RSS growth is mostly glibc malloc arenas"). Since the hot path
//! hardly allocates any more (scan instead of decode), the lock contention this adds is small.

use std::sync::atomic::{AtomicBool, Ordering};

/// Allocations below this come from the heap (glibc's maximum is 32 MiB on 64-bit).
const MMAP_THRESHOLD: i32 = 32 << 20;
/// Free memory at the top of a heap kept for reuse instead of being trimmed.
const TRIM_THRESHOLD: i32 = 128 << 20;

/// Arenas per CPU: glibc's default is 8; one per CPU keeps contention low and memory bounded.
fn arena_max() -> i32 {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    cpus.clamp(2, 16) as i32
}

/// Call once at start-up, before threads are started. An operator who sets glibc's own malloc
/// knobs (`GLIBC_TUNABLES=glibc.malloc.…`, `MALLOC_TRIM_THRESHOLD_`, `MALLOC_MMAP_THRESHOLD_`)
/// keeps them: nothing is changed then (`MALLOC_ARENA_MAX` too).
pub fn tune_malloc() {
    if operator_tuned(
        std::env::var("GLIBC_TUNABLES").ok().as_deref(),
        std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_some()
            || std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some()
            || std::env::var_os("MALLOC_ARENA_MAX").is_some(),
    ) {
        return;
    }
    apply();
}

/// Set once this module's settings are in effect (not when the operator tuned malloc).
static TUNED: AtomicBool = AtomicBool::new(false);

fn apply() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        libc::mallopt(libc::M_ARENA_MAX, arena_max());
        TUNED.store(true, Ordering::Relaxed);
    }
}

/// Pre-faulting works in chunks this size (below `MMAP_THRESHOLD`, so they come from an arena).
const PREFAULT_CHUNK: usize = 4 << 20;

/// `limits.prefault_bytes = total`: sets the allocator up for it and makes `total` of heap
/// resident. Returns false (nothing done) when the operator tuned malloc: with their mmap
/// threshold the chunks might be mapped and unmapped again. Call once, before other threads
/// start.
///
/// The process gets a single arena then: glibc hands threads arenas as they first allocate and
/// under contention, so with several there is no knowing which one a request's buffers come
/// from, and only the one the pre-faulting thread got would be warm (one run of eight still had
/// its episode that way). The hot path makes a handful of large allocations per request, so the
/// shared arena lock costs little; small ones come from each thread's cache without it. The
/// trim threshold is raised above `total`, or freeing it would hand it straight back.
pub fn prefault(total: usize) -> bool {
    if total == 0 {
        return true;
    }
    if !TUNED.load(Ordering::Relaxed) {
        return false;
    }
    let total = total.next_multiple_of(PREFAULT_CHUNK);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: as in `apply`; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        let trim = (total + 2 * PREFAULT_CHUNK).max(TRIM_THRESHOLD as usize);
        libc::mallopt(libc::M_TRIM_THRESHOLD, trim.min(i32::MAX as usize) as i32);
    }
    prefault_heap(total);
    true
}

/// Makes `bytes` of this thread's malloc arena resident, then frees it: the memory stays
/// mapped (under the trim threshold, see `prefault`), so later allocations reuse it
/// without page faults (`limits.prefault_bytes`, docs/operations.md, Memory).
///
/// Why: a burst that needs more in-flight memory than the heap has ever held pays a first-touch
/// fault for every 4 KiB page of it, serialised on the process's memory map, exactly when the
/// gateway is behind; at 70 % load with bursty arrivals that turned a few ms of backlog into
/// 50-280 ms episodes (docs/benchmarks.md, issue 8, session 7).
fn prefault_heap(bytes: usize) {
    if bytes == 0 {
        return;
    }
    let mut held: Vec<Vec<u8>> = Vec::with_capacity(bytes.div_ceil(PREFAULT_CHUNK));
    let mut left = bytes;
    while left > 0 {
        let n = left.min(PREFAULT_CHUNK);
        let mut v = Vec::<u8>::with_capacity(n);
        populate(v.spare_capacity_mut());
        held.push(v);
        left -= n;
    }
    drop(held);
}

/// Makes the pages of `buf` resident: one `MADV_POPULATE_WRITE` (Linux 5.14+), else a write
/// to each page.
fn populate(buf: &mut [std::mem::MaybeUninit<u8>]) {
    const PAGE: usize = 4096;
    let start = buf.as_mut_ptr() as usize;
    let first = start.next_multiple_of(PAGE);
    let end = (start + buf.len()) / PAGE * PAGE;
    if end <= first {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: [first, end) lies inside `buf`, which this thread owns; populating only faults
    // pages in, it does not change their contents or the mapping.
    if unsafe {
        libc::madvise(
            first as *mut libc::c_void,
            end - first,
            libc::MADV_POPULATE_WRITE,
        )
    } == 0
    {
        return;
    }
    for page in buf[first - start..end - start].chunks_mut(PAGE) {
        page[0].write(0);
    }
}

fn operator_tuned(tunables: Option<&str>, malloc_env: bool) -> bool {
    malloc_env || tunables.is_some_and(|t| t.contains("glibc.malloc."))
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn prefault_makes_the_arena_resident() {
        fn minor_faults() -> u64 {
            // SAFETY: getrusage only writes the struct it is given.
            let mut u: libc::rusage = unsafe { std::mem::zeroed() };
            unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
            u.ru_minflt as u64
        }
        // In a fresh thread, so the arena is the one this test warms, with the process's own
        // allocator settings as the gateway has them.
        std::thread::spawn(|| {
            super::apply();
            // Not `prefault`: one arena for the whole test process is not this test's call.
            super::prefault_heap(64 << 20);
            let before = minor_faults();
            // 48 MiB of 1 MiB buffers written through: with the arena warm, no page faults.
            let mut bufs: Vec<Vec<u8>> = (0..48).map(|_| vec![1u8; 1 << 20]).collect();
            let faults = minor_faults() - before;
            bufs.clear();
            assert!(faults < 1024, "{faults} minor faults after prefault");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn operator_settings_win() {
        use super::operator_tuned;
        assert!(!operator_tuned(None, false));
        assert!(!operator_tuned(Some("glibc.pthread.rseq=0"), false));
        assert!(operator_tuned(
            Some("glibc.malloc.trim_threshold=1:glibc.pthread.rseq=0"),
            false
        ));
        assert!(operator_tuned(None, true));
    }
}
