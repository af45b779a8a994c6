//! Accept loop with graceful shutdown: on shutdown stop accepting at once, let in-flight
//! requests finish (bounded by a timeout), then return. One implementation for every listener.
//! PROXY protocol and TLS run per connection in its own task (`conn::ConnSetup::establish`), so
//! a slow client cannot stall `accept()`; a connection still in set-up at shutdown is dropped.
//! Each connection is driven under its deadlines and holds a seat in the listener's connection
//! table (`lifecycle.rs`: head, idle and age deadlines; shedding at the connection limits).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::conn::{ConnInfo, ConnSetup};
use super::lifecycle::{Seat, Table, Verdict};
use crate::metrics as m;

pub type Body = BoxBody<Bytes, Infallible>;

pub fn full(b: impl Into<Bytes>) -> Body {
    use http_body_util::BodyExt;
    http_body_util::Full::new(b.into()).boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

/// A request handler: gets the request and the client's address (from the PROXY header when
/// the listener uses one, else the TCP peer). The request's extensions hold the connection's
/// `Arc<ConnInfo>` (VPC endpoint id, TLS); `conn::origin()` turns them into an auth `Origin`.
pub trait Handler: Send + Sync + 'static {
    fn call(
        self: Arc<Self>,
        req: http::Request<Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = http::Response<Body>> + Send;
}

/// Plain-text HTTP, no PROXY protocol (the admin listener).
pub async fn serve<H: Handler>(
    name: &'static str,
    listener: TcpListener,
    handler: Arc<H>,
    shutdown: CancellationToken,
    drain_timeout: Duration,
) {
    serve_with(
        name,
        listener,
        handler,
        shutdown,
        drain_timeout,
        ConnSetup::plain(),
    )
    .await
}

/// Largest HTTP/1.1 read buffer of one connection.
pub const HTTP1_MAX_BUF: usize = 64 * 1024;

pub async fn serve_with<H: Handler>(
    name: &'static str,
    listener: TcpListener,
    handler: Arc<H>,
    shutdown: CancellationToken,
    drain_timeout: Duration,
    setup: ConnSetup,
) {
    let setup = Arc::new(setup);
    let table = Table::new(
        name,
        setup.max_connections,
        setup.max_connections_per_client,
    );
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(setup.deadlines.head)
        // hyper's read buffer grows to ~400 KiB per connection on large bodies and keeps that
        // capacity while the connection lives; body bytes are counted by admission anyway, so a
        // small buffer only costs a few more reads per request and keeps idle memory per
        // connection small (docs/operations.md, Memory).
        .max_buf_size(HTTP1_MAX_BUF);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        // PINGs find dead peers; a live peer that only answers them is closed by the idle
        // deadline (lifecycle.rs), which PINGs do not reset.
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .max_concurrent_streams(1024);
    let builder = Arc::new(builder);
    let tasks = TaskTracker::new();
    // Cancelled when the drain timeout is over: every remaining connection is dropped.
    let kill = CancellationToken::new();
    loop {
        // Always accept: at the limit the table sheds an idle connection or refuses at once,
        // so a client is answered instead of waiting in the kernel's backlog.
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let seat = match table.admit() {
            Ok(s) => s,
            Err(r) => {
                super::conn::refused(
                    name,
                    r.reason(),
                    &ConnInfo::direct(peer),
                    "no connection seat",
                );
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            name,
            handler: handler.clone(),
            setup: setup.clone(),
            builder: builder.clone(),
            table: table.clone(),
            stop: shutdown.clone(),
            kill: kill.clone(),
        };
        tasks.spawn(conn.run(stream, peer, seat));
    }
    drop(listener);
    tasks.close();
    tracing::info!(listener = name, "stopped accepting; draining connections");
    if tokio::time::timeout(drain_timeout, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = name,
            "drain timeout; closing remaining connections"
        );
        kill.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), tasks.wait()).await;
    }
}

/// Grace for a connection asked to close (idle, aged or shed) to finish before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// One accepted connection: set-up (PROXY, TLS), then HTTP under its deadlines.
struct Conn<H> {
    name: &'static str,
    handler: Arc<H>,
    setup: Arc<ConnSetup>,
    builder: Arc<Builder<TokioExecutor>>,
    table: Arc<Table>,
    /// The listener is shutting down: close gracefully.
    stop: CancellationToken,
    /// The drain is over: drop now.
    kill: CancellationToken,
}

