//! Scan-validation of a protobuf `ExportLogsServiceRequest`: the logs signal's fast path, with
//! the same single claim as `scan.rs` for spans — `scan_logs(..) == Ok(n)` implies that
//! `ExportLogsServiceRequest::decode` succeeds, `logs::validate` accepts `n` records, rejects
//! none and modifies nothing, and `logs::stamp_tenant` changes nothing — so the gateway forwards
//! the client's bytes without decoding them. Anything else is `Err(NeedsSlowPath)`.
//!
//! The request, resource, scope, attribute and `AnyValue` rules are `scan.rs`'s (one scanner,
//! `scan_items`); what is the log record's own follows `logs::check_record`: ids empty or of
//! their length (a record may have no trace context; unlike a span's, an all-zero id is not
//! refused), a severity number of 0-24, a body held to an attribute value's limits. Measured in
//! `benches/benches/signals.rs` (docs/benchmarks.md): prost decode + validate was ~7x the
//! scan's CPU per request byte for records of 21 attributes.

use crate::scan::{scan_items, Claim, Cur, NeedsSlowPath, Scanner};
use crate::validate::SpanLimits;

type R<T> = Result<T, NeedsSlowPath>;

/// Scans `buf`; `Ok(records)` when the request is clean (see the module header).
pub fn scan_logs(buf: &[u8], limits: &SpanLimits, claims: &[Claim<'_>]) -> R<usize> {
    // `ResourceLogs` and `ScopeLogs` have the field numbers of `ResourceSpans`, `ScopeSpans`.
    scan_items(buf, limits, claims, log_record)
}

fn log_record(s: &Scanner<'_, '_>, buf: &[u8], b: u32) -> R<()> {
    let mut c = Cur::new(buf);
    // Singular scalars: the last occurrence wins, as in prost.
    let (mut trace_id, mut span_id): (&[u8], &[u8]) = (&[], &[]);
    let mut severity = 0u64;
    let mut attrs = 0usize;
    let mut body = false;
    while !c.done() {
        let (tag, wt) = c.key()?;
        match tag {
            1 | 11 => c.fixed64(wt)?,
            2 => severity = c.varint_field(wt)?,
            3 | 12 => drop(c.string(wt)?),
            5 => {
                // A second body would be merged into the first: not modelled.
                if std::mem::replace(&mut body, true) {
                    return Err(NeedsSlowPath);
                }
                let mut size = 0usize;
                s.any_value(c.msg(wt, b)?, b.saturating_sub(1), 1, &mut size)?;
            }
            6 => {
                attrs += 1;
                s.attribute(c.msg(wt, b)?, b.saturating_sub(1))?;
            }
            7 => drop(c.varint_field(wt)?),
            8 => c.fixed32(wt)?,
            9 => trace_id = c.bytes(wt)?,
            10 => span_id = c.bytes(wt)?,
            _ => c.skip(wt, b)?,
        }
    }
    // prost reads the enum as the varint's low 32 bits: 0-24 only when the varint is.
    if severity > 24 {
        return Err(NeedsSlowPath);
    }
    if !(trace_id.is_empty() || trace_id.len() == 16) || !(span_id.is_empty() || span_id.len() == 8)
    {
        return Err(NeedsSlowPath);
    }
    s.attr_count(attrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use tracegate_proto::otlp::collector::logs::v1::ExportLogsServiceRequest;
    use tracegate_proto::otlp::common::v1::{any_value, AnyValue, KeyValue};
    use tracegate_proto::otlp::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use tracegate_proto::otlp::resource::v1::Resource;

    const CLAIMS: &[Claim<'static>] = &[Claim {
        key: "tracegate.project_id",
        want: "p1",
    }];

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }

    fn record(i: u8) -> LogRecord {
        LogRecord {
            time_unix_nano: 1,
            severity_number: 9,
            severity_text: "INFO".into(),
            event_name: "gen_ai.client.inference.operation.details".into(),
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue(format!("body {i}"))),
            }),
            attributes: vec![kv("gen_ai.request.model", "gpt-4o"), kv("k", "é")],
            trace_id: if i.is_multiple_of(2) {
                vec![i + 1; 16]
            } else {
                vec![]
            },
            span_id: if i.is_multiple_of(2) {
                vec![i + 1; 8]
            } else {
                vec![]
            },
            flags: 1,
            ..Default::default()
        }
    }

    fn request(records: Vec<LogRecord>) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", "s"), kv("tracegate.project_id", "p1")],
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

    /// What the slow path does with `buf`: Some(accepted) when it decodes, accepts everything
    /// and changes nothing.
    fn slow(buf: &[u8], l: &SpanLimits) -> Option<usize> {
        let mut req = ExportLogsServiceRequest::decode(buf).ok()?;
        let out = crate::logs::validate(&mut req, l);
        let stamped = crate::logs::stamp_tenant(&mut req, CLAIMS);
        (out.rejected == 0 && !out.modified && !stamped).then_some(out.accepted)
    }

    #[test]
    fn clean_requests_pass_and_each_defect_takes_the_slow_path() {
        let l = SpanLimits::default();
        let clean = request((0..6).map(record).collect());
        assert_eq!(scan_logs(&clean.encode_to_vec(), &l, CLAIMS), Ok(6));
        let bad = |f: &dyn Fn(&mut ExportLogsServiceRequest)| {
            let mut r = clean.clone();
            f(&mut r);
            let buf = r.encode_to_vec();
            assert_eq!(scan_logs(&buf, &l, CLAIMS), Err(NeedsSlowPath));
            assert_eq!(slow(&buf, &l), None, "the slow path changes it too");
        };
        let bad_record = |f: &dyn Fn(&mut LogRecord)| {
            bad(&|r| f(&mut r.resource_logs[0].scope_logs[0].log_records[2]))
        };
        bad_record(&|r| r.trace_id = vec![1; 15]);
        bad_record(&|r| r.span_id = vec![1; 9]);
        bad_record(&|r| r.severity_number = 25);
        bad_record(&|r| r.severity_number = -1);
        let too_long = "x".repeat(l.max_attribute_value_bytes + 1);
        bad_record(&|r| {
            r.body = Some(AnyValue {
                value: Some(any_value::Value::StringValue(too_long.clone())),
            })
        });
        bad(&|r| {
            r.resource_logs[0].resource.as_mut().unwrap().attributes[1] =
                kv("tracegate.project_id", "other")
        });
        bad(&|r| r.resource_logs[0].scope_logs.push(ScopeLogs::default()));
        bad(&|r| r.resource_logs.push(ResourceLogs::default()));
    }

    /// The claim, on mutations of a clean request: whenever the scan says Ok(n), the slow path
    /// decodes, accepts exactly n and changes nothing.
    #[test]
    fn scan_ok_implies_the_slow_path_accepts_the_same_unchanged() {
        let l = SpanLimits::default();
        let clean = request((0..4).map(record).collect()).encode_to_vec();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (mut ok, mut slow_path) = (0, 0);
        for _ in 0..20_000 {
            let mut buf = clean.clone();
            for _ in 0..1 + next() % 3 {
                let i = (next() as usize) % buf.len();
                match next() % 3 {
                    0 => buf[i] = next() as u8,
                    1 => buf[i] ^= 1 << (next() % 8),
                    _ => {
                        buf.truncate(i);
                    }
                }
                if buf.is_empty() {
                    break;
                }
            }
            match scan_logs(&buf, &l, CLAIMS) {
                Ok(n) => {
                    assert_eq!(slow(&buf, &l), Some(n), "{buf:?}");
                    ok += 1;
                }
                Err(NeedsSlowPath) => slow_path += 1,
            }
        }
        assert!(ok > 1000 && slow_path > 1000, "{ok} {slow_path}");
    }
}
