//! RowBinary encoding of spans, straight from the queued protobuf bytes (see `pb.rs`): one row of
//! `otel_traces` per span (column order: `schema::SPAN_COLUMNS`) and one row of
//! `otel_traces_payloads` per large attribute value (`schema::PAYLOAD_COLUMNS`).
//!
//! Value rules (compatible with the OpenTelemetry Collector's clickhouseexporter):
//! - ids are lowercase hex (`TraceId` 32 chars, `SpanId` 16); an empty parent is `''`;
//! - `SpanKind`: `Unspecified|Internal|Server|Client|Producer|Consumer`; `StatusCode`:
//!   `Unset|Ok|Error`;
//! - attribute values become strings: strings as they are, ints in decimal, doubles in the
//!   shortest decimal form that reads back to the same double (`NaN`, `+Inf`, `-Inf`), bools
//!   `true|false`, bytes as standard base64, arrays and kvlists as JSON (bytes inside as base64
//!   strings, keys in their original order), an empty value as `''`;
//! - a span or event attribute whose string form is longer than `payload_threshold_bytes` keeps
//!   only a preview (its first `payload_preview_bytes`, cut at a UTF-8 boundary) in the map; the
//!   whole value goes to `otel_traces_payloads` and its location to `PayloadKeys`
//!   (`span:<key>` or `event:<index>:<key>`).

use tracegate_proto::v1::Batch;

use super::pb::{for_each, PbError, Reader};
use super::tables::Table;

mod encoded;
mod genai;
mod header;
mod logs;
mod metrics;
mod rowbinary;
mod values;

use encoded::tenant_columns;
pub use encoded::Encoded;
pub use logs::LogEncoder;
pub use metrics::MetricEncoder;

use genai::*;
use rowbinary::*;
use values::*;
pub use values::{format_double, span_kind, status_code};

const SPANS: usize = Table::Spans.index();
const PAYLOADS: usize = Table::Payloads.index();

#[derive(Debug, Clone, Copy)]
pub struct EncodeOptions {
    pub payload_threshold_bytes: usize,
    pub payload_preview_bytes: usize,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        Self {
            payload_threshold_bytes: 16 * 1024,
            payload_preview_bytes: 256,
        }
    }
}

/// Reusable encoder (scratch buffers survive between batches, so steady state allocates
/// nothing per span).
pub struct Encoder {
    opts: EncodeOptions,
    tenant: Vec<u8>,
    received_at: i64,
    resource_attrs: Vec<u8>,
    service_name: Vec<u8>,
    scope_name_version: Vec<u8>,
    scope_attrs: Vec<u8>,
    scratch: Vec<u8>,
    json: Vec<u8>,
    payload_keys: Vec<u8>,
    payload_key_count: usize,
    payload_prefix: PrefixCache,
    attr_ranges: Vec<(u32, u32)>,
    event_ranges: Vec<(u32, u32)>,
    link_ranges: Vec<(u32, u32)>,
    itoa: itoa::Buffer,
}

/// What a span's payload rows start with (Timestamp, TraceId, SpanId).
struct PayloadPrefix<'a> {
    start: u64,
    trace_id: &'a [u8],
    span_id: &'a [u8],
}

/// The current span's payload-row prefix, formatted on first use: most spans have no large
/// value, and formatting it for every span was two hex ids of wasted work.
#[derive(Default)]
struct PrefixCache {
    bytes: Vec<u8>,
    ready: bool,
}

impl PrefixCache {
    fn get(&mut self, p: &PayloadPrefix<'_>) -> &[u8] {
        if !self.ready {
            self.bytes.clear();
            put_i64(&mut self.bytes, p.start as i64);
            put_hex(&mut self.bytes, p.trace_id);
            put_hex(&mut self.bytes, p.span_id);
            self.ready = true;
        }
        &self.bytes
    }
}

/// Where a large value came from (payload table `Location`, `EventIndex`).
#[derive(Clone, Copy)]
enum Loc {
    Span,
    Event(u32),
}

