//! Kafka transport (docs/kafka.md): the gateway's idempotent producer (a `BatchQueue`), the
//! consumer-group writer behind `tracegate write`, their configuration, the splitting of large
//! batches into messages that fit the broker's limit, how the clients reach the brokers
//! (TLS, SASL, MSK IAM), and librdkafka statistics as metrics.

pub mod config;
pub mod msk_iam;
mod owned;
pub mod producer;
mod sched;
pub mod security;
pub mod split;
pub mod stats;
pub mod writer;
