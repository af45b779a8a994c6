//! Capped decompression and decoding of OTLP export requests (traces, logs).
//!
//! Errors are this module's own (`DecodeError`); the gateway maps them to its `ApiError` at the
//! ingest edge (`tracegate::error`).
//!
//! The size cap applies to the **decompressed** body and is enforced while inflating, so a
//! compression bomb never puts more than the cap (plus one read chunk) in memory
//! (cf. Collector CVE-2024-36129). zstd reuses one decompression context per thread. Runs on
//! the blocking pool: callers must not call it from an async worker.

use std::io::Read;

use bytes::Bytes;
use prost::Message;
use tracegate_proto::otlp::collector::trace::v1::ExportTraceServiceRequest;

/// Why a body could not be decompressed or decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// A `Content-Encoding` / `grpc-encoding` we do not support.
    UnsupportedEncoding(String),
    /// More than the cap after decompression.
    TooLarge(usize),
    /// Corrupt compressed data, or not a valid request in its format.
    Malformed(String),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::UnsupportedEncoding(m) | DecodeError::Malformed(m) => f.write_str(m),
            DecodeError::TooLarge(cap) => write!(
                f,
                "request exceeds the limit of {cap} bytes after decompression"
            ),
        }
    }
}

impl std::error::Error for DecodeError {}