/// Per-span fields, borrowed from the request bytes.
#[derive(Default)]
struct SpanRef<'a> {
    trace_id: &'a [u8],
    span_id: &'a [u8],
    trace_state: &'a [u8],
    parent_span_id: &'a [u8],
    name: &'a [u8],
    kind: u64,
    start: u64,
    end: u64,
    dropped_attributes: u32,
    dropped_events: u32,
    dropped_links: u32,
    status_message: &'a [u8],
    status_code: u64,
    flags: u32,
}

impl Encoder {
    pub fn new(opts: EncodeOptions) -> Self {
        Self {
            opts,
            tenant: Vec::new(),
            received_at: 0,
            resource_attrs: Vec::new(),
            service_name: Vec::new(),
            scope_name_version: Vec::new(),
            scope_attrs: Vec::new(),
            scratch: Vec::new(),
            json: Vec::new(),
            payload_keys: Vec::new(),
            payload_key_count: 0,
            payload_prefix: PrefixCache::default(),
            attr_ranges: Vec::new(),
            event_ranges: Vec::new(),
            link_ranges: Vec::new(),
            itoa: itoa::Buffer::new(),
        }
    }

    /// Appends the rows of `batch` to `out`. On error (the batch's OTLP bytes are not a readable
    /// `ExportTraceServiceRequest`) `out` is restored to what it was before the call. A
    /// compressed payload is decompressed first (`envelope::plain_request`, capped at
    /// `envelope::MAX_PLAIN_BYTES`).
    pub fn encode_batch(&mut self, batch: &Batch, out: &mut Encoded) -> Result<(), PbError> {
        out.atomically(|out| self.encode_inner(batch, out))
    }

    fn encode_inner(&mut self, batch: &Batch, out: &mut Encoded) -> Result<(), PbError> {
        tenant_columns(batch, &mut self.tenant);
        self.received_at = batch.received_at_unix_nano as i64;
        let plain = tracegate_otlp::envelope::plain_request(
            batch,
            tracegate_otlp::envelope::MAX_PLAIN_BYTES,
        )?;
        for_each(&plain, 1, |rs| self.resource_spans(rs, out))
    }

    fn resource_spans(&mut self, rs: &[u8], out: &mut Encoded) -> Result<(), PbError> {
        // Fields may come in any order: find the resource first, then walk the scopes.
        let mut resource: &[u8] = &[];
        let mut r = Reader::new(rs);
        while let Some((n, v)) = r.next_field()? {
            if n == 1 {
                resource = v.bytes();
            }
        }
        self.resource_attrs.clear();
        self.service_name.clear();
        let mut count = 0u64;
        let mut service: Option<Vec<u8>> = None;
        let mut body = std::mem::take(&mut self.scratch);
        body.clear();
        for_each(resource, 1, |kv| {
            let (k, v) = parse_kv(kv)?;
            let v = parse_any(v)?;
            let s = any_string(v, &mut self.json, &mut self.itoa)?;
            if k == b"service.name" {
                service = Some(s.to_vec());
            }
            put_str(&mut body, k);
            put_str(&mut body, s);
            count += 1;
            Ok(())
        })?;
        put_varint(&mut self.resource_attrs, count);
        self.resource_attrs.extend_from_slice(&body);
        self.scratch = body;
        put_str(
            &mut self.service_name,
            service.as_deref().unwrap_or_default(),
        );
        for_each(rs, 2, |ss| self.scope_spans(ss, out))
    }

    fn scope_spans(&mut self, ss: &[u8], out: &mut Encoded) -> Result<(), PbError> {
        let mut scope: &[u8] = &[];
        let mut r = Reader::new(ss);
        while let Some((n, v)) = r.next_field()? {
            if n == 1 {
                scope = v.bytes();
            }
        }
        let (mut name, mut version): (&[u8], &[u8]) = (&[], &[]);
        let mut r = Reader::new(scope);
        while let Some((n, v)) = r.next_field()? {
            match n {
                1 => name = v.bytes(),
                2 => version = v.bytes(),
                _ => {}
            }
        }
        self.scope_name_version.clear();
        put_str(&mut self.scope_name_version, name);
        put_str(&mut self.scope_name_version, version);
        self.scope_attrs.clear();
        let mut body = std::mem::take(&mut self.scratch);
        body.clear();
        let mut count = 0u64;
        for_each(scope, 3, |kv| {
            let (k, v) = parse_kv(kv)?;
            let s = any_string(parse_any(v)?, &mut self.json, &mut self.itoa)?;
            put_str(&mut body, k);
            put_str(&mut body, s);
            count += 1;
            Ok(())
        })?;
        put_varint(&mut self.scope_attrs, count);
        self.scope_attrs.extend_from_slice(&body);
        self.scratch = body;
        for_each(ss, 2, |span| self.span(span, out))
    }

