//! The logs signal (`opentelemetry.proto.collector.logs.v1`): per-record validation, the tenant
//! stamp and the response with `partial_success` (`rejected_log_records`), on the prost path
//! (decode with `codec::decode_as`). A clean protobuf request never gets here: `scan_logs`
//! proves it clean over its bytes (the fast path), as `scan` does for spans.
//!
//! A log record may carry no trace context (both ids empty); ids that are present must have
//! their lengths (16 and 8 bytes). The record's attributes and its body (an `AnyValue`: a GenAI
//! prompt or completion event can be large) are held to the same limits as span attributes;
//! the severity number must be one of OTLP's (0-24). Resources and scopes whose own attributes
//! break a limit take their records with them.

use bytes::Bytes;
use prost::Message;
use tracegate_proto::otlp::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use tracegate_proto::otlp::logs::v1::LogRecord;

use crate::codec::Format;
use crate::scan::Claim;
use crate::validate::{check_attributes, check_value, truncate, Outcome, Reason, SpanLimits};

/// What `partial_success.error_message` counts.
pub const NOUN: &str = "log record(s)";

fn check_record(r: &LogRecord, l: &SpanLimits) -> Result<(), (Reason, String)> {
    if !r.trace_id.is_empty() && r.trace_id.len() != 16 {
        return Err((
            Reason::TraceId,
            format!("trace_id must be 16 bytes, got {}", r.trace_id.len()),
        ));
    }
    if !r.span_id.is_empty() && r.span_id.len() != 8 {
        return Err((
            Reason::SpanId,
            format!("span_id must be 8 bytes, got {}", r.span_id.len()),
        ));
    }
    if !(0..=24).contains(&r.severity_number) {
        return Err((
            Reason::Severity,
            format!("severity_number {} is not 0-24", r.severity_number),
        ));
    }
    check_attributes(&r.attributes, l)?;
    if let Some(body) = &r.body {
        let mut size = 0;
        check_value(body, 1, l, &mut size).map_err(|(reason, m)| (reason, format!("body: {m}")))?;
    }
    Ok(())
}

/// Validates `req` in place: removes invalid records and any resource/scope left empty by that.
pub fn validate(req: &mut ExportLogsServiceRequest, l: &SpanLimits) -> Outcome {
    let mut out = Outcome::default();
    let before_rl = req.resource_logs.len();
    req.resource_logs.retain_mut(|rl| {
        let n: usize = rl.scope_logs.iter().map(|sl| sl.log_records.len()).sum();
        if let Some(res) = &rl.resource {
            if let Err((reason, m)) = check_attributes(&res.attributes, l) {
                out.reject(n, reason, || format!("resource: {m}"));
                return false;
            }
        }
        let before_sl = rl.scope_logs.len();
        rl.scope_logs.retain_mut(|sl| {
            if let Some(scope) = &sl.scope {
                if let Err((reason, m)) = check_attributes(&scope.attributes, l) {
                    out.reject(sl.log_records.len(), reason, || format!("scope: {m}"));
                    return false;
                }
            }
            let before = sl.log_records.len();
            sl.log_records.retain(|r| match check_record(r, l) {
                Ok(()) => true,
                Err((reason, m)) => {
                    out.reject(1, reason, || {
                        let name = if r.event_name.is_empty() {
                            String::new()
                        } else {
                            format!(" {:?}", truncate(&r.event_name))
                        };
                        format!("log record{name}: {m}")
                    });
                    false
                }
            });
            out.accepted += sl.log_records.len();
            if sl.log_records.len() != before {
                out.modified = true;
            }
            !sl.log_records.is_empty()
        });
        if rl.scope_logs.len() != before_sl {
            out.modified = true;
        }
        !rl.scope_logs.is_empty()
    });
    if req.resource_logs.len() != before_rl {
        out.modified = true;
    }
    out
}

