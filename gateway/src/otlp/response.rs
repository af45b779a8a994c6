//! Response bodies: `ExportTraceServiceResponse` on success (with `partial_success` when spans
//! were rejected) and `google.rpc.Status` on failure, each in the request's encoding.

use bytes::Bytes;
use prost::Message;
use tracegate_proto::otlp::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};

use super::decode::Format;
use crate::error::ApiError;

pub fn export_response(rejected: usize, error_message: String) -> ExportTraceServiceResponse {
    ExportTraceServiceResponse {
        // Unset when everything was kept: the spec's "full success".
        partial_success: (rejected > 0).then_some(ExportTracePartialSuccess {
            rejected_spans: rejected as i64,
            error_message,
        }),
    }
}

pub fn encode_export_response(format: Format, resp: &ExportTraceServiceResponse) -> Bytes {
    match format {
        Format::Protobuf => resp.encode_to_vec().into(),
        Format::Json => {
            // Written by hand so int64 follows the protobuf JSON mapping (a decimal string).
            let v = match &resp.partial_success {
                Some(p) => serde_json::json!({
                    "partialSuccess": {
                        "rejectedSpans": p.rejected_spans.to_string(),
                        "errorMessage": p.error_message,
                    }
                }),
                None => serde_json::json!({}),
            };
            serde_json::to_vec(&v).unwrap_or_default().into()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_partial_success_shape() {
        let r = export_response(2, "bad".into());
        let v: serde_json::Value =
            serde_json::from_slice(&encode_export_response(Format::Json, &r)).unwrap();
        assert_eq!(v["partialSuccess"]["rejectedSpans"], "2");
        let r = export_response(0, String::new());
        assert_eq!(&encode_export_response(Format::Json, &r)[..], b"{}");
        assert!(encode_export_response(Format::Protobuf, &r).is_empty());
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
