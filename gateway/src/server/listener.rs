//! Accept loop with graceful shutdown: on shutdown stop accepting at once, let in-flight
//! requests finish (bounded by a timeout), then return. One implementation for every listener.
//! PROXY protocol and TLS run per connection in its own task (`conn::ConnSetup::establish`), so
//! a slow client cannot stall `accept()`; a connection still in set-up at shutdown is dropped.

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
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::conn::{ConnInfo, ConnSetup};

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
    let slots = Arc::new(tokio::sync::Semaphore::new(setup.max_connections));
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        // hyper's read buffer grows to ~400 KiB per connection on large bodies and keeps that
        // capacity while the connection lives; body bytes are counted by admission anyway, so a
        // small buffer only costs a few more reads per request and keeps idle memory per
        // connection small (docs/operations.md, Memory).
        .max_buf_size(HTTP1_MAX_BUF);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .max_concurrent_streams(1024);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    loop {
        // A slot first, then accept: at the limit new clients wait in the kernel's backlog.
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
            _ = shutdown.cancelled() => break,
        };
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
        let _ = stream.set_nodelay(true);
        let h = handler.clone();
        let setup = setup.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let (io, info) = tokio::select! {
                r = setup.establish(name, stream, peer) => match r {
                    Ok(x) => x,
                    Err(()) => return,
                },
                _ = stop.cancelled() => return,
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
            let svc = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
                let h = h.clone();
                let client = info.client;
                req.extensions_mut().insert(info.clone());
                let span = span.clone();
                async move { Ok::<_, Infallible>(h.call(req, client).instrument(span).await) }
            });
            let conn = builder.serve_connection(TokioIo::new(io), svc).into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(listener = name, error = %e, "connection ended with error");
            }
        });
    }
    drop(listener);
    tracing::info!(listener = name, "stopped accepting; draining connections");
    if tokio::time::timeout(drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = name,
            "drain timeout; closing remaining connections"
        );
    }
}
