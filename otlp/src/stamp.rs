//! The tenant stamp on the prost path: resource attributes that claim a tenant get the value of
//! the authenticated principal, never the client's. (The scan checks the same claims on the
//! bytes and sends a request here only when one of them would change.)

use tracegate_proto::otlp::collector::trace::v1::ExportTraceServiceRequest;
use tracegate_proto::otlp::common::v1::{any_value::Value, AnyValue};
use tracegate_proto::otlp::resource::v1::Resource;

use crate::scan::Claim;

/// Overwrites every resource attribute named by a claim with the claim's value. Returns whether
/// anything changed.
pub fn stamp_tenant(req: &mut ExportTraceServiceRequest, claims: &[Claim<'_>]) -> bool {
    stamp_resources(
        req.resource_spans.iter_mut().map(|rs| &mut rs.resource),
        claims,
    )
}

/// The same over any signal's resources (`logs.rs`, `metrics.rs`).
pub fn stamp_resources<'a>(
    resources: impl Iterator<Item = &'a mut Option<Resource>>,
    claims: &[Claim<'_>],
) -> bool {
    let mut changed = false;
    for res in resources.flatten() {
        for kv in &mut res.attributes {
            let Some(claim) = claims.iter().find(|c| c.key == kv.key) else {
                continue;
            };
            let is_same = matches!(&kv.value, Some(AnyValue { value: Some(Value::StringValue(s)) }) if s == claim.want);
            if !is_same {
                kv.value = Some(AnyValue {
                    value: Some(Value::StringValue(claim.want.to_string())),
                });
                changed = true;
            }
        }
    }
    changed
}
