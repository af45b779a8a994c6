//! The life of one connection after `accept()`: its deadlines and its place in the listener's
//! connection table.
//!
//! Deadlines, all measured by the connection's own driver (`Tracker::verdict`):
//! - **head**: from accept to the first request's head, covering the PROXY header, the TLS
//!   handshake, the first byte and (h2) the preface. hyper-util's auto connection has no timer
//!   while it detects the protocol, and hyper's header timer starts at the first byte, so a peer
//!   that connects and sends nothing would otherwise be held until it hangs up (hyper #3454).
//! - **idle**: no request in flight for this long (HTTP/1.1 keep-alive, or an h2 connection whose
//!   peer only answers PINGs) → a graceful close (h2 GOAWAY), then a hard one.
//! - **age**: a connection older than this is closed gracefully, so long-lived h2 channels
//!   rebalance and a peer cannot keep one connection forever.
//!
//! The table (`Table`) sheds instead of queueing: at `server.max_connections` a new connection
//! asks the longest-idle one to close and takes its place, or is refused at once when every
//! connection is busy; a client address (the PROXY header's, behind an NLB) over
//! `server.max_connections_per_client` sheds its own idle connections the same way.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The deadlines of every connection of one listener (`[server]`).
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub head: Duration,
    pub idle: Duration,
    /// `None`: no age limit.
    pub max_age: Option<Duration>,
}

impl Default for Deadlines {
    fn default() -> Self {
        let s = crate::config::ServerConfig::default();
        Self::from_config(&s)
    }
}

impl Deadlines {
    pub fn from_config(s: &crate::config::ServerConfig) -> Self {
        Self {
            head: Duration::from_millis(s.request_head_timeout_ms),
            idle: Duration::from_millis(s.idle_timeout_ms),
            max_age: (s.max_connection_age_ms > 0)
                .then(|| Duration::from_millis(s.max_connection_age_ms)),
        }
    }
}

/// What the driver should do with its connection now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing due; look again at this instant.
    KeepUntil(Instant),
    /// No request head within the head deadline: drop the connection now.
    HeadTimeout,
    /// Idle too long: close gracefully.
    Idle,
    /// Older than the age limit: close gracefully.
    Aged,
}

/// One connection's activity, shared by its request service and its driver.
#[derive(Debug)]
pub struct Tracker {
    accepted: Instant,
    /// Requests whose handler is running.
    inflight: AtomicUsize,
    /// Requests started so far.
    started: AtomicU64,
    /// Milliseconds after `accepted` when the last request ended (0: none yet).
    last_done_ms: AtomicU64,
    /// Cancelled to ask the connection to close (shedding).
    pub shed: CancellationToken,
    /// Signalled when a request ends, so the driver moves its idle deadline.
    pub request_ended: tokio::sync::Notify,
    client: Mutex<Option<IpAddr>>,
}

impl Tracker {
    fn new() -> Self {
        Self {
            accepted: Instant::now(),
            inflight: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            last_done_ms: AtomicU64::new(0),
            shed: CancellationToken::new(),
            request_ended: tokio::sync::Notify::new(),
            client: Mutex::new(None),
        }
    }

    /// Marks a request as running until the guard drops.
    pub fn request(self: &Arc<Self>) -> RequestGuard {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        self.started.fetch_add(1, Ordering::AcqRel);
        RequestGuard(self.clone())
    }

    /// Whether any request has started on this connection.
    pub fn has_requests(&self) -> bool {
        self.started.load(Ordering::Acquire) > 0
    }

    fn idle_since(&self) -> Option<Instant> {
        if self.inflight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(self.accepted + Duration::from_millis(self.last_done_ms.load(Ordering::Acquire)))
    }

