//! RowBinary encoding of log records, straight from the queued `ExportLogsServiceRequest` bytes
//! (`pb.rs`, like spans): one row of `otel_logs` per record (columns: `Table::Logs`) and one row
//! of `otel_logs_payloads` per large body or attribute value (`Table::LogPayloads`).
//!
//! Value rules are the Collector's clickhouseexporter's, as for spans (`rows/mod.rs`):
//! - `Timestamp` is the record's time, or its observed time when the record has none;
//! - `TraceFlags` is the low byte of `flags`; ids are lowercase hex, `''` when absent;
//! - `Body` is the body's string form (a kvlist or array body, as GenAI events have, is JSON);
//! - a body or attribute longer than `payload_threshold_bytes` keeps only its preview in the
//!   row; the whole value is a row of `otel_logs_payloads` (`Location` `body` or `attribute`),
//!   listed in `PayloadKeys` (`body`, `attribute:<key>`);
//! - `RecordId` is `<batch id hex>-<part>-<n>` (n counts the batch's records from 0): the same
//!   on every re-read of the batch, and what joins a record to its payload rows;
//! - the GenAI columns come from the record's `gen_ai.*` attributes, as for spans.

use tracegate_proto::v1::Batch;

use super::super::pb::{for_each, PbError, Reader};
use super::super::tables::Table;
use super::genai::GenAi;
use super::header::Header;
use super::rowbinary::*;
use super::values::*;
use super::{tenant_columns, EncodeOptions, Encoded};

const LOGS: usize = Table::Logs.index();
const PAYLOADS: usize = Table::LogPayloads.index();

/// Reusable encoder for log batches.
pub struct LogEncoder {
    opts: EncodeOptions,
    tenant: Vec<u8>,
    received_at: i64,
    batch: Vec<u8>,
    index: u64,
    header: Header,
    json: Vec<u8>,
    itoa: itoa::Buffer,
    /// The current record's `RecordId` and `PayloadKeys`, and where its row's tenant,
    /// Timestamp, TraceId and SpanId are in `otel_logs`' data: a payload row starts with them.
    record_id: Vec<u8>,
    payload_keys: Vec<u8>,
    payload_key_count: u64,
    row_head: std::ops::Range<usize>,
    attrs: Vec<(u32, u32)>,
}

/// The scalar fields of one record, borrowed from the request bytes.
#[derive(Default)]
struct Record<'a> {
    time: u64,
    observed: u64,
    severity_number: u64,
    severity_text: &'a [u8],
    body: Option<&'a [u8]>,
    flags: u64,
    trace_id: &'a [u8],
    span_id: &'a [u8],
    event_name: &'a [u8],
}

impl LogEncoder {
    pub fn new(opts: EncodeOptions) -> Self {
        Self {
            opts,
            tenant: Vec::new(),
            received_at: 0,
            batch: Vec::new(),
            index: 0,
            header: Header::default(),
            json: Vec::new(),
            itoa: itoa::Buffer::new(),
            record_id: Vec::new(),
            payload_keys: Vec::new(),
            payload_key_count: 0,
            row_head: 0..0,
            attrs: Vec::new(),
        }
    }

    /// Appends the rows of `batch` (an `ExportLogsServiceRequest`) to `out`; on error `out` is
    /// as it was.
    pub fn encode_batch(&mut self, batch: &Batch, out: &mut Encoded) -> Result<(), PbError> {
        out.atomically(|out| self.encode_inner(batch, out))
    }

    fn encode_inner(&mut self, batch: &Batch, out: &mut Encoded) -> Result<(), PbError> {
        tenant_columns(batch, &mut self.tenant);
        self.received_at = batch.received_at_unix_nano as i64;
        self.batch.clear();
        for &b in batch.batch_id.iter() {
            self.batch.extend_from_slice(&HEX_PAIRS[b as usize]);
        }
        self.batch.push(b'-');
        self.batch
            .extend_from_slice(self.itoa.format(batch.part_index).as_bytes());
        self.batch.push(b'-');
        self.index = 0;
        let plain = tracegate_otlp::envelope::plain_request(
            batch,
            tracegate_otlp::envelope::MAX_PLAIN_BYTES,
        )?;
        for_each(&plain, 1, |rl| {
            self.header.resource(rl)?;
            for_each(rl, 2, |sl| {
                self.header.scope(sl)?;
                for_each(sl, 2, |rec| self.record(rec, out))
            })
        })
    }

    fn record(&mut self, msg: &[u8], out: &mut Encoded) -> Result<(), PbError> {
        let mut attrs = std::mem::take(&mut self.attrs);
        attrs.clear();
        let r = self.record_inner(msg, out, &mut attrs);
        self.attrs = attrs;
        r
    }

