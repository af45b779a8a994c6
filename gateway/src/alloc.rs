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
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        libc::mallopt(libc::M_ARENA_MAX, arena_max());
    }
}

fn operator_tuned(tunables: Option<&str>, malloc_env: bool) -> bool {
    malloc_env || tunables.is_some_and(|t| t.contains("glibc.malloc."))
}

#[cfg(test)]
mod tests {
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
