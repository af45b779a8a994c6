//! Offset commits: the committer thread, and when a commit is due or retried.

use super::*;

pub(super) fn due(sent_at: &Option<Instant>, retry_at: Instant, now: Instant) -> bool {
    match sent_at {
        None => retry_at <= now,
        Some(at) => now.duration_since(*at) >= COMMIT_RESEND,
    }
}

pub(super) fn set_sent(stage: &mut Stage, now: Instant) {
    match stage {
        Stage::IntentCommit { sent_at, .. } | Stage::DoneCommit { sent_at, .. } => {
            *sent_at = Some(now)
        }
        _ => {}
    }
}

pub(super) fn set_retry(stage: &mut Stage, now: Instant) {
    match stage {
        Stage::IntentCommit {
            sent_at,
            retry_at,
            attempt,
            ..
        }
        | Stage::DoneCommit {
            sent_at,
            retry_at,
            attempt,
            ..
        } => {
            *sent_at = None;
            *retry_at = now + backoff(*attempt);
            *attempt += 1;
        }
        _ => {}
    }
}

pub(super) fn commit_sync(
    consumer: &BaseConsumer<WriterContext>,
    tp: &Tp,
    offset: i64,
    metadata: &str,
) -> KafkaResult<()> {
    let mut tpl = TopicPartitionList::new();
    {
        let mut e = tpl.add_partition(&tp.0, tp.1);
        e.set_offset(Offset::Offset(offset))?;
        if !metadata.is_empty() {
            e.set_metadata(metadata);
        }
    }
    consumer.commit(&tpl, CommitMode::Sync)
}

/// The committer thread: one synchronous commit at a time, results back to the driver.
pub(super) fn committer(
    consumer: Arc<BaseConsumer<WriterContext>>,
    rx: mpsc::Receiver<CommitReq>,
    tx: mpsc::Sender<CommitDone>,
) {
    for req in rx {
        let owned = consumer
            .context()
            .owned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&req.tp)
            == Some(&req.epoch);
        let r = if owned {
            commit_sync(&consumer, &req.tp, req.offset, &req.metadata).map_err(|e| e.to_string())
        } else {
            Err("partition revoked; commit dropped".to_string())
        };
        let _ = tx.send(CommitDone {
            tp: req.tp,
            epoch: req.epoch,
            offset: req.offset,
            error: r.err(),
        });
    }
}
