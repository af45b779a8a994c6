//! One-shot zstd compression with a context kept per thread: what the gateway's payload
//! compression, the archive's objects and ClickHouse's insert blocks share.
//!
//! Why one-shot: zstd's streaming encoder, fed record by record, compresses through its window
//! buffer and takes the slower external-dictionary block path (`ZSTD_compressBlock_fast_extDict`
//! was ~60 % of the embedded path's CPU on 8 KiB prompts, issue 21); one call over a
//! contiguous input takes the plain path. Why per thread: a fresh context allocates and faults
//! in its tables on every call. The blocking pool's threads live on, so each keeps its context
//! (one per level and checksum setting in use, normally one).

use std::cell::RefCell;
use std::io::{self, Cursor};

use zstd::bulk::Compressor;
use zstd::zstd_safe::CParameter;

thread_local! {
    /// This thread's context, with the level and checksum flag it is set to.
    static CTX: RefCell<Option<(i32, bool, Compressor<'static>)>> = const { RefCell::new(None) };
    /// Output scratch for [`compress_exact`], sized for the worst case once and reused.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Appends `plain` as one zstd frame (content size in its header; a content checksum when
/// `checksum`) to `out`, writing into spare capacity nobody had to zero, and returns `out`.
/// `out` grows by up to zstd's compress bound (about the input's size) while this runs.
pub fn compress_append(
    plain: &[u8],
    level: i32,
    checksum: bool,
    mut out: Vec<u8>,
) -> io::Result<Vec<u8>> {
    let start = out.len();
    out.reserve(zstd::zstd_safe::compress_bound(plain.len()));
    let mut cur = Cursor::new(out);
    cur.set_position(start as u64);
    CTX.with(|cell| -> io::Result<()> {
        let mut slot = cell.borrow_mut();
        let ctx = match &mut *slot {
            Some((l, c, ctx)) if *l == level && *c == checksum => ctx,
            _ => {
                let mut ctx = Compressor::new(level)?;
                ctx.set_parameter(CParameter::ChecksumFlag(checksum))?;
                &mut slot.insert((level, checksum, ctx)).2
            }
        };
        ctx.compress_to_buffer(plain, &mut cur)?;
        Ok(())
    })?;
    Ok(cur.into_inner())
}

/// `plain` as one zstd frame in a buffer of exactly its size: compressed into this thread's
/// scratch, then copied out, so a long-lived result (a payload waiting in a queue) holds no
/// compress-bound slack.
pub fn compress_exact(plain: &[u8], level: i32, checksum: bool) -> io::Result<Vec<u8>> {
    SCRATCH.with(|cell| {
        let mut scratch = cell.borrow_mut();
        let mut buf = compress_append(plain, level, checksum, std::mem::take(&mut *scratch))?;
        let out = buf.to_vec();
        buf.clear();
        *scratch = buf;
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Word salad: compressible, but not so regular that every level finds the same matches.
    fn sample(n: usize) -> Vec<u8> {
        const WORDS: &[&str] = &[
            "model", "user ", "tokens", "prompt ", "the ", "answer", "\n",
        ];
        let (mut x, mut out) = (0x2545_f491_4f6c_dd1du64, Vec::with_capacity(n + 8));
        while out.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(WORDS[(x % WORDS.len() as u64) as usize].as_bytes());
            out.extend_from_slice(&x.to_le_bytes()[..(x >> 61) as usize]);
        }
        out.truncate(n);
        out
    }

    #[test]
    fn frames_round_trip_and_carry_size_and_checksum_as_asked() {
        let plain = sample(200_000);
        for checksum in [false, true] {
            let z = compress_exact(&plain, 3, checksum).unwrap();
            assert_eq!(z.capacity(), z.len(), "no compress-bound slack");
            assert_eq!(zstd::bulk::decompress(&z, plain.len()).unwrap(), plain);
            let size = zstd::zstd_safe::get_frame_content_size(&z).unwrap();
            assert_eq!(size, Some(plain.len() as u64));
            // Frame header descriptor, bit 2: content checksum present.
            assert_eq!(z[4] & 0b100 != 0, checksum, "checksum flag {checksum}");
        }
    }

    #[test]
    fn append_keeps_the_prefix_and_a_corrupt_frame_is_caught_by_its_checksum() {
        let plain = sample(50_000);
        let out = compress_append(&plain, 1, true, b"HEAD".to_vec()).unwrap();
        assert_eq!(&out[..4], b"HEAD");
        let frame = &out[4..];
        assert_eq!(zstd::bulk::decompress(frame, plain.len()).unwrap(), plain);
        let mut bad = frame.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 0xff; // the checksum's last byte
        assert!(zstd::bulk::decompress(&bad, plain.len()).is_err());
    }

    #[test]
    fn the_context_follows_the_level_asked_for() {
        let plain = sample(100_000);
        let fast = compress_exact(&plain, -5, false).unwrap();
        let slow = compress_exact(&plain, 19, false).unwrap();
        let again = compress_exact(&plain, -5, false).unwrap();
        assert_eq!(fast, again);
        assert!(slow.len() < fast.len(), "{} vs {}", slow.len(), fast.len());
    }
}
