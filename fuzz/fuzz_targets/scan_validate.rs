//! Differential fuzzing of the ingest fast path: whenever the scan (gateway/src/otlp/scan.rs)
//! says "clean, n spans", prost's decode + `validate` (gateway/src/otlp/validate.rs) + the
//! tenant-stamping check must agree: decoded, n spans accepted, none rejected, nothing
//! modified, nothing to stamp. The scan must also never panic, whatever the bytes.
//!
//! Input: the first byte picks the limits (default, small, deepest allowed); the rest is the
//! request body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tracegate_proto::otlp::collector::trace::v1::ExportTraceServiceRequest;
use tracegate_proto::otlp::common::v1::{any_value::Value, AnyValue};

/// The fields of the gateway's `LimitsConfig` that scan.rs and validate.rs read (the real one
/// lives in config.rs with serde and the rest of the configuration).
mod config {
    #[derive(Debug, Clone)]
    pub struct LimitsConfig {
        pub max_request_bytes: usize,
        pub max_inflight_bytes: usize,
        pub max_attributes: usize,
        pub max_attribute_value_bytes: usize,
        pub max_attribute_depth: usize,
        pub max_events_per_span: usize,
        pub max_links_per_span: usize,
    }
}

#[path = "../../gateway/src/otlp/scan.rs"]
#[allow(dead_code)]
mod scan;

#[path = "../../gateway/src/otlp/validate.rs"]
#[allow(dead_code)]
mod validate;

use config::LimitsConfig;

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

fn limits(selector: u8) -> LimitsConfig {
    let mut l = LimitsConfig {
        max_request_bytes: 32 << 20,
        max_inflight_bytes: 256 << 20,
        max_attributes: 1024,
        max_attribute_value_bytes: 16 << 20,
        max_attribute_depth: 32,
        max_events_per_span: 1024,
        max_links_per_span: 1024,
    };
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

/// The prost path's verdict: `None` = refused as malformed, else (accepted, unchanged). The
/// stamping check mirrors `ingest::stamp_tenant` (the in-crate tests use the real one).
fn slow(buf: &[u8], l: &LimitsConfig) -> Option<(usize, bool)> {
    let mut req = ExportTraceServiceRequest::decode(buf).ok()?;
    let o = validate::validate(&mut req, l);
    let mut stamped = false;
    for rs in &req.resource_spans {
        let Some(res) = &rs.resource else { continue };
        for kv in &res.attributes {
            if let Some(c) = CLAIMS.iter().find(|c| c.key == kv.key) {
                let same = matches!(&kv.value,
                    Some(AnyValue { value: Some(Value::StringValue(s)) }) if s == c.want);
                stamped |= !same;
            }
        }
    }
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
});
