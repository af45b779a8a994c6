//! The protobuf varint, read one way everywhere: the scan, the prune walk, the ClickHouse row
//! encoder and the envelope reader all call `varint`, so a byte string is the same number (or
//! the same refusal) wherever it is read.
//!
//! The rule is prost 0.14's (`encoding.rs`, after protobuf-go): at most 10 bytes, and a 10th
//! byte ≥ 2 overflows u64 and is refused. Shorter encodings with redundant continuation bytes
//! (`0x80 0x00` for 0) are accepted, as prost accepts them.

/// The varint at `*pos` of `buf`; `*pos` moves past it. `None` (and `*pos` unmoved) when the
/// bytes end inside it or it breaks the rule above.
///
/// One-byte varints (field keys, short lengths) are most of them: they return inline, the rest
/// out of line.
#[inline(always)]
pub fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let b = *buf.get(*pos)?;
    if b < 0x80 {
        *pos += 1;
        return Some(u64::from(b));
    }
    varint_long(buf, pos)
}

#[inline(never)]
fn varint_long(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let start = *pos;
    let mut v = 0u64;
    for i in 0..10 {
        let b = *buf.get(start.checked_add(i)?)?;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            if i == 9 && b >= 2 {
                return None;
            }
            *pos = start + i + 1;
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::encoding::{decode_varint, encode_varint};

    fn read(b: &[u8]) -> Option<(u64, usize)> {
        let mut p = 0;
        varint(b, &mut p).map(|v| (v, p))
    }

    #[test]
    fn agrees_with_prost_on_every_length_and_edge() {
        let mut values = vec![0u64, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX];
        values.extend((0..64).map(|s| 1u64 << s));
        values.extend((1..64).map(|s| (1u64 << s) - 1));
        for v in values {
            let mut b = Vec::new();
            encode_varint(v, &mut b);
            assert_eq!(read(&b), Some((v, b.len())), "{v}");
            // Truncated anywhere: refused, like prost.
            for cut in 0..b.len() {
                assert_eq!(read(&b[..cut]), None);
                assert!(decode_varint(&mut &b[..cut]).is_err());
            }
        }
    }

    #[test]
    fn overlong_and_overflowing_forms_follow_prost() {
        let cases: [&[u8]; 6] = [
            &[0x80, 0x00],                                                 // 0, redundant
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], // u64::MAX
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02], // overflows
            &[
                0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0,
            ], // 11 bytes
            &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00], // 0 in 10
            &[0xff],
        ];
        for b in cases {
            let ours = read(b).map(|(v, _)| v);
            let prost = decode_varint(&mut &b[..]).ok();
            assert_eq!(ours, prost, "{b:02x?}");
        }
    }

    #[test]
    fn a_refusal_leaves_the_position() {
        let b = [0x05, 0xff, 0xff];
        let mut p = 1;
        assert_eq!(varint(&b, &mut p), None);
        assert_eq!(p, 1);
        assert_eq!(varint(&b, &mut 0), Some(5));
    }
}
