//! The gateway's side of a queue: `publish` resolves only once the batch is durable (the Kafka
//! broker acknowledged it, or every sink of the embedded writer has it), or with a refusal.

use futures_util::future::BoxFuture;
use tracegate_proto::v1::Batch;

use crate::cpu::Class;

/// Why a queue did not take a batch. The gateway's edge maps each to its answer (`tracegate::
/// error`): `Unavailable` and `Internal` 503 / UNAVAILABLE with Retry-After (a fault of ours
/// must not make a client drop data), `TooLarge` 413 / RESOURCE_EXHAUSTED (final).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// Transient: full, stopping, a broker or sink down. The client retries.
    #[error("{0}")]
    Unavailable(String),
    /// The batch can never be queued as it is (a span over the message size).
    #[error("{0}")]
    TooLarge(String),
    /// A fault of this process (a task that panicked, a write that failed inside).
    #[error("{0}")]
    Internal(String),
}

impl QueueError {
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable(message.into())
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal(message.into())
    }
}

/// Where `part`'s bytes start in `whole`, when `part` is a non-empty slice of it: what makes
/// `whole` a room for `part` (`BatchQueue::publish_in`).
pub fn offset_in(part: &[u8], whole: &[u8]) -> Option<usize> {
    let (p, w) = (part.as_ptr() as usize, whole.as_ptr() as usize);
    (!part.is_empty() && p >= w && p + part.len() <= w + whole.len()).then(|| p - w)
}

/// Where the ingest entry puts a stamped batch (the embedded queue, or Kafka).
pub trait BatchQueue: Send + Sync + 'static {
    /// Resolves once the batch is durable (or refused). Never acknowledges early. `class` says
    /// whether the batch is a busy project's (`cpu`): its write may go behind other work.
    fn publish(&self, batch: Batch, class: Class) -> BoxFuture<'_, Result<(), QueueError>>;
    /// `publish`, with `room`: the whole buffer the batch's payload (`otlp_request`) is a slice
    /// of, with free bytes before it. A queue that frames the payload may write its framing
    /// there instead of copying the payload (the Kafka producer, issue 21 goal 2); it may do
    /// so only when it holds the buffer's last handle. By default the room is let go.
    fn publish_in(
        &self,
        batch: Batch,
        room: bytes::Bytes,
        class: Class,
    ) -> BoxFuture<'_, Result<(), QueueError>> {
        drop(room);
        self.publish(batch, class)
    }
    fn is_ready(&self) -> bool;
}