    /// Writes one attribute map (count + pairs) of the KeyValue messages at `kvs` (ranges in
    /// `base`), moving large values to the payload table when there is a `prefix` for their rows
    /// (link attributes have none: they stay whole in the map).
    #[allow(clippy::too_many_arguments)]
    fn attr_map<'a>(
        &mut self,
        out: &mut Encoded,
        base: &'a [u8],
        kvs: &[(u32, u32)],
        loc: Loc,
        prefix: Option<&PayloadPrefix<'_>>,
        mut genai: Option<&mut GenAi<'a>>,
    ) -> Result<(), PbError> {
        put_varint(&mut out.data[SPANS], kvs.len() as u64);
        let threshold = match prefix {
            Some(_) => self.opts.payload_threshold_bytes,
            None => usize::MAX,
        };
        for &(from, to) in kvs {
            let kv = base.get(from as usize..to as usize).unwrap_or_default();
            // Fast path: a plain `key` + `string_value` pair below the threshold, written
            // straight from the request bytes.
            if let Some((k, v)) = kv_fast(kv) {
                if let Some(s) = any_str_fast(v) {
                    if let Some(g) = genai.as_deref_mut() {
                        g.observe(k, Any::Str(s));
                    }
                    if s.len() <= threshold {
                        put_str(&mut out.data[SPANS], k);
                        put_str(&mut out.data[SPANS], s);
                        continue;
                    }
                }
            }
            let (k, v) = parse_kv(kv)?;
            let any = parse_any(v)?;
            if let Some(g) = genai.as_deref_mut() {
                g.observe(k, any);
            }
            let s = any_string(any, &mut self.json, &mut self.itoa)?;
            put_str(&mut out.data[SPANS], k);
            if s.len() <= threshold {
                put_str(&mut out.data[SPANS], s);
                continue;
            }
            put_str(
                &mut out.data[SPANS],
                utf8_prefix(s, self.opts.payload_preview_bytes),
            );
            // Payload row: tenant, Timestamp, TraceId, SpanId (the span's prefix), Location,
            // EventIndex, Key, Value, ValueBytes.
            out.data[PAYLOADS].extend_from_slice(&self.tenant);
            if let Some(p) = prefix {
                out.data[PAYLOADS].extend_from_slice(self.payload_prefix.get(p));
            }
            match loc {
                Loc::Span => {
                    put_str(&mut out.data[PAYLOADS], b"span");
                    put_u32(&mut out.data[PAYLOADS], 0);
                    put_varint(&mut self.payload_keys, (k.len() + 5) as u64);
                    self.payload_keys.extend_from_slice(b"span:");
                    self.payload_keys.extend_from_slice(k);
                }
                Loc::Event(i) => {
                    put_str(&mut out.data[PAYLOADS], b"event");
                    put_u32(&mut out.data[PAYLOADS], i);
                    let idx = self.itoa.format(i);
                    put_varint(&mut self.payload_keys, (k.len() + 7 + idx.len()) as u64);
                    self.payload_keys.extend_from_slice(b"event:");
                    self.payload_keys.extend_from_slice(idx.as_bytes());
                    self.payload_keys.push(b':');
                    self.payload_keys.extend_from_slice(k);
                }
            }
            self.payload_key_count += 1;
            put_str(&mut out.data[PAYLOADS], k);
            put_str(&mut out.data[PAYLOADS], s);
            put_u64(&mut out.data[PAYLOADS], s.len() as u64);
            out.rows[PAYLOADS] += 1;
        }
        Ok(())
    }

    fn span(&mut self, msg: &[u8], out: &mut Encoded) -> Result<(), PbError> {
        // One scan of the span: scalars, plus the positions of attributes, events and links
        // (kept in reusable vectors, so nothing is allocated per span in steady state).
        let mut s = SpanRef::default();
        let mut attrs = std::mem::take(&mut self.attr_ranges);
        let mut events = std::mem::take(&mut self.event_ranges);
        let mut links = std::mem::take(&mut self.link_ranges);
        attrs.clear();
        events.clear();
        links.clear();
        let r = self.span_inner(msg, out, &mut s, &mut attrs, &mut events, &mut links);
        self.attr_ranges = attrs;
        self.event_ranges = events;
        self.link_ranges = links;
        r
    }

    fn span_inner<'a>(
        &mut self,
        msg: &'a [u8],
        out: &mut Encoded,
        s: &mut SpanRef<'a>,
        attrs: &mut Vec<(u32, u32)>,
        events: &mut Vec<(u32, u32)>,
        links: &mut Vec<(u32, u32)>,
    ) -> Result<(), PbError> {
        scan_span(msg, s, attrs, events, links)?;
        // Prefix shared by this span's payload rows (Timestamp, TraceId, SpanId), formatted by
        // `attr_map` only if the span has a large value: most have none.
        let prefix = PayloadPrefix {
            start: s.start,
            trace_id: s.trace_id,
            span_id: s.span_id,
        };
        self.payload_prefix.ready = false;
        self.payload_keys.clear();
        self.payload_key_count = 0;

        let o = &mut out.data[SPANS];
        // The row is about as long as the span's protobuf: grow once, not per column.
        o.reserve(msg.len() + self.resource_attrs.len() + self.scope_attrs.len() + 256);
        put_bytes(o, &self.tenant);
        put_i64(o, s.start as i64);
        put_hex(o, s.trace_id);
        put_hex(o, s.span_id);
        put_hex(o, s.parent_span_id);
        put_str(o, s.trace_state);
        put_str(o, s.name);
        put_str(o, span_kind(s.kind).as_bytes());
        put_bytes(o, &self.service_name);
        put_bytes(o, &self.resource_attrs);
        put_bytes(o, &self.scope_name_version);
        let mut genai = GenAi::default();
        self.attr_map(out, msg, attrs, Loc::Span, Some(&prefix), Some(&mut genai))?;
        let o = &mut out.data[SPANS];
        put_u64(o, s.end.saturating_sub(s.start));
        put_str(o, status_code(s.status_code).as_bytes());
        put_str(o, s.status_message);
        self.events(out, msg, events, &prefix)?;
        self.links(out, msg, links)?;

        let o = &mut out.data[SPANS];
        put_bytes(o, &self.scope_attrs);
        put_u32(o, s.flags);
        put_u32(o, s.dropped_attributes);
        put_u32(o, s.dropped_events);
        put_u32(o, s.dropped_links);
        let provider = if genai.provider.is_empty() {
            genai.system
        } else {
            genai.provider
        };
        put_str(o, provider);
        put_str(o, genai.operation);
        put_str(o, genai.request_model);
        put_str(o, genai.response_model);
        put_u64(o, genai.input_tokens);
        put_u64(o, genai.output_tokens);
        put_varint(o, self.payload_key_count as u64);
        o.extend_from_slice(&self.payload_keys);
        put_i64(o, self.received_at);
        out.rows[SPANS] += 1;
        Ok(())
    }

    /// The `Events.Timestamp`, `Events.Name` and `Events.Attributes` columns; large event
    /// attribute values go to payload rows like the span's.
    fn events(
        &mut self,
        out: &mut Encoded,
        msg: &[u8],
        events: &[(u32, u32)],
        prefix: &PayloadPrefix<'_>,
    ) -> Result<(), PbError> {
        let o = &mut out.data[SPANS];
        if events.is_empty() {
            o.extend_from_slice(&[0, 0, 0]);
            return Ok(());
        }
        let mut names: Vec<&[u8]> = Vec::with_capacity(events.len());
        put_varint(o, events.len() as u64);
        for &(from, to) in events {
            let mut r = Reader::new(&msg[from as usize..to as usize]);
            let (mut t, mut name): (u64, &[u8]) = (0, &[]);
            while let Some((n, v)) = r.next_field()? {
                match n {
                    1 => t = v.u64(),
                    2 => name = v.bytes(),
                    _ => {}
                }
            }
            put_i64(o, t as i64);
            names.push(name);
        }
        put_varint(o, events.len() as u64);
        for name in names {
            put_str(o, name);
        }
        put_varint(&mut out.data[SPANS], events.len() as u64);
        let mut sub = Vec::new();
        for (i, &(from, to)) in events.iter().enumerate() {
            let ev = &msg[from as usize..to as usize];
            sub.clear();
            kv_ranges(ev, 3, &mut sub)?;
            self.attr_map(out, ev, &sub, Loc::Event(i as u32), Some(prefix), None)?;
        }
        Ok(())
    }

    /// The `Links.TraceId`, `Links.SpanId`, `Links.TraceState` and `Links.Attributes` columns.
    fn links(
        &mut self,
        out: &mut Encoded,
        msg: &[u8],
        links: &[(u32, u32)],
    ) -> Result<(), PbError> {
        if links.is_empty() {
            out.data[SPANS].extend_from_slice(&[0, 0, 0, 0]);
            return Ok(());
        }
        for field in [1u32, 2, 3] {
            put_varint(&mut out.data[SPANS], links.len() as u64);
            for &(from, to) in links {
                let mut r = Reader::new(&msg[from as usize..to as usize]);
                let mut val: &[u8] = &[];
                while let Some((n, v)) = r.next_field()? {
                    if n == field {
                        val = v.bytes();
                    }
                }
                if field == 3 {
                    put_str(&mut out.data[SPANS], val);
                } else {
                    put_hex(&mut out.data[SPANS], val);
                }
            }
        }
        put_varint(&mut out.data[SPANS], links.len() as u64);
        let mut sub = Vec::new();
        for &(from, to) in links {
            let l = &msg[from as usize..to as usize];
            sub.clear();
            kv_ranges(l, 4, &mut sub)?;
            // Link attributes are small by nature; kept whole in the map.
            self.attr_map(out, l, &sub, Loc::Span, None, None)?;
        }
        Ok(())
    }
}

