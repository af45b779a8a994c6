//! OTLP/gRPC receiver: `opentelemetry.proto.collector.trace.v1.TraceService/Export`,
//! `….logs.v1.LogsService/Export` and `….metrics.v1.MetricsService/Export` (unary).
//!
//! We read the length-prefixed message ourselves and decode it with the same capped pipeline as
//! OTLP/HTTP, instead of tonic's generated service, because tonic's codec (a) inflates on the
//! async worker, (b) answers an oversize uncompressed message with OUT_OF_RANGE where OTLP wants
//! RESOURCE_EXHAUSTED, and (c) answers corrupt compression with INTERNAL where the client's
//! mistake is INVALID_ARGUMENT. `tonic::Status` still writes the status headers
//! (grpc-status, percent-encoded grpc-message, grpc-status-details-bin with RetryInfo).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};

use super::listener::{Body, Handler};

use crate::auth::record::{SCOPE_LOGS_WRITE, SCOPE_METRICS_WRITE, SCOPE_TRACES_WRITE};
use crate::error::grpc_status_details;
use crate::error::{ApiError, ErrorKind};
use crate::ingest::{Arrival, Ingest, RawRequest};
use crate::metrics as m;
use tracegate_otlp::codec::{Compression, Format};
use tracegate_proto::v1::Signal;
use tracegate_proto::v1::Transport;

pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
pub const LOGS_EXPORT_PATH: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
pub const METRICS_EXPORT_PATH: &str =
    "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
const ACCEPT_ENCODING: &str = "gzip,zstd,deflate,identity";

pub struct GrpcReceiver {
    pub ingest: Arc<Ingest>,
}

impl Handler for GrpcReceiver {
    async fn call(
        self: Arc<Self>,
        req: http::Request<Incoming>,
        peer: SocketAddr,
    ) -> http::Response<Body> {
        let started = Instant::now();
        let is_grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.starts_with("application/grpc"))
            .unwrap_or(false);
        if !is_grpc {
            metrics::counter!(m::REQUESTS, "transport" => "grpc", "status" => "unsupported_media")
                .increment(1);
            let mut r = http::Response::new(super::listener::full(
                "gRPC endpoint: content-type must be application/grpc\n",
            ));
            *r.status_mut() = http::StatusCode::UNSUPPORTED_MEDIA_TYPE;
            return r;
        }
        let (parts, body) = req.into_parts();
        let mut body = Some(body);
        let result = self.handle(&parts, &mut body, peer).await;
        // Refused before its body was read: nothing is drained; h2 resets the stream's unread
        // body after the answer.
        drop(body);
        let (resp, status) = match result {
            Ok(msg) => (ok_response(msg), "ok"),
            Err(e) => (error_response(&e), e.metric_label()),
        };
        metrics::counter!(m::REQUESTS, "transport" => "grpc", "status" => status).increment(1);
        metrics::histogram!(m::REQUEST_DURATION, "transport" => "grpc")
            .record(started.elapsed().as_secs_f64());
        resp
    }
}

fn base_headers(b: http::response::Builder) -> http::response::Builder {
    b.status(200)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header("grpc-accept-encoding", ACCEPT_ENCODING)
}

fn ok_response(msg: Bytes) -> http::Response<Body> {
    let mut frame = BytesMut::with_capacity(5 + msg.len());
    frame.extend_from_slice(&[0]);
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
        Ok(Frame::data(frame.freeze())),
        Ok(Frame::trailers(trailers)),
    ];
    let body = StreamBody::new(futures_util::stream::iter(frames));
    base_headers(http::Response::builder())
        .body(BodyExt::boxed(body))
        .unwrap_or_else(|_| error_response(&ApiError::internal("response build failed")))
}

/// A "Trailers-Only" response: status in the headers, no body.
fn error_response(e: &ApiError) -> http::Response<Body> {
    let status = match grpc_status_details(e) {
        Some(details) => tonic::Status::with_details(e.grpc_code(), e.message.clone(), details),
        None => tonic::Status::new(e.grpc_code(), e.message.clone()),
    };
    let mut headers = http::HeaderMap::new();
    let _ = status.add_header(&mut headers);
    let mut r = base_headers(http::Response::builder())
        .body(super::listener::empty())
        .unwrap_or_default();
    r.headers_mut().extend(headers);
    r
}

impl GrpcReceiver {
    async fn handle(
        &self,
        req: &http::request::Parts,
        body: &mut Option<Incoming>,
        peer: SocketAddr,
    ) -> Result<Bytes, ApiError> {
        let (signal, scope) = match req.uri.path() {
            EXPORT_PATH => (Signal::Traces, SCOPE_TRACES_WRITE),
            LOGS_EXPORT_PATH => (Signal::Logs, SCOPE_LOGS_WRITE),
            METRICS_EXPORT_PATH => (Signal::Metrics, SCOPE_METRICS_WRITE),
            other => {
                return Err(ApiError::new(
                    ErrorKind::NotFound,
                    format!("unknown method {other}"),
                ))
            }
        };
        let compression = Compression::from_header(
            req.headers
                .get("grpc-encoding")
                .map(|v| v.to_str().unwrap_or("<invalid>")),
        )?;
        // Room for the 5-byte prefix; a message over the cap is refused while reading.
        let r = self
            .ingest
            .receive(Arrival {
                headers: &req.headers,
                origin: super::conn::origin(&req.extensions, peer),
                body,
                framing: 5,
                scope,
                // HTTP/2: streams share the connection's window (readahead.rs).
                read_ahead: false,
            })
            .await?;
        let (flag, msg) = super::grpc_frame::split_message(r.body)
            .map_err(|e| ApiError::invalid(e.to_string()))?;
        let compression = match (flag, compression) {
            (0, _) => Compression::Identity,
            (1, Compression::Identity) => {
                return Err(ApiError::invalid(
                    "compressed-flag set but no grpc-encoding",
                ))
            }
            (1, c) => c,
            (f, _) => return Err(ApiError::invalid(format!("invalid compressed-flag {f}"))),
        };
        let raw = RawRequest {
            transport: Transport::OtlpGrpc,
            format: Format::Protobuf,
            compression,
            body: msg,
            room: r.room,
            queued: r.queued,
            permit: r.permit,
            origin: r.origin,
        };
        self.ingest.export_signal(signal, &r.principal, raw).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_has_status_headers_and_retry_info() {
        let r = error_response(&ApiError::unavailable("busy"));
        assert_eq!(r.headers()["grpc-status"], "14");
        assert!(r.headers().contains_key("grpc-status-details-bin"));
        let r = error_response(&ApiError::too_large(5));
        assert_eq!(r.headers()["grpc-status"], "8");
        assert!(!r.headers().contains_key("grpc-status-details-bin"));
    }
}
