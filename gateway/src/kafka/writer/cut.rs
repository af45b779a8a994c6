//! Cutting a batch: one partition's offset range, by spans, bytes and age.

use super::*;

/// Cuts the next batch from the front of `part.buf`, if one is due. `flush` cuts whatever is
/// buffered (shutdown). A pending intent is honoured exactly.
pub(super) fn cut_batch(
    part: &mut Part,
    l: &Limits,
    flush: bool,
    buffered: &mut usize,
) -> Option<Cut> {
    let front = part.buf.front()?;
    let take = match part.intent {
        Intent::Unknown => return None,
        Intent::End(end) => {
            if front.offset > end {
                // Nothing of the recorded range is left (e.g. deleted by retention).
                part.intent = Intent::Free;
                return cut_batch(part, l, flush, buffered);
            }
            if part.last_offset.is_none_or(|last| last < end) {
                return None; // wait for the rest of the recorded range
            }
            part.buf.iter().take_while(|m| m.offset <= end).count()
        }
        Intent::Free => {
            let full = part.buf_spans >= l.max_spans || part.buf_bytes >= l.max_bytes;
            let old = front.arrived.elapsed() >= l.max_age;
            if !(full || old || flush) {
                return None;
            }
            let (mut n, mut spans, mut bytes) = (0usize, 0u64, 0usize);
            for m in &part.buf {
                if n > 0 && (spans + m.spans > l.max_spans || bytes + m.bytes > l.max_bytes) {
                    break;
                }
                n += 1;
                spans += m.spans;
                bytes += m.bytes;
            }
            n
        }
    };
    part.intent = Intent::Free;
    let msgs: Vec<Msg> = part.buf.drain(..take).collect();
    let (first, last) = (msgs[0].offset, msgs[msgs.len() - 1].offset);
    let bytes: usize = msgs.iter().map(|m| m.bytes).sum();
    let spans: u64 = msgs.iter().map(|m| m.spans).sum();
    part.buf_bytes -= bytes;
    part.buf_spans -= spans;
    // Repeats are in the range (committed with it) but not written.
    let spans = spans
        - msgs
            .iter()
            .filter(|m| m.repeat)
            .map(|m| m.spans)
            .sum::<u64>();
    *buffered -= bytes;
    let messages = msgs.len();
    Some(Cut {
        first,
        last,
        messages,
        spans,
        group: Arc::new(WriteGroup {
            id: group_id(&part.tp.0, part.tp.1, first, last),
            batches: msgs
                .into_iter()
                .filter(|m| !m.repeat)
                .filter_map(|m| m.batch)
                .collect(),
            // No request waits on a Kafka writer's group: nothing to put ahead of it.
            class: Default::default(),
        }),
        cut_at: Instant::now(),
    })
}
