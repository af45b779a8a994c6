//! RowBinary encoding of metrics, straight from the queued `ExportMetricsServiceRequest` bytes
//! (`pb.rs`): one row per data point, in the table of its metric's type (`otel_metrics_gauge`,
//! `_sum`, `_histogram`, `_exponential_histogram`, `_summary`; columns: `tables.rs`).
//!
//! Value rules are the Collector's clickhouseexporter's: an integer value or exemplar is stored
//! as its `Float64`; an absent optional `sum`/`min`/`max` is 0; ids are lowercase hex;
//! attributes are strings as for spans. Repeated numbers are read packed or unpacked (both are
//! valid protobuf). A metric with no data (no type set) has no rows.

use tracegate_proto::v1::Batch;

use super::super::pb::{for_each, PbError, Reader, Value};
use super::super::tables::Table;
use super::header::{append_map, Header};
use super::rowbinary::*;
use super::{tenant_columns, Encoded};

/// Reusable encoder for metric batches.
#[derive(Default)]
pub struct MetricEncoder {
    tenant: Vec<u8>,
    header: Header,
    /// What every data point row of the current metric starts with: tenant, resource, scope,
    /// service, metric name, description, unit.
    prefix: Vec<u8>,
    json: Vec<u8>,
    itoa: itoa::Buffer,
    u64s: Vec<u64>,
    f64s: Vec<f64>,
}

