//! Kafka transport (docs/kafka.md): the gateway's idempotent producer (a `BatchQueue`), the
//! consumer-group writer behind `tracegate write`, their configuration, the splitting of large
//! batches into messages that fit the broker's limit, and librdkafka statistics as metrics.

pub mod config;
mod owned;
pub mod producer;
pub mod split;
pub mod stats;
pub mod writer;
