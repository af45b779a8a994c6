//! ClickHouse's native compressed block framing for insert bodies (`decompress=1`): each block
//! is a 16-byte CityHash128 checksum, a method byte (`0x90` zstd, `0x82` LZ4), the compressed
//! size (u32 LE, counting the 9-byte header), the raw size (u32 LE), then the data; the checksum
//! covers header and data (CityHash128 v1.0.2) and is stored as its high 64-bit half, then its
//! low half, each little-endian: what ClickHouse verifies.
//!
//! We frame the blocks ourselves rather than through the `clickhouse` crate's `CompressedData`:
//! that one zero-fills a compress-bound buffer and builds a fresh zstd context for every block.
//! Here the zstd context is kept per thread (`tracegate_pipeline::zstd_once`) and zstd
//! writes straight into the block's spare capacity after the header, so the only work left per
//! block is the compression and the checksum. That was ~6 % of the writer's CPU (profile in
//! docs/benchmarks.md).

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clickhouse::Compression;

/// ClickHouse compresses in blocks of about this size (`max_compress_block_size`); so do we.
pub const BLOCK: usize = 1024 * 1024;

const CHECKSUM: usize = 16;
const HEADER: usize = 9;
const META: usize = CHECKSUM + HEADER;
const ZSTD: u8 = 0x90;
const LZ4: u8 = 0x82;

/// `data` in native compressed blocks of at most `BLOCK` raw bytes each.
pub fn native(data: &[u8], codec: Compression) -> Result<Vec<Bytes>> {
    data.chunks(BLOCK).map(|c| block(c, codec)).collect()
}

/// One native compressed block of `raw` (at most 4 GiB).
pub fn block(raw: &[u8], codec: Compression) -> Result<Bytes> {
    let raw_len = u32::try_from(raw.len()).context("an insert block over 4 GiB")?;
    let (method, out) = match codec {
        Compression::Zstd(level) => (ZSTD, zstd_block(raw, level)?),
        Compression::Lz4 => (LZ4, lz4_block(raw)?),
        other => bail!("no native block framing for {other:?}"),
    };
    finish(out, method, raw_len)
}

fn zstd_block(raw: &[u8], level: i32) -> Result<Vec<u8>> {
    // zstd writes after the header, into capacity nobody had to zero.
    let mut out = Vec::with_capacity(META + zstd::zstd_safe::compress_bound(raw.len()));
    out.resize(META, 0);
    tracegate_pipeline::zstd_once::compress_append(raw, level, false, out)
        .context("zstd compression of an insert block")
}

fn lz4_block(raw: &[u8]) -> Result<Vec<u8>> {
    // lz4_flex writes into an initialised slice only; LZ4 is the non-default codec, so the
    // zero-fill stays.
    let mut out = vec![0u8; META + lz4_flex::block::get_maximum_output_size(raw.len())];
    let n = lz4_flex::block::compress_into(raw, &mut out[META..])
        .context("LZ4 compression of an insert block")?;
    out.truncate(META + n);
    Ok(out)
}

/// Writes the header and the checksum in front of the compressed data at `out[META..]`.
fn finish(mut out: Vec<u8>, method: u8, raw_len: u32) -> Result<Bytes> {
    let compressed_len =
        u32::try_from(out.len() - CHECKSUM).context("a compressed block over 4 GiB")?;
    out[CHECKSUM] = method;
    out[CHECKSUM + 1..CHECKSUM + 5].copy_from_slice(&compressed_len.to_le_bytes());
    out[CHECKSUM + 5..META].copy_from_slice(&raw_len.to_le_bytes());
    let sum = cityhash_rs::cityhash_102_128(&out[CHECKSUM..]);
    out[..8].copy_from_slice(&((sum >> 64) as u64).to_le_bytes());
    out[8..CHECKSUM].copy_from_slice(&(sum as u64).to_le_bytes());
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads one block back: (method, raw bytes), checking sizes and the checksum.
    fn read(b: &[u8]) -> (u8, Vec<u8>) {
        assert!(b.len() >= META);
        // High half first (ClickHouse's layout; the chdb front checks it independently).
        let high = u64::from_le_bytes(b[..8].try_into().unwrap());
        let low = u64::from_le_bytes(b[8..16].try_into().unwrap());
        let sum = cityhash_rs::cityhash_102_128(&b[CHECKSUM..]);
        assert_eq!((high, low), ((sum >> 64) as u64, sum as u64), "checksum");
        let method = b[CHECKSUM];
        let clen = u32::from_le_bytes(b[17..21].try_into().unwrap()) as usize;
        let rlen = u32::from_le_bytes(b[21..25].try_into().unwrap()) as usize;
        assert_eq!(
            clen,
            b.len() - CHECKSUM,
            "compressed size counts the header"
        );
        let data = &b[META..];
        let raw = match method {
            ZSTD => zstd::bulk::decompress(data, rlen).unwrap(),
            LZ4 => lz4_flex::block::decompress(data, rlen).unwrap(),
            m => panic!("method {m:#x}"),
        };
        assert_eq!(raw.len(), rlen);
        (method, raw)
    }

    fn sample(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes()[7] % 17 + b'a')
            .collect()
    }

    #[test]
    fn blocks_round_trip_with_valid_checksums() {
        let data = sample(2 * BLOCK + 12_345);
        for (codec, method) in [
            (Compression::Zstd(-3), ZSTD),
            (Compression::Zstd(1), ZSTD),
            (Compression::Lz4, LZ4),
        ] {
            let blocks = native(&data, codec).unwrap();
            assert_eq!(blocks.len(), 3, "{codec:?}: 1 MiB blocks");
            let mut back = Vec::new();
            for b in &blocks {
                let (m, raw) = read(b);
                assert_eq!(m, method);
                assert!(raw.len() <= BLOCK);
                back.extend_from_slice(&raw);
            }
            assert_eq!(back, data, "{codec:?}");
        }
    }

    #[test]
    fn a_reused_context_gives_the_same_bytes_as_a_fresh_one() {
        let data = sample(300_000);
        let first = block(&data, Compression::Zstd(-3)).unwrap();
        // Another level in between re-creates the thread's context; then back again.
        block(&data[..1000], Compression::Zstd(5)).unwrap();
        let again = block(&data, Compression::Zstd(-3)).unwrap();
        assert_eq!(first, again);
        assert_eq!(
            &first[META..],
            &zstd::bulk::compress(&data, -3).unwrap()[..],
            "the same frame as zstd's one-shot API"
        );
    }

    #[test]
    fn empty_input_is_one_valid_block_and_unknown_codecs_are_refused() {
        let (m, raw) = read(&block(&[], Compression::Zstd(-3)).unwrap());
        assert_eq!((m, raw.len()), (ZSTD, 0));
        assert!(native(&[], Compression::Lz4).unwrap().is_empty());
        assert!(block(b"x", Compression::None).is_err());
    }
}
