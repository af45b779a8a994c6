//! The seams between ingest and storage, and nothing else:
//! - `queue`: `BatchQueue`, what the ingest entry publishes a stamped batch to (Kafka or the
//!   embedded queue), and `QueueError`, its refusals (mapped to HTTP / gRPC at the gateway's
//!   edge);
//! - `sink`: `Sink` and `WriteGroup`, what a writer (embedded or `tracegate write`) hands the
//!   archive and ClickHouse;
//! - `cpu`: the two CPU classes (interactive, bulk) a request's decode and a group's write run in;
//! - `dedup`: retry-safe ingest: a request's key and the window of keys a writer stored;
//! - `backoff`: the one retry-delay rule (exponential, capped, optionally jittered);
//! - `tenant`: the rule for tenant ids (they end up in object paths, SQL and logs);
//! - `zstd_once`: one-shot zstd with a context per thread (payloads, archive objects, insert
//!   blocks).
//!
//! The gateway implements the queues and the sinks and wires them; this crate lets each side be
//! compiled, read and tested without the other.

pub mod backoff;
pub mod cpu;
pub mod dedup;
pub mod queue;
pub mod sink;
pub mod tenant;
pub mod zstd_once;

pub use backoff::Backoff;
pub use cpu::Class;
pub use queue::{BatchQueue, QueueError};
pub use sink::{Sink, WriteGroup};
