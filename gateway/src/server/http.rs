//! OTLP/HTTP receiver: `POST /v1/traces`, `POST /v1/logs` and `POST /v1/metrics`, protobuf or
//! JSON, gzip/deflate/zstd.
//!
//! Checks run cheapest-first so that junk costs little: route and method → content type and
//! encoding (no body needed) → API key (cached; before reading the body so unauthenticated
//! clients cannot make us inflate anything) → declared length against the cap → read the body
//! with a size cap and a timeout, charging admission (global and the project's share) as bytes
//! arrive (those three in the shared entry, `Ingest::receive`) → `Ingest::export`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};
use hyper::body::Incoming;

use super::listener::{full, Body, Handler};
use crate::error::encode_status;
use crate::error::{ApiError, ErrorKind};
use crate::ingest::{Arrival, Ingest, RawRequest};
use crate::metrics as m;
use tracegate_otlp::codec::{Compression, Format};
use tracegate_proto::v1::{Signal, Transport};

use crate::auth::record::{SCOPE_LOGS_WRITE, SCOPE_METRICS_WRITE, SCOPE_TRACES_WRITE};

pub const TRACES_PATH: &str = "/v1/traces";
pub const LOGS_PATH: &str = "/v1/logs";
pub const METRICS_PATH: &str = "/v1/metrics";

/// The signal a path names, with the scope its key needs.
fn signal_of(path: &str) -> Option<(Signal, &'static str)> {
    match path {
        TRACES_PATH => Some((Signal::Traces, SCOPE_TRACES_WRITE)),
        LOGS_PATH => Some((Signal::Logs, SCOPE_LOGS_WRITE)),
        METRICS_PATH => Some((Signal::Metrics, SCOPE_METRICS_WRITE)),
        _ => None,
    }
}

pub struct HttpReceiver {
    pub ingest: Arc<Ingest>,
    /// `[server.cors]`; None when no origin is allowed.
    pub cors: Option<Arc<super::cors::Cors>>,
}

fn media_type(headers: &http::HeaderMap) -> Option<String> {
    let v = headers.get(http::header::CONTENT_TYPE)?.to_str().ok()?;
    Some(
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    )
}

