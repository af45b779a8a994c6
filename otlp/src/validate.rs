//! Span validation. Invalid spans are removed and counted (reported to the client in
//! `partial_success`); valid spans of the same request are kept. Whole resources or scopes whose
//! own attributes break a limit take their spans with them.

use tracegate_proto::otlp::collector::trace::v1::ExportTraceServiceRequest;
use tracegate_proto::otlp::common::v1::{any_value::Value, AnyValue, KeyValue};
use tracegate_proto::otlp::trace::v1::Span;

/// The per-span limits a request is checked against (the gateway's `[limits]` section maps onto
/// it; the defaults are that section's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanLimits {
    /// Attributes per span, resource, scope, event and link.
    pub max_attributes: usize,
    /// Size of one attribute value (strings and bytes), counted whole, nested values included.
    pub max_attribute_value_bytes: usize,
    /// Nesting depth of AnyValue (arrays and kvlists). Values deeper than this are rejected.
    pub max_attribute_depth: usize,
    pub max_events_per_span: usize,
    pub max_links_per_span: usize,
}

impl Default for SpanLimits {
    fn default() -> Self {
        Self {
            max_attributes: 1024,
            // LLM prompts and completions of 1 MiB and more are kept whole.
            max_attribute_value_bytes: 16 * 1024 * 1024,
            max_attribute_depth: 32,
            max_events_per_span: 1024,
            max_links_per_span: 1024,
        }
    }
}

/// Why a span was rejected. A bounded set: used as a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    TraceId,
    SpanId,
    ParentSpanId,
    TooManyAttributes,
    AttributeTooDeep,
    AttributeTooLarge,
    TooManyEvents,
    TooManyLinks,
    /// A log record's severity number outside OTLP's 0-24.
    Severity,
    /// A metric data point whose shape is inconsistent (buckets, scale, quantiles), or a
    /// metric without a name.
    DataPoint,
}

impl Reason {
    pub const ALL: [Reason; 10] = [
        Reason::TraceId,
        Reason::SpanId,
        Reason::ParentSpanId,
        Reason::TooManyAttributes,
        Reason::AttributeTooDeep,
        Reason::AttributeTooLarge,
        Reason::TooManyEvents,
        Reason::TooManyLinks,
        Reason::Severity,
        Reason::DataPoint,
    ];
    pub fn label(self) -> &'static str {
        match self {
            Reason::TraceId => "invalid_trace_id",
            Reason::SpanId => "invalid_span_id",
            Reason::ParentSpanId => "invalid_parent_span_id",
            Reason::TooManyAttributes => "too_many_attributes",
            Reason::AttributeTooDeep => "attribute_too_deep",
            Reason::AttributeTooLarge => "attribute_too_large",
            Reason::TooManyEvents => "too_many_events",
            Reason::TooManyLinks => "too_many_links",
            Reason::Severity => "invalid_severity",
            Reason::DataPoint => "invalid_data_point",
        }
    }
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub accepted: usize,
    pub rejected: usize,
    /// Rejections per reason (index = position in `Reason::ALL`).
    pub by_reason: [usize; Reason::ALL.len()],
    /// First few human-readable problems, for `partial_success.error_message`.
    pub messages: Vec<String>,
    /// True when anything was removed, so the original bytes no longer match the request.
    pub modified: bool,
}

const MAX_MESSAGES: usize = 5;

impl Outcome {
    /// Counts `n` spans cut out before decoding for a value nested deeper than `limit`.
    pub fn reject_too_deep(&mut self, n: usize, limit: usize) {
        self.reject_too_deep_items(n, limit, "span(s)");
    }

    /// [`Outcome::reject_too_deep`] for items named `noun` (`"log record(s)"`).
    pub fn reject_too_deep_items(&mut self, n: usize, limit: usize, noun: &str) {
        self.reject(n, Reason::AttributeTooDeep, || {
            format!("{n} {noun} hold a value nested deeper than {limit} levels")
        });
    }

    pub(crate) fn reject(&mut self, n: usize, reason: Reason, msg: impl FnOnce() -> String) {
        if n == 0 {
            return;
        }
        self.rejected += n;
        self.modified = true;
        let i = Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.by_reason[i] += n;
        if self.messages.len() < MAX_MESSAGES {
            self.messages.push(msg());
        }
    }

    pub fn error_message(&self) -> String {
        self.error_message_for("span(s)")
    }

    /// `partial_success.error_message`, counting `noun` ("span(s)", "log record(s)").
    pub fn error_message_for(&self, noun: &str) -> String {
        if self.rejected == 0 {
            return String::new();
        }
        let mut s = format!(
            "{} {noun} rejected: {}",
            self.rejected,
            self.messages.join("; ")
        );
        if self.messages.len() == MAX_MESSAGES {
            s.push_str("; …");
        }
        s
    }
}

