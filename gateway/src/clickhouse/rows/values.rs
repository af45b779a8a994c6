//! Attribute values as ClickHouse strings (the clickhouseexporter rules in `rows/mod.rs`):
//! enum names, doubles, JSON for arrays and kvlists, read straight from protobuf bytes.

use std::io::Write as _;

use base64::Engine as _;

use super::super::pb::{for_each, PbError, Reader, Value};

pub fn span_kind(k: u64) -> &'static str {
    match k {
        1 => "Internal",
        2 => "Server",
        3 => "Client",
        4 => "Producer",
        5 => "Consumer",
        _ => "Unspecified",
    }
}

pub fn status_code(c: u64) -> &'static str {
    match c {
        1 => "Ok",
        2 => "Error",
        _ => "Unset",
    }
}

/// Formats a double like Go's `strconv.FormatFloat(v, 'f', -1, 64)` (what the Collector uses).
pub fn format_double(out: &mut Vec<u8>, v: f64) {
    if v.is_nan() {
        out.extend_from_slice(b"NaN");
    } else if v.is_infinite() {
        out.extend_from_slice(if v > 0.0 { b"+Inf" } else { b"-Inf" });
    } else {
        // Rust's Display for f64 is the shortest round-tripping form, never in exponent notation.
        let _ = write!(out, "{v}");
    }
}

pub(super) fn json_str(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        let esc: Option<&[u8]> = match b {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0..=0x1f => None,
            _ => continue,
        };
        out.extend_from_slice(&s[start..i]);
        match esc {
            Some(e) => out.extend_from_slice(e),
            None => {
                let _ = write!(out, "\\u{:04x}", b);
            }
        }
        start = i + 1;
    }
    out.extend_from_slice(&s[start..]);
    out.push(b'"');
}

