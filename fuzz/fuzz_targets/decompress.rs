//! Capped decompression (`tracegate_otlp::codec`): gzip, deflate (zlib and raw), zstd
//! (including frames asking for a large window) and identity, under a 1 MiB cap. It must never
//! panic, never return more than the cap, and refuse only as "too large" or "malformed".
//!
//! Input: the first byte picks the encoding; the rest is the body.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

use tracegate_otlp::codec as decode;

use decode::{Compression, DecodeError};

const CAP: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let compression = match selector % 4 {
        0 => Compression::Identity,
        1 => Compression::Gzip,
        2 => Compression::Deflate,
        _ => Compression::Zstd,
    };
    match decode::decompress(compression, Bytes::copy_from_slice(body), CAP) {
        Ok(out) => assert!(out.len() <= CAP, "{} bytes over the cap", out.len()),
        Err(DecodeError::TooLarge(cap)) => assert_eq!(cap, CAP),
        Err(DecodeError::Malformed(_)) => assert!(compression != Compression::Identity),
        Err(e) => panic!("unexpected refusal {e:?}"),
    }
});