impl Handler for HttpReceiver {
    async fn call(
        self: Arc<Self>,
        req: http::Request<Incoming>,
        peer: SocketAddr,
    ) -> http::Response<Body> {
        let started = Instant::now();
        // Until we know the request's encoding, errors are answered in protobuf.
        let mut format = Format::Protobuf;
        let (parts, body) = req.into_parts();
        // A browser's preflight: before everything else, as it carries no credentials.
        if let Some(cors) = self
            .cors
            .as_ref()
            .filter(|_| parts.method == Method::OPTIONS && signal_of(parts.uri.path()).is_some())
        {
            return preflight(cors, &parts);
        }
        let mut body = Some(body);
        // Set once the whole body was read (a request refused mid-body was not).
        let mut body_read = false;
        let result = self
            .handle(&parts, &mut body, &mut body_read, peer, &mut format)
            .await;
        // Refused before its body was touched (route, type, key, admission): nothing is read or
        // drained and no `100 Continue` is sent; HTTP/1.1 closes the connection after the
        // answer instead of reading the body to reuse it. One exception: an authenticated
        // client whose declared length is over the cap and that did not ask to wait
        // (`Expect: 100-continue`) is already uploading; its body is drained (bounded) so it
        // sees the 413 instead of a reset, as ordinary clients do not read while they write.
        let too_large = result
            .as_ref()
            .is_err_and(|e| e.kind == ErrorKind::TooLarge);
        let expects_continue = parts
            .headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let refused_unread = match body.take() {
            Some(unread) if too_large && !expects_continue => {
                crate::ingest::body::drain(unread).await;
                false
            }
            Some(_) => true,
            // Refused mid-body (an admission bound, too slow, a read error): the rest was not
            // read either.
            None => !body_read && result.is_err(),
        };
        let close = refused_unread && parts.version <= http::Version::HTTP_11;
        let (mut resp, status) = match result {
            Ok(body) => {
                let ct = match format {
                    Format::Protobuf => "application/x-protobuf",
                    Format::Json => "application/json",
                };
                let r = http::Response::builder()
                    .status(200)
                    .header(http::header::CONTENT_TYPE, ct)
                    .body(full(body));
                (r, "ok")
            }
            Err(e) => (error_response(&e, format), e.metric_label()),
        };
        if let Ok(r) = resp.as_mut() {
            if close {
                r.headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
            if let Some(cors) = &self.cors {
                cors.decorate(&parts.headers, r.headers_mut());
            }
        }
        metrics::counter!(m::REQUESTS, "transport" => "http", "status" => status).increment(1);
        metrics::histogram!(m::REQUEST_DURATION, "transport" => "http")
            .record(started.elapsed().as_secs_f64());
        resp.unwrap_or_else(|_| {
            let mut r = http::Response::new(full(Bytes::new()));
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            r
        })
    }
}

/// The answer to a CORS preflight (`server::cors`). Its body, if a client sent one, is not read:
/// the connection closes after the answer.
fn preflight(cors: &super::cors::Cors, parts: &http::request::Parts) -> http::Response<Body> {
    let (status, headers) = cors.preflight(&parts.headers);
    let mut r = http::Response::new(full(Bytes::new()));
    *r.status_mut() = status;
    r.headers_mut().extend(headers);
    let has_body = parts.headers.contains_key(http::header::TRANSFER_ENCODING)
        || parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if has_body && parts.version <= http::Version::HTTP_11 {
        r.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    let label = if status.is_success() {
        "preflight"
    } else {
        "preflight_refused"
    };
    metrics::counter!(m::REQUESTS, "transport" => "http", "status" => label).increment(1);
    r
}

fn error_response(e: &ApiError, format: Format) -> http::Result<http::Response<Body>> {
    let ct = match format {
        Format::Protobuf => "application/x-protobuf",
        Format::Json => "application/json",
    };
    let mut b = http::Response::builder()
        .status(e.http_status())
        .header(http::header::CONTENT_TYPE, ct);
    if let Some(ra) = e.retry_after {
        b = b.header(http::header::RETRY_AFTER, ra.as_secs().max(1).to_string());
    }
    if e.kind == ErrorKind::MethodNotAllowed {
        b = b.header(http::header::ALLOW, "POST");
    }
    if e.kind == ErrorKind::Unauthenticated {
        b = b.header(http::header::WWW_AUTHENTICATE, "Bearer");
    }
    b.body(full(encode_status(format, e)))
}

impl HttpReceiver {
    async fn handle(
        &self,
        req: &http::request::Parts,
        body: &mut Option<Incoming>,
        body_read: &mut bool,
        peer: SocketAddr,
        format: &mut Format,
    ) -> Result<Bytes, ApiError> {
        let Some((signal, scope)) = signal_of(req.uri.path()) else {
            return Err(ApiError::new(
                ErrorKind::NotFound,
                format!(
                    "no such path {:?}; OTLP traces go to POST {TRACES_PATH}, logs to POST \
                     {LOGS_PATH}, metrics to POST {METRICS_PATH}",
                    req.uri.path()
                ),
            ));
        };
        if req.method != Method::POST {
            return Err(ApiError::new(
                ErrorKind::MethodNotAllowed,
                format!("method {} not allowed; use POST", req.method),
            ));
        }
        *format = match media_type(&req.headers).as_deref() {
            Some("application/x-protobuf") | Some("application/protobuf") => Format::Protobuf,
            Some("application/json") => Format::Json,
            other => {
                return Err(ApiError::new(
                    ErrorKind::UnsupportedMedia,
                    format!(
                    "unsupported content type {:?}; use application/x-protobuf or application/json",
                    other.unwrap_or("")
                ),
                ))
            }
        };
        let compression = Compression::from_header(
            req.headers
                .get(http::header::CONTENT_ENCODING)
                .map(|v| v.to_str().unwrap_or("<invalid>")),
        )?;
        let r = self
            .ingest
            .receive(Arrival {
                headers: &req.headers,
                origin: super::conn::origin(&req.extensions, peer),
                body,
                framing: 0,
                scope,
                // Not on HTTP/2, where streams share the connection's window (readahead.rs).
                read_ahead: req.version <= http::Version::HTTP_11,
            })
            .await?;
        *body_read = true;
        let transport = match format {
            Format::Protobuf => Transport::OtlpHttpProtobuf,
            Format::Json => Transport::OtlpHttpJson,
        };
        let raw = RawRequest {
            transport,
            format: *format,
            compression,
            body: r.body,
            room: r.room,
            queued: r.queued,
            permit: r.permit,
            origin: r.origin,
        };
        self.ingest.export_signal(signal, &r.principal, raw).await
    }
}
