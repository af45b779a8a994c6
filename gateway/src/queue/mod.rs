//! Where validated batches go after the receivers: the `BatchQueue` seam (embedded now, Kafka
//! later), the writer's `Sink` seam (archive now, ClickHouse and S3 later) and the embedded
//! queue + writer that join them inside one process.

pub mod embedded;
pub mod sink;
