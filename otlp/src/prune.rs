//! Per-span (per-log-record, per-data-point) rejection of attribute values nested deeper than
//! the decoder can follow.
//!
//! prost refuses a message nested more than 100 levels deep (`RECURSION_LIMIT`), and an
//! `AnyValue` costs two levels per level of nesting (AnyValue → ArrayValue/KeyValueList →
//! AnyValue), so a value about 47 levels deep fails the whole request: every valid span beside
//! it would be lost with a 400. Before that can happen, this walk finds the spans whose
//! attributes (their own, their events' and links') hold a value deeper than
//! `min(limits.max_attribute_depth, DECODER_DEPTH_LIMIT)` and cuts them out of the request
//! bytes; a resource or scope with such an attribute takes its spans with it. The rest then
//! decodes and is validated as usual, and the cut spans are reported in `partial_success`.
//!
//! The walk reads the wire with the scanner's cursor (`scan::Cur`: one wire reader, one
//! varint rule). Its recursion is bounded by the depth limit (it stops one level past it), and
//! it never materialises a value, so a deep value costs no allocation and no recursive drop.
//! Anything malformed makes it give up (`None`): prost then gives its answer (400) as before.

use prost::encoding::{encode_key, encode_varint, WireType};

use crate::scan::{Cur, LEN};

/// Deepest `AnyValue` nesting kept whatever `limits.max_attribute_depth` says: well inside
/// prost's recursion limit with the span's own enclosing messages (request, resource spans,
/// scope spans, span, event or link, key-value) counted.
pub const DECODER_DEPTH_LIMIT: usize = 40;

/// A request with the too-deep spans cut out.
#[derive(Debug)]
pub struct Pruned {
    pub request: Vec<u8>,
    /// Spans cut out.
    pub rejected: usize,
}

/// Cuts out the spans holding a value nested deeper than `max_depth` (capped at
/// [`DECODER_DEPTH_LIMIT`]); `None` when there is none or the bytes are malformed.
pub fn prune_deep_spans(buf: &[u8], max_depth: usize) -> Option<Pruned> {
    prune_deep(buf, max_depth, SPANS)
}

/// [`prune_deep_spans`] for an `ExportLogsServiceRequest`: cuts out the log records whose
/// attributes or body hold a value nested deeper than `max_depth` (the field numbers of
/// `ResourceLogs` and `ScopeLogs` are those of `ResourceSpans` and `ScopeSpans`).
pub fn prune_deep_log_records(buf: &[u8], max_depth: usize) -> Option<Pruned> {
    prune_deep(buf, max_depth, LOG_RECORDS)
}

/// [`prune_deep_spans`] for an `ExportMetricsServiceRequest`: cuts out, one by one, the data
/// points whose attributes or exemplars' filtered attributes hold a value nested deeper than
/// `max_depth` (a metric left without points is then removed by validation, as always). The
/// items under a scope are `Metric`s here, each holding its points.
pub fn prune_deep_data_points(buf: &[u8], max_depth: usize) -> Option<Pruned> {
    prune_deep(buf, max_depth, METRICS)
}

fn prune_deep(buf: &[u8], max_depth: usize, items: Items) -> Option<Pruned> {
    let w = Walk {
        limit: max_depth.min(DECODER_DEPTH_LIMIT),
        items,
    };
    let mut rejected = 0usize;
    let out = w.rebuild(buf, &mut rejected, |w, tag, field, rejected| match tag {
        1 => w.resource_spans(field, rejected),
        _ => Some(Edit::Keep),
    })?;
    (rejected > 0).then_some(Pruned {
        request: out,
        rejected,
    })
}

/// What becomes of one length-delimited field.
enum Edit {
    Keep,
    Replace(Vec<u8>),
    Drop,
}

impl Edit {
    /// A rebuilt message `out`: kept as it was when nothing was cut from it (the count still
    /// `before`), else replaced.
    fn of(before: usize, rejected: usize, out: Vec<u8>) -> Edit {
        if rejected == before {
            Edit::Keep
        } else {
            Edit::Replace(out)
        }
    }
}

/// What the walk does with the items under a scope (field 2 of `ScopeSpans`, `ScopeLogs`,
/// `ScopeMetrics`: the field numbers down to there are the same for the three signals).
#[derive(Clone, Copy)]
struct Items {
    /// The item's fate; adds the rejections it made to the count.
    edit: fn(&Walk, &[u8], &mut usize) -> Option<Edit>,
    /// The rejections a whole item counts when its resource or scope takes it with them.
    count: fn(&Walk, &[u8]) -> Option<usize>,
}

