//! Protocol types: the OTLP messages (from `opentelemetry-proto`, whose generated code needs no
//! `protoc`) and tracegate's own envelope (`tracegate.v1`), compiled with protox.

pub use opentelemetry_proto::tonic as otlp;

/// tracegate's envelope messages (`proto/tracegate/v1/envelope.proto`).
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/tracegate.v1.rs"));
}

/// Current `Batch.schema_version` written by this build.
pub const BATCH_SCHEMA_VERSION: u32 = 1;