impl<H: Handler> Conn<H> {
    /// The connection's set-up (PROXY header, TLS handshake) within the head deadline, then its
    /// seat under the per-client limit; `None` when it was refused or asked to go meanwhile.
    async fn establish(
        &self,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        seat: &Seat,
    ) -> Option<(super::conn::Io, ConnInfo)> {
        let name = self.name;
        // The head deadline covers set-up too: PROXY header and TLS handshake count from accept.
        let head = self.setup.deadlines.head;
        let established = tokio::select! {
            r = tokio::time::timeout(head, self.setup.establish(name, stream, peer)) => r,
            _ = self.stop.cancelled() => return None,
            _ = seat.tracker.shed.cancelled() => return None,
        };
        let (io, info) = match established {
            Ok(Ok(x)) => x,
            Ok(Err(())) => return None,
            Err(_) => {
                let info = ConnInfo::direct(peer);
                super::conn::refused(name, "head_timeout", &info, "no request head in time");
                return None;
            }
        };
        if let Err(r) = self.table.set_client(seat, info.client.ip()) {
            super::conn::refused(
                name,
                r.reason(),
                &info,
                "no connection seat for this client",
            );
            return None;
        }
        Some((io, info))
    }

    async fn run(self, stream: tokio::net::TcpStream, peer: SocketAddr, seat: Seat) {
        let name = self.name;
        let deadlines = self.setup.deadlines;
        let tracker = seat.tracker.clone();
        let Some((io, info)) = self.establish(stream, peer, &seat).await else {
            return;
        };
        let span = tracing::info_span!(
            "conn",
            listener = name,
            client = %info.client,
            vpce = info.vpc_endpoint_id.as_deref().unwrap_or("-"),
            tls = info.tls,
        );
        tracing::debug!(parent: &span, peer = %info.peer, "connection established");
        let info: Arc<ConnInfo> = Arc::new(info);
        let h = self.handler.clone();
        let svc_tracker = tracker.clone();
        let svc_info = info.clone();
        let svc = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
            let h = h.clone();
            let client = svc_info.client;
            req.extensions_mut().insert(svc_info.clone());
            let span = span.clone();
            let guard = svc_tracker.request();
            async move {
                let resp = h.call(req, client).instrument(span).await;
                drop(guard);
                Ok::<_, Infallible>(resp)
            }
        });
        // Held briefly after hyper shuts it down, so a refused client reads its answer (linger.rs).
        let io = super::linger::Lingering::new(io);
        let conn = self.builder.serve_connection(TokioIo::new(io), svc);
        tokio::pin!(conn);
        // Set once the connection was asked to close: after CLOSE_GRACE (or the drain, at
        // shutdown) it is dropped.
        let mut closing_until: Option<tokio::time::Instant> = None;
        loop {
            let now = tokio::time::Instant::now();
            let wake = match (closing_until, tracker.verdict(&deadlines, now)) {
                (Some(until), _) => until,
                (None, Verdict::KeepUntil(at)) => at,
                (None, Verdict::HeadTimeout) => {
                    super::conn::refused(name, "head_timeout", &info, "no request head in time");
                    return;
                }
                (None, v @ (Verdict::Idle | Verdict::Aged)) => {
                    let reason = if v == Verdict::Idle {
                        "idle"
                    } else {
                        "max_age"
                    };
                    metrics::counter!(m::CONNECTIONS_CLOSED, "listener" => name, "reason" => reason)
                        .increment(1);
                    conn.as_mut().graceful_shutdown();
                    closing_until = Some(now + CLOSE_GRACE);
                    continue;
                }
            };
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(listener = name, error = %e, "connection ended with error");
                    }
                    return;
                }
                _ = tokio::time::sleep_until(wake) => {
                    if closing_until.is_some_and(|u| tokio::time::Instant::now() >= u) {
                        return;
                    }
                }
                // A request ended: the idle deadline moves (verdict again).
                _ = tracker.request_ended.notified() => {}
                _ = tracker.shed.cancelled(), if closing_until.is_none() => {
                    if !tracker.has_requests() {
                        // Nothing was ever asked on it: nothing to finish gracefully.
                        return;
                    }
                    conn.as_mut().graceful_shutdown();
                    closing_until = Some(tokio::time::Instant::now() + CLOSE_GRACE);
                }
                _ = self.stop.cancelled(), if closing_until.is_none() => {
                    conn.as_mut().graceful_shutdown();
                    // At shutdown the listener's drain timeout bounds the wait (`kill`).
                    closing_until = Some(tokio::time::Instant::now() + Duration::from_secs(86_400));
                }
                _ = self.kill.cancelled() => return,
            }
        }
    }
}
