//! Admission control: a global bound on bytes of requests in flight (compressed while reading,
//! decompressed after), and each project's share of it. Bytes are charged as they are read, in
//! steps (`ingest::body`), never as a client declares them, so a slow or lying client holds only
//! what it has sent. Over the global bound a request is refused at once with a retryable error
//! (HTTP 503 + Retry-After / gRPC UNAVAILABLE + RetryInfo: the gateway's capacity); over its
//! project's share with 429 + Retry-After / RESOURCE_EXHAUSTED + RetryInfo (the project's own
//! quota), so one noisy project cannot take the budget other projects need.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;
use crate::metrics as m;

#[derive(Clone, Debug)]
pub struct Admission {
    sem: Arc<Semaphore>,
    limit: usize,
    /// Bytes in flight per project (entries removed at 0).
    projects: Arc<Mutex<HashMap<Arc<str>, usize>>>,
    project_limit: usize,
}

/// Bytes held by one request; released on drop.
#[derive(Debug)]
pub struct BytesPermit {
    _permit: Option<OwnedSemaphorePermit>,
    admission: Admission,
    /// The project charged, if any (only unit tests and benches reserve without one).
    project: Option<Arc<str>>,
}

impl Drop for BytesPermit {
    fn drop(&mut self) {
        let held = self.bytes();
        self.admission.uncharge(self.project.as_ref(), held);
        self._permit.take();
        self.admission.report();
    }
}

impl BytesPermit {
    pub fn bytes(&self) -> usize {
        self._permit.as_ref().map(|p| p.num_permits()).unwrap_or(0)
    }

    /// Grows this reservation to `total` bytes (no-op if it already holds that much), so one
    /// request's bytes are never counted twice: a request alone always fits the limit.
    pub fn grow_to(&mut self, total: usize) -> Result<(), ApiError> {
        let have = self.bytes();
        if total <= have {
            return Ok(());
        }
        let mut extra = self.admission.reserve(self.project.clone(), total - have)?;
        // The extra bytes now belong to this permit (charged to the same project).
        extra.project = None;
        match (self._permit.as_mut(), extra._permit.take()) {
            (Some(mine), Some(more)) => mine.merge(more),
            (None, more) => self._permit = more,
            (_, None) => {}
        }
        self.admission.report();
        Ok(())
    }

    /// Shrinks this reservation to `total` bytes (at least 1; no-op if it holds less), giving
    /// the rest back: a request whose decompressed bytes are gone holds only what it keeps.
    pub fn shrink_to(&mut self, total: usize) {
        let have = self.bytes();
        let keep = total.max(1);
        if keep >= have {
            return;
        }
        if let Some(p) = self._permit.as_mut() {
            drop(p.split(have - keep));
        }
        self.admission.uncharge(self.project.as_ref(), have - keep);
        self.admission.report();
    }
}

impl Admission {
    /// `project_limit` is one project's share of `limit`; a project may always hold at least
    /// `max_request` (one request alone is never refused for its project's share).
    pub fn new(limit: usize) -> Self {
        Self::with_project_limit(limit, limit)
    }

    pub fn with_project_limit(limit: usize, project_limit: usize) -> Self {
        metrics::gauge!(m::INFLIGHT_BYTES_LIMIT).set(limit as f64);
        Self {
            sem: Arc::new(Semaphore::new(limit)),
            limit,
            projects: Arc::new(Mutex::new(HashMap::new())),
            project_limit: project_limit.clamp(1, limit),
        }
    }

    fn report(&self) {
        let used = self.limit.saturating_sub(self.sem.available_permits());
        metrics::gauge!(m::INFLIGHT_BYTES).set(used as f64);
    }

    pub fn in_flight(&self) -> usize {
        self.limit.saturating_sub(self.sem.available_permits())
    }

    /// Bytes `project` holds now.
    pub fn project_in_flight(&self, project: &str) -> usize {
        let map = self.projects.lock().unwrap_or_else(|p| p.into_inner());
        map.get(project).copied().unwrap_or(0)
    }

    /// Whether `project` holds more than a quarter of its share: its CPU work then runs as
    /// bulk (`tracegate_pipeline::cpu`), behind the work of projects that send less.
    pub fn is_busy(&self, project: &str) -> bool {
        self.project_in_flight(project) > self.project_limit / 4
    }

    fn uncharge(&self, project: Option<&Arc<str>>, bytes: usize) {
        let Some(project) = project else { return };
        let mut map = self.projects.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(used) = map.get_mut(project) {
            *used = used.saturating_sub(bytes);
            if *used == 0 {
                map.remove(project);
            }
        }
    }

    /// Reserves `bytes` now or refuses (no project: the global bound only).
    pub fn try_reserve(&self, bytes: usize) -> Result<BytesPermit, ApiError> {
        self.reserve(None, bytes)
    }