fn check_id(id: &[u8], len: usize) -> Result<(), String> {
    if id.len() != len {
        return Err(format!("must be {len} bytes, got {}", id.len()));
    }
    if id.iter().all(|b| *b == 0) {
        return Err("must not be all zeroes".into());
    }
    Ok(())
}

/// Checks a list of attributes against the limits.
pub(crate) fn check_attributes(attrs: &[KeyValue], l: &SpanLimits) -> Result<(), (Reason, String)> {
    if attrs.len() > l.max_attributes {
        return Err((
            Reason::TooManyAttributes,
            format!("{} attributes, limit {}", attrs.len(), l.max_attributes),
        ));
    }
    for kv in attrs {
        if kv.key.len() > l.max_attribute_value_bytes {
            return Err((Reason::AttributeTooLarge, "attribute key too large".into()));
        }
        if let Some(v) = &kv.value {
            let mut size = 0usize;
            check_value(v, 1, l, &mut size)
                .map_err(|(r, m)| (r, format!("attribute {:?}: {m}", truncate(&kv.key))))?;
        }
    }
    Ok(())
}

pub(crate) fn truncate(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Recursion is bounded: the decoders stop at depth 100 (prost) / 128 (serde_json), and this
/// check stops at `max_attribute_depth` (< 100, enforced by config validation).
pub(crate) fn check_value(
    v: &AnyValue,
    depth: usize,
    l: &SpanLimits,
    size: &mut usize,
) -> Result<(), (Reason, String)> {
    if depth > l.max_attribute_depth {
        return Err((
            Reason::AttributeTooDeep,
            format!("value nested deeper than {}", l.max_attribute_depth),
        ));
    }
    let too_large = || {
        (
            Reason::AttributeTooLarge,
            format!("value larger than {} bytes", l.max_attribute_value_bytes),
        )
    };
    match &v.value {
        Some(Value::StringValue(s)) => *size += s.len(),
        Some(Value::BytesValue(b)) => *size += b.len(),
        Some(Value::ArrayValue(a)) => {
            if a.values.len() > l.max_attributes {
                return Err((
                    Reason::TooManyAttributes,
                    format!(
                        "array of {} values, limit {}",
                        a.values.len(),
                        l.max_attributes
                    ),
                ));
            }
            for x in &a.values {
                check_value(x, depth + 1, l, size)?;
            }
        }
        Some(Value::KvlistValue(kv)) => {
            if kv.values.len() > l.max_attributes {
                return Err((
                    Reason::TooManyAttributes,
                    format!(
                        "kvlist of {} entries, limit {}",
                        kv.values.len(),
                        l.max_attributes
                    ),
                ));
            }
            for x in &kv.values {
                *size += x.key.len();
                if let Some(v) = &x.value {
                    check_value(v, depth + 1, l, size)?;
                }
            }
        }
        _ => {}
    }
    if *size > l.max_attribute_value_bytes {
        return Err(too_large());
    }
    Ok(())
}

fn check_span(s: &Span, l: &SpanLimits) -> Result<(), (Reason, String)> {
    check_id(&s.trace_id, 16).map_err(|m| (Reason::TraceId, format!("trace_id {m}")))?;
    check_id(&s.span_id, 8).map_err(|m| (Reason::SpanId, format!("span_id {m}")))?;
    if !s.parent_span_id.is_empty() {
        check_id(&s.parent_span_id, 8)
            .map_err(|m| (Reason::ParentSpanId, format!("parent_span_id {m}")))?;
    }
    check_attributes(&s.attributes, l)?;
    if s.events.len() > l.max_events_per_span {
        return Err((
            Reason::TooManyEvents,
            format!("{} events, limit {}", s.events.len(), l.max_events_per_span),
        ));
    }
    for e in &s.events {
        check_attributes(&e.attributes, l).map_err(|(r, m)| (r, format!("event: {m}")))?;
    }
    if s.links.len() > l.max_links_per_span {
        return Err((
            Reason::TooManyLinks,
            format!("{} links, limit {}", s.links.len(), l.max_links_per_span),
        ));
    }
    for k in &s.links {
        check_id(&k.trace_id, 16).map_err(|m| (Reason::TraceId, format!("link trace_id {m}")))?;
        check_id(&k.span_id, 8).map_err(|m| (Reason::SpanId, format!("link span_id {m}")))?;
        check_attributes(&k.attributes, l).map_err(|(r, m)| (r, format!("link: {m}")))?;
    }
    Ok(())
}

/// Validates `req` in place: removes invalid spans and any resource/scope left empty by that.
pub fn validate(req: &mut ExportTraceServiceRequest, l: &SpanLimits) -> Outcome {
    let mut out = Outcome::default();
    let before_rs = req.resource_spans.len();
    req.resource_spans.retain_mut(|rs| {
        let n_rs: usize = rs.scope_spans.iter().map(|ss| ss.spans.len()).sum();
        if let Some(res) = &rs.resource {
            if let Err((reason, m)) = check_attributes(&res.attributes, l) {
                out.reject(n_rs, reason, || format!("resource: {m}"));
                return false;
            }
        }
        let before_ss = rs.scope_spans.len();
        rs.scope_spans.retain_mut(|ss| {
            if let Some(scope) = &ss.scope {
                if let Err((reason, m)) = check_attributes(&scope.attributes, l) {
                    out.reject(ss.spans.len(), reason, || format!("scope: {m}"));
                    return false;
                }
            }
            let before = ss.spans.len();
            ss.spans.retain(|span| match check_span(span, l) {
                Ok(()) => true,
                Err((reason, m)) => {
                    out.reject(1, reason, || {
                        format!("span {:?}: {m}", truncate(&span.name))
                    });
                    false
                }
            });
            out.accepted += ss.spans.len();
            if ss.spans.len() != before {
                out.modified = true;
            }
            !ss.spans.is_empty()
        });
        if rs.scope_spans.len() != before_ss {
            out.modified = true;
        }
        !rs.scope_spans.is_empty()
    });
    if req.resource_spans.len() != before_rs {
        out.modified = true;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracegate_proto::otlp::common::v1::{ArrayValue, KeyValueList};
    use tracegate_proto::otlp::trace::v1::{ResourceSpans, ScopeSpans};

    fn span(trace: Vec<u8>, id: Vec<u8>) -> Span {
        Span {
            trace_id: trace,
            span_id: id,
            name: "s".into(),
            ..Default::default()
        }
    }

    fn req(spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn nested(depth: usize) -> AnyValue {
        let mut v = AnyValue {
            value: Some(Value::StringValue("x".into())),
        };
        for i in 0..depth - 1 {
            v = if i % 2 == 0 {
                AnyValue {
                    value: Some(Value::ArrayValue(ArrayValue { values: vec![v] })),
                }
            } else {
                AnyValue {
                    value: Some(Value::KvlistValue(KeyValueList {
                        values: vec![KeyValue {
                            key: "k".into(),
                            value: Some(v),
                            ..Default::default()
                        }],
                    })),
                }
            };
        }
        v
    }

    #[test]
    fn keeps_valid_and_drops_invalid_spans() {
        let l = SpanLimits::default();
        let mut r = req(vec![
            span(vec![1; 16], vec![1; 8]),
            span(vec![1; 15], vec![1; 8]),
            span(vec![1; 17], vec![1; 8]),
            span(vec![0; 16], vec![1; 8]),
            span(vec![1; 16], vec![0; 8]),
            span(vec![1; 16], vec![1; 7]),
        ]);
        let o = validate(&mut r, &l);
        assert_eq!((o.accepted, o.rejected), (1, 5));
        assert!(o.modified);
        assert_eq!(r.resource_spans[0].scope_spans[0].spans.len(), 1);
        assert!(o
            .error_message()
            .contains("trace_id must be 16 bytes, got 15"));
        assert_eq!(o.by_reason[0], 3);
    }

    #[test]
    fn all_valid_is_unmodified_and_empty_containers_are_pruned() {
        let l = SpanLimits::default();
        let mut r = req(vec![span(vec![1; 16], vec![1; 8])]);
        let o = validate(&mut r, &l);
        assert!(!o.modified && o.rejected == 0 && o.error_message().is_empty());
        let mut r = req(vec![span(vec![0; 16], vec![1; 8])]);
        let o = validate(&mut r, &l);
        assert!(r.resource_spans.is_empty());
        assert_eq!(o.rejected, 1);
    }

    #[test]
    fn attribute_limits() {
        let l = SpanLimits {
            max_attributes: 10,
            max_attribute_depth: 5,
            max_attribute_value_bytes: 100,
            ..Default::default()
        };
        let mut many = span(vec![1; 16], vec![1; 8]);
        many.attributes = (0..11)
            .map(|i| KeyValue {
                key: format!("k{i}"),
                value: None,
                ..Default::default()
            })
            .collect();
        let mut deep = span(vec![1; 16], vec![2; 8]);
        deep.attributes = vec![KeyValue {
            key: "d".into(),
            value: Some(nested(6)),
            ..Default::default()
        }];
        let mut ok_deep = span(vec![1; 16], vec![3; 8]);
        ok_deep.attributes = vec![KeyValue {
            key: "d".into(),
            value: Some(nested(5)),
            ..Default::default()
        }];
        let mut big = span(vec![1; 16], vec![4; 8]);
        big.attributes = vec![KeyValue {
            key: "b".into(),
            value: Some(AnyValue {
                value: Some(Value::StringValue("x".repeat(101))),
            }),
            ..Default::default()
        }];
        let mut r = req(vec![many, deep, ok_deep, big]);
        let o = validate(&mut r, &l);
        assert_eq!((o.accepted, o.rejected), (1, 3));
        let spans = &r.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans[0].span_id, vec![3; 8]);
    }
}
