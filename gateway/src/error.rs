//! One error type for the whole request path, mapped to both an HTTP status and a gRPC code so
//! that OTLP/HTTP and OTLP/gRPC clients get equivalent, spec-conformant answers
//! (opentelemetry-proto `docs/specification.md`, "Failures"); and the failure bodies built from
//! it (`google.rpc.Status`, gRPC RetryInfo).

use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tracegate_otlp::codec::Format;

/// What went wrong, in terms a client can act on. Each kind has exactly one HTTP status and one
/// gRPC code; retryability follows from the kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Malformed payload: not retryable.
    InvalidArgument,
    /// No key, unknown key, malformed key.
    Unauthenticated,
    /// Known credential without the right to do this (scope, region, network).
    Forbidden,
    /// Over the project's quota: retryable after the given delay.
    RateLimited,
    /// Decompressed request larger than the configured cap. Not retryable (no RetryInfo).
    TooLarge,
    /// Unsupported content type or content encoding.
    UnsupportedMedia,
    NotFound,
    MethodNotAllowed,
    /// Over a capacity bound (in-flight bytes, full queue): retryable.
    Unavailable,
    /// A bug or an unexpected local failure (e.g. the archive disk failed). Retryable over HTTP
    /// as 503 so clients do not drop data for our fault.
    Internal,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    /// Hint for retryable errors.
    pub retry_after: Option<Duration>,
}

/// Longest error message sent to a client.
const MAX_MESSAGE: usize = 512;

/// Default back-off we ask clients to wait before retrying a capacity refusal.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_MESSAGE {
            // Decoder errors can echo long paths; clients need the gist, not kilobytes.
            let mut end = MAX_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        let retry_after = match kind {
            ErrorKind::Unavailable | ErrorKind::Internal => Some(DEFAULT_RETRY_AFTER),
            _ => None,
        };
        Self {
            kind,
            message,
            retry_after,
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthenticated, message)
    }
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            ErrorKind::TooLarge,
            format!("request exceeds the limit of {limit} bytes after decompression"),
        )
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, message)
    }
    pub fn rate_limited(message: impl Into<String>, retry_after: Duration) -> Self {
        Self {
            kind: ErrorKind::RateLimited,
            message: message.into(),
            retry_after: Some(retry_after.max(Duration::from_secs(1))),
        }
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    pub fn http_status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self.kind {
            ErrorKind::InvalidArgument => S::BAD_REQUEST,
            ErrorKind::Unauthenticated => S::UNAUTHORIZED,
            ErrorKind::Forbidden => S::FORBIDDEN,
            ErrorKind::RateLimited => S::TOO_MANY_REQUESTS,
            ErrorKind::TooLarge => S::PAYLOAD_TOO_LARGE,
            ErrorKind::UnsupportedMedia => S::UNSUPPORTED_MEDIA_TYPE,
            ErrorKind::NotFound => S::NOT_FOUND,
            ErrorKind::MethodNotAllowed => S::METHOD_NOT_ALLOWED,
            ErrorKind::Unavailable | ErrorKind::Internal => S::SERVICE_UNAVAILABLE,
        }
    }

    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code as C;
        match self.kind {
            ErrorKind::InvalidArgument => C::InvalidArgument,
            ErrorKind::Unauthenticated => C::Unauthenticated,
            ErrorKind::Forbidden => C::PermissionDenied,
            // With RetryInfo attached, so OTLP clients retry after the delay.
            ErrorKind::RateLimited => C::ResourceExhausted,
            // RESOURCE_EXHAUSTED without RetryInfo: the OTLP spec says clients must not retry.
            ErrorKind::TooLarge => C::ResourceExhausted,
            ErrorKind::UnsupportedMedia | ErrorKind::NotFound | ErrorKind::MethodNotAllowed => {
                C::Unimplemented
            }
            ErrorKind::Unavailable | ErrorKind::Internal => C::Unavailable,
        }
    }

    /// Bounded label value for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self.kind {
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::UnsupportedMedia => "unsupported_media",
            ErrorKind::NotFound => "not_found",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
        }
    }
}

