//! A minimal, zero-copy protobuf wire reader: just enough to walk an encoded
//! `ExportTraceServiceRequest` field by field and borrow its strings and bytes, so the writer can
//! encode RowBinary straight from the queued bytes without materialising owned OTLP structs
//! (prost's owned decode allocates every string and vector and is the slowest step of the path).

use thiserror::Error;
use tracegate_otlp::wire;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PbError {
    #[error("truncated protobuf")]
    Truncated,
    #[error("varint too long")]
    VarintTooLong,
    #[error("invalid wire type {0}")]
    WireType(u8),
    #[error("unbalanced protobuf group")]
    Group,
    #[error("nesting too deep")]
    TooDeep,
    /// The envelope's payload could not be decompressed (`tracegate_otlp::envelope::plain_request`).
    #[error(transparent)]
    Payload(#[from] tracegate_otlp::envelope::PayloadError),
}

/// One field value. Groups (deprecated wire types 3/4) are skipped by the reader.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

impl<'a> Value<'a> {
    #[inline]
    pub fn bytes(self) -> &'a [u8] {
        match self {
            Value::Bytes(b) => b,
            _ => &[],
        }
    }
    #[inline]
    pub fn u64(self) -> u64 {
        match self {
            Value::Varint(v) | Value::Fixed64(v) => v,
            Value::Fixed32(v) => u64::from(v),
            Value::Bytes(_) => 0,
        }
    }
}

pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

const MAX_GROUP_DEPTH: usize = 64;

impl<'a> Reader<'a> {
    #[inline]
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// How far the reader is into its buffer (the start of the next field).
    #[inline]
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// The one varint rule (`tracegate_otlp::wire`); one-byte varints return inline.
    #[inline(always)]
    fn varint(&mut self) -> Result<u64, PbError> {
        wire::varint(self.buf, &mut self.pos).ok_or_else(|| self.varint_error())
    }

