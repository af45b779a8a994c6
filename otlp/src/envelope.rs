//! Reading a `tracegate.v1.Batch`'s OTLP payload.
//!
//! `otlp_request` is either a plain `ExportTraceServiceRequest` (identity, schema version 1) or
//! the client's zstd / gzip body forwarded as it was received (schema version 2,
//! `otlp_request_encoding`, `otlp_request_plain_len`): the gateway does not decompress and
//! recompress a clean request, so its compression is done once. Every reader of
//! `otlp_request` goes through [`plain_request`], so compressed bytes are never taken for
//! protobuf.

use bytes::Bytes;
use tracegate_proto::v1::{Batch, PayloadEncoding};

use crate::codec::{self as decode, Compression};

/// The largest decompressed payload a compressed envelope may carry. The gateway forwards a
/// compressed body only when its plain size is at most this (larger ones go out plain), so a
/// reader that allows this much can read every envelope; [`plain_request`] refuses to inflate
/// more than its cap, so a corrupt or hostile envelope cannot make a reader allocate more.
pub const MAX_PLAIN_BYTES: usize = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PayloadError {
    #[error("unknown otlp_request_encoding {0} (written by a newer build?)")]
    UnknownEncoding(i32),
    #[error("otlp_request_plain_len {plain_len} is over this reader's cap of {cap} bytes")]
    TooLarge { plain_len: u64, cap: usize },
    #[error("{encoding} otlp_request does not decompress: {message}")]
    Corrupt {
        encoding: &'static str,
        message: String,
    },
    #[error(
        "{encoding} otlp_request decompresses to more than otlp_request_plain_len ({want}) bytes"
    )]
    Longer { encoding: &'static str, want: u64 },
    #[error("{encoding} otlp_request decompresses to {got} bytes, but otlp_request_plain_len says {want}")]
    LengthMismatch {
        encoding: &'static str,
        got: usize,
        want: u64,
    },
}

/// The payload's encoding; refuses values this build does not know.
pub fn encoding(batch: &Batch) -> Result<PayloadEncoding, PayloadError> {
    PayloadEncoding::try_from(batch.otlp_request_encoding)
        .map_err(|_| PayloadError::UnknownEncoding(batch.otlp_request_encoding))
}

/// The envelope's plain (encoded protobuf `ExportTraceServiceRequest`) payload: the bytes as
/// they are for identity (no copy), otherwise decompressed with the gateway's capped
/// decompression, never holding more than `min(otlp_request_plain_len, cap)` bytes, and
/// checked to be exactly `otlp_request_plain_len` long. Blocking for a compressed payload
/// (CPU): call it where blocking is fine.
pub fn plain_request(batch: &Batch, cap: usize) -> Result<Bytes, PayloadError> {
    let (compression, name) = match encoding(batch)? {
        PayloadEncoding::Identity => return Ok(batch.otlp_request.clone()),
        PayloadEncoding::Zstd => (Compression::Zstd, "zstd"),
        PayloadEncoding::Gzip => (Compression::Gzip, "gzip"),
    };
    let want = batch.otlp_request_plain_len;
    let limit = match usize::try_from(want) {
        Ok(n) if n <= cap => n,
        _ => {
            return Err(PayloadError::TooLarge {
                plain_len: want,
                cap,
            })
        }
    };
    let plain =
        decode::decompress(compression, batch.otlp_request.clone(), limit).map_err(|e| {
            match e {
                // More bytes than declared: the declared length is wrong.
                decode::DecodeError::TooLarge(_) => PayloadError::Longer {
                    encoding: name,
                    want,
                },
                other => PayloadError::Corrupt {
                    encoding: name,
                    message: other.to_string(),
                },
            }
        })?;
    if plain.len() as u64 != want {
        return Err(PayloadError::LengthMismatch {
            encoding: name,
            got: plain.len(),
            want,
        });
    }
    Ok(plain)
}

/// The bytes `batch` stands for once its payload is decompressed: `encoded_len` (its encoded
/// size) plus what decompression adds (the declared plain length, capped at
/// [`MAX_PLAIN_BYTES`]). Byte bounds on groups of batches (`kafka.batch_max_bytes`,
/// `writer.max_batch_bytes`) count this, so a group of compressed payloads does not grow by
/// their compression ratio when a sink (ClickHouse) decompresses them.
pub fn inflated_len(batch: &Batch, encoded_len: usize) -> usize {
    if batch.otlp_request_encoding == PayloadEncoding::Identity as i32 {
        return encoded_len;
    }
    let plain = usize::try_from(batch.otlp_request_plain_len)
        .unwrap_or(usize::MAX)
        .min(MAX_PLAIN_BYTES);
    encoded_len.saturating_add(plain.saturating_sub(batch.otlp_request.len()))
}

