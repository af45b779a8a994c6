//! The writer's output seam. A sink receives a group of batches and returns only once they are
//! durable in that sink; the writer acknowledges a batch only after every sink succeeded.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use tracegate_proto::v1::Batch;

/// What the writer hands to its sinks: batches plus an id that names the group
/// deterministically where the source allows it (Kafka: `topic:partition:first-last`), so a
/// group written again after a crash is recognised as the same group (idempotent writes).
#[derive(Debug, Clone, Default)]
pub struct WriteGroup {
    pub id: String,
    pub batches: Vec<Batch>,
    /// Where its compression and encryption run (`crate::cpu`): bulk for a project with a backlog.
    pub class: crate::Class,
}

impl WriteGroup {
    pub fn span_count(&self) -> u64 {
        self.batches.iter().map(|b| u64::from(b.span_count)).sum()
    }
}

pub trait Sink: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Resolves once the group is durable in this sink. Writing the same group (same id and
    /// batches) twice must not duplicate it where the sink can prevent that.
    fn write(&self, group: Arc<WriteGroup>) -> BoxFuture<'static, anyhow::Result<()>>;
}
