//! Admission control: a global bound on bytes of requests in flight (compressed while reading,
//! decompressed after). Over the bound a request is refused at once with a retryable error
//! (HTTP 503 + Retry-After / gRPC UNAVAILABLE + RetryInfo) instead of queueing without bound.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;
use crate::metrics as m;

#[derive(Clone, Debug)]
pub struct Admission {
    sem: Arc<Semaphore>,
    limit: usize,
}

/// Bytes held by one request; released on drop.
#[derive(Debug)]
pub struct BytesPermit {
    _permit: Option<OwnedSemaphorePermit>,
    admission: Admission,
}

impl Drop for BytesPermit {
    fn drop(&mut self) {
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
        let mut extra = self.admission.try_reserve(total - have)?;
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
        self.admission.report();
    }
}

impl Admission {
    pub fn new(limit: usize) -> Self {
        metrics::gauge!(m::INFLIGHT_BYTES_LIMIT).set(limit as f64);
        Self {
            sem: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    fn report(&self) {
        let used = self.limit.saturating_sub(self.sem.available_permits());
        metrics::gauge!(m::INFLIGHT_BYTES).set(used as f64);
    }

    pub fn in_flight(&self) -> usize {
        self.limit.saturating_sub(self.sem.available_permits())
    }

    /// Reserves `bytes` now or refuses.
    pub fn try_reserve(&self, bytes: usize) -> Result<BytesPermit, ApiError> {
        let n = u32::try_from(bytes.max(1)).map_err(|_| ApiError::too_large(u32::MAX as usize))?;
        let permit = self.sem.clone().try_acquire_many_owned(n).map_err(|_| {
            ApiError::unavailable(format!(
                "gateway over its in-flight limit ({} bytes); retry later",
                self.limit
            ))
        })?;
        self.report();
        Ok(BytesPermit {
            _permit: Some(permit),
            admission: self.clone(),
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
}