/// The codec's errors at the edge: an unsupported encoding is 415 / UNIMPLEMENTED, a body over
/// the cap after decompression 413 / RESOURCE_EXHAUSTED, anything else malformed 400 /
/// INVALID_ARGUMENT.
impl From<tracegate_otlp::codec::DecodeError> for ApiError {
    fn from(e: tracegate_otlp::codec::DecodeError) -> Self {
        use tracegate_otlp::codec::DecodeError as D;
        match e {
            D::UnsupportedEncoding(m) => ApiError::new(ErrorKind::UnsupportedMedia, m),
            D::TooLarge(cap) => ApiError::too_large(cap),
            D::Malformed(m) => ApiError::invalid(m),
        }
    }
}

/// `google.rpc.Status` for an HTTP error body.
pub fn encode_status(format: Format, err: &ApiError) -> Bytes {
    let code = err.grpc_code() as i32;
    match format {
        Format::Protobuf => tonic_types::pb::Status {
            code,
            message: err.message.clone(),
            details: vec![],
        }
        .encode_to_vec()
        .into(),
        Format::Json => serde_json::to_vec(&serde_json::json!({
            "code": code,
            "message": err.message,
        }))
        .unwrap_or_default()
        .into(),
    }
}

/// `grpc-status-details-bin` payload carrying a RetryInfo for retryable gRPC errors.
pub fn grpc_status_details(err: &ApiError) -> Option<Bytes> {
    let delay = err.retry_after?;
    let retry = tonic_types::pb::RetryInfo {
        retry_delay: Some(prost_types::Duration {
            seconds: delay.as_secs() as i64,
            nanos: delay.subsec_nanos() as i32,
        }),
    };
    let status = tonic_types::pb::Status {
        code: err.grpc_code() as i32,
        message: err.message.clone(),
        details: vec![prost_types::Any {
            type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
            value: retry.encode_to_vec(),
        }],
    };
    Some(status.encode_to_vec().into())
}

/// A queue's refusals at the edge (`tracegate_pipeline::QueueError`).
impl From<tracegate_pipeline::QueueError> for ApiError {
    fn from(e: tracegate_pipeline::QueueError) -> Self {
        use tracegate_pipeline::QueueError as Q;
        match e {
            Q::Unavailable(m) => ApiError::unavailable(m),
            Q::TooLarge(m) => ApiError::new(ErrorKind::TooLarge, m),
            Q::Internal(m) => ApiError::internal(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_kinds_carry_retry_after_and_map_to_retryable_codes() {
        let e = ApiError::unavailable("busy");
        assert_eq!(e.http_status(), 503);
        assert_eq!(e.grpc_code(), tonic::Code::Unavailable);
        assert!(e.retry_after.is_some());
        let e = ApiError::too_large(10);
        assert_eq!(e.http_status(), 413);
        assert_eq!(e.grpc_code(), tonic::Code::ResourceExhausted);
        assert!(e.retry_after.is_none());
        assert_eq!(ApiError::invalid("x").http_status(), 400);
    }

    #[test]
    fn codec_errors_map_to_415_413_400() {
        use tracegate_otlp::codec::DecodeError as D;
        let status = |e: D| ApiError::from(e).http_status().as_u16();
        assert_eq!(status(D::UnsupportedEncoding("br".into())), 415);
        assert_eq!(status(D::TooLarge(7)), 413);
        assert_eq!(status(D::Malformed("x".into())), 400);
        let e = ApiError::from(D::TooLarge(7));
        assert_eq!(e.grpc_code(), tonic::Code::ResourceExhausted);
        assert!(e.message.contains('7'), "{}", e.message);
    }

    #[test]
    fn queue_errors_map_to_503_with_retry_after_or_413() {
        use tracegate_pipeline::QueueError as Q;
        let e = ApiError::from(Q::unavailable("full"));
        assert_eq!(
            (e.http_status().as_u16(), e.retry_after.is_some()),
            (503, true)
        );
        let e = ApiError::from(Q::TooLarge("span".into()));
        assert_eq!(
            (e.http_status().as_u16(), e.retry_after.is_some()),
            (413, false)
        );
        assert_eq!(ApiError::from(Q::internal("x")).http_status(), 503);
    }

    #[test]
    fn retry_info_only_for_retryable() {
        assert!(grpc_status_details(&ApiError::too_large(1)).is_none());
        let d = grpc_status_details(&ApiError::unavailable("x")).unwrap();
        let s = tonic_types::pb::Status::decode(d).unwrap();
        assert_eq!(s.code, tonic::Code::Unavailable as i32);
        assert!(s.details[0].type_url.ends_with("RetryInfo"));
    }
}