const SPANS: Items = Items {
    edit: |w, span, n| w.whole(w.span_too_deep(span)?, n),
    count: |_, _| Some(1),
};

const LOG_RECORDS: Items = Items {
    edit: |w, record, n| w.whole(w.log_record_too_deep(record)?, n),
    count: |_, _| Some(1),
};

const METRICS: Items = Items {
    edit: Walk::metric_edit,
    count: Walk::metric_points,
};

struct Walk {
    limit: usize,
    items: Items,
}

impl Walk {
    /// Copies `buf` field by field; `edit` decides about each length-delimited field.
    fn rebuild(
        &self,
        buf: &[u8],
        rejected: &mut usize,
        edit: impl Fn(&Self, u32, &[u8], &mut usize) -> Option<Edit>,
    ) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(buf.len());
        let mut c = Cur::new(buf);
        while !c.done() {
            let start = c.pos();
            let (tag, wt) = c.key().ok()?;
            if wt != LEN {
                c.skip(wt, 1).ok()?;
                out.extend_from_slice(&buf[start..c.pos()]);
                continue;
            }
            let field = c.len_delimited().ok()?;
            match edit(self, tag, field, rejected)? {
                Edit::Keep => out.extend_from_slice(&buf[start..c.pos()]),
                Edit::Replace(bytes) => {
                    encode_key(tag, WireType::LengthDelimited, &mut out);
                    encode_varint(bytes.len() as u64, &mut out);
                    out.extend_from_slice(&bytes);
                }
                Edit::Drop => {}
            }
        }
        Some(out)
    }

    fn resource_spans(&self, buf: &[u8], rejected: &mut usize) -> Option<Edit> {
        // A resource with a too-deep attribute: all of its spans go.
        if self.any_field(buf, 1, |w, r| w.attributes_too_deep(r, 1))? {
            *rejected += self.count_items(buf)?;
            return Some(Edit::Drop);
        }
        let before = *rejected;
        let out = self.rebuild(buf, rejected, |w, tag, field, rejected| match tag {
            2 => w.scope_spans(field, rejected),
            _ => Some(Edit::Keep),
        })?;
        Some(Edit::of(before, *rejected, out))
    }

    fn scope_spans(&self, buf: &[u8], rejected: &mut usize) -> Option<Edit> {
        if self.any_field(buf, 1, |w, scope| w.attributes_too_deep(scope, 3))? {
            *rejected += self.scope_items(buf)?;
            return Some(Edit::Drop);
        }
        let before = *rejected;
        let out = self.rebuild(buf, rejected, |w, tag, item, rejected| match tag {
            2 => (w.items.edit)(w, item, rejected),
            _ => Some(Edit::Keep),
        })?;
        Some(Edit::of(before, *rejected, out))
    }

    fn span_too_deep(&self, span: &[u8]) -> Option<bool> {
        Some(
            self.any_field(span, 9, |w, kv| w.key_value_too_deep(kv, 1))?
                || self.any_field(span, 11, |w, event| w.attributes_too_deep(event, 3))?
                || self.any_field(span, 13, |w, link| w.attributes_too_deep(link, 4))?,
        )
    }

    /// A `LogRecord`: its attributes (6) and its body (5, an `AnyValue` at depth 1).
    fn log_record_too_deep(&self, record: &[u8]) -> Option<bool> {
        Some(
            self.any_field(record, 6, |w, kv| w.key_value_too_deep(kv, 1))?
                || self.any_field(record, 5, |w, body| w.value_too_deep(body, 1))?,
        )
    }

    /// A span or log record: dropped whole (one rejection) when `too_deep`.
    fn whole(&self, too_deep: bool, rejected: &mut usize) -> Option<Edit> {
        if too_deep {
            *rejected += 1;
            return Some(Edit::Drop);
        }
        Some(Edit::Keep)
    }

    /// A `Metric`: its data (5 gauge, 7 sum, 9 histogram, 10 exponential histogram, 11
    /// summary) rebuilt without the too-deep points.
    fn metric_edit(&self, metric: &[u8], rejected: &mut usize) -> Option<Edit> {
        let before = *rejected;
        let out = self.rebuild(metric, rejected, |w, kind, data, rejected| match kind {
            5 | 7 | 9 | 10 | 11 => {
                let before = *rejected;
                let out = w.rebuild(data, rejected, |w, tag, point, rejected| {
                    w.whole(tag == 1 && w.point_too_deep(kind, point)?, rejected)
                })?;
                Some(Edit::of(before, *rejected, out))
            }
            _ => Some(Edit::Keep),
        })?;
        Some(Edit::of(before, *rejected, out))
    }

    /// A data point of a metric of `kind` (its `Metric` field number): its attributes and its
    /// exemplars' filtered attributes (7), whose field numbers depend on the kind.
    fn point_too_deep(&self, kind: u32, point: &[u8]) -> Option<bool> {
        let (attributes, exemplars) = match kind {
            9 => (9, Some(8)),
            10 => (1, Some(11)),
            11 => (7, None),
            _ => (7, Some(5)),
        };
        Some(
            self.attributes_too_deep(point, attributes)?
                || match exemplars {
                    Some(f) => self.any_field(point, f, |w, e| w.attributes_too_deep(e, 7))?,
                    None => false,
                },
        )
    }

    /// The data points of a `Metric`.
    fn metric_points(&self, metric: &[u8]) -> Option<usize> {
        let mut n = 0;
        for kind in [5, 7, 9, 10, 11] {
            self.any_field(metric, kind, |w, data| {
                n += w.fields(data, 1)?;
                Some(false)
            })?;
        }
        Some(n)
    }

    /// The rejections of every item under a scope (`ScopeSpans` / `Logs` / `Metrics`).
    fn scope_items(&self, scope: &[u8]) -> Option<usize> {
        let mut n = 0;
        self.any_field(scope, 2, |w, item| {
            n += (w.items.count)(w, item)?;
            Some(false)
        })?;
        Some(n)
    }

    /// The rejections of every item under a resource.
    fn count_items(&self, resource: &[u8]) -> Option<usize> {
        let mut n = 0;
        self.any_field(resource, 2, |w, scope| {
            n += w.scope_items(scope)?;
            Some(false)
        })?;
        Some(n)
    }

    /// How many length-delimited fields `tag` `buf` holds.
    fn fields(&self, buf: &[u8], tag: u32) -> Option<usize> {
        let mut n = 0;
        self.any_field(buf, tag, |_, _| {
            n += 1;
            Some(false)
        })?;
        Some(n)
    }

    /// True if `check` is true for any length-delimited field `tag` of `buf`.
    fn any_field(
        &self,
        buf: &[u8],
        tag: u32,
        mut check: impl FnMut(&Self, &[u8]) -> Option<bool>,
    ) -> Option<bool> {
        let mut c = Cur::new(buf);
        let mut found = false;
        while !c.done() {
            let (t, wt) = c.key().ok()?;
            if t == tag && wt == LEN {
                found |= check(self, c.len_delimited().ok()?)?;
            } else {
                c.skip(wt, 1).ok()?;
            }
        }
        Some(found)
    }

    /// A message whose field `tag` is `repeated KeyValue` (attributes at depth 1).
    fn attributes_too_deep(&self, buf: &[u8], tag: u32) -> Option<bool> {
        self.any_field(buf, tag, |w, kv| w.key_value_too_deep(kv, 1))
    }

    /// A `KeyValue` whose value sits at `depth`.
    fn key_value_too_deep(&self, kv: &[u8], depth: usize) -> Option<bool> {
        self.any_field(kv, 2, |w, value| w.value_too_deep(value, depth))
    }

    /// An `AnyValue` at `depth`: array (5) and kvlist (6) members sit one level deeper. The
    /// recursion stops one level past the limit.
    fn value_too_deep(&self, value: &[u8], depth: usize) -> Option<bool> {
        if depth > self.limit {
            return Some(true);
        }
        Some(
            self.any_field(value, 5, |w, array| {
                w.any_field(array, 1, |w, v| w.value_too_deep(v, depth + 1))
            })? || self.any_field(value, 6, |w, kvlist| {
                w.any_field(kvlist, 1, |w, kv| w.key_value_too_deep(kv, depth + 1))
            })?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use tracegate_proto::otlp::collector::trace::v1::ExportTraceServiceRequest;
    use tracegate_proto::otlp::common::v1::{any_value, AnyValue, ArrayValue, KeyValue};
    use tracegate_proto::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span};

    /// Appends field `tag` (length-delimited) holding `bytes` to `out`.
    fn put(out: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(bytes.len() as u64, out);
        out.extend_from_slice(bytes);
    }

    /// Field `tag` holding `bytes`, alone.
    fn field(tag: u32, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put(&mut out, tag, bytes);
        out
    }

    /// Raw AnyValue bytes nested `depth` levels (arrays), so the test never builds (or drops)
    /// a deep value itself.
    fn deep_value(depth: usize) -> Vec<u8> {
        let mut v = AnyValue {
            value: Some(any_value::Value::IntValue(1)),
        }
        .encode_to_vec();
        for _ in 1..depth {
            // AnyValue { array_value: ArrayValue { values: [v] } }.
            v = field(5, &field(1, &v));
        }
        v
    }

    fn span(name: &str) -> Span {
        Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            name: name.into(),
            ..Default::default()
        }
    }

    /// A request of `good` spans plus one span whose attribute is nested `depth` levels, put
    /// together by hand: KeyValue { key, value: deep } in the span, in the scope spans, in the
    /// resource spans.
    fn request(good: usize, depth: usize) -> Vec<u8> {
        let mut kv = field(1, b"k");
        put(&mut kv, 2, &deep_value(depth));
        let mut deep_span = span("deep").encode_to_vec();
        put(&mut deep_span, 9, &kv);
        let mut scope = ScopeSpans {
            spans: (0..good).map(|i| span(&format!("good-{i}"))).collect(),
            ..Default::default()
        }
        .encode_to_vec();
        put(&mut scope, 2, &deep_span);
        field(1, &field(2, &scope))
    }

    #[test]
    fn deep_spans_are_cut_and_the_rest_decodes() {
        for depth in [33, 49, 99, 5000] {
            let bytes = request(3, depth);
            if depth >= 49 {
                assert!(ExportTraceServiceRequest::decode(&bytes[..]).is_err());
            }
            let p = prune_deep_spans(&bytes, 32).expect("pruned");
            assert_eq!(p.rejected, 1, "depth {depth}");
            let req = ExportTraceServiceRequest::decode(&p.request[..]).unwrap();
            let names: Vec<_> = req.resource_spans[0].scope_spans[0]
                .spans
                .iter()
                .map(|s| s.name.as_str())
                .collect();
            assert_eq!(names, ["good-0", "good-1", "good-2"], "depth {depth}");
        }
    }

    /// A log record with a too-deep body or attribute is cut; its neighbours decode.
    #[test]
    fn deep_log_records_are_cut_by_body_or_attribute() {
        use tracegate_proto::otlp::collector::logs::v1::ExportLogsServiceRequest;
        use tracegate_proto::otlp::logs::v1::{LogRecord, ScopeLogs};
        for depth in [49, 5000] {
            let good = |name: &str| LogRecord {
                event_name: name.into(),
                ..Default::default()
            };
            let mut scope = ScopeLogs {
                log_records: vec![good("a"), good("b")],
                ..Default::default()
            }
            .encode_to_vec();
            let mut deep_body = good("deep-body").encode_to_vec();
            put(&mut deep_body, 5, &deep_value(depth));
            let mut kv = field(1, b"k");
            put(&mut kv, 2, &deep_value(depth));
            let mut deep_attr = good("deep-attr").encode_to_vec();
            put(&mut deep_attr, 6, &kv);
            put(&mut scope, 2, &deep_body);
            put(&mut scope, 2, &deep_attr);
            let bytes = field(1, &field(2, &scope));
            assert!(ExportLogsServiceRequest::decode(&bytes[..]).is_err());
            let p = prune_deep_log_records(&bytes, 32).expect("pruned");
            assert_eq!(p.rejected, 2, "depth {depth}");
            let req = ExportLogsServiceRequest::decode(&p.request[..]).unwrap();
            let names: Vec<_> = req.resource_logs[0].scope_logs[0]
                .log_records
                .iter()
                .map(|r| r.event_name.as_str())
                .collect();
            assert_eq!(names, ["a", "b"]);
        }
    }

    /// Data points with a too-deep attribute or exemplar attribute are cut one by one; a
    /// histogram's deep point goes, its neighbour stays.
    #[test]
    fn deep_data_points_are_cut_one_by_one() {
        use tracegate_proto::otlp::collector::metrics::v1::ExportMetricsServiceRequest;
        use tracegate_proto::otlp::metrics::v1::{
            Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ScopeMetrics,
        };
        let mut kv = field(1, b"k");
        put(&mut kv, 2, &deep_value(60));
        // Gauge: three points, the middle one with a deep attribute (field 7).
        let point = |t: u64| NumberDataPoint {
            time_unix_nano: t,
            ..Default::default()
        };
        let mut deep_point = point(2).encode_to_vec();
        put(&mut deep_point, 7, &kv);
        let mut gauge = Gauge {
            data_points: vec![point(1)],
        }
        .encode_to_vec();
        put(&mut gauge, 1, &deep_point);
        put(&mut gauge, 1, &point(3).encode_to_vec());
        let mut gauge_metric = Metric {
            name: "g".into(),
            ..Default::default()
        }
        .encode_to_vec();
        put(&mut gauge_metric, 5, &gauge);
        // Histogram: a point whose exemplar (field 8) has a deep filtered attribute (7).
        let exemplar = field(7, &kv);
        let mut deep_hist = HistogramDataPoint::default().encode_to_vec();
        put(&mut deep_hist, 8, &exemplar);
        let mut hist = Histogram {
            data_points: vec![HistogramDataPoint {
                count: 1,
                ..Default::default()
            }],
            ..Default::default()
        }
        .encode_to_vec();
        put(&mut hist, 1, &deep_hist);
        let mut hist_metric = Metric {
            name: "h".into(),
            ..Default::default()
        }
        .encode_to_vec();
        put(&mut hist_metric, 9, &hist);
        let mut scope = ScopeMetrics::default().encode_to_vec();
        put(&mut scope, 2, &gauge_metric);
        put(&mut scope, 2, &hist_metric);
        let bytes = field(1, &field(2, &scope));
        assert!(ExportMetricsServiceRequest::decode(&bytes[..]).is_err());
        let p = prune_deep_data_points(&bytes, 32).expect("pruned");
        assert_eq!(p.rejected, 2);
        let req = ExportMetricsServiceRequest::decode(&p.request[..]).unwrap();
        let metrics = &req.resource_metrics[0].scope_metrics[0].metrics;
        let times: Vec<u64> = match &metrics[0].data {
            Some(tracegate_proto::otlp::metrics::v1::metric::Data::Gauge(g)) => {
                g.data_points.iter().map(|p| p.time_unix_nano).collect()
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(times, [1, 3]);
        match &metrics[1].data {
            Some(tracegate_proto::otlp::metrics::v1::metric::Data::Histogram(h)) => {
                assert_eq!(h.data_points.len(), 1);
                assert_eq!(h.data_points[0].count, 1);
            }
            other => panic!("{other:?}"),
        }
        // A deep scope attribute takes all five points with it.
        let mut scope_attr = field(3, &kv);
        scope_attr = field(1, &scope_attr);
        scope_attr.extend_from_slice(&scope);
        let bytes = field(1, &field(2, &scope_attr));
        assert_eq!(prune_deep_data_points(&bytes, 32).unwrap().rejected, 5);
    }

    #[test]
    fn shallow_or_malformed_requests_are_left_alone() {
        assert!(prune_deep_spans(&request(2, 32), 32).is_none());
        let bytes = request(2, 60);
        assert!(prune_deep_spans(&bytes[..bytes.len() - 3], 32).is_none());
        // The decoder's limit caps a looser configuration.
        assert_eq!(prune_deep_spans(&request(1, 45), 99).unwrap().rejected, 1);
    }

    #[test]
    fn a_deep_resource_attribute_takes_its_spans() {
        let value = AnyValue {
            value: Some(any_value::Value::ArrayValue(ArrayValue { values: vec![] })),
        };
        let mut req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Default::default()),
                scope_spans: vec![ScopeSpans {
                    spans: vec![span("a"), span("b")],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        req.resource_spans[0]
            .resource
            .as_mut()
            .unwrap()
            .attributes
            .push(KeyValue {
                key: "k".into(),
                value: Some(value),
                ..Default::default()
            });
        // The value sits at depth 1: kept at limit 1, cut (with both spans) at limit 0.
        let bytes = req.encode_to_vec();
        assert!(prune_deep_spans(&bytes, 1).is_none());
        let p = prune_deep_spans(&bytes, 0).unwrap();
        assert_eq!(p.rejected, 2);
        let pruned = ExportTraceServiceRequest::decode(&p.request[..]).unwrap();
        assert!(pruned.resource_spans.is_empty());
    }
}
