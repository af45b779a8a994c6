//! The writer's output seam. A sink receives a group of batches and returns only once they are
//! durable in that sink; the writer acknowledges a batch only after every sink succeeded.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use tracegate_proto::v1::Batch;

use crate::archive::local::LocalArchive;
use crate::metrics as m;

pub trait Sink: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn write(&self, batches: Arc<Vec<Batch>>) -> BoxFuture<'static, anyhow::Result<()>>;
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

    fn write(&self, batches: Arc<Vec<Batch>>) -> BoxFuture<'static, anyhow::Result<()>> {
        let archive = self.archive.clone();
        Box::pin(async move {
            let written = tokio::task::spawn_blocking(move || archive.write(&batches)).await??;
            for (_, len) in &written {
                metrics::counter!(m::ARCHIVE_OBJECTS_WRITTEN).increment(1);
                metrics::counter!(m::ARCHIVE_BYTES_WRITTEN).increment(*len as u64);
            }
            Ok(())
        })
    }
}