    fn record_inner(
        &mut self,
        msg: &[u8],
        out: &mut Encoded,
        attrs: &mut Vec<(u32, u32)>,
    ) -> Result<(), PbError> {
        let rec = scan_record(msg, attrs)?;
        let ts = if rec.time != 0 {
            rec.time
        } else {
            rec.observed
        };
        self.record_id.clear();
        self.record_id.extend_from_slice(&self.batch);
        self.record_id
            .extend_from_slice(self.itoa.format(self.index).as_bytes());
        self.index += 1;
        self.payload_keys.clear();
        self.payload_key_count = 0;
        let o = &mut out.data[LOGS];
        o.reserve(msg.len() + self.header.resource_attrs.len() + 256);
        let start = o.len();
        put_bytes(o, &self.tenant);
        put_i64(o, ts as i64);
        put_hex(o, rec.trace_id);
        put_hex(o, rec.span_id);
        self.row_head = start..o.len();
        o.push(rec.flags as u8);
        put_str(o, rec.severity_text);
        o.push(rec.severity_number.min(255) as u8);
        put_bytes(o, &self.header.service_name);
        let body = match rec.body {
            Some(b) => any_string(parse_any(b)?, &mut self.json, &mut self.itoa)?,
            None => &[],
        };
        let threshold = self.opts.payload_threshold_bytes;
        if body.len() <= threshold {
            put_str(&mut out.data[LOGS], body);
        } else {
            let preview = utf8_prefix(body, self.opts.payload_preview_bytes);
            put_str(&mut out.data[LOGS], preview);
            payload_row(out, &self.row_head, &self.record_id, b"body", b"", body);
            put_str(&mut self.payload_keys, b"body");
            self.payload_key_count += 1;
        }
        let h = &self.header;
        let o = &mut out.data[LOGS];
        put_bytes(o, &h.resource_schema_url);
        put_bytes(o, &h.resource_attrs);
        put_bytes(o, &h.scope_schema_url);
        put_bytes(o, &h.scope_name);
        put_bytes(o, &h.scope_version);
        put_bytes(o, &h.scope_attrs);
        let mut genai = GenAi::default();
        self.attributes(out, msg, attrs, &mut genai)?;
        let o = &mut out.data[LOGS];
        put_str(o, rec.event_name);
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
        put_str(o, &self.record_id);
        put_varint(o, self.payload_key_count);
        o.extend_from_slice(&self.payload_keys);
        put_i64(o, self.received_at);
        out.rows[LOGS] += 1;
        Ok(())
    }

    /// `LogAttributes`: large values keep a preview and go whole to payload rows.
    fn attributes<'a>(
        &mut self,
        out: &mut Encoded,
        msg: &'a [u8],
        attrs: &[(u32, u32)],
        genai: &mut GenAi<'a>,
    ) -> Result<(), PbError> {
        put_varint(&mut out.data[LOGS], attrs.len() as u64);
        let threshold = self.opts.payload_threshold_bytes;
        for &(from, to) in attrs {
            let kv = msg.get(from as usize..to as usize).unwrap_or_default();
            // Fast path (as for spans): a plain `key` + `string_value` below the threshold.
            if let Some((k, v)) = kv_fast(kv) {
                if let Some(s) = any_str_fast(v) {
                    genai.observe(k, Any::Str(s));
                    if s.len() <= threshold {
                        put_str(&mut out.data[LOGS], k);
                        put_str(&mut out.data[LOGS], s);
                        continue;
                    }
                }
            }
            let (k, v) = parse_kv(kv)?;
            let any = parse_any(v)?;
            genai.observe(k, any);
            let s = any_string(any, &mut self.json, &mut self.itoa)?;
            put_str(&mut out.data[LOGS], k);
            if s.len() <= threshold {
                put_str(&mut out.data[LOGS], s);
                continue;
            }
            put_str(
                &mut out.data[LOGS],
                utf8_prefix(s, self.opts.payload_preview_bytes),
            );
            payload_row(out, &self.row_head, &self.record_id, b"attribute", k, s);
            put_varint(&mut self.payload_keys, (k.len() + 10) as u64);
            self.payload_keys.extend_from_slice(b"attribute:");
            self.payload_keys.extend_from_slice(k);
            self.payload_key_count += 1;
        }
        Ok(())
    }
}

/// One row of `otel_logs_payloads`: the record's row head (tenant, Timestamp, TraceId, SpanId)
/// copied from its `otel_logs` row, then `RecordId`, `Location`, `Key`, `Value`, `ValueBytes`.
fn payload_row(
    out: &mut Encoded,
    head: &std::ops::Range<usize>,
    record_id: &[u8],
    location: &[u8],
    key: &[u8],
    value: &[u8],
) {
    // `otel_logs` comes before its payload table (`Table::ALL`): split there.
    let (logs, payloads) = out.data.split_at_mut(PAYLOADS);
    let o = &mut payloads[0];
    o.extend_from_slice(logs[LOGS].get(head.clone()).unwrap_or_default());
    put_str(o, record_id);
    put_str(o, location);
    put_str(o, key);
    put_str(o, value);
    put_u64(o, value.len() as u64);
    out.rows[PAYLOADS] += 1;
}

/// One scan of a `LogRecord`: its scalars, and where its attributes are (ranges in `msg`).
fn scan_record<'a>(msg: &'a [u8], attrs: &mut Vec<(u32, u32)>) -> Result<Record<'a>, PbError> {
    let mut rec = Record::default();
    let base = msg.as_ptr() as usize;
    let mut r = Reader::new(msg);
    let range = |b: &[u8]| {
        let from = (b.as_ptr() as usize - base) as u32;
        (from, from + b.len() as u32)
    };
    loop {
        // Attributes (field 6, tag 0x32) are most of a record's fields.
        if let Some(kv) = r.take_tagged(0x32) {
            attrs.push(range(kv));
            continue;
        }
        let Some((n, v)) = r.next_field()? else {
            break;
        };
        match n {
            1 => rec.time = v.u64(),
            2 => rec.severity_number = v.u64(),
            3 => rec.severity_text = v.bytes(),
            5 => rec.body = Some(v.bytes()),
            6 => attrs.push(range(v.bytes())),
            8 => rec.flags = v.u64(),
            9 => rec.trace_id = v.bytes(),
            10 => rec.span_id = v.bytes(),
            11 => rec.observed = v.u64(),
            12 => rec.event_name = v.bytes(),
            _ => {}
        }
    }
    Ok(rec)
}
