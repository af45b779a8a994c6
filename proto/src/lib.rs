//! Protocol types: the OTLP messages (from `opentelemetry-proto`, whose generated code needs no
//! `protoc`) and tracegate's own envelope (`tracegate.v1`), compiled with protox.

pub use opentelemetry_proto::tonic as otlp;

/// tracegate's envelope messages (`proto/tracegate/v1/envelope.proto`).
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/tracegate.v1.rs"));
}

/// Newest `Batch.schema_version` this build reads and writes (version 3: `signal` may be other
/// than traces; 2: `otlp_request` may be compressed, see `otlp_request_encoding`).
pub const BATCH_SCHEMA_VERSION: u32 = 3;

/// `Batch.schema_version` of a traces envelope with a compressed payload.
pub const BATCH_SCHEMA_VERSION_ENCODED: u32 = 2;

/// `Batch.schema_version` of an envelope whose `otlp_request` is plain (identity): what every
/// build wrote before payload encodings existed, so such envelopes stay byte-identical.
pub const BATCH_SCHEMA_VERSION_IDENTITY: u32 = 1;

/// The `schema_version` to write for traces in `encoding`: 1 for identity, else 2 (so a reader
/// that does not know encodings refuses the envelope instead of misreading it).
pub fn schema_version_for(encoding: v1::PayloadEncoding) -> u32 {
    match encoding {
        v1::PayloadEncoding::Identity => BATCH_SCHEMA_VERSION_IDENTITY,
        _ => BATCH_SCHEMA_VERSION_ENCODED,
    }
}

/// The `schema_version` to write for `signal` in `encoding`: traces as [`schema_version_for`],
/// any other signal 3 (a reader that knows only traces refuses it).
pub fn schema_version_of(signal: v1::Signal, encoding: v1::PayloadEncoding) -> u32 {
    match signal {
        v1::Signal::Traces => schema_version_for(encoding),
        _ => BATCH_SCHEMA_VERSION,
    }
}