impl MetricEncoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the rows of `batch` (an `ExportMetricsServiceRequest`) to `out`; on error `out`
    /// is as it was.
    pub fn encode_batch(&mut self, batch: &Batch, out: &mut Encoded) -> Result<(), PbError> {
        out.atomically(|out| self.encode_inner(batch, out))
    }

    fn encode_inner(&mut self, batch: &Batch, out: &mut Encoded) -> Result<(), PbError> {
        tenant_columns(batch, &mut self.tenant);
        let plain = tracegate_otlp::envelope::plain_request(
            batch,
            tracegate_otlp::envelope::MAX_PLAIN_BYTES,
        )?;
        for_each(&plain, 1, |rm| {
            self.header.resource(rm)?;
            for_each(rm, 2, |sm| {
                self.header.scope(sm)?;
                for_each(sm, 2, |m| self.metric(m, out))
            })
        })
    }

    fn metric(&mut self, msg: &[u8], out: &mut Encoded) -> Result<(), PbError> {
        let (mut name, mut description, mut unit): (&[u8], &[u8], &[u8]) = (&[], &[], &[]);
        let mut data: Option<(u32, &[u8])> = None;
        let mut r = Reader::new(msg);
        while let Some((n, v)) = r.next_field()? {
            match n {
                1 => name = v.bytes(),
                2 => description = v.bytes(),
                3 => unit = v.bytes(),
                5 | 7 | 9 | 10 | 11 => data = Some((n, v.bytes())),
                _ => {}
            }
        }
        let Some((kind, data)) = data else {
            return Ok(());
        };
        let h = &self.header;
        let p = &mut self.prefix;
        p.clear();
        p.extend_from_slice(&self.tenant);
        for part in [
            &h.resource_attrs,
            &h.resource_schema_url,
            &h.scope_name,
            &h.scope_version,
            &h.scope_attrs,
        ] {
            p.extend_from_slice(part);
        }
        put_u32(p, h.scope_dropped);
        p.extend_from_slice(&h.scope_schema_url);
        p.extend_from_slice(&h.service_name);
        put_str(p, name);
        put_str(p, description);
        put_str(p, unit);
        // Sum, Histogram and ExponentialHistogram: 2 aggregation_temporality; Sum: 3 monotonic.
        let (mut temporality, mut monotonic) = (0u64, 0u64);
        let mut r = Reader::new(data);
        while let Some((n, v)) = r.next_field()? {
            match n {
                2 => temporality = v.u64(),
                3 => monotonic = v.u64(),
                _ => {}
            }
        }
        for_each(data, 1, |dp| match kind {
            5 => self.number(Table::Gauge, dp, out, None),
            7 => self.number(Table::Sum, dp, out, Some((temporality, monotonic != 0))),
            9 => self.histogram(dp, out, temporality),
            10 => self.exp_histogram(dp, out, temporality),
            _ => self.summary(dp, out),
        })
    }

    /// The columns every metric table shares: prefix, `Attributes`, `StartTimeUnix`, `TimeUnix`.
    fn common(&mut self, o: &mut Vec<u8>, msg: &[u8], attrs_field: u32) -> Result<(), PbError> {
        let (mut start, mut time) = (0u64, 0u64);
        let mut r = Reader::new(msg);
        while let Some((n, v)) = r.next_field()? {
            match n {
                2 => start = v.u64(),
                3 => time = v.u64(),
                _ => {}
            }
        }
        o.extend_from_slice(&self.prefix);
        append_map(
            o,
            msg,
            attrs_field,
            &mut self.json,
            &mut self.itoa,
            &mut |_, _| {},
        )?;
        put_i64(o, start as i64);
        put_i64(o, time as i64);
        Ok(())
    }

    fn number(
        &mut self,
        table: Table,
        msg: &[u8],
        out: &mut Encoded,
        sum: Option<(u64, bool)>,
    ) -> Result<(), PbError> {
        let o = &mut out.data[table.index()];
        self.common(o, msg, 7)?;
        let (mut value, mut flags) = (0f64, 0u64);
        let mut r = Reader::new(msg);
        while let Some((n, v)) = r.next_field()? {
            match n {
                4 => value = f64::from_bits(v.u64()),
                6 => value = v.u64() as i64 as f64,
                8 => flags = v.u64(),
                _ => {}
            }
        }
        put_f64(o, value);
        put_u32(o, flags as u32);
        self.exemplars(o, msg, 5)?;
        if let Some((temporality, monotonic)) = sum {
            put_i32(o, temporality as i32);
            o.push(u8::from(monotonic));
        }
        out.rows[table.index()] += 1;
        Ok(())
    }

    fn histogram(
        &mut self,
        msg: &[u8],
        out: &mut Encoded,
        temporality: u64,
    ) -> Result<(), PbError> {
        let t = Table::Histogram.index();
        let o = &mut out.data[t];
        self.common(o, msg, 9)?;
        let s = scalars(msg, &[4, 5, 10, 11, 12])?;
        put_u64(o, s[0]);
        put_f64(o, f64::from_bits(s[1]));
        self.u64s.clear();
        repeated_fixed(msg, 6, |v| self.u64s.push(v))?;
        put_varint(o, self.u64s.len() as u64);
        self.u64s.iter().for_each(|&v| put_u64(o, v));
        self.u64s.clear();
        repeated_fixed(msg, 7, |v| self.u64s.push(v))?;
        put_varint(o, self.u64s.len() as u64);
        self.u64s.iter().for_each(|&v| put_u64(o, v)); // doubles: same 8 bytes
        self.exemplars(o, msg, 8)?;
        put_u32(o, s[2] as u32);
        put_f64(o, f64::from_bits(s[3]));
        put_f64(o, f64::from_bits(s[4]));
        put_i32(o, temporality as i32);
        out.rows[t] += 1;
        Ok(())
    }

    fn exp_histogram(
        &mut self,
        msg: &[u8],
        out: &mut Encoded,
        temporality: u64,
    ) -> Result<(), PbError> {
        let t = Table::ExpHistogram.index();
        let o = &mut out.data[t];
        self.common(o, msg, 1)?;
        // count, sum, scale, zero_count, flags, min, max; 8 / 9 positive / negative buckets.
        let s = scalars(msg, &[4, 5, 6, 7, 10, 12, 13])?;
        put_u64(o, s[0]);
        put_f64(o, f64::from_bits(s[1]));
        put_i32(o, zigzag(s[2]));
        put_u64(o, s[3]);
        for field in [8, 9] {
            let mut buckets: &[u8] = &[];
            for_each(msg, field, |b| {
                buckets = b;
                Ok(())
            })?;
            let offset = scalars(buckets, &[1])?[0];
            put_i32(o, zigzag(offset));
            self.u64s.clear();
            let mut r = Reader::new(buckets);
            while let Some((n, v)) = r.next_field()? {
                match (n, v) {
                    (2, Value::Bytes(packed)) => {
                        let mut pos = 0;
                        while pos < packed.len() {
                            let v = tracegate_otlp::wire::varint(packed, &mut pos)
                                .ok_or(PbError::Truncated)?;
                            self.u64s.push(v);
                        }
                    }
                    (2, v) => self.u64s.push(v.u64()),
                    _ => {}
                }
            }
            put_varint(o, self.u64s.len() as u64);
            self.u64s.iter().for_each(|&v| put_u64(o, v));
        }
        self.exemplars(o, msg, 11)?;
        put_u32(o, s[4] as u32);
        put_f64(o, f64::from_bits(s[5]));
        put_f64(o, f64::from_bits(s[6]));
        put_i32(o, temporality as i32);
        out.rows[t] += 1;
        Ok(())
    }

    fn summary(&mut self, msg: &[u8], out: &mut Encoded) -> Result<(), PbError> {
        let t = Table::Summary.index();
        let o = &mut out.data[t];
        self.common(o, msg, 7)?;
        let s = scalars(msg, &[4, 5, 8])?;
        put_u64(o, s[0]);
        put_f64(o, f64::from_bits(s[1]));
        self.f64s.clear();
        self.u64s.clear();
        for_each(msg, 6, |q| {
            let v = scalars(q, &[1, 2])?;
            self.f64s.push(f64::from_bits(v[0]));
            self.u64s.push(v[1]);
            Ok(())
        })?;
        put_varint(o, self.f64s.len() as u64);
        self.f64s.iter().for_each(|&v| put_f64(o, v));
        put_varint(o, self.u64s.len() as u64);
        self.u64s.iter().for_each(|&v| put_u64(o, v));
        put_u32(o, s[2] as u32);
        out.rows[t] += 1;
        Ok(())
    }

    /// The five `Exemplars.*` arrays of the exemplars that are field `field` of `msg`.
    fn exemplars(&mut self, o: &mut Vec<u8>, msg: &[u8], field: u32) -> Result<(), PbError> {
        let mut count = 0u64;
        for_each(msg, field, |_| {
            count += 1;
            Ok(())
        })?;
        put_varint(o, count);
        for_each(msg, field, |e| {
            append_map(o, e, 7, &mut self.json, &mut self.itoa, &mut |_, _| {})
        })?;
        put_varint(o, count);
        for_each(msg, field, |e| {
            put_i64(o, scalars(e, &[2])?[0] as i64);
            Ok(())
        })?;
        put_varint(o, count);
        for_each(msg, field, |e| {
            let mut value = 0f64;
            let mut r = Reader::new(e);
            while let Some((n, v)) = r.next_field()? {
                match n {
                    3 => value = f64::from_bits(v.u64()),
                    6 => value = v.u64() as i64 as f64,
                    _ => {}
                }
            }
            put_f64(o, value);
            Ok(())
        })?;
        for id_field in [4, 5] {
            put_varint(o, count);
            for_each(msg, field, |e| {
                let mut id: &[u8] = &[];
                let mut r = Reader::new(e);
                while let Some((n, v)) = r.next_field()? {
                    if n == id_field {
                        id = v.bytes();
                    }
                }
                put_hex(o, id);
                Ok(())
            })?;
        }
        Ok(())
    }
}