/// Overwrites every resource attribute named by a claim with the claim's value (as for spans,
/// `stamp.rs`). Returns whether anything changed.
pub fn stamp_tenant(req: &mut ExportLogsServiceRequest, claims: &[Claim<'_>]) -> bool {
    crate::stamp::stamp_resources(
        req.resource_logs.iter_mut().map(|r| &mut r.resource),
        claims,
    )
}

pub fn export_response(rejected: usize, error_message: String) -> ExportLogsServiceResponse {
    ExportLogsServiceResponse {
        // Unset when everything was kept: the spec's "full success".
        partial_success: (rejected > 0).then_some(ExportLogsPartialSuccess {
            rejected_log_records: rejected as i64,
            error_message,
        }),
    }
}

pub fn encode_export_response(format: Format, resp: &ExportLogsServiceResponse) -> Bytes {
    let partial = resp
        .partial_success
        .as_ref()
        .map(|p| (p.rejected_log_records, p.error_message.as_str()));
    crate::response::encode(
        format,
        || resp.encode_to_vec(),
        "rejectedLogRecords",
        partial,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracegate_proto::otlp::common::v1::KeyValue;
    use tracegate_proto::otlp::common::v1::{any_value::Value, AnyValue};
    use tracegate_proto::otlp::logs::v1::{ResourceLogs, ScopeLogs};
    use tracegate_proto::otlp::resource::v1::Resource;

    fn record(name: &str) -> LogRecord {
        LogRecord {
            event_name: name.into(),
            severity_number: 9,
            body: Some(AnyValue {
                value: Some(Value::StringValue("hello".into())),
            }),
            ..Default::default()
        }
    }

    fn req(records: Vec<LogRecord>) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![KeyValue {
                        key: "tracegate.project_id".into(),
                        value: Some(AnyValue {
                            value: Some(Value::StringValue("spoofed".into())),
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    log_records: records,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn invalid_records_go_one_by_one() {
        let mut bad_trace = record("a");
        bad_trace.trace_id = vec![1; 5];
        let mut bad_sev = record("b");
        bad_sev.severity_number = 99;
        let mut big = record("c");
        big.body = Some(AnyValue {
            value: Some(Value::StringValue("x".repeat(100))),
        });
        let mut traced = record("d");
        traced.trace_id = vec![1; 16];
        traced.span_id = vec![2; 8];
        let mut r = req(vec![bad_trace, record("ok"), bad_sev, big, traced]);
        let l = SpanLimits {
            max_attribute_value_bytes: 50,
            ..Default::default()
        };
        let o = validate(&mut r, &l);
        assert_eq!((o.accepted, o.rejected), (2, 3));
        assert!(o.modified);
        let msg = o.error_message_for(NOUN);
        assert!(msg.starts_with("3 log record(s) rejected"), "{msg}");
        assert!(msg.contains("severity_number 99"), "{msg}");
        let all_bad = |mut x: LogRecord| {
            x.span_id = vec![1; 3];
            x
        };
        let mut r = req(vec![all_bad(record("x"))]);
        let o = validate(&mut r, &SpanLimits::default());
        assert_eq!((o.accepted, o.rejected), (0, 1));
        assert!(r.resource_logs.is_empty());
    }

    #[test]
    fn tenant_is_stamped_and_the_response_counts_records() {
        let mut r = req(vec![record("a")]);
        let claims = [Claim {
            key: "tracegate.project_id",
            want: "real",
        }];
        assert!(stamp_tenant(&mut r, &claims));
        assert!(!stamp_tenant(&mut r, &claims));
        let resp = export_response(2, "bad".into());
        let v: serde_json::Value =
            serde_json::from_slice(&encode_export_response(Format::Json, &resp)).unwrap();
        assert_eq!(v["partialSuccess"]["rejectedLogRecords"], "2");
        let ok = export_response(0, String::new());
        assert!(encode_export_response(Format::Protobuf, &ok).is_empty());
    }
}