    pub fn verdict(&self, d: &Deadlines, now: Instant) -> Verdict {
        if let Some(age) = d.max_age {
            if now >= self.accepted + age {
                return Verdict::Aged;
            }
        }
        let age_due = d.max_age.map(|a| self.accepted + a);
        let due = if self.started.load(Ordering::Acquire) == 0 {
            let due = self.accepted + d.head;
            if now >= due {
                return Verdict::HeadTimeout;
            }
            Some(due)
        } else {
            match self.idle_since() {
                Some(since) if now >= since + d.idle => return Verdict::Idle,
                Some(since) => Some(since + d.idle),
                // A request is running: look again after one idle period.
                None => Some(now + d.idle),
            }
        };
        let next = match (due, age_due) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(now + d.idle),
        };
        Verdict::KeepUntil(next)
    }
}

pub struct RequestGuard(Arc<Tracker>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let t = &self.0;
        let ms = t.accepted.elapsed().as_millis().max(1) as u64;
        t.last_done_ms.store(ms, Ordering::Release);
        t.inflight.fetch_sub(1, Ordering::AcqRel);
        t.request_ended.notify_one();
    }
}

/// Why a connection was not admitted to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `server.max_connections` open and none of them idle.
    Full,
    /// `server.max_connections_per_client` open from this client and none of them idle.
    ClientFull,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Full => "max_connections",
            Refusal::ClientFull => "max_connections_per_client",
        }
    }
}

/// The open connections of one listener.
#[derive(Debug)]
pub struct Table {
    /// The listener's name, for `tracegate_connections_open`.
    listener: &'static str,
    max: usize,
    per_client: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    conns: HashMap<u64, Arc<Tracker>>,
    by_client: HashMap<IpAddr, usize>,
    /// Connections asked to close that are still open: counted, not found by a scan of
    /// `conns` on every accept (4 % of the async worker's CPU at 1 700 accepts/s and 1 500
    /// open connections).
    shedding: usize,
}

/// A connection's place in the table; leaving it frees the place.
pub struct Seat {
    id: u64,
    table: Arc<Table>,
    pub tracker: Arc<Tracker>,
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut inner = self.table.lock();
        inner.conns.remove(&self.id);
        if self.tracker.shed.is_cancelled() {
            inner.shedding = inner.shedding.saturating_sub(1);
        }
        self.table.report(&inner);
        let client = *self
            .tracker
            .client
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(ip) = client {
            if let Some(n) = inner.by_client.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    inner.by_client.remove(&ip);
                }
            }
        }
    }
}