/// The last value of each scalar field in `fields` (0 when absent), in that order.
fn scalars<const N: usize>(msg: &[u8], fields: &[u32; N]) -> Result<[u64; N], PbError> {
    let mut out = [0u64; N];
    let mut r = Reader::new(msg);
    while let Some((n, v)) = r.next_field()? {
        if let Some(i) = fields.iter().position(|&f| f == n) {
            out[i] = v.u64();
        }
    }
    Ok(out)
}

/// Every value of a repeated 8-byte field (`fixed64` / `double`), packed or not.
fn repeated_fixed(msg: &[u8], field: u32, mut f: impl FnMut(u64)) -> Result<(), PbError> {
    let mut r = Reader::new(msg);
    while let Some((n, v)) = r.next_field()? {
        if n != field {
            continue;
        }
        match v {
            Value::Bytes(packed) => {
                if packed.len() % 8 != 0 {
                    return Err(PbError::Truncated);
                }
                for c in packed.chunks_exact(8) {
                    f(u64::from_le_bytes(c.try_into().unwrap_or_default()));
                }
            }
            v => f(v.u64()),
        }
    }
    Ok(())
}

fn zigzag(v: u64) -> i32 {
    ((v >> 1) as i64 ^ -((v & 1) as i64)) as i32
}
