//! Differential fuzzing of the ingest fast paths (spans; log records: `scan_logs`, same rule): whenever the scan (`tracegate_otlp::scan`)
//! says "clean, n spans", prost's decode + `validate` + the tenant stamp (`tracegate_otlp::
//! validate`, `stamp`) must agree: decoded, n spans accepted, none rejected, nothing modified,
//! nothing to stamp. The scan must also never panic, whatever the bytes.
//!
//! Input: the first byte picks the limits (default, small, deepest allowed); the rest is the
//! request body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tracegate_otlp::{scan, stamp::stamp_tenant, validate, SpanLimits};
use tracegate_proto::otlp::collector::trace::v1::ExportTraceServiceRequest;

const CLAIMS: [scan::Claim<'static>; 2] = [
    scan::Claim {
        key: "tracegate.project_id",
        want: "mine",
    },
    scan::Claim {
        key: "tracegate.org_id",
        want: "org-1",
    },
];

fn limits(selector: u8) -> SpanLimits {
    let mut l = SpanLimits::default();
    match selector % 3 {
        0 => {}
        1 => {
            l.max_attributes = 3;
            l.max_attribute_value_bytes = 40;
            l.max_attribute_depth = 3;
            l.max_events_per_span = 2;
            l.max_links_per_span = 2;
        }
        _ => l.max_attribute_depth = 99,
    }
    l
}

/// The prost path's verdict: `None` = refused as malformed, else (accepted, unchanged).
fn slow(buf: &[u8], l: &SpanLimits) -> Option<(usize, bool)> {
    let mut req = ExportTraceServiceRequest::decode(buf).ok()?;
    let o = validate::validate(&mut req, l);
    let stamped = stamp_tenant(&mut req, &CLAIMS);
    Some((o.accepted, o.rejected == 0 && !o.modified && !stamped))
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let l = limits(sel);
    if let Ok(n) = scan::scan(body, &l, &CLAIMS) {
        assert_eq!(
            slow(body, &l),
            Some((n, true)),
            "the scan called a request clean that the prost path refuses or changes"
        );
    }
    // The same bytes read as a logs request: `scan_logs` holds to the same claim.
    if let Ok(n) = tracegate_otlp::scan_logs::scan_logs(body, &l, &CLAIMS) {
        assert_eq!(
            slow_logs(body, &l),
            Some((n, true)),
            "scan_logs called a request clean that the prost path refuses or changes"
        );
    }
});

/// `slow` for `ExportLogsServiceRequest`.
fn slow_logs(buf: &[u8], l: &SpanLimits) -> Option<(usize, bool)> {
    use tracegate_proto::otlp::collector::logs::v1::ExportLogsServiceRequest;
    let mut req = ExportLogsServiceRequest::decode(buf).ok()?;
    let o = tracegate_otlp::logs::validate(&mut req, l);
    let stamped = tracegate_otlp::logs::stamp_tenant(&mut req, &CLAIMS);
    Some((o.accepted, o.rejected == 0 && !o.modified && !stamped))
}