fn malformed(message: impl Into<String>) -> DecodeError {
    DecodeError::Malformed(message.into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Identity,
    Gzip,
    Deflate,
    Zstd,
}

impl Compression {
    /// From a `Content-Encoding` (HTTP) or `grpc-encoding` (gRPC) header value.
    pub fn from_header(value: Option<&str>) -> Result<Self, DecodeError> {
        let Some(v) = value else {
            return Ok(Self::Identity);
        };
        match v.trim().to_ascii_lowercase().as_str() {
            "" | "identity" | "none" => Ok(Self::Identity),
            "gzip" | "x-gzip" => Ok(Self::Gzip),
            "deflate" => Ok(Self::Deflate),
            "zstd" => Ok(Self::Zstd),
            other => Err(DecodeError::UnsupportedEncoding(format!(
                "unsupported content encoding {other:?}; use gzip, deflate, zstd or identity"
            ))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Protobuf,
    Json,
}

/// zstd frames may ask for a window of up to 2 GiB; refuse windows over 32 MiB so one request
/// cannot make the decoder allocate more than that (level 19 uses 8 MiB).
const ZSTD_WINDOW_LOG_MAX: u32 = 25;
const READ_CHUNK: usize = 64 * 1024;
/// A thread's zstd context is dropped after a request that grew it beyond this.
const ZSTD_KEEP_CONTEXT_BYTES: usize = 4 << 20;

/// Decompresses `body`, never holding more than `cap` decompressed bytes.
pub fn decompress(compression: Compression, body: Bytes, cap: usize) -> Result<Bytes, DecodeError> {
    let corrupt = |e: std::io::Error| malformed(format!("corrupt {compression:?} body: {e}"));
    match compression {
        Compression::Identity => {
            if body.len() > cap {
                return Err(DecodeError::TooLarge(cap));
            }
            Ok(body)
        }
        Compression::Gzip => read_capped(
            flate2::read::MultiGzDecoder::new(&body[..]),
            cap,
            gzip_size_hint(&body).unwrap_or(body.len().saturating_mul(4)),
        )
        .map_err(|e| e.or_invalid(corrupt)),
        Compression::Deflate => {
            // HTTP "deflate" is zlib-wrapped (RFC 9110), but some clients send raw deflate.
            let zlib = body.len() >= 2
                && body[0] & 0x0f == 8
                && (u16::from(body[0]) << 8 | u16::from(body[1])) % 31 == 0;
            if zlib {
                read_capped(
                    flate2::read::ZlibDecoder::new(&body[..]),
                    cap,
                    body.len().saturating_mul(4),
                )
            } else {
                read_capped(
                    flate2::read::DeflateDecoder::new(&body[..]),
                    cap,
                    body.len().saturating_mul(4),
                )
            }
            .map_err(|e| e.or_invalid(corrupt))
        }
        Compression::Zstd => zstd_capped(&body, cap).map_err(|e| e.or_invalid(corrupt)),
    }
}

enum CapError {
    TooLarge(usize),
    Io(std::io::Error),
}

impl CapError {
    fn or_invalid(self, f: impl FnOnce(std::io::Error) -> DecodeError) -> DecodeError {
        match self {
            CapError::TooLarge(cap) => DecodeError::TooLarge(cap),
            CapError::Io(e) => f(e),
        }
    }
}

/// The size a gzip body declares in its trailer (ISIZE: the last member's length mod 2^32). Only
/// a hint for the first allocation; the cap is enforced while inflating whatever it says.
fn gzip_size_hint(body: &[u8]) -> Option<usize> {
    let tail: [u8; 4] = body.get(body.len().checked_sub(4)?..)?.try_into().ok()?;
    // +1 so the final read that finds the end of the stream does not have to grow the buffer.
    usize::try_from(u32::from_le_bytes(tail))
        .ok()?
        .checked_add(1)
}

thread_local! {
    /// One zstd decompression context per blocking-pool thread, reused across requests: a new
    /// context per request allocates its workspace and a window buffer (2 MiB for a frame
    /// streamed at level 3) and faults their pages in every time.
    static ZSTD_DCTX: std::cell::RefCell<Option<zstd::zstd_safe::DCtx<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Capped zstd decompression with this thread's reused context. The first allocation is the size
/// the frame declares (when it does), bounded by the cap.
fn zstd_capped(body: &[u8], cap: usize) -> Result<Bytes, CapError> {
    let declared = zstd::zstd_safe::get_frame_content_size(body)
        .ok()
        .flatten()
        .and_then(|n| usize::try_from(n).ok())
        // +1: the read that finds the end of the stream needs room without regrowing.
        .map(|n| n.saturating_add(1));
    let hint = declared.unwrap_or(body.len().saturating_mul(8));
    let io = |e: std::io::Error| CapError::Io(e);
    ZSTD_DCTX.with(|cell| {
        let Ok(mut slot) = cell.try_borrow_mut() else {
            // Re-entered (cannot happen: nothing here calls back); use a fresh context.
            let mut dec = zstd::stream::read::Decoder::new(body).map_err(io)?;
            dec.window_log_max(ZSTD_WINDOW_LOG_MAX).map_err(io)?;
            return read_capped(dec, cap, hint);
        };
        if slot.is_none() {
            let mut ctx = zstd::zstd_safe::DCtx::create();
            ctx.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(
                ZSTD_WINDOW_LOG_MAX,
            ))
            .map_err(|c| io(zstd_error(c)))?;
            *slot = Some(ctx);
        }
        let Some(ctx) = slot.as_mut() else {
            return Err(io(std::io::Error::other("zstd context missing")));
        };
        // A previous request may have stopped mid-frame (error or cap): start clean. The
        // window limit is a parameter and survives a session reset.
        ctx.reset(zstd::zstd_safe::ResetDirective::SessionOnly)
            .map_err(|c| io(zstd_error(c)))?;
        let out = zstd_stream(ctx, body, cap, hint);
        // Keep the context only while its buffers are of the usual size (a 2 MiB window at
        // level 3 is ~2.3 MiB): one request with a 32 MiB window must not leave 32 MiB behind
        // on every blocking thread it ran on.
        if slot
            .as_ref()
            .is_some_and(|c| c.sizeof() > ZSTD_KEEP_CONTEXT_BYTES)
        {
            *slot = None;
        }
        out
    })
}

/// Inflates every frame of `body` with `ctx` into one buffer, at most `cap` bytes. zstd writes
/// into the buffer's spare capacity, so nothing is zero-filled first, and the buffer doubles (up
/// to the cap) when it is full. Through `read_capped` (a `Read` into a zeroed slice, grown by
/// `READ_CHUNK`) the zero-fill and the regrowth were ~5 % of the embedded path's CPU on zstd
/// bodies without a declared size (docs/benchmarks.md, issue 21).
fn zstd_stream(
    ctx: &mut zstd::zstd_safe::DCtx<'static>,
    body: &[u8],
    cap: usize,
    hint: usize,
) -> Result<Bytes, CapError> {
    use zstd::zstd_safe::{InBuffer, OutBuffer};
    let io = |c: usize| CapError::Io(zstd_error(c));
    let limit = cap.saturating_add(1);
    let mut out: Vec<u8> = Vec::with_capacity(hint.max(READ_CHUNK).min(limit));
    let mut input = InBuffer::around(body);
    loop {
        if out.len() > cap {
            return Err(CapError::TooLarge(cap));
        }
        if out.len() == out.capacity() {
            let grow = out.capacity().max(READ_CHUNK).min(limit - out.len());
            out.reserve_exact(grow);
        }
        let (before_in, before_out) = (input.pos(), out.len());
        let left = {
            let pos = out.len();
            let mut ob = OutBuffer::around_pos(&mut out, pos);
            ctx.decompress_stream(&mut ob, &mut input).map_err(io)?
        };
        if input.pos() < body.len() {
            continue;
        }
        if left == 0 {
            // The last frame ended and is flushed (the loop's top checks the cap).
            if out.len() > cap {
                return Err(CapError::TooLarge(cap));
            }
            return Ok(Bytes::from(out));
        }
        // All input read, the frame not finished, and no progress with room to write: a
        // truncated body (an empty one too, as the `zstd` crate's reader decides).
        let stuck = input.pos() == before_in && out.len() == before_out;
        if stuck && out.len() < out.capacity() {
            return Err(CapError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "incomplete zstd frame",
            )));
        }
    }
}

fn zstd_error(code: usize) -> std::io::Error {
    std::io::Error::other(zstd::zstd_safe::get_error_name(code).to_string())
}

/// `size_hint`: the expected decompressed size, used (bounded by the cap) for the first
/// allocation so a typical body is inflated without regrowing and copying the buffer.
fn read_capped(mut r: impl Read, cap: usize, size_hint: usize) -> Result<Bytes, CapError> {
    // Start from the hint and grow in bounded steps so a bomb is caught at `cap` without a
    // doubling overshoot.
    let mut out: Vec<u8> = Vec::with_capacity(size_hint.max(READ_CHUNK).min(cap.saturating_add(1)));
    loop {
        if out.len() > cap {
            return Err(CapError::TooLarge(cap));
        }
        let want = READ_CHUNK.min(cap + 1 - out.len());
        if out.capacity() - out.len() < want {
            let grow = out.capacity().max(READ_CHUNK).min(cap + 1 - out.len());
            out.reserve_exact(grow.max(want));
        }
        let start = out.len();
        out.resize(start + want, 0);
        match r.read(&mut out[start..]) {
            Ok(0) => {
                out.truncate(start);
                return Ok(Bytes::from(out));
            }
            Ok(n) => out.truncate(start + n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => out.truncate(start),
            Err(e) => return Err(CapError::Io(e)),
        }
    }
}

/// Decodes a decompressed body.
pub fn decode(format: Format, body: &[u8]) -> Result<ExportTraceServiceRequest, DecodeError> {
    decode_as(format, body)
}

/// Decodes a decompressed body as any OTLP export request (traces, logs).
pub fn decode_as<T>(format: Format, body: &[u8]) -> Result<T, DecodeError>
where
    T: Message + Default + serde::de::DeserializeOwned,
{
    match format {
        Format::Protobuf => {
            T::decode(body).map_err(|e| malformed(format!("malformed protobuf: {e}")))
        }
        Format::Json => {
            if body.iter().all(u8::is_ascii_whitespace) {
                return Err(malformed("malformed JSON: empty body"));
            }
            // serde_json stops at nesting depth 128, so deep JSON cannot exhaust the stack.
            serde_json::from_slice(body).or_else(|e| {
                // The proto3 JSON mapping reads `null` as the field's default value; the
                // generated types refuse it, so a body that failed and holds a `null` is read
                // again with its null fields dropped. Only then: the common path pays nothing.
                if !body.windows(4).any(|w| w == b"null") {
                    return Err(malformed(format!("malformed JSON: {e}")));
                }
                let mut value: serde_json::Value = serde_json::from_slice(body)
                    .map_err(|e| malformed(format!("malformed JSON: {e}")))?;
                drop_null_fields(&mut value);
                serde_json::from_value(value).map_err(|e| malformed(format!("malformed JSON: {e}")))
            })
        }
    }
}

/// Removes every object member whose value is `null`, at any depth (serde_json bounds the
/// depth at 128). A `null` element of an array stays: proto3 JSON has no null list element.
fn drop_null_fields(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            map.retain(|_, x| !x.is_null());
            map.values_mut().for_each(drop_null_fields);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_null_fields),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// The HTTP status the gateway's edge gives each variant (`tracegate::error` maps them and
    /// tests that mapping); here it names the variant compactly.
    trait Status {
        fn status(self) -> u16;
    }

    impl Status for DecodeError {
        fn status(self) -> u16 {
            match self {
                DecodeError::TooLarge(_) => 413,
                DecodeError::UnsupportedEncoding(_) => 415,
                DecodeError::Malformed(_) => 400,
            }
        }
    }

    #[test]
    fn json_null_fields_read_as_their_defaults() {
        let body = br#"{"resourceSpans":[{"resource":null,"schemaUrl":null,"scopeSpans":[{"scope":null,"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":null,"events":null,"status":null,"kind":null,"attributes":[{"key":"k","value":null}]}]}]}]}"#;
        let req = decode(Format::Json, body).unwrap();
        let span = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.name, "");
        assert_eq!(span.kind, 0);
        assert!(req.resource_spans[0].resource.is_none());
        assert_eq!(span.attributes.len(), 1);
        assert!(decode(Format::Json, br#"{"resourceSpans":null}"#)
            .unwrap()
            .resource_spans
            .is_empty());
        // A null list element is not a proto3 JSON value.
        assert!(decode(Format::Json, br#"{"resourceSpans":[null]}"#).is_err());
    }

    fn gzip(data: &[u8]) -> Bytes {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap().into()
    }

    #[test]
    fn round_trips_each_encoding() {
        let data = vec![7u8; 100_000];
        assert_eq!(
            decompress(Compression::Gzip, gzip(&data), 1 << 20).unwrap(),
            data
        );
        let z = zstd::encode_all(&data[..], 3).unwrap();
        assert_eq!(
            decompress(Compression::Zstd, z.into(), 1 << 20).unwrap(),
            data
        );
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&data).unwrap();
        assert_eq!(
            decompress(Compression::Deflate, e.finish().unwrap().into(), 1 << 20).unwrap(),
            data
        );
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&data).unwrap();
        assert_eq!(
            decompress(Compression::Deflate, e.finish().unwrap().into(), 1 << 20).unwrap(),
            data
        );
    }

    #[test]
    fn cap_is_exact_and_holds_for_bombs() {
        let data = vec![0u8; 50 * 1024 * 1024];
        let z: Bytes = zstd::encode_all(&data[..], 1).unwrap().into();
        let e = decompress(Compression::Zstd, z.clone(), 1 << 20).unwrap_err();
        assert_eq!(e.status(), 413);
        assert_eq!(
            decompress(Compression::Zstd, z, data.len()).unwrap().len(),
            data.len()
        );
        let small = vec![1u8; 1000];
        assert!(decompress(Compression::Gzip, gzip(&small), 1000).is_ok());
        assert_eq!(
            decompress(Compression::Gzip, gzip(&small), 999)
                .unwrap_err()
                .status(),
            413
        );
        assert_eq!(
            decompress(Compression::Identity, small.clone().into(), 999)
                .unwrap_err()
                .status(),
            413
        );
    }

    #[test]
    fn zstd_with_and_without_declared_size_and_a_reused_context() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let streamed = zstd::encode_all(&data[..], 3).unwrap();
        let sized = zstd::bulk::compress(&data, 3).unwrap();
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&sized).unwrap(),
            Some(data.len() as u64)
        );
        for z in [&streamed, &sized] {
            let out = decompress(Compression::Zstd, z.clone().into(), 1 << 20).unwrap();
            assert!(out == data, "round trip");
            // Over the cap by one byte: 413, and the context is fine for the next request.
            let e = decompress(Compression::Zstd, z.clone().into(), data.len() - 1).unwrap_err();
            assert_eq!(e.status(), 413);
            // Truncated mid-frame: 400; the next request still decodes.
            let cut = z[..z.len() - 3].to_vec();
            let e = decompress(Compression::Zstd, cut.into(), 1 << 20).unwrap_err();
            assert_eq!(e.status(), 400);
        }
        // A frame with a large window (8 MiB here) decodes, and its context is not kept.
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.window_log(23).unwrap();
        enc.long_distance_matching(true).unwrap();
        let big: Vec<u8> = (0..6_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        enc.write_all(&big).unwrap();
        let z_big = enc.finish().unwrap();
        assert!(decompress(Compression::Zstd, z_big.into(), 8 << 20).unwrap() == big);
        ZSTD_DCTX.with(|c| assert!(c.borrow().is_none(), "large context kept"));
        assert!(decompress(Compression::Zstd, sized.clone().into(), 1 << 20).unwrap() == data);
        ZSTD_DCTX.with(|c| assert!(c.borrow().is_some(), "usual context dropped"));
        // Two frames back to back decode as their concatenation.
        let mut two = sized.clone();
        two.extend_from_slice(&streamed);
        let both = decompress(Compression::Zstd, two.into(), 1 << 20).unwrap();
        assert!(both.len() == 2 * data.len() && both[data.len()..] == data[..]);
    }

    #[test]
    fn zstd_edges_agree_with_the_reference_decoder() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 97) as u8).collect();
        let frame = zstd::bulk::compress(&data, 1).unwrap();
        // A skippable frame (magic 0x184D2A50, 4-byte length, payload) before a real one.
        let mut skippable = vec![0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3];
        skippable.extend_from_slice(&frame);
        let mut trailing = frame.clone();
        trailing.extend_from_slice(b"junk");
        let cases: [(&str, Vec<u8>); 5] = [
            ("empty", Vec::new()),
            ("one frame", frame.clone()),
            ("skippable first", skippable),
            ("trailing junk", trailing),
            ("header only", frame[..6].to_vec()),
        ];
        for (what, body) in cases {
            let ours = decompress(Compression::Zstd, body.clone().into(), 1 << 20);
            let reference = zstd::stream::decode_all(&body[..]);
            match (&ours, &reference) {
                (Ok(a), Ok(b)) => assert!(a[..] == b[..], "{what}: output differs"),
                (Err(e), Err(_)) => assert_eq!(e.clone().status(), 400, "{what}"),
                _ => panic!(
                    "{what}: ours {:?}, reference ok: {}",
                    ours.as_ref().map(|b| b.len()),
                    reference.is_ok()
                ),
            }
        }
    }

    #[test]
    fn corrupt_input_is_400() {
        let e = decompress(Compression::Gzip, Bytes::from_static(b"not gzip"), 100).unwrap_err();
        assert_eq!(e.status(), 400);
        let e = decompress(Compression::Zstd, Bytes::from_static(b"not zstd"), 100).unwrap_err();
        assert_eq!(e.status(), 400);
        assert_eq!(
            Compression::from_header(Some("br")).unwrap_err().status(),
            415
        );
    }
}
