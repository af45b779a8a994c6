//! The success body: `ExportTraceServiceResponse` (with `partial_success` when spans were
//! rejected) in the request's encoding. Failure bodies (`google.rpc.Status`) are the gateway's
//! edge's (`tracegate::error`): they come from its error type.

use bytes::Bytes;
use prost::Message;
use tracegate_proto::otlp::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};

use crate::codec::Format;

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
}