    /// Why the varint at the cursor was refused: the bytes end inside it, or it is too long.
    #[cold]
    fn varint_error(&self) -> PbError {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        if rest.len() < 10 && rest.iter().all(|b| b & 0x80 != 0) {
            PbError::Truncated
        } else {
            PbError::VarintTooLong
        }
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8], PbError> {
        let end = self.pos.checked_add(n).ok_or(PbError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(PbError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    /// If the next field's key is the one-byte `tag` of a length-delimited field, that field's
    /// bytes (the reader moves past it); else `None`, the reader unmoved. A fast path for the
    /// field that repeats most in a message (a span's attributes): anything unusual, errors
    /// included, is left to `next_field`.
    #[inline(always)]
    pub fn take_tagged(&mut self, tag: u8) -> Option<&'a [u8]> {
        let b = self.buf.get(self.pos..)?;
        if b.first() != Some(&tag) {
            return None;
        }
        let (len, hdr): (usize, usize) = match *b.get(1)? {
            l if l < 0x80 => (l as usize, 2),
            l => {
                let h = *b.get(2)?;
                if h >= 0x80 {
                    return None;
                }
                (((h as usize) << 7) | (l & 0x7f) as usize, 3)
            }
        };
        let field = b.get(hdr..hdr.checked_add(len)?)?;
        self.pos += hdr + len;
        Some(field)
    }

    /// The next field (number, value), or `None` at the end of the message.
    #[inline(always)]
    pub fn next_field(&mut self) -> Result<Option<(u32, Value<'a>)>, PbError> {
        loop {
            if self.pos >= self.buf.len() {
                return Ok(None);
            }
            let key = self.varint()?;
            let field = (key >> 3) as u32;
            let wire = (key & 7) as u8;
            let v = match wire {
                0 => Value::Varint(self.varint()?),
                1 => {
                    let b = self.take(8)?;
                    Value::Fixed64(u64::from_le_bytes(b.try_into().expect("8 bytes")))
                }
                2 => {
                    let n = self.varint()?;
                    let n = usize::try_from(n).map_err(|_| PbError::Truncated)?;
                    Value::Bytes(self.take(n)?)
                }
                5 => {
                    let b = self.take(4)?;
                    Value::Fixed32(u32::from_le_bytes(b.try_into().expect("4 bytes")))
                }
                3 => {
                    self.skip_group(field, 1)?;
                    continue;
                }
                w => return Err(PbError::WireType(w)),
            };
            return Ok(Some((field, v)));
        }
    }

    fn skip_group(&mut self, field: u32, depth: usize) -> Result<(), PbError> {
        if depth > MAX_GROUP_DEPTH {
            return Err(PbError::TooDeep);
        }
        loop {
            if self.pos >= self.buf.len() {
                return Err(PbError::Group);
            }
            let key = self.varint()?;
            let f = (key >> 3) as u32;
            match (key & 7) as u8 {
                0 => {
                    self.varint()?;
                }
                1 => {
                    self.take(8)?;
                }
                2 => {
                    let n = self.varint()?;
                    self.take(usize::try_from(n).map_err(|_| PbError::Truncated)?)?;
                }
                5 => {
                    self.take(4)?;
                }
                3 => self.skip_group(f, depth + 1)?,
                4 if f == field => return Ok(()),
                4 => return Err(PbError::Group),
                w => return Err(PbError::WireType(w)),
            }
        }
    }
}

/// Calls `f` for every length-delimited occurrence of field `num` in `msg`.
#[inline]
pub fn for_each<'a>(
    msg: &'a [u8],
    num: u32,
    mut f: impl FnMut(&'a [u8]) -> Result<(), PbError>,
) -> Result<(), PbError> {
    let mut r = Reader::new(msg);
    while let Some((n, v)) = r.next_field()? {
        if n == num {
            if let Value::Bytes(b) = v {
                f(b)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_and_skips_groups() {
        // field 1 varint 150, field 2 group {field 1 varint 1}, field 3 bytes "hi", field 4 fixed32
        let msg = [
            0x08, 0x96, 0x01, 0x13, 0x08, 0x01, 0x14, 0x1a, 0x02, b'h', b'i', 0x25, 1, 0, 0, 0,
        ];
        let mut r = Reader::new(&msg);
        let (n, v) = r.next_field().unwrap().unwrap();
        assert_eq!((n, v.u64()), (1, 150));
        let (n, v) = r.next_field().unwrap().unwrap();
        assert_eq!((n, v.bytes()), (3, &b"hi"[..]));
        let (n, v) = r.next_field().unwrap().unwrap();
        assert_eq!((n, v.u64()), (4, 1));
        assert!(r.next_field().unwrap().is_none());
    }

    #[test]
    fn take_tagged_agrees_with_next_field() {
        // field 9 bytes (1-byte length), field 9 bytes (2-byte length: 200), field 1 varint,
        // then a truncated field 9 that only next_field may report.
        let mut msg = vec![0x4a, 0x02, b'a', b'b', 0x4a, 0xc8, 0x01];
        msg.extend(std::iter::repeat_n(b'x', 200));
        msg.extend([0x08, 0x05, 0x4a, 0x05, b'z']);
        let mut r = Reader::new(&msg);
        assert_eq!(r.take_tagged(0x4a), Some(&b"ab"[..]));
        assert_eq!(r.take_tagged(0x4a).map(<[u8]>::len), Some(200));
        assert_eq!(r.take_tagged(0x4a), None, "a varint field is not taken");
        assert_eq!(
            r.next_field().unwrap().map(|(n, v)| (n, v.u64())),
            Some((1, 5))
        );
        assert_eq!(r.take_tagged(0x4a), None, "truncated: left to next_field");
        assert_eq!(r.next_field().unwrap_err(), PbError::Truncated);
    }

    #[test]
    fn truncation_is_an_error() {
        assert_eq!(
            Reader::new(&[0x1a, 0x05, b'a']).next_field().unwrap_err(),
            PbError::Truncated
        );
        assert_eq!(
            Reader::new(&[0x13, 0x08]).next_field().unwrap_err(),
            PbError::Truncated
        );
        assert!(Reader::new(&[0x0f]).next_field().is_err());
    }
}