/// One scan of a span: its scalars into `s`, the positions of its attributes, events and
/// links into the vectors.
fn scan_span<'a>(
    msg: &'a [u8],
    s: &mut SpanRef<'a>,
    attrs: &mut Vec<(u32, u32)>,
    events: &mut Vec<(u32, u32)>,
    links: &mut Vec<(u32, u32)>,
) -> Result<(), PbError> {
    let base = msg.as_ptr() as usize;
    let range = |b: &[u8]| {
        let from = (b.as_ptr() as usize - base) as u32;
        (from, from + b.len() as u32)
    };
    let mut r = Reader::new(msg);
    loop {
        // Attributes (field 9, tag 0x4a) are most of a span's fields.
        if let Some(kv) = r.take_tagged(0x4a) {
            attrs.push(range(kv));
            continue;
        }
        let Some((n, v)) = r.next_field()? else {
            break;
        };
        match n {
            1 => s.trace_id = v.bytes(),
            2 => s.span_id = v.bytes(),
            3 => s.trace_state = v.bytes(),
            4 => s.parent_span_id = v.bytes(),
            5 => s.name = v.bytes(),
            6 => s.kind = v.u64(),
            7 => s.start = v.u64(),
            8 => s.end = v.u64(),
            9 => attrs.push(range(v.bytes())),
            10 => s.dropped_attributes = v.u64() as u32,
            11 => events.push(range(v.bytes())),
            12 => s.dropped_events = v.u64() as u32,
            13 => links.push(range(v.bytes())),
            14 => s.dropped_links = v.u64() as u32,
            15 => {
                let mut st = Reader::new(v.bytes());
                while let Some((n, v)) = st.next_field()? {
                    match n {
                        2 => s.status_message = v.bytes(),
                        3 => s.status_code = v.u64(),
                        _ => {}
                    }
                }
            }
            16 => s.flags = v.u64() as u32,
            _ => {}
        }
    }
    Ok(())
}

