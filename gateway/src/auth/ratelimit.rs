//! Per-project quotas on spans/s and decompressed bytes/s: one GCRA token bucket (`governor`)
//! per project and quota, so one noisy project exhausts only its own bucket. Over quota → HTTP
//! 429 + Retry-After / gRPC RESOURCE_EXHAUSTED + RetryInfo.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::error::ApiError;

/// A project's quota as carried by its credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ProjectQuota {
    pub spans_per_sec: Option<u64>,
    pub bytes_per_sec: Option<u64>,
    /// Bucket size in milliseconds of quota (default 1000).
    pub burst_ms: Option<u64>,
}

impl ProjectQuota {
    pub fn is_unlimited(&self) -> bool {
        self.spans_per_sec.is_none() && self.bytes_per_sec.is_none()
    }
}

struct Buckets {
    spans: Option<DefaultDirectRateLimiter>,
    bytes: Option<DefaultDirectRateLimiter>,
}

pub struct RateLimits {
    // Keyed by project and quota: keys of one project with the same quota share a bucket.
    buckets: moka::sync::Cache<(String, ProjectQuota), Arc<Buckets>>,
    clock: DefaultClock,
}

fn nz(v: u64) -> NonZeroU32 {
    NonZeroU32::new(v.clamp(1, u32::MAX as u64) as u32).unwrap_or(NonZeroU32::MIN)
}

fn bucket(rate: Option<u64>, burst_ms: u64) -> Option<DefaultDirectRateLimiter> {
    let rate = rate?;
    let burst = (rate.saturating_mul(burst_ms) / 1000).max(1);
    Some(RateLimiter::direct(
        Quota::per_second(nz(rate)).allow_burst(nz(burst)),
    ))
}

impl RateLimits {
    pub fn new(max_projects: u64) -> Self {
        Self {
            buckets: moka::sync::Cache::builder()
                .max_capacity(max_projects)
                // An idle project's bucket is full again after a second anyway.
                .time_to_idle(Duration::from_secs(600))
                .build(),
            clock: DefaultClock::default(),
        }
    }

    fn take(
        &self,
        b: &DefaultDirectRateLimiter,
        n: u64,
        what: &str,
        rate: u64,
    ) -> Result<(), ApiError> {
        let want = nz(n);
        let res = match b.check_n(want) {
            Ok(r) => r,
            // More than the whole bucket in one request: admit it when the bucket is full, so an
            // oversized request is slowed down rather than refused forever.
            Err(insufficient) => b.check_n(nz(u64::from(insufficient.0))).unwrap_or(Ok(())),
        };
        res.map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            ApiError::rate_limited(
                format!("project over its quota of {rate} {what}/s; retry later"),
                Duration::from_secs(wait.as_secs_f64().ceil() as u64),
            )
        })
    }

    /// Takes `spans` and `bytes` from the project's buckets, or refuses with 429.
    pub fn check(
        &self,
        project: &str,
        quota: ProjectQuota,
        spans: u64,
        bytes: u64,
    ) -> Result<(), ApiError> {
        self.check_items(project, "spans", quota, spans, bytes)
    }

    /// The same for one signal's `items` ("spans", "log records"): each signal has buckets of
    /// its own, sized by the key's quota, so a project's logs never use up its traces' share.
    pub fn check_items(
        &self,
        project: &str,
        items_name: &str,
        quota: ProjectQuota,
        spans: u64,
        bytes: u64,
    ) -> Result<(), ApiError> {
        if quota.is_unlimited() {
            return Ok(());
        }
        let burst_ms = quota.burst_ms.unwrap_or(1000).max(1);
        let key = match items_name {
            "spans" => project.to_string(),
            other => format!("{project}\u{0}{other}"),
        };
        let b = self.buckets.get_with((key, quota), || {
            Arc::new(Buckets {
                spans: bucket(quota.spans_per_sec, burst_ms),
                bytes: bucket(quota.bytes_per_sec, burst_ms),
            })
        });
        if let (Some(s), Some(rate)) = (&b.spans, quota.spans_per_sec) {
            self.take(s, spans, items_name, rate)?;
        }
        if let (Some(s), Some(rate)) = (&b.bytes, quota.bytes_per_sec) {
            self.take(s, bytes, "bytes", rate)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noisy_project_does_not_starve_quiet_one() {
        let r = RateLimits::new(100);
        let q = ProjectQuota {
            spans_per_sec: Some(1000),
            bytes_per_sec: None,
            burst_ms: Some(1000),
        };
        let mut ok = 0;
        for _ in 0..50 {
            if r.check("noisy", q, 100, 0).is_ok() {
                ok += 1;
            }
        }
        assert!((10..=11).contains(&ok), "accepted {ok}");
        let e = r.check("noisy", q, 100, 0).unwrap_err();
        assert_eq!(e.http_status(), 429);
        assert!(e.retry_after.is_some());
        assert!(r.check("quiet", q, 100, 0).is_ok());
        assert!(r
            .check("free", ProjectQuota::default(), 1_000_000, 0)
            .is_ok());
    }

    #[test]
    fn oversized_request_passes_when_bucket_full() {
        let r = RateLimits::new(10);
        let q = ProjectQuota {
            spans_per_sec: Some(10),
            bytes_per_sec: None,
            burst_ms: None,
        };
        assert!(r.check("p", q, 500, 0).is_ok());
        assert!(r.check("p", q, 500, 0).is_err());
    }
}
