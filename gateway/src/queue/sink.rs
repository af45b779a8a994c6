//! The writer's output seam. A sink receives a group of batches and returns only once they are
//! durable in that sink; the writer acknowledges a batch only after every sink succeeded.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use tracegate_proto::v1::Batch;

use crate::archive::local::LocalArchive;
use crate::metrics as m;

/// What the writer hands to its sinks: batches plus an id that names the group
/// deterministically where the source allows it (Kafka: `topic:partition:first-last`), so a
/// group written again after a crash is recognised as the same group (idempotent writes).
#[derive(Debug, Clone, Default)]
pub struct WriteGroup {
    pub id: String,
    pub batches: Vec<Batch>,
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

/// The local archive as a sink; file I/O and compression run on the blocking pool.
pub struct ArchiveSink {
    archive: LocalArchive,
}

impl ArchiveSink {
    pub fn new(archive: LocalArchive) -> Self {
        Self { archive }
    }
}

impl Sink for ArchiveSink {
    fn name(&self) -> &'static str {
        "archive"
    }

    fn write(&self, group: Arc<WriteGroup>) -> BoxFuture<'static, anyhow::Result<()>> {
        let archive = self.archive.clone();
        Box::pin(async move {
            let written =
                tokio::task::spawn_blocking(move || archive.write(&group.id, &group.batches))
                    .await??;
            for (_, len) in &written {
                metrics::counter!(m::ARCHIVE_OBJECTS_WRITTEN).increment(1);
                metrics::counter!(m::ARCHIVE_BYTES_WRITTEN).increment(*len as u64);
            }
            Ok(())
        })
    }
}
