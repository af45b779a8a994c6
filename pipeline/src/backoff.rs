//! One retry-delay rule for every loop that waits before trying again (the Kafka writer's
//! fetch, insert and commit retries, the ClickHouse sink's insert retries, the PostgreSQL key
//! store's reconnects): exponential from `initial`, capped at `max`, optionally jittered.
//!
//! Why one rule: three hand-rolled copies drifted (one capped the exponent at 6, one at 20, one
//! doubled a `Duration` in place), and a reader tuning retries had three places to look.

use std::time::Duration;

/// `initial · 2^attempt`, never above `max`, then scaled by a uniform factor in
/// `[1 − jitter, 1 + jitter)` so that many writers failing together do not retry in step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// Fraction in `[0, 1)`; 0 means no jitter.
    pub jitter: f64,
}

impl Backoff {
    /// 100 ms doubling to 5 s, no jitter: the default for the writer loops and reconnects,
    /// where one process retries alone and a predictable delay reads better in logs.
    pub const DEFAULT: Backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(5),
        jitter: 0.0,
    };

    /// The delay before retry number `attempt` (0 = the first retry).
    pub fn delay(&self, attempt: u32) -> Duration {
        // 2^20 · anything sensible is already past any cap; clamping the shift keeps it defined.
        let factor = 1u32 << attempt.min(20);
        let base = self.initial.saturating_mul(factor).min(self.max);
        if self.jitter <= 0.0 {
            return base;
        }
        let j = self.jitter.min(0.99);
        base.mul_f64(rand::random_range(1.0 - j..1.0 + j))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_then_caps() {
        let b = Backoff::DEFAULT;
        let ms: Vec<u128> = (0..9).map(|a| b.delay(a).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn jitter_stays_in_its_band_and_varies() {
        let b = Backoff {
            initial: Duration::from_millis(1000),
            max: Duration::from_secs(60),
            jitter: 0.25,
        };
        let d: Vec<Duration> = (0..200).map(|_| b.delay(0)).collect();
        assert!(d
            .iter()
            .all(|d| *d >= Duration::from_millis(750) && *d < Duration::from_millis(1250)));
        assert!(d.iter().any(|x| *x != d[0]), "jitter never varied");
    }

    #[test]
    fn huge_initial_saturates_to_max() {
        let b = Backoff {
            initial: Duration::from_secs(u64::MAX / 4),
            max: Duration::from_secs(7),
            jitter: 0.0,
        };
        assert_eq!(b.delay(30), Duration::from_secs(7));
    }
}