/// Sets `batch`'s payload to the plain `otlp_request` (identity encoding: schema version 1 for
/// traces, 3 for other signals).
pub fn set_plain(batch: &mut Batch, plain: Bytes) {
    batch.otlp_request = plain;
    batch.otlp_request_encoding = PayloadEncoding::Identity as i32;
    batch.otlp_request_plain_len = 0;
    batch.schema_version =
        tracegate_proto::schema_version_of(batch.signal(), PayloadEncoding::Identity);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn plain() -> Vec<u8> {
        (0..10_000u32).map(|i| (i % 97) as u8).collect()
    }

    fn envelope(encoding: PayloadEncoding, body: Vec<u8>, plain_len: usize) -> Batch {
        Batch {
            schema_version: tracegate_proto::schema_version_for(encoding),
            otlp_request: body.into(),
            otlp_request_encoding: encoding as i32,
            otlp_request_plain_len: plain_len as u64,
            ..Default::default()
        }
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn each_encoding_reads_back_the_plain_bytes() {
        let p = plain();
        let id = envelope(PayloadEncoding::Identity, p.clone(), 0);
        assert_eq!(id.schema_version, 1);
        let out = plain_request(&id, 0).unwrap();
        assert_eq!(out, p);
        // Identity is not copied.
        assert_eq!(out.as_ptr(), id.otlp_request.as_ptr());
        let z = envelope(
            PayloadEncoding::Zstd,
            zstd::encode_all(&p[..], 3).unwrap(),
            p.len(),
        );
        assert_eq!(z.schema_version, 2);
        assert_eq!(plain_request(&z, MAX_PLAIN_BYTES).unwrap(), p);
        let g = envelope(PayloadEncoding::Gzip, gzip(&p), p.len());
        assert_eq!(plain_request(&g, p.len()).unwrap(), p);
    }

    #[test]
    fn bad_envelopes_are_refused_not_misread() {
        let p = plain();
        let z = zstd::encode_all(&p[..], 3).unwrap();
        // Declared length too small, too large, over the cap.
        let e = plain_request(
            &envelope(PayloadEncoding::Zstd, z.clone(), p.len() - 1),
            MAX_PLAIN_BYTES,
        );
        assert!(matches!(e, Err(PayloadError::Longer { .. })), "{e:?}");
        let e = plain_request(
            &envelope(PayloadEncoding::Gzip, gzip(&p), p.len() + 1),
            MAX_PLAIN_BYTES,
        );
        assert!(
            matches!(e, Err(PayloadError::LengthMismatch { .. })),
            "{e:?}"
        );
        let e = plain_request(
            &envelope(PayloadEncoding::Zstd, z.clone(), p.len()),
            p.len() - 1,
        );
        assert!(matches!(e, Err(PayloadError::TooLarge { .. })), "{e:?}");
        let e = plain_request(
            &envelope(PayloadEncoding::Gzip, gzip(&p), u64::MAX as usize),
            1,
        );
        assert!(matches!(e, Err(PayloadError::TooLarge { .. })), "{e:?}");
        // Corrupt / truncated compressed bytes.
        let mut bad = z.clone();
        let n = bad.len();
        bad[n / 2] ^= 0x55;
        bad[n - 2] ^= 0x55;
        assert!(plain_request(
            &envelope(PayloadEncoding::Zstd, bad, p.len()),
            MAX_PLAIN_BYTES
        )
        .is_err());
        let cut = z[..z.len() - 5].to_vec();
        assert!(matches!(
            plain_request(
                &envelope(PayloadEncoding::Zstd, cut, p.len()),
                MAX_PLAIN_BYTES
            ),
            Err(PayloadError::Corrupt { .. })
        ));
        // Plain protobuf that claims to be gzip, zstd bytes that claim to be gzip.
        assert!(matches!(
            plain_request(
                &envelope(PayloadEncoding::Gzip, p.clone(), p.len()),
                MAX_PLAIN_BYTES
            ),
            Err(PayloadError::Corrupt { .. })
        ));
        assert!(matches!(
            plain_request(
                &envelope(PayloadEncoding::Gzip, z, p.len()),
                MAX_PLAIN_BYTES
            ),
            Err(PayloadError::Corrupt { .. })
        ));
        // An encoding from the future.
        let mut future = envelope(PayloadEncoding::Zstd, vec![1, 2, 3], 3);
        future.otlp_request_encoding = 7;
        assert_eq!(
            plain_request(&future, MAX_PLAIN_BYTES),
            Err(PayloadError::UnknownEncoding(7))
        );
        future.otlp_request_encoding = -1;
        assert!(plain_request(&future, MAX_PLAIN_BYTES).is_err());
    }

    #[test]
    fn inflated_len_counts_the_plain_size_capped() {
        let p = plain();
        let id = envelope(PayloadEncoding::Identity, p.clone(), 0);
        assert_eq!(inflated_len(&id, 123), 123);
        let z = envelope(
            PayloadEncoding::Zstd,
            zstd::encode_all(&p[..], 3).unwrap(),
            p.len(),
        );
        assert_eq!(inflated_len(&z, 500), 500 + p.len() - z.otlp_request.len());
        let mut huge = z.clone();
        huge.otlp_request_plain_len = u64::MAX;
        assert_eq!(
            inflated_len(&huge, 500),
            500 + MAX_PLAIN_BYTES - z.otlp_request.len()
        );
    }

    #[test]
    fn set_plain_makes_a_version_1_envelope() {
        let p = plain();
        let mut b = envelope(PayloadEncoding::Gzip, gzip(&p), p.len());
        let plain = plain_request(&b, MAX_PLAIN_BYTES).unwrap();
        set_plain(&mut b, plain);
        assert_eq!(b.schema_version, 1);
        assert_eq!(b.otlp_request_encoding, 0);
        assert_eq!(b.otlp_request_plain_len, 0);
        assert_eq!(b.otlp_request, p);
    }
}
