//! The wire formats tracegate reads and writes, with no dependency on the gateway:
//! - `codec`: capped decompression (gzip, deflate, zstd) and OTLP/protobuf or OTLP/JSON decoding;
//! - `wire`: the one protobuf varint rule every reader of the bytes uses;
//! - `scan`: the scan-validate fast path over a request's bytes (no allocation);
//! - `validate`, `prune`, `stamp`: the prost path's per-span checks, the cut of values too
//!   deep for prost, and the tenant stamp;
//! - `response`: `ExportTraceServiceResponse` with `partial_success`, in the request's format;
//! - `logs`, `metrics`: the other signals' validation, tenant stamp and response;
//! - `envelope`: the payload of a `tracegate.v1.Batch` (its encodings, the capped read back).
//!
//! Limits come in as `SpanLimits` (the gateway maps its `[limits]` section onto it), errors go
//! out as this crate's own types; the gateway maps them to HTTP / gRPC answers at its edge.

pub mod codec;
pub mod envelope;
pub mod logs;
pub mod metrics;
pub mod prune;
pub mod response;
pub mod scan;
pub mod scan_logs;
pub mod stamp;
pub mod validate;
pub mod wire;

pub use validate::SpanLimits;