/// The decoded oneof of an `AnyValue` (last field wins, as in protobuf).
#[derive(Clone, Copy)]
pub(super) enum Any<'a> {
    Empty,
    Str(&'a [u8]),
    Bool(bool),
    Int(i64),
    Double(f64),
    Array(&'a [u8]),
    KvList(&'a [u8]),
    Bytes(&'a [u8]),
}

/// A varint at `*p` as a length (the one varint rule, `tracegate_otlp::wire`; `None` on
/// anything unusual).
#[inline(always)]
pub(super) fn varint_at(b: &[u8], p: &mut usize) -> Option<usize> {
    tracegate_otlp::wire::varint(b, p).and_then(|v| usize::try_from(v).ok())
}

/// The string of an `AnyValue` that is exactly one `string_value` field (the common case), else
/// `None`. Returns two registers: the `Result<Any>` of `parse_any` went through the stack, and
/// reading it back stalled on store forwarding (~7 % of the writer's profile).
#[inline(always)]
pub(super) fn any_str_fast(msg: &[u8]) -> Option<&[u8]> {
    if msg.first() == Some(&0x0a) {
        let mut p = 1;
        if let Some(n) = varint_at(msg, &mut p) {
            if p.checked_add(n) == Some(msg.len()) {
                return msg.get(p..);
            }
        }
    }
    None
}

#[inline(always)]
pub(super) fn parse_any(msg: &[u8]) -> Result<Any<'_>, PbError> {
    match any_str_fast(msg) {
        Some(s) => Ok(Any::Str(s)),
        None => parse_any_slow(msg),
    }
}

pub(super) fn parse_any_slow(msg: &[u8]) -> Result<Any<'_>, PbError> {
    let mut r = Reader::new(msg);
    let mut v = Any::Empty;
    while let Some((n, f)) = r.next_field()? {
        v = match (n, f) {
            (1, Value::Bytes(b)) => Any::Str(b),
            (2, f) => Any::Bool(f.u64() != 0),
            (3, f) => Any::Int(f.u64() as i64),
            (4, Value::Fixed64(b)) => Any::Double(f64::from_bits(b)),
            (5, Value::Bytes(b)) => Any::Array(b),
            (6, Value::Bytes(b)) => Any::KvList(b),
            (7, Value::Bytes(b)) => Any::Bytes(b),
            _ => continue,
        };
    }
    Ok(v)
}

/// A `KeyValue` message that is `key` (field 1) then `value` (field 2), nothing else (the common
/// case), split into its key and value message; else `None`.
#[inline(always)]
pub(super) fn kv_fast(msg: &[u8]) -> Option<(&[u8], &[u8])> {
    if msg.first() == Some(&0x0a) {
        let mut p = 1;
        let kl = varint_at(msg, &mut p)?;
        let key = msg.get(p..p.checked_add(kl)?)?;
        let mut q = p + kl;
        if msg.get(q) == Some(&0x12) {
            q += 1;
            let vl = varint_at(msg, &mut q)?;
            if q.checked_add(vl) == Some(msg.len()) {
                return Some((key, msg.get(q..)?));
            }
        }
    }
    None
}

/// Splits a `KeyValue` message into its key and value message.
#[inline]
pub(super) fn parse_kv(msg: &[u8]) -> Result<(&[u8], &[u8]), PbError> {
    match kv_fast(msg) {
        Some(kv) => Ok(kv),
        None => parse_kv_slow(msg),
    }
}

pub(super) fn parse_kv_slow(msg: &[u8]) -> Result<(&[u8], &[u8]), PbError> {
    let mut r = Reader::new(msg);
    let (mut k, mut v): (&[u8], &[u8]) = (&[], &[]);
    while let Some((n, f)) = r.next_field()? {
        match (n, f) {
            (1, Value::Bytes(b)) => k = b,
            (2, Value::Bytes(b)) => v = b,
            _ => {}
        }
    }
    Ok((k, v))
}

/// JSON form of an AnyValue nested in an array or kvlist.
pub(super) fn any_json(out: &mut Vec<u8>, v: Any<'_>) -> Result<(), PbError> {
    match v {
        Any::Empty => out.extend_from_slice(b"null"),
        Any::Str(s) => json_str(out, s),
        Any::Bool(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
        Any::Int(i) => out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes()),
        Any::Double(d) => {
            if d.is_finite() {
                format_double(out, d)
            } else {
                let mut s = Vec::new();
                format_double(&mut s, d);
                json_str(out, &s)
            }
        }
        Any::Bytes(b) => {
            out.push(b'"');
            let mut s = String::new();
            base64::engine::general_purpose::STANDARD.encode_string(b, &mut s);
            out.extend_from_slice(s.as_bytes());
            out.push(b'"');
        }
        Any::Array(a) => {
            out.push(b'[');
            let mut first = true;
            for_each(a, 1, |item| {
                if !first {
                    out.push(b',');
                }
                first = false;
                any_json(out, parse_any(item)?)
            })?;
            out.push(b']');
        }
        Any::KvList(l) => {
            out.push(b'{');
            let mut first = true;
            for_each(l, 1, |kv| {
                if !first {
                    out.push(b',');
                }
                first = false;
                let (k, v) = parse_kv(kv)?;
                json_str(out, k);
                out.push(b':');
                any_json(out, parse_any(v)?)
            })?;
            out.push(b'}');
        }
    }
    Ok(())
}

/// The string form of a top-level attribute value (see the module docs). Borrowed for strings,
/// else written to `scratch`.
pub(super) fn any_string<'a>(
    v: Any<'a>,
    scratch: &'a mut Vec<u8>,
    itoa: &mut itoa::Buffer,
) -> Result<&'a [u8], PbError> {
    scratch.clear();
    match v {
        Any::Empty => return Ok(&[]),
        Any::Str(s) => return Ok(s),
        Any::Bool(b) => return Ok(if b { b"true" } else { b"false" }),
        Any::Int(i) => scratch.extend_from_slice(itoa.format(i).as_bytes()),
        Any::Double(d) => format_double(scratch, d),
        Any::Bytes(b) => {
            let mut s = String::new();
            base64::engine::general_purpose::STANDARD.encode_string(b, &mut s);
            scratch.extend_from_slice(s.as_bytes());
        }
        Any::Array(_) | Any::KvList(_) => any_json(scratch, v)?,
    }
    Ok(scratch)
}
