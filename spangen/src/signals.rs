//! The same models as other signals (issue 25): a span model becomes a log record (a GenAI
//! event carrying the span's attributes, prompts included, so a log request weighs what its
//! span request weighs) or a metric data point (the span's first attributes, its ids in an
//! exemplar). Ids are the caller's, as for spans, so the load tool patches them in place.
//!
//! Metric requests hold three metrics, in model order: the first third of the models are
//! points of a monotonic sum, the second third of a histogram (10 buckets), the rest of a gauge.

use tracegate_proto::otlp::collector::logs::v1::ExportLogsServiceRequest;
use tracegate_proto::otlp::collector::metrics::v1::ExportMetricsServiceRequest;
use tracegate_proto::otlp::common::v1::{any_value::Value, AnyValue, InstrumentationScope};
use tracegate_proto::otlp::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use tracegate_proto::otlp::metrics::v1::{
    exemplar, metric::Data, number_data_point, Exemplar, Gauge, Histogram, HistogramDataPoint,
    Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use tracegate_proto::otlp::resource::v1::Resource;

use crate::{kv, kv_str, Sender, SpanIds, SpanModel};

/// Attributes a data point keeps of its span model's (metric series have few dimensions).
pub const POINT_ATTRIBUTES: usize = 4;

fn resource(from: &Sender<'_>) -> Option<Resource> {
    Some(Resource {
        attributes: from.resource.iter().map(|(k, v)| kv_str(k, v)).collect(),
        ..Default::default()
    })
}

fn scope(from: &Sender<'_>) -> Option<InstrumentationScope> {
    Some(InstrumentationScope {
        name: from.scope.into(),
        version: from.scope_version.into(),
        ..Default::default()
    })
}

/// Log record of model `m`: a GenAI event (`gen_ai.client.inference.operation.details`) with
/// the span's attributes, its name as the body, the span's ids as the trace context.
pub fn log_record(m: &SpanModel, ids: SpanIds) -> LogRecord {
    LogRecord {
        time_unix_nano: m.start,
        observed_time_unix_nano: m.end,
        severity_number: if m.status_ok { 9 } else { 17 },
        severity_text: if m.status_ok { "INFO" } else { "ERROR" }.into(),
        event_name: "gen_ai.client.inference.operation.details".into(),
        body: Some(AnyValue {
            value: Some(Value::StringValue(m.name.clone())),
        }),
        attributes: m.attrs.iter().map(|(k, v)| kv(k, v)).collect(),
        flags: 1,
        trace_id: ids.trace.to_vec(),
        span_id: ids.span.to_vec(),
        ..Default::default()
    }
}

/// The log records of `models`, record `i` with `ids(i)`, under one resource and scope.
pub fn logs_request(
    models: &[SpanModel],
    ids: impl Fn(u64) -> SpanIds,
    from: &Sender<'_>,
) -> ExportLogsServiceRequest {
    let log_records = models
        .iter()
        .enumerate()
        .map(|(i, m)| log_record(m, ids(i as u64)))
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource(from),
            scope_logs: vec![ScopeLogs {
                scope: scope(from),
                log_records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn exemplar(m: &SpanModel, ids: &SpanIds) -> Exemplar {
    Exemplar {
        time_unix_nano: m.end,
        value: Some(exemplar::Value::AsDouble((m.end - m.start) as f64 / 1e9)),
        span_id: ids.span.to_vec(),
        trace_id: ids.trace.to_vec(),
        ..Default::default()
    }
}

/// The data points of `models` (see the module docs), point `i` with exemplar ids `ids(i)`.
pub fn metrics_request(
    models: &[SpanModel],
    ids: impl Fn(u64) -> SpanIds,
    from: &Sender<'_>,
) -> ExportMetricsServiceRequest {
    let third = models.len().div_ceil(3);
    let attrs = |m: &SpanModel| {
        m.attrs
            .iter()
            .take(POINT_ATTRIBUTES)
            .map(|(k, v)| kv(k, v))
            .collect::<Vec<_>>()
    };
    let number = |i: usize, m: &SpanModel, v: number_data_point::Value| NumberDataPoint {
        attributes: attrs(m),
        start_time_unix_nano: m.start - 60_000_000_000,
        time_unix_nano: m.start,
        value: Some(v),
        exemplars: vec![exemplar(m, &ids(i as u64))],
        ..Default::default()
    };
    let (mut sum, mut hist, mut gauge) = (vec![], vec![], vec![]);
    for (i, m) in models.iter().enumerate() {
        let secs = (m.end - m.start) as f64 / 1e9;
        match i / third {
            0 => sum.push(number(i, m, number_data_point::Value::AsInt(i as i64 + 1))),
            1 => hist.push(HistogramDataPoint {
                attributes: attrs(m),
                start_time_unix_nano: m.start - 60_000_000_000,
                time_unix_nano: m.start,
                count: 10,
                sum: Some(secs * 10.0),
                bucket_counts: vec![1; 10],
                explicit_bounds: (1..10).map(|b| b as f64 * 0.05).collect(),
                exemplars: vec![exemplar(m, &ids(i as u64))],
                min: Some(secs / 2.0),
                max: Some(secs * 2.0),
                ..Default::default()
            }),
            _ => gauge.push(number(i, m, number_data_point::Value::AsDouble(secs))),
        }
    }
    let metric = |name: &str, unit: &str, data: Data| Metric {
        name: name.into(),
        description: String::new(),
        unit: unit.into(),
        data: Some(data),
        ..Default::default()
    };
    let mut metrics = vec![];
    if !sum.is_empty() {
        metrics.push(metric(
            "gen_ai.client.token.usage",
            "{token}",
            Data::Sum(Sum {
                data_points: sum,
                aggregation_temporality: 2,
                is_monotonic: true,
            }),
        ));
    }
    if !hist.is_empty() {
        metrics.push(metric(
            "gen_ai.client.operation.duration",
            "s",
            Data::Histogram(Histogram {
                data_points: hist,
                aggregation_temporality: 2,
            }),
        ));
    }
    if !gauge.is_empty() {
        metrics.push(metric(
            "gen_ai.server.time_per_output_token",
            "s",
            Data::Gauge(Gauge { data_points: gauge }),
        ));
    }
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource(from),
            scope_metrics: vec![ScopeMetrics {
                scope: scope(from),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}
