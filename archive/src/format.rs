//! Archive object format, version 1 (documented in `docs/archive-format.md`).
//!
//! ```text
//! magic   "TGA1"            4 bytes
//! codec   u8                1 = zstd (the only one in v1)
//! reserved                  3 bytes, zero
//! payload                   one zstd frame with content checksum, holding records:
//!           len  u32 LE     length of the record
//!           body            an encoded tracegate.v1.Batch
//! ```
//! The zstd frame checksum detects corruption; a truncated object fails to decode rather than
//! silently losing records. Objects are immutable once written.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use prost::Message;
use std::io::{Read, Write};
use tracegate_proto::v1::Batch;

pub const MAGIC: &[u8; 4] = b"TGA1";
pub const CODEC_ZSTD: u8 = 1;
pub const HEADER_LEN: usize = 8;

/// Encodes batches into one archive object.
pub fn encode(batches: &[&Batch], level: i32) -> Result<Vec<u8>> {
    let raw_len: usize = batches.iter().map(|b| 4 + b.encoded_len()).sum();
    let mut out = Vec::with_capacity(HEADER_LEN + raw_len / 4 + 64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[CODEC_ZSTD, 0, 0, 0]);
    let mut enc = zstd::stream::write::Encoder::new(out, level)?;
    enc.include_checksum(true)?;
    enc.set_pledged_src_size(Some(raw_len as u64))?;
    let mut buf = Vec::new();
    for b in batches {
        buf.clear();
        b.encode(&mut buf)?;
        enc.write_all(&(buf.len() as u32).to_le_bytes())?;
        enc.write_all(&buf)?;
    }
    Ok(enc.finish()?)
}

/// Decodes every batch of an archive object that inflates to at most `max_plain` bytes (a v1
/// object is not authenticated: anyone who can write to the archive could plant a bomb).
pub fn decode(object: &[u8], max_plain: usize) -> Result<Vec<Batch>> {
    if object.len() < HEADER_LEN || &object[..4] != MAGIC {
        bail!("not a tracegate archive object (bad magic)");
    }
    if object[4] != CODEC_ZSTD {
        bail!("unknown archive codec {}", object[4]);
    }
    let mut raw = Vec::new();
    zstd::stream::read::Decoder::new(&object[HEADER_LEN..])?
        .take(max_plain as u64 + 1)
        .read_to_end(&mut raw)
        .context("decompressing archive object")?;
    if raw.len() > max_plain {
        bail!("archive object inflates to more than {max_plain} bytes");
    }
    let mut raw = Bytes::from(raw);
    let mut out = Vec::new();
    while !raw.is_empty() {
        if raw.len() < 4 {
            bail!("truncated record header");
        }
        let len = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
        if raw.len() < 4 + len {
            bail!("truncated record");
        }
        let body = raw.slice(4..4 + len);
        bytes::Buf::advance(&mut raw, 4 + len);
        let batch = Batch::decode(body).context("decoding batch record")?;
        if batch.schema_version > tracegate_proto::BATCH_SCHEMA_VERSION {
            bail!(
                "batch schema version {} is newer than this build",
                batch.schema_version
            );
        }
        out.push(batch);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption_detected() {
        let a = Batch {
            schema_version: 1,
            project_id: "p".into(),
            span_count: 3,
            otlp_request: Bytes::from_static(b"abc"),
            ..Default::default()
        };
        let b = Batch {
            schema_version: 1,
            project_id: "q".into(),
            ..Default::default()
        };
        let obj = encode(&[&a, &b], 3).unwrap();
        assert_eq!(decode(&obj, 1 << 20).unwrap(), vec![a, b]);
        let mut bad = obj.clone();
        let n = bad.len();
        bad[n - 6] ^= 0xff;
        assert!(decode(&bad, 1 << 20).is_err());
        assert!(decode(&obj[..obj.len() - 3], 1 << 20).is_err());
        assert!(decode(b"nope", 1 << 20).is_err());
    }

    #[test]
    fn object_that_inflates_past_the_cap_is_refused() {
        let a = Batch {
            schema_version: 1,
            project_id: "p".repeat(64 << 10),
            ..Default::default()
        };
        let obj = encode(&[&a], 3).unwrap();
        assert!(obj.len() < 4096);
        let e = decode(&obj, 32 << 10).unwrap_err().to_string();
        assert!(e.contains("inflates to more than"), "{e}");
        assert_eq!(decode(&obj, 128 << 10).unwrap(), vec![a]);
    }

    #[test]
    fn compressed_envelopes_are_stored_as_they_are_and_newer_schemas_refused() {
        let z = Batch {
            schema_version: 2,
            project_id: "p".into(),
            otlp_request: Bytes::from(zstd::encode_all(&b"abc"[..], 3).unwrap()),
            otlp_request_encoding: tracegate_proto::v1::PayloadEncoding::Zstd as i32,
            otlp_request_plain_len: 3,
            ..Default::default()
        };
        let obj = encode(&[&z], 3).unwrap();
        let back = decode(&obj, 1 << 20).unwrap();
        assert_eq!(back, vec![z.clone()]);
        assert_eq!(
            tracegate_otlp::envelope::plain_request(&back[0], 10).unwrap(),
            &b"abc"[..]
        );
        let future = Batch {
            schema_version: tracegate_proto::BATCH_SCHEMA_VERSION + 1,
            ..z
        };
        let e = decode(&encode(&[&future], 3).unwrap(), 1 << 20).unwrap_err();
        assert!(e.to_string().contains("newer than this build"), "{e}");
    }
}