    /// Reserves `bytes` for `project` now, or refuses: 429 over the project's share, 503 over
    /// the global bound.
    pub fn try_reserve_for(&self, project: &str, bytes: usize) -> Result<BytesPermit, ApiError> {
        self.reserve(Some(Arc::from(project)), bytes)
    }

    fn reserve(&self, project: Option<Arc<str>>, bytes: usize) -> Result<BytesPermit, ApiError> {
        let n = u32::try_from(bytes.max(1)).map_err(|_| ApiError::too_large(u32::MAX as usize))?;
        // The project's share is checked and charged under its lock, then the global bound;
        // a global refusal gives the project's charge back. A share as large as the whole
        // budget adds nothing: refusals are then the gateway's capacity (503), not a quota.
        let project = project.filter(|_| self.project_limit < self.limit);
        if let Some(p) = &project {
            let mut map = self.projects.lock().unwrap_or_else(|p| p.into_inner());
            let used = map.get(p).copied().unwrap_or(0);
            if used + n as usize > self.project_limit {
                metrics::counter!(m::ADMISSION_REFUSED, "limit" => "project").increment(1);
                return Err(ApiError::rate_limited(
                    format!(
                        "project over its share of in-flight bytes ({} bytes); retry later",
                        self.project_limit
                    ),
                    Duration::from_secs(1),
                ));
            }
            *map.entry(p.clone()).or_default() += n as usize;
        }
        let permit = match self.sem.clone().try_acquire_many_owned(n) {
            Ok(permit) => permit,
            Err(_) => {
                self.uncharge(project.as_ref(), n as usize);
                metrics::counter!(m::ADMISSION_REFUSED, "limit" => "global").increment(1);
                return Err(ApiError::unavailable(format!(
                    "gateway over its in-flight limit ({} bytes); retry later",
                    self.limit
                )));
            }
        };
        self.report();
        Ok(BytesPermit {
            _permit: Some(permit),
            admission: self.clone(),
            project,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_over_limit_and_releases_on_drop() {
        let a = Admission::new(100);
        let p = a.try_reserve(60).unwrap();
        assert_eq!(a.try_reserve(60).unwrap_err().http_status(), 503);
        assert_eq!(a.in_flight(), 60);
        drop(p);
        assert_eq!(a.in_flight(), 0);
        let mut p = a.try_reserve(60).unwrap();
        p.grow_to(100).unwrap();
        assert_eq!(a.in_flight(), 100);
        p.grow_to(50).unwrap();
        assert_eq!(p.bytes(), 100);
        assert!(a.try_reserve(1).is_err());
        p.shrink_to(30);
        assert_eq!((p.bytes(), a.in_flight()), (30, 30));
        p.shrink_to(40);
        assert_eq!(p.bytes(), 30);
        p.shrink_to(0);
        assert_eq!(p.bytes(), 1);
        p.grow_to(100).unwrap();
        assert!(a.try_reserve(1).is_err());
        drop(p);
        assert_eq!(a.in_flight(), 0);
        assert!(a.try_reserve(100).is_ok());
    }

    #[test]
    fn a_share_as_large_as_the_budget_refuses_as_capacity() {
        let a = Admission::with_project_limit(100, 100);
        let _p = a.try_reserve_for("only", 80).unwrap();
        assert_eq!(
            a.try_reserve_for("only", 30).unwrap_err().http_status(),
            503
        );
    }

    #[test]
    fn a_project_is_held_to_its_share_and_gives_it_back() {
        let a = Admission::with_project_limit(100, 40);
        let mut p1 = a.try_reserve_for("noisy", 30).unwrap();
        // Over its share: 429 with Retry-After, and nothing else is charged.
        let e = a.try_reserve_for("noisy", 20).unwrap_err();
        assert_eq!(e.http_status(), 429);
        assert!(e.retry_after.is_some());
        assert_eq!((a.in_flight(), a.project_in_flight("noisy")), (30, 30));
        assert_eq!(p1.grow_to(50).unwrap_err().http_status(), 429);
        p1.grow_to(40).unwrap();
        // Another project still has the rest of the budget.
        let q = a.try_reserve_for("quiet", 40).unwrap();
        let r = a.try_reserve_for("third", 20).unwrap();
        // The global bound: 503, and the refused project is not left charged.
        assert_eq!(
            a.try_reserve_for("fourth", 1).unwrap_err().http_status(),
            503
        );
        assert_eq!(a.project_in_flight("fourth"), 0);
        p1.shrink_to(10);
        assert_eq!(a.project_in_flight("noisy"), 10);
        drop((p1, q, r));
        assert_eq!((a.in_flight(), a.project_in_flight("noisy")), (0, 0));
    }
}
