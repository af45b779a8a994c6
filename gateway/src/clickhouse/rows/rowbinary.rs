//! RowBinary primitives: LEB128 lengths, strings, hex ids, fixed-width integers.
//! Hand-written because the `clickhouse` crate encodes through serde structs, which would
//! need every span decoded into owned values first (docs/benchmarks.md, "writer").

pub(super) const HEX: &[u8; 16] = b"0123456789abcdef";

#[inline(always)]
pub(super) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    if v < 0x80 {
        out.push(v as u8);
        return;
    }
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[inline(always)]
pub(super) fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    if s.len() <= SHORT {
        // Keys and most values are short: their length is one byte.
        out.reserve(s.len() + 1);
        out.push(s.len() as u8);
        put_bytes(out, s);
        return;
    }
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s);
}

/// Strings up to this length are copied inline by `put_bytes` (and have a one-byte varint).
pub(super) const SHORT: usize = 64;

/// Appends `s`. Up to `SHORT` bytes the copy is done inline, with overlapping fixed-size
/// loads and stores: the writer copies ~45 short strings per span, and a libc `memmove` call
/// for each was ~4 % of its CPU.
#[inline(always)]
pub(super) fn put_bytes(out: &mut Vec<u8>, s: &[u8]) {
    let n = s.len();
    if n > SHORT {
        out.extend_from_slice(s);
        return;
    }
    out.reserve(n);
    let len = out.len();
    // SAFETY: `reserve` left at least `n` bytes of spare capacity after `len`. Every load is
    // inside `s`: for the width chosen by `n`, each chunk starts at 0, 16, `n - 32` or
    // `n - width`, all ≥ 0, and ends at most at `n`. The stores mirror the loads at the same
    // offsets from `dst`, so they stay inside the `n` bytes that `set_len` then covers, all of
    // them written (the chunks overlap but leave no gap).
    unsafe {
        let src = s.as_ptr();
        let dst = out.as_mut_ptr().add(len);
        macro_rules! at {
            ($t:ty, $off:expr) => {
                std::ptr::write_unaligned(
                    dst.add($off) as *mut $t,
                    std::ptr::read_unaligned(src.add($off) as *const $t),
                )
            };
        }
        if n >= 32 {
            at!(u128, 0);
            at!(u128, 16);
            at!(u128, n - 32);
            at!(u128, n - 16);
        } else if n >= 16 {
            at!(u128, 0);
            at!(u128, n - 16);
        } else if n >= 8 {
            at!(u64, 0);
            at!(u64, n - 8);
        } else if n >= 4 {
            at!(u32, 0);
            at!(u32, n - 4);
        } else {
            for i in 0..n {
                *dst.add(i) = *src.add(i);
            }
        }
        out.set_len(len + n);
    }
}

/// Each byte's two lowercase hex digits, as they are laid out in memory.
pub(super) static HEX_PAIRS: [[u8; 2]; 256] = {
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 15]];
        i += 1;
    }
    t
};

#[inline]
pub(super) fn put_hex(out: &mut Vec<u8>, id: &[u8]) {
    put_varint(out, (id.len() * 2) as u64);
    // Ids are 8 or 16 bytes: format on the stack (one table load per byte) and append once
    // (two pushes per byte, each with its capacity check, were ~5 % of the writer's profile).
    let mut buf = [0u8; 64];
    if id.len() <= buf.len() / 2 {
        for (pair, &b) in buf.chunks_exact_mut(2).zip(id) {
            pair.copy_from_slice(&HEX_PAIRS[b as usize]);
        }
        put_bytes(out, &buf[..id.len() * 2]);
        return;
    }
    out.reserve(id.len() * 2);
    for &b in id {
        out.extend_from_slice(&HEX_PAIRS[b as usize]);
    }
}

#[inline]
pub(super) fn put_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_le_bytes());
}

#[inline]
pub(super) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

#[inline]
pub(super) fn put_i32(out: &mut Vec<u8>, v: i32) {
    out.extend_from_slice(&v.to_le_bytes());
}

#[inline]
pub(super) fn put_f64(out: &mut Vec<u8>, v: f64) {
    out.extend_from_slice(&v.to_le_bytes());
}

#[inline]
pub(super) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// The longest prefix of `s` of at most `n` bytes that does not split a UTF-8 sequence.
pub(super) fn utf8_prefix(s: &[u8], n: usize) -> &[u8] {
    if s.len() <= n {
        return s;
    }
    let mut end = n;
    // Back up over continuation bytes (10xxxxxx) so the cut lands on a char start.
    while end > 0 && (s[end] & 0xc0) == 0x80 {
        end -= 1;
    }
    &s[..end]
}
