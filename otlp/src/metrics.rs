//! The metrics signal (`opentelemetry.proto.collector.metrics.v1`): per-data-point validation,
//! the tenant stamp and the response with `partial_success` (`rejected_data_points`), on the
//! prost path, as for logs (`logs.rs`).
//!
//! Every kind OTLP has is accepted: gauge, sum, histogram, exponential histogram and summary,
//! with exemplars. What is checked, data point by data point:
//! - attributes (and exemplars' filtered attributes) against the attribute limits;
//! - exemplar trace context: ids present have their lengths (16 and 8 bytes);
//! - histogram: `bucket_counts` empty or one more than `explicit_bounds`, bounds strictly
//!   increasing, and the buckets adding up to `count`;
//! - exponential histogram: `scale` within OTLP's -10..=20, buckets adding up to `count`;
//! - summary: quantiles within 0..=1.
//!
//! A metric without a name loses all its points; metrics, scopes and resources left without
//! points are removed. A point holding a value nested deeper than prost can decode is cut out of
//! the bytes before decoding (`prune::prune_deep_data_points`), so it alone is rejected.

use bytes::Bytes;
use prost::Message;
use tracegate_proto::otlp::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use tracegate_proto::otlp::common::v1::KeyValue;
use tracegate_proto::otlp::metrics::v1::metric::Data;
use tracegate_proto::otlp::metrics::v1::{
    Exemplar, ExponentialHistogramDataPoint, HistogramDataPoint, Metric, SummaryDataPoint,
};

use crate::codec::Format;
use crate::scan::Claim;
use crate::validate::{check_attributes, truncate, Outcome, Reason, SpanLimits};

/// What `partial_success.error_message` counts.
pub const NOUN: &str = "data point(s)";

type Check = Result<(), (Reason, String)>;

fn bad(m: impl Into<String>) -> (Reason, String) {
    (Reason::DataPoint, m.into())
}

fn check_exemplars(ex: &[Exemplar], l: &SpanLimits) -> Check {
    for e in ex {
        if !e.trace_id.is_empty() && e.trace_id.len() != 16 {
            return Err((
                Reason::TraceId,
                format!(
                    "exemplar trace_id must be 16 bytes, got {}",
                    e.trace_id.len()
                ),
            ));
        }
        if !e.span_id.is_empty() && e.span_id.len() != 8 {
            return Err((
                Reason::SpanId,
                format!("exemplar span_id must be 8 bytes, got {}", e.span_id.len()),
            ));
        }
        check_attributes(&e.filtered_attributes, l)
            .map_err(|(r, m)| (r, format!("exemplar: {m}")))?;
    }
    Ok(())
}

fn common(attrs: &[KeyValue], ex: &[Exemplar], l: &SpanLimits) -> Check {
    check_attributes(attrs, l)?;
    check_exemplars(ex, l)
}

fn check_histogram(p: &HistogramDataPoint, l: &SpanLimits) -> Check {
    common(&p.attributes, &p.exemplars, l)?;
    if !p.bucket_counts.is_empty() {
        if p.bucket_counts.len() != p.explicit_bounds.len() + 1 {
            return Err(bad(format!(
                "{} bucket counts for {} bounds (want bounds + 1)",
                p.bucket_counts.len(),
                p.explicit_bounds.len()
            )));
        }
        let total = p
            .bucket_counts
            .iter()
            .try_fold(0u64, |a, c| a.checked_add(*c));
        if total != Some(p.count) {
            return Err(bad(format!("buckets do not add up to count {}", p.count)));
        }
    }
    if p.explicit_bounds
        .windows(2)
        .any(|w| w[0].partial_cmp(&w[1]) != Some(std::cmp::Ordering::Less))
    {
        return Err(bad("explicit_bounds are not strictly increasing"));
    }
    Ok(())
}

fn check_exponential(p: &ExponentialHistogramDataPoint, l: &SpanLimits) -> Check {
    common(&p.attributes, &p.exemplars, l)?;
    if !(-10..=20).contains(&p.scale) {
        return Err(bad(format!("scale {} is not -10..=20", p.scale)));
    }
    let mut buckets = [&p.positive, &p.negative]
        .into_iter()
        .flatten()
        .flat_map(|b| b.bucket_counts.iter());
    let total = buckets.try_fold(p.zero_count, |a, c| a.checked_add(*c));
    if total != Some(p.count) {
        return Err(bad(format!("buckets do not add up to count {}", p.count)));
    }
    Ok(())
}

