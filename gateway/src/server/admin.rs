//! Admin listener: `/metrics` (Prometheus text), `/healthz` (process is up), `/readyz` (ready to
//! accept and durably queue data).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use hyper::body::Incoming;
use metrics_exporter_prometheus::PrometheusHandle;

use super::listener::{full, Body, Handler};

/// Whether the process can take (gateway) or write (writer) data now.
pub type Readiness = Arc<dyn Fn() -> bool + Send + Sync>;

pub struct Admin {
    pub prometheus: PrometheusHandle,
    pub ready: Readiness,
    pub shutting_down: Arc<AtomicBool>,
}

impl Handler for Admin {
    async fn call(
        self: Arc<Self>,
        req: http::Request<Incoming>,
        _peer: SocketAddr,
    ) -> http::Response<Body> {
        let text = |status: u16, body: String| {
            http::Response::builder()
                .status(status)
                .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(full(body))
                .unwrap_or_default()
        };
        if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
            return text(405, "method not allowed\n".into());
        }
        match req.uri().path() {
            "/metrics" => {
                let mut r = text(200, crate::metrics::render(&self.prometheus));
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            "/healthz" => text(200, "ok\n".into()),
            "/readyz" => {
                if self.shutting_down.load(Ordering::Relaxed) {
                    text(503, "shutting down\n".into())
                } else if !(self.ready)() {
                    text(503, "queue not ready\n".into())
                } else {
                    text(200, "ready\n".into())
                }
            }
            _ => text(404, "not found\n".into()),
        }
    }
}
