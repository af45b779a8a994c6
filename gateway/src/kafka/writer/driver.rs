//! The driver: one thread that polls the consumer and moves each partition through its
//! state machine (mod.rs): messages in, batches cut, intents and offsets committed, pauses.

use super::*;

impl Driver {
    pub(super) fn run(mut self) {
        let mut deadline: Option<Instant> = None;
        let mut last_poll_error: Option<Instant> = None;
        loop {
            let busy = self
                .parts
                .values()
                .any(|p| !p.settled() || !p.buf.is_empty());
            let timeout = if busy {
                Duration::from_millis(5)
            } else {
                Duration::from_millis(100)
            };
            let mut polled = 0;
            let mut t = timeout;
            while polled < 1000 {
                match self.consumer.poll(t) {
                    Some(Ok(msg)) => {
                        polled += 1;
                        let tp = (msg.topic().to_string(), msg.partition());
                        let payload = msg.payload().map(bytes::Bytes::copy_from_slice);
                        let offset = msg.offset();
                        drop(msg);
                        self.apply_events();
                        self.on_message(tp, offset, payload);
                        t = Duration::ZERO;
                    }
                    Some(Err(e)) => {
                        if last_poll_error.is_none_or(|at| at.elapsed() > Duration::from_secs(5)) {
                            tracing::warn!(error = %e, "kafka consumer error");
                            last_poll_error = Some(Instant::now());
                        }
                        break;
                    }
                    None => break,
                }
            }
            self.apply_events();
            self.apply_commit_results();
            self.apply_sink_results();
            let shutting_down = self.shared.shutdown.load(Ordering::Relaxed);
            if shutting_down && deadline.is_none() {
                tracing::info!("writer draining: pausing partitions, flushing buffered batches");
                deadline = Some(Instant::now() + self.shutdown_timeout);
            }
            self.step_all(shutting_down);
            self.update_pauses(shutting_down);
            self.report();
            if shutting_down {
                let settled = self.parts.values().all(Part::settled);
                if settled {
                    tracing::info!("writer drained");
                    break;
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    tracing::warn!(
                        "writer shutdown timeout; leaving unfinished batches to the next owner"
                    );
                    break;
                }
            }
        }
        // Stop the committer (it finishes the commit it is making), then drop the last
        // reference to the consumer, which leaves the group.
        drop(self.commit_tx.take());
        if let Some(c) = self.committer.take() {
            let _ = c.join();
        }
        drop(self.consumer);
        self.shared.finished.store(true, Ordering::Relaxed);
    }

    pub(super) fn apply_events(&mut self) {
        for ev in self.consumer.context().take() {
            match ev {
                Event::Assign(list) => {
                    metrics::counter!(m::KAFKA_WRITER_REBALANCES, "kind" => "assign").increment(1);
                    tracing::info!(partitions = ?list, "partitions assigned");
                    let mut resume = TopicPartitionList::new();
                    for tp in &list {
                        resume.add_partition(&tp.0, tp.1);
                    }
                    // A partition we paused before it was revoked must not stay paused.
                    if let Err(e) = self.consumer.resume(&resume) {
                        tracing::warn!(error = %e, "resuming newly assigned partitions failed");
                    }
                    for tp in list {
                        let (window, replay) = self.new_window();
                        self.next_epoch += 1;
                        self.consumer
                            .context()
                            .owned
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(tp.clone(), self.next_epoch);
                        let part = Part {
                            tp: tp.clone(),
                            epoch: self.next_epoch,
                            intent: Intent::Unknown,
                            intent_retry_at: Instant::now(),
                            buf: VecDeque::new(),
                            buf_bytes: 0,
                            buf_spans: 0,
                            last_offset: None,
                            stage: Stage::Idle,
                            paused: false,
                            stalled_at: None,
                            window,
                            replay,
                            replayed_to: None,
                        };
                        if let Some(old) = self.parts.insert(tp, part) {
                            self.buffered -= old.buf_bytes;
                        }
                    }
                    self.fetch_intents();
                }
                Event::Revoke(list) => {
                    metrics::counter!(m::KAFKA_WRITER_REBALANCES, "kind" => "revoke").increment(1);
                    tracing::info!(partitions = ?list, "partitions revoked; abandoning their unfinished batches");
                    for tp in list {
                        if let Some(old) = self.parts.remove(&tp) {
                            self.buffered -= old.buf_bytes;
                        }
                    }
                }
            }
        }
    }