impl Table {
    /// `per_client` 0: no per-client limit.
    pub fn new(listener: &'static str, max: usize, per_client: usize) -> Arc<Self> {
        Arc::new(Self {
            listener,
            max: max.max(1),
            per_client,
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `tracegate_connections_open`, kept current as seats are taken and left.
    fn report(&self, inner: &Inner) {
        metrics::gauge!(crate::metrics::CONNECTIONS_OPEN, "listener" => self.listener)
            .set(inner.conns.len() as f64);
    }

    /// Asks `t` to close. Only the table sheds (under its lock, never twice: `longest_idle`
    /// skips connections already shedding), so `shedding` counts exactly the open ones asked.
    fn shed(inner: &mut Inner, t: &Tracker) {
        t.shed.cancel();
        inner.shedding += 1;
    }

    /// The longest-idle connection (optionally of one client) that is not already shedding.
    fn longest_idle(inner: &Inner, client: Option<IpAddr>) -> Option<Arc<Tracker>> {
        inner
            .conns
            .values()
            .filter(|t| !t.shed.is_cancelled())
            .filter(|t| {
                client
                    .is_none_or(|c| *t.client.lock().unwrap_or_else(|p| p.into_inner()) == Some(c))
            })
            .filter_map(|t| t.idle_since().map(|s| (s, t)))
            .min_by_key(|(s, _)| *s)
            .map(|(_, t)| t.clone())
    }

    /// A seat for a new connection: at the limit the longest-idle connection is asked to
    /// close and the new one is admitted (the table is over its size only until that one has
    /// gone); if none is idle the new one is refused.
    pub fn admit(self: &Arc<Self>) -> Result<Seat, Refusal> {
        let mut inner = self.lock();
        if inner.conns.len() - inner.shedding >= self.max {
            match Self::longest_idle(&inner, None) {
                Some(t) => {
                    Self::shed(&mut inner, &t);
                    metrics::counter!(crate::metrics::CONNECTIONS_SHED, "reason" => "max_connections")
                        .increment(1);
                }
                None => return Err(Refusal::Full),
            }
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let tracker = Arc::new(Tracker::new());
        inner.conns.insert(id, tracker.clone());
        self.report(&inner);
        Ok(Seat {
            id,
            table: self.clone(),
            tracker,
        })
    }

    /// Records the connection's client address (known after the PROXY header) and applies the
    /// per-client limit the same way.
    pub fn set_client(&self, seat: &Seat, ip: IpAddr) -> Result<(), Refusal> {
        let mut inner = self.lock();
        if self.per_client > 0 {
            let open = inner.by_client.get(&ip).copied().unwrap_or(0);
            if open >= self.per_client {
                match Self::longest_idle(&inner, Some(ip)) {
                    Some(t) => {
                        Self::shed(&mut inner, &t);
                        metrics::counter!(crate::metrics::CONNECTIONS_SHED, "reason" => "max_connections_per_client")
                            .increment(1);
                    }
                    None => return Err(Refusal::ClientFull),
                }
            }
        }
        *seat
            .tracker
            .client
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(ip);
        *inner.by_client.entry(ip).or_default() += 1;
        Ok(())
    }

    pub fn open(&self) -> usize {
        self.lock().conns.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d() -> Deadlines {
        Deadlines {
            head: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            max_age: Some(Duration::from_secs(600)),
        }
    }

    // Verdicts take `now`, so the deadlines are checked at chosen instants; only the end of a
    // request is stamped with the real clock (short real sleeps order the idle times).
    #[test]
    fn verdicts_follow_the_deadlines() {
        let t = Arc::new(Tracker::new());
        let now = t.accepted;
        let s = Duration::from_secs;
        assert_eq!(t.verdict(&d(), now), Verdict::KeepUntil(now + s(10)));
        assert_eq!(t.verdict(&d(), now + s(10)), Verdict::HeadTimeout);
        let g = t.request();
        // A running request is never idle.
        assert!(matches!(
            t.verdict(&d(), now + s(100)),
            Verdict::KeepUntil(_)
        ));
        drop(g);
        let done = t.idle_since().unwrap();
        assert!(done >= now);
        assert_eq!(t.verdict(&d(), done), Verdict::KeepUntil(done + s(60)));
        assert_eq!(t.verdict(&d(), done + s(60)), Verdict::Idle);
        assert_eq!(t.verdict(&d(), now + s(600)), Verdict::Aged);
    }

    #[test]
    fn a_full_table_sheds_the_longest_idle_or_refuses() {
        let table = Table::new("test", 2, 0);
        let a = table.admit().unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let b = table.admit().unwrap();
        let busy_b = b.tracker.request();
        // Full: `a` is idle (never sent anything) and is asked to go.
        let c = table.admit().unwrap();
        assert!(a.tracker.shed.is_cancelled() && !b.tracker.shed.is_cancelled());
        let busy_c = c.tracker.request();
        // `a` is still shedding; `b` and `c` are busy: refused.
        assert_eq!(table.admit().err(), Some(Refusal::Full));
        drop(a);
        assert_eq!(table.admit().err(), Some(Refusal::Full));
        drop((busy_b, busy_c));
        assert!(table.admit().is_ok());
    }

    #[test]
    fn per_client_limit_sheds_that_clients_idle_connections_only() {
        let table = Table::new("test", 100, 1);
        let ip1: IpAddr = [127, 0, 0, 1].into();
        let ip2: IpAddr = [127, 0, 0, 2].into();
        let a = table.admit().unwrap();
        table.set_client(&a, ip1).unwrap();
        let b = table.admit().unwrap();
        table.set_client(&b, ip2).unwrap();
        let c = table.admit().unwrap();
        table.set_client(&c, ip1).unwrap();
        assert!(a.tracker.shed.is_cancelled() && !b.tracker.shed.is_cancelled());
        let _busy = c.tracker.request();
        drop(a);
        let d = table.admit().unwrap();
        assert_eq!(table.set_client(&d, ip1), Err(Refusal::ClientFull));
        assert_eq!(table.open(), 3);
    }
}