fn check_summary(p: &SummaryDataPoint, l: &SpanLimits) -> Check {
    check_attributes(&p.attributes, l)?;
    if p.quantile_values
        .iter()
        .any(|q| !(0.0..=1.0).contains(&q.quantile))
    {
        return Err(bad("a quantile is outside 0..=1"));
    }
    Ok(())
}

/// Keeps the points of `points` that pass `check`; counts the rest in `out`.
fn keep<P>(
    points: &mut Vec<P>,
    name: &str,
    out: &mut Outcome,
    check: impl Fn(&P) -> Check,
) -> usize {
    let before = points.len();
    points.retain(|p| match check(p) {
        Ok(()) => true,
        Err((reason, m)) => {
            out.reject(1, reason, || format!("metric {:?}: {m}", truncate(name)));
            false
        }
    });
    if points.len() != before {
        out.modified = true;
    }
    points.len()
}

/// Data points of a metric, whatever its kind.
pub fn points(m: &Metric) -> usize {
    match &m.data {
        Some(Data::Gauge(g)) => g.data_points.len(),
        Some(Data::Sum(s)) => s.data_points.len(),
        Some(Data::Histogram(h)) => h.data_points.len(),
        Some(Data::ExponentialHistogram(e)) => e.data_points.len(),
        Some(Data::Summary(s)) => s.data_points.len(),
        None => 0,
    }
}

/// Validates one metric's points in place; returns how many are left.
fn check_metric(m: &mut Metric, l: &SpanLimits, out: &mut Outcome) -> usize {
    if m.name.is_empty() {
        let n = points(m);
        out.reject(n, Reason::DataPoint, || {
            format!("{n} point(s) of a metric without a name")
        });
        return 0;
    }
    if let Err((reason, msg)) = check_attributes(&m.metadata, l) {
        let n = points(m);
        out.reject(n, reason, || {
            format!("metric {:?} metadata: {msg}", truncate(&m.name))
        });
        return 0;
    }
    let name = m.name.clone();
    let number = |p: &tracegate_proto::otlp::metrics::v1::NumberDataPoint| {
        common(&p.attributes, &p.exemplars, l)
    };
    match &mut m.data {
        Some(Data::Gauge(g)) => keep(&mut g.data_points, &name, out, number),
        Some(Data::Sum(s)) => keep(&mut s.data_points, &name, out, number),
        Some(Data::Histogram(h)) => keep(&mut h.data_points, &name, out, |p| check_histogram(p, l)),
        Some(Data::ExponentialHistogram(e)) => {
            keep(&mut e.data_points, &name, out, |p| check_exponential(p, l))
        }
        Some(Data::Summary(s)) => keep(&mut s.data_points, &name, out, |p| check_summary(p, l)),
        None => 0,
    }
}

/// Validates `req` in place: removes invalid points and any metric, scope or resource left
/// empty by that.
pub fn validate(req: &mut ExportMetricsServiceRequest, l: &SpanLimits) -> Outcome {
    let mut out = Outcome::default();
    let before_rm = req.resource_metrics.len();
    req.resource_metrics.retain_mut(|rm| {
        if let Some(res) = &rm.resource {
            if let Err((reason, m)) = check_attributes(&res.attributes, l) {
                let n: usize = rm
                    .scope_metrics
                    .iter()
                    .flat_map(|sm| sm.metrics.iter())
                    .map(points)
                    .sum();
                out.reject(n, reason, || format!("resource: {m}"));
                return false;
            }
        }
        let before_sm = rm.scope_metrics.len();
        rm.scope_metrics.retain_mut(|sm| {
            if let Some(scope) = &sm.scope {
                if let Err((reason, m)) = check_attributes(&scope.attributes, l) {
                    let n: usize = sm.metrics.iter().map(points).sum();
                    out.reject(n, reason, || format!("scope: {m}"));
                    return false;
                }
            }
            let before = sm.metrics.len();
            sm.metrics.retain_mut(|m| {
                let kept = check_metric(m, l, &mut out);
                out.accepted += kept;
                kept > 0
            });
            if sm.metrics.len() != before {
                out.modified = true;
            }
            !sm.metrics.is_empty()
        });
        if rm.scope_metrics.len() != before_sm {
            out.modified = true;
        }
        !rm.scope_metrics.is_empty()
    });
    if req.resource_metrics.len() != before_rm {
        out.modified = true;
    }
    out
}

