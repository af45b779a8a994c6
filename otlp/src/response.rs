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
    let partial = resp
        .partial_success
        .as_ref()
        .map(|p| (p.rejected_spans, p.error_message.as_str()));
    encode(format, || resp.encode_to_vec(), "rejectedSpans", partial)
}

/// Any signal's export response: `protobuf` encodes it; in JSON it is written by hand so the
/// int64 count (`rejected` names it) follows the protobuf JSON mapping (a decimal string).
pub(crate) fn encode(
    format: Format,
    protobuf: impl FnOnce() -> Vec<u8>,
    rejected: &str,
    partial: Option<(i64, &str)>,
) -> Bytes {
    match format {
        Format::Protobuf => protobuf().into(),
        Format::Json => {
            let v = match partial {
                Some((n, message)) => serde_json::json!({
                    "partialSuccess": { rejected: n.to_string(), "errorMessage": message }
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