    /// Reads the committed offset and its metadata of every partition whose intent is unknown.
    pub(super) fn fetch_intents(&mut self) {
        let now = Instant::now();
        let want: Vec<Tp> = self
            .parts
            .iter()
            .filter(|(_, p)| p.intent == Intent::Unknown && p.intent_retry_at <= now)
            .map(|(tp, _)| tp.clone())
            .collect();
        if want.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (t, p) in &want {
            tpl.add_partition(t, *p);
        }
        match self
            .consumer
            .committed_offsets(tpl, COMMITTED_FETCH_TIMEOUT)
        {
            Ok(got) => {
                for e in got.elements() {
                    let tp = (e.topic().to_string(), e.partition());
                    let Some(part) = self.parts.get_mut(&tp) else {
                        continue;
                    };
                    if e.error().is_err() {
                        part.intent_retry_at = now + Duration::from_secs(1);
                        continue;
                    }
                    let (end, from) = parse_metadata(e.metadata());
                    if part.replay == Replay::Pending {
                        // Nothing is decided before the window is rebuilt from `from`.
                        match start_replay(&self.consumer, &tp, e.offset(), from) {
                            Some(r) => part.replay = r,
                            None => {
                                part.intent_retry_at = now + Duration::from_millis(200);
                                continue;
                            }
                        }
                    }
                    part.intent = match (e.offset(), end) {
                        (Offset::Offset(c), Some(end)) if end >= c => {
                            tracing::info!(topic = %tp.0, partition = tp.1, first = c, last = end, "resuming a batch that was cut before");
                            Intent::End(end)
                        }
                        _ => Intent::Free,
                    };
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading committed offsets failed; retrying");
                for tp in want {
                    if let Some(p) = self.parts.get_mut(&tp) {
                        p.intent_retry_at = now + Duration::from_secs(1);
                    }
                }
            }
        }
    }

    pub(super) fn on_message(&mut self, tp: Tp, offset: i64, payload: Option<bytes::Bytes>) {
        let share = self.window_share();
        let Some(part) = self.parts.get_mut(&tp) else {
            tracing::debug!(topic = %tp.0, partition = tp.1, offset, "message for an unassigned partition ignored");
            return;
        };
        if part.last_offset.is_some_and(|l| offset <= l) {
            return; // already buffered (a re-fetch after pause/resume)
        }
        if part.stalled_at.is_some() {
            return; // left for the next owner of the partition (see `stalled_at`)
        }
        match part.replay {
            Replay::Pending => return, // read again once the position is set
            Replay::Until(end) if offset < end => {
                if part.replayed_to.is_none_or(|r| offset > r) {
                    part.replayed_to = Some(offset);
                    replay_one(part, offset, payload.as_deref(), share);
                }
                return;
            }
            Replay::Until(_) => part.replay = Replay::Ready,
            Replay::Ready => {}
        }
        let bytes = payload.as_ref().map_or(0, bytes::Bytes::len);
        // Decoding from `Bytes` keeps `otlp_request` a slice of the payload (no second copy).
        let batch = match payload.clone().map(Batch::decode) {
            Some(Ok(b)) if b.schema_version <= tracegate_proto::BATCH_SCHEMA_VERSION => Some(b),
            other => {
                let reason = match other {
                    None => "empty",
                    Some(Ok(_)) => "schema_too_new",
                    Some(Err(_)) => "undecodable",
                };
                let kept = quarantine(
                    &self.quarantine,
                    &tp,
                    offset,
                    reason,
                    payload.as_deref().unwrap_or_default(),
                    &self.shared,
                );
                if !kept {
                    // Not kept anywhere: the offset must never move past it.
                    tracing::error!(topic = %tp.0, partition = tp.1, offset, "unreadable message not quarantined; the partition is not committed past it");
                    part.stalled_at = Some(offset);
                    return;
                }
                None
            }
        };
        let spans = batch.as_ref().map_or(0, |b| u64::from(b.span_count));
        let repeat = batch
            .as_ref()
            .is_some_and(|b| check(part, b, offset, share));
        if repeat {
            metrics::counter!(m::DEDUP_REPEATS).increment(1);
            metrics::counter!(m::DEDUP_REPEATED_SPANS).increment(spans);
        }
        // A compressed payload counts at its decompressed size: the batch bounds
        // (`kafka.batch_max_bytes`) then bound what the ClickHouse sink holds once it has
        // decompressed the batch, as they did when payloads were always plain.
        let bytes = batch
            .as_ref()
            .map_or(bytes, |b| tracegate_otlp::envelope::inflated_len(b, bytes));
        part.buf.push_back(Msg {
            offset,
            batch,
            repeat,
            bytes,
            spans,
            arrived: Instant::now(),
        });
        part.buf_bytes += bytes;
        part.buf_spans += spans;
        part.last_offset = Some(offset);
        self.buffered += bytes;
    }

    pub(super) fn apply_commit_results(&mut self) {
        while let Ok(d) = self.commit_rx.try_recv() {
            self.on_commit(&d.tp, d.epoch, d.offset, d.error);
        }
    }

    pub(super) fn on_commit(&mut self, tp: &Tp, epoch: u64, offset: i64, err: Option<String>) {
        tracing::debug!(topic = %tp.0, partition = tp.1, offset, error = ?err, "commit result");
        let Some(part) = self.parts.get_mut(tp) else {
            return;
        };
        if part.epoch != epoch {
            return;
        }
        let now = Instant::now();
        let kind;
        match &mut part.stage {
            Stage::IntentCommit {
                cut,
                sent_at,
                retry_at,
                attempt,
            } if sent_at.is_some() && offset == cut.first => {
                kind = "intent";
                if err.is_none() {
                    let cut = cut.clone();
                    part.stage = Stage::Writing {
                        cut: cut.clone(),
                        attempt: 0,
                    };
                    spawn_write(&self.rt, &self.sinks, &self.done_tx, tp, part.epoch, cut);
                } else {
                    *sent_at = None;
                    *retry_at = now + backoff(*attempt);
                    *attempt += 1;
                }
            }
            Stage::DoneCommit {
                cut,
                next,
                sent_at,
                retry_at,
                attempt,
            } if sent_at.is_some() && offset == cut.last + 1 => {
                kind = "done";
                if err.is_none() {
                    metrics::counter!(m::KAFKA_WRITER_BATCHES).increment(1);
                    metrics::counter!(m::KAFKA_WRITER_MESSAGES).increment(cut.messages as u64);
                    metrics::counter!(m::KAFKA_WRITER_SPANS).increment(cut.spans);
                    metrics::histogram!(m::KAFKA_WRITER_BATCH_DURATION)
                        .record(cut.cut_at.elapsed().as_secs_f64());
                    tracing::debug!(group = %cut.group.id, "batch committed");
                    part.stage = match next.take() {
                        Some(n) => {
                            spawn_write(
                                &self.rt,
                                &self.sinks,
                                &self.done_tx,
                                tp,
                                part.epoch,
                                n.clone(),
                            );
                            Stage::Writing { cut: n, attempt: 0 }
                        }
                        None => Stage::Idle,
                    };
                } else {
                    *sent_at = None;
                    *retry_at = now + backoff(*attempt);
                    *attempt += 1;
                }
            }
            _ => return, // a late answer for an abandoned stage
        }
        let result = if err.is_none() { "ok" } else { "error" };
        metrics::counter!(m::KAFKA_WRITER_COMMITS, "kind" => kind, "result" => result).increment(1);
        if let Some(e) = err {
            tracing::warn!(topic = %tp.0, partition = tp.1, offset, kind, error = %e, "offset commit failed; retrying");
        }
    }

    pub(super) fn apply_sink_results(&mut self) {
        while let Ok(done) = self.done_rx.try_recv() {
            let Some(part) = self.parts.get_mut(&done.tp) else {
                continue;
            };
            if part.epoch != done.epoch {
                continue;
            }
            let Stage::Writing { cut, attempt } = &part.stage else {
                continue;
            };
            if cut.first != done.first {
                continue;
            }
            let (cut, attempt) = (cut.clone(), *attempt);
            match done.result {
                Ok(()) => {
                    self.shared.sinks_healthy.store(true, Ordering::Relaxed);
                    let next = if self.shared.shutdown.load(Ordering::Relaxed) {
                        cut_batch(part, &self.limits, true, &mut self.buffered)
                    } else {
                        cut_batch(part, &self.limits, false, &mut self.buffered)
                    };
                    part.stage = Stage::DoneCommit {
                        cut,
                        next: next.map(Arc::new),
                        sent_at: None,
                        retry_at: Instant::now(),
                        attempt: 0,
                    };
                }
                Err(e) => {
                    self.shared.sinks_healthy.store(false, Ordering::Relaxed);
                    let wait = backoff(attempt);
                    tracing::error!(group = %cut.group.id, error = %e, retry_in_ms = wait.as_millis() as u64, "sink write failed; the same batch will be written again");
                    part.stage = Stage::SinkRetry {
                        cut,
                        at: Instant::now() + wait,
                        attempt: attempt + 1,
                    };
                }
            }
        }
    }

    pub(super) fn step_all(&mut self, shutting_down: bool) {
        if self
            .parts
            .values()
            .any(|p| p.intent == Intent::Unknown && p.intent_retry_at <= Instant::now())
        {
            self.fetch_intents();
        }
        let now = Instant::now();
        let tps: Vec<Tp> = self.parts.keys().cloned().collect();
        for tp in tps {
            let Some(part) = self.parts.get_mut(&tp) else {
                continue;
            };
            match &mut part.stage {
                Stage::Idle => {
                    if let Some(cut) =
                        cut_batch(part, &self.limits, shutting_down, &mut self.buffered)
                    {
                        part.stage = Stage::IntentCommit {
                            cut: Arc::new(cut),
                            sent_at: None,
                            retry_at: now,
                            attempt: 0,
                        };
                    }
                }
                Stage::SinkRetry { cut, at, attempt } if *at <= now => {
                    let cut = cut.clone();
                    let attempt = *attempt;
                    spawn_write(
                        &self.rt,
                        &self.sinks,
                        &self.done_tx,
                        &tp,
                        part.epoch,
                        cut.clone(),
                    );
                    part.stage = Stage::Writing { cut, attempt };
                }
                _ => {}
            }
            // Send (or resend) commits that are due, with where the window starts now (it
            // only moves forward, so it is never later than what the committed offset needs).
            let from = part.window.as_ref().and_then(|w| w.replay_from());
            let commit = match &mut part.stage {
                Stage::IntentCommit {
                    cut,
                    sent_at,
                    retry_at,
                    ..
                } => due(sent_at, *retry_at, now)
                    .then(|| (cut.first, commit_metadata(Some(cut.last), from))),
                Stage::DoneCommit {
                    cut,
                    next,
                    sent_at,
                    retry_at,
                    ..
                } => due(sent_at, *retry_at, now).then(|| {
                    let meta = commit_metadata(next.as_ref().map(|n| n.last), from);
                    (cut.last + 1, meta)
                }),
                _ => None,
            };
            if let Some((offset, meta)) = commit {
                tracing::debug!(topic = %tp.0, partition = tp.1, offset, meta, "committing");
                let req = CommitReq {
                    tp: tp.clone(),
                    epoch: part.epoch,
                    offset,
                    metadata: meta,
                };
                match self.commit_tx.as_ref().map(|t| t.send(req)) {
                    Some(Ok(())) => set_sent(&mut part.stage, now),
                    _ => set_retry(&mut part.stage, now),
                }
            }
        }
    }

    pub(super) fn update_pauses(&mut self, shutting_down: bool) {
        let over_total = self.buffered >= self.limits.max_buffered;
        let mut pause = TopicPartitionList::new();
        let mut resume = TopicPartitionList::new();
        let mut changed = Vec::new();
        for (tp, p) in &self.parts {
            let waiting = !matches!(p.stage, Stage::Idle);
            let full = p.buf_bytes >= self.limits.max_bytes
                || p.buf_spans >= self.limits.max_spans
                || (over_total && !p.buf.is_empty());
            let should = shutting_down || (waiting && full);
            if should != p.paused {
                if should {
                    pause.add_partition(&tp.0, tp.1);
                } else {
                    resume.add_partition(&tp.0, tp.1);
                }
                changed.push((tp.clone(), should));
            }
        }
        if pause.count() > 0 {
            if let Err(e) = self.consumer.pause(&pause) {
                tracing::warn!(error = %e, "pausing partitions failed");
                return;
            }
        }
        if resume.count() > 0 {
            if let Err(e) = self.consumer.resume(&resume) {
                tracing::warn!(error = %e, "resuming partitions failed");
                return;
            }
        }
        for (tp, paused) in changed {
            if let Some(p) = self.parts.get_mut(&tp) {
                p.paused = paused;
            }
        }
    }

    pub(super) fn report(&self) {
        metrics::gauge!(m::KAFKA_WRITER_BUFFERED_BYTES).set(self.buffered as f64);
        metrics::gauge!(m::KAFKA_WRITER_ASSIGNED_PARTITIONS).set(self.parts.len() as f64);
        let paused = self.parts.values().filter(|p| p.paused).count();
        metrics::gauge!(m::KAFKA_WRITER_PAUSED_PARTITIONS).set(paused as f64);
        if self.dedup.is_some() {
            let held: usize = self
                .parts
                .values()
                .filter_map(|p| p.window.as_ref())
                .map(|w| w.len())
                .sum();
            metrics::gauge!(m::DEDUP_WINDOW_REQUESTS).set(held as f64);
        }
    }
}
