//! Several ClickHouse endpoints: the replicas of one cluster (`clickhouse.url = "https://a,
//! https://b"`), or the nodes behind which a `Distributed` table sits.
//!
//! Inserts go to one endpoint at a time and stay with it while it works (one replica sees a
//! steady stream, as ClickHouse prefers). A transient failure marks it down and the same
//! insert, with the same deduplication token, goes at once to the next endpoint that is up:
//! replicated tables share their deduplication log through Keeper, so a block the failed
//! replica did take before the connection broke is dropped by the next one, and nothing is
//! written twice. Only when every endpoint is down does the sink wait (its backoff) between
//! attempts, going round them in turn. A check (`SELECT 1`, every `CHECK_EVERY`) brings a down
//! endpoint back; the stream does not move back to it until the current one fails.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use crate::metrics as m;

/// How often a down endpoint is checked.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// One check's time limit.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

struct Endpoint {
    /// The URL's host and port, for logs (never the user or the password).
    name: String,
    client: clickhouse::Client,
    up: AtomicBool,
}

pub struct Endpoints {
    list: Vec<Endpoint>,
    current: AtomicUsize,
}

/// `scheme://host:port` of a URL, for logs.
fn host_of(url: &str) -> String {
    match http::Uri::try_from(url) {
        Ok(u) => {
            let authority = u.authority().map(|a| a.as_str()).unwrap_or("?");
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{}://{host}", u.scheme_str().unwrap_or("http"))
        }
        Err(_) => "?".into(),
    }
}

impl Endpoints {
    /// One client per URL, made by `client` (the same settings for each).
    pub fn new(
        urls: &[&str],
        client: impl Fn(&str) -> Result<clickhouse::Client>,
    ) -> Result<Endpoints> {
        let list = urls
            .iter()
            .map(|u| {
                Ok(Endpoint {
                    name: host_of(u),
                    client: client(u)?,
                    up: AtomicBool::new(true),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let e = Endpoints {
            list,
            current: AtomicUsize::new(0),
        };
        for i in 0..e.list.len() {
            e.report(i);
        }
        Ok(e)
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    fn report(&self, i: usize) {
        let up = self.list[i].up.load(Ordering::Relaxed);
        metrics::gauge!(m::CLICKHOUSE_ENDPOINT_UP, "endpoint" => i.to_string()).set(if up {
            1.0
        } else {
            0.0
        });
    }

    /// Where the next attempt goes: the current endpoint if it is up, else the next one up (in
    /// the configured order, wrapping), else the current one (all down: keep trying).
    pub fn pick(&self) -> (usize, &clickhouse::Client) {
        let n = self.list.len();
        let cur = self.current.load(Ordering::Acquire) % n;
        let i = (0..n)
            .map(|k| (cur + k) % n)
            .find(|&i| self.list[i].up.load(Ordering::Acquire))
            .unwrap_or(cur);
        if i != cur {
            self.current.store(i, Ordering::Release);
        }
        (i, &self.list[i].client)
    }

    /// A transient failure at endpoint `i`: it is down until a check says otherwise, and the
    /// stream moves past it. True when another endpoint is up to take the retry at once.
    pub fn failed(&self, i: usize, error: &dyn std::fmt::Display) -> bool {
        let n = self.list.len();
        if self.list[i].up.swap(false, Ordering::AcqRel) {
            self.report(i);
            if n > 1 {
                tracing::warn!(endpoint = %self.list[i].name, %error, "ClickHouse endpoint failed; moving to the next");
            }
        }
        let next = (i + 1) % n;
        let moved = self
            .current
            .compare_exchange(i, next, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        let another_up = (0..n).any(|k| k != i && self.list[k].up.load(Ordering::Acquire));
        if moved && n > 1 {
            metrics::counter!(m::CLICKHOUSE_FAILOVERS).increment(1);
        }
        another_up
    }

    /// Checks the down endpoints every `CHECK_EVERY` until `stop`, marking each up again when
    /// it answers.
    pub fn spawn_checks(self: Arc<Self>, stop: CancellationToken) {
        if self.list.len() < 2 {
            return;
        }
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(CHECK_EVERY) => {}
                    _ = stop.cancelled() => return,
                }
                for (i, e) in self.list.iter().enumerate() {
                    if e.up.load(Ordering::Acquire) {
                        continue;
                    }
                    let probe = e.client.query("SELECT 1").execute();
                    if let Ok(Ok(())) = tokio::time::timeout(CHECK_TIMEOUT, probe).await {
                        e.up.store(true, Ordering::Release);
                        self.report(i);
                        tracing::info!(endpoint = %e.name, "ClickHouse endpoint is up again");
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Endpoints {
        Endpoints::new(&["http://a:8123", "http://b:8123", "http://c:8123"], |u| {
            Ok(clickhouse::Client::default().with_url(u))
        })
        .unwrap()
    }

    #[test]
    fn sticks_fails_over_in_order_and_goes_round_when_all_are_down() {
        let e = three();
        assert_eq!(e.pick().0, 0);
        assert_eq!(e.pick().0, 0, "stays while it works");
        assert!(e.failed(0, &"refused"), "b and c are up");
        assert_eq!(e.pick().0, 1);
        // A late failure report for a itself (another insert) does not move the stream off b.
        assert!(e.failed(0, &"refused"));
        assert_eq!(e.pick().0, 1);
        assert!(e.failed(1, &"timeout"));
        assert_eq!(e.pick().0, 2);
        assert!(!e.failed(2, &"timeout"), "none left up");
        // All down: round robin from where it stopped.
        assert_eq!(e.pick().0, 0);
        e.failed(0, &"x");
        assert_eq!(e.pick().0, 1);
        // b comes back (a check): it takes the stream when the current one fails.
        e.list[1].up.store(true, Ordering::Release);
        assert_eq!(e.pick().0, 1);
    }

    #[test]
    fn names_hide_credentials() {
        assert_eq!(
            host_of("https://u:secret@h.example:8443/x"),
            "https://h.example:8443"
        );
        assert_eq!(host_of("http://10.0.0.1:8123"), "http://10.0.0.1:8123");
    }
}
