//! CPU time and RSS of a process from /proc (Linux): the per-core figures divide spans by the
//! user+sys CPU seconds of the process that did the work.

use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Sample {
    /// user + sys CPU seconds since the process started.
    pub cpu_secs: f64,
    pub rss_kib: u64,
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// None when the process is gone or /proc is unreadable.
pub fn sample(pid: u32) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces: split after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some(Sample {
        cpu_secs: (utime + stime) / clock_ticks(),
        rss_kib,
    })
}

/// One watched process over the run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Watched {
    pub pid: u32,
    pub label: String,
    /// CPU seconds (user+sys) used between the first and the last sample.
    pub cpu_secs: f64,
    pub rss_start_kib: u64,
    pub rss_end_kib: u64,
    pub rss_max_kib: u64,
    /// Acked spans per CPU-second of this process (the per-core figure).
    pub acked_spans_per_cpu_sec: f64,
    #[serde(skip)]
    pub first: Option<Sample>,
    #[serde(skip)]
    pub last: Option<Sample>,
}

impl Watched {
    pub fn new(pid: u32, label: String) -> Self {
        Watched {
            pid,
            label,
            ..Default::default()
        }
    }

    /// Takes a sample; returns it for the time series.
    pub fn update(&mut self) -> Option<Sample> {
        let s = sample(self.pid)?;
        if self.first.is_none() {
            self.first = Some(s);
            self.rss_start_kib = s.rss_kib;
        }
        self.last = Some(s);
        self.rss_end_kib = s.rss_kib;
        self.rss_max_kib = self.rss_max_kib.max(s.rss_kib);
        if let Some(f) = self.first {
            self.cpu_secs = s.cpu_secs - f.cpu_secs;
        }
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_process_has_cpu_and_rss() {
        let s = super::sample(std::process::id()).unwrap();
        assert!(s.rss_kib > 0);
        // Burn ~200 ms of CPU: the next sample must show it (clock ticks are 10 ms).
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let later = super::sample(std::process::id()).unwrap();
        assert!(
            later.cpu_secs - s.cpu_secs >= 0.05,
            "CPU time did not grow: {} -> {}",
            s.cpu_secs,
            later.cpu_secs
        );
        assert!(super::sample(u32::MAX).is_none());
    }
}
