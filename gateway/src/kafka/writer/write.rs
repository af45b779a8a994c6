//! Handing a cut batch to the sinks, and quarantining messages that cannot be decoded.

use super::*;

pub(super) fn spawn_write(
    rt: &tokio::runtime::Handle,
    sinks: &[Arc<dyn Sink>],
    tx: &mpsc::Sender<SinkDone>,
    tp: &Tp,
    epoch: u64,
    cut: Arc<Cut>,
) {
    let sinks = sinks.to_vec();
    let tx = tx.clone();
    let tp = tp.clone();
    rt.spawn(async move {
        let started = Instant::now();
        let mut result = Ok(());
        if !cut.group.batches.is_empty() {
            for s in &sinks {
                if let Err(e) = s.write(cut.group.clone()).await {
                    metrics::counter!(m::WRITE_ERRORS, "sink" => s.name()).increment(1);
                    result = Err(format!("{} sink: {e:#}", s.name()));
                    break;
                }
            }
        }
        if result.is_ok() {
            metrics::histogram!(m::WRITE_DURATION).record(started.elapsed().as_secs_f64());
            metrics::counter!(m::BATCHES_WRITTEN).increment(cut.group.batches.len() as u64);
        }
        let _ = tx.send(SinkDone {
            tp,
            epoch,
            first: cut.first,
            result,
        });
    });
}

/// Keeps an unreadable message (never dropped): `<data dir>/kafka-quarantine/<topic>/
/// <partition>-<offset>.<reason>.bin`, fsynced before the offset can move past it. Retries
/// until it is written (the disk the sinks need is failing too) or shutdown. Returns whether
/// it was written (false only when it gave up because the process is stopping).
pub(super) fn quarantine(
    dir: &Path,
    tp: &Tp,
    offset: i64,
    reason: &'static str,
    bytes: &[u8],
    shared: &Shared,
) -> bool {
    metrics::counter!(m::KAFKA_WRITER_QUARANTINED, "reason" => reason).increment(1);
    tracing::error!(topic = %tp.0, partition = tp.1, offset, reason, "message is not a readable tracegate.v1.Batch; quarantined");
    let d = dir.join(safe(&tp.0));
    let path = d.join(format!("{}-{offset}.{reason}.bin", tp.1));
    let mut attempt = 0;
    loop {
        let r = (|| -> Result<()> {
            create_dir_all_durable(&d)?;
            std::fs::write(&path, bytes)?;
            std::fs::File::open(&path)?.sync_all()?;
            sync_dir(&d)?;
            Ok(())
        })();
        match r {
            Ok(()) => return true,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %format!("{e:#}"), "cannot write quarantine file; retrying");
                if shared.shutdown.load(Ordering::Relaxed) && attempt > 3 {
                    return false;
                }
                std::thread::sleep(backoff(attempt));
                attempt += 1;
            }
        }
    }
}

pub(super) fn safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