/// Positions (in `msg`) of the length-delimited occurrences of field `num`.
fn kv_ranges(msg: &[u8], num: u32, out: &mut Vec<(u32, u32)>) -> Result<(), PbError> {
    let base = msg.as_ptr() as usize;
    for_each(msg, num, |b| {
        let from = (b.as_ptr() as usize - base) as u32;
        out.push((from, from + b.len() as u32));
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_strings_are_written_like_long_ones() {
        let src: Vec<u8> = (0..160u8).map(|i| i.wrapping_mul(37)).collect();
        for n in 0..=140 {
            for prefix in [0usize, 1, 7, 31] {
                let mut fast = vec![0xee; prefix];
                put_str(&mut fast, &src[3..3 + n]);
                let mut slow = vec![0xee; prefix];
                put_varint(&mut slow, n as u64);
                slow.extend_from_slice(&src[3..3 + n]);
                assert_eq!(fast, slow, "length {n} after {prefix} bytes");
                let mut bytes = vec![0xee; prefix];
                put_bytes(&mut bytes, &src[3..3 + n]);
                assert_eq!(bytes[..prefix], slow[..prefix]);
                assert_eq!(bytes[prefix..], src[3..3 + n], "put_bytes, length {n}");
            }
        }
    }

    #[test]
    fn doubles_format_like_go() {
        let f = |v: f64| {
            let mut o = Vec::new();
            format_double(&mut o, v);
            String::from_utf8(o).unwrap()
        };
        assert_eq!(f(0.1), "0.1");
        assert_eq!(f(1e21), "1000000000000000000000");
        assert_eq!(f(-2.5), "-2.5");
        assert_eq!(f(3.0), "3");
        assert_eq!(f(f64::NAN), "NaN");
        assert_eq!(f(f64::NEG_INFINITY), "-Inf");
    }

    #[test]
    fn fast_paths_agree_with_the_generic_reader() {
        use prost::Message;
        use tracegate_proto::otlp::common::v1::{any_value, AnyValue, KeyValue};
        let kv = KeyValue {
            key: "k".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue("v".repeat(300))),
            }),
            ..Default::default()
        }
        .encode_to_vec();
        let (k, v) = parse_kv(&kv).unwrap();
        assert_eq!(parse_kv_slow(&kv).unwrap(), (k, v));
        assert_eq!(k, b"k");
        assert!(matches!(parse_any(v).unwrap(), Any::Str(s) if s.len() == 300));
        // Fields in reverse order and a repeated oneof: the generic path decides.
        let rev = [0x12, 2, 0x18, 0x05, 0x0a, 0x01, b'k'];
        let (k, v) = parse_kv(&rev).unwrap();
        assert_eq!(k, b"k");
        assert!(matches!(parse_any(v).unwrap(), Any::Int(5)));
        let twice = [0x0a, 1, b'a', 0x18, 7];
        assert!(matches!(parse_any(&twice).unwrap(), Any::Int(7)));
    }

    #[test]
    fn nested_values_become_json() {
        let mut scratch = Vec::new();
        let mut itoa = itoa::Buffer::new();
        // kvlist { "a": [1, "x\n"], "b": bytes [1] }
        let arr = [
            0x0a, 0x02, 0x18, 0x01, // AnyValue{int 1}
            0x0a, 0x04, 0x0a, 0x02, b'x', b'\n', // AnyValue{string "x\n"}
        ];
        let mut a_kv = vec![
            0x0a,
            0x01,
            b'a',
            0x12,
            (arr.len() + 2) as u8,
            0x2a,
            arr.len() as u8,
        ];
        a_kv.extend_from_slice(&arr);
        let b_kv = [0x0a, 0x01, b'b', 0x12, 0x03, 0x3a, 0x01, 0x01];
        let mut list = vec![0x0a, a_kv.len() as u8];
        list.extend_from_slice(&a_kv);
        list.push(0x0a);
        list.push(b_kv.len() as u8);
        list.extend_from_slice(&b_kv);
        let s = any_string(Any::KvList(&list), &mut scratch, &mut itoa).unwrap();
        assert_eq!(
            std::str::from_utf8(s).unwrap(),
            r#"{"a":[1,"x\n"],"b":"AQ=="}"#
        );
    }

    #[test]
    fn utf8_prefix_never_splits_a_char() {
        let s = "aé€😀".as_bytes();
        for n in 0..=s.len() {
            assert!(std::str::from_utf8(utf8_prefix(s, n)).is_ok(), "{n}");
        }
        assert_eq!(utf8_prefix(s, 2), b"a");
    }
}