/// Overwrites every resource attribute named by a claim with the claim's value (as for spans,
/// `stamp.rs`). Returns whether anything changed.
pub fn stamp_tenant(req: &mut ExportMetricsServiceRequest, claims: &[Claim<'_>]) -> bool {
    crate::stamp::stamp_resources(
        req.resource_metrics.iter_mut().map(|r| &mut r.resource),
        claims,
    )
}

pub fn export_response(rejected: usize, error_message: String) -> ExportMetricsServiceResponse {
    ExportMetricsServiceResponse {
        // Unset when everything was kept: the spec's "full success".
        partial_success: (rejected > 0).then_some(ExportMetricsPartialSuccess {
            rejected_data_points: rejected as i64,
            error_message,
        }),
    }
}

pub fn encode_export_response(format: Format, resp: &ExportMetricsServiceResponse) -> Bytes {
    let partial = resp
        .partial_success
        .as_ref()
        .map(|p| (p.rejected_data_points, p.error_message.as_str()));
    crate::response::encode(
        format,
        || resp.encode_to_vec(),
        "rejectedDataPoints",
        partial,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracegate_proto::otlp::metrics::v1::exponential_histogram_data_point::Buckets;
    use tracegate_proto::otlp::metrics::v1::summary_data_point::ValueAtQuantile;
    use tracegate_proto::otlp::metrics::v1::{
        ExponentialHistogram, Gauge, Histogram, NumberDataPoint, ResourceMetrics, ScopeMetrics,
        Summary,
    };

    fn metric(name: &str, data: Data) -> Metric {
        Metric {
            name: name.into(),
            data: Some(data),
            ..Default::default()
        }
    }

    fn req(metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn hist(counts: Vec<u64>, bounds: Vec<f64>, count: u64) -> HistogramDataPoint {
        HistogramDataPoint {
            bucket_counts: counts,
            explicit_bounds: bounds,
            count,
            ..Default::default()
        }
    }

    #[test]
    fn each_kind_is_checked_point_by_point() {
        let gauge = metric(
            "g",
            Data::Gauge(Gauge {
                data_points: vec![
                    NumberDataPoint::default(),
                    NumberDataPoint {
                        exemplars: vec![Exemplar {
                            trace_id: vec![1; 3],
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                ],
            }),
        );
        let h = metric(
            "h",
            Data::Histogram(Histogram {
                data_points: vec![
                    hist(vec![1, 2, 3], vec![1.0, 5.0], 6),
                    hist(vec![1, 2], vec![1.0, 5.0], 3),
                    hist(vec![1, 2, 3], vec![5.0, 1.0], 6),
                    hist(vec![1, 2, 3], vec![1.0, 5.0], 7),
                    hist(vec![], vec![], 9),
                ],
                ..Default::default()
            }),
        );
        let e = metric(
            "e",
            Data::ExponentialHistogram(ExponentialHistogram {
                data_points: vec![
                    ExponentialHistogramDataPoint {
                        scale: 3,
                        zero_count: 1,
                        count: 4,
                        positive: Some(Buckets {
                            offset: -2,
                            bucket_counts: vec![1, 2],
                        }),
                        ..Default::default()
                    },
                    ExponentialHistogramDataPoint {
                        scale: 40,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }),
        );
        let s = metric(
            "s",
            Data::Summary(Summary {
                data_points: vec![
                    SummaryDataPoint {
                        quantile_values: vec![ValueAtQuantile {
                            quantile: 0.99,
                            value: 1.0,
                        }],
                        ..Default::default()
                    },
                    SummaryDataPoint {
                        quantile_values: vec![ValueAtQuantile {
                            quantile: 1.5,
                            value: 1.0,
                        }],
                        ..Default::default()
                    },
                ],
            }),
        );
        let unnamed = metric(
            "",
            Data::Gauge(Gauge {
                data_points: vec![NumberDataPoint::default(); 2],
            }),
        );
        let mut r = req(vec![gauge, h, e, s, unnamed]);
        let o = validate(&mut r, &SpanLimits::default());
        // gauge 1 of 2, histogram 2 of 5, exponential 1 of 2, summary 1 of 2, unnamed 0 of 2.
        assert_eq!((o.accepted, o.rejected), (5, 8), "{:?}", o.messages);
        assert_eq!(r.resource_metrics[0].scope_metrics[0].metrics.len(), 4);
        assert!(o
            .error_message_for(NOUN)
            .starts_with("8 data point(s) rejected"));
    }

    #[test]
    fn response_counts_points() {
        let resp = export_response(3, "bad".into());
        let v: serde_json::Value =
            serde_json::from_slice(&encode_export_response(Format::Json, &resp)).unwrap();
        assert_eq!(v["partialSuccess"]["rejectedDataPoints"], "3");
    }
}
