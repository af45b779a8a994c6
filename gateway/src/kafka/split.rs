//! One accepted batch → one or more Kafka messages (docs/kafka.md).
//!
//! The message value is an encoded `tracegate.v1.Batch`. A batch whose envelope does not fit
//! in `kafka.message_max_bytes` is split by resource / scope / span (byte ranges of the plain
//! request, found with the writer's zero-copy reader `clickhouse::pb`, never a decode and
//! re-encode) into several batches that share its `batch_id` (`part_index` / `part_count` say
//! which part is which). Nothing is dropped: a single span that cannot fit even alone makes the whole request fail with a
//! non-retryable "too large" answer naming the limit, so the client is told.

use bytes::Bytes;
use prost::Message as _;
use tracegate_proto::v1::Batch;

use super::config::PartitionKey;
use crate::clickhouse::pb::{Reader, Value};

/// Bytes kept free in every message for the Kafka record framing, the key and the headers.
pub const RECORD_OVERHEAD: usize = 512;
/// Worst-case protobuf field overhead: one tag byte plus a 10-byte length varint.
const FIELD_OVERHEAD: usize = 11;

/// One Kafka record to produce.
#[derive(Debug, Clone)]
pub struct KafkaMessage {
    pub key: Vec<u8>,
    pub value: Bytes,
    pub spans: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SplitError {
    #[error(
        "a span of {span_bytes} bytes does not fit in one Kafka message \
         (kafka.message_max_bytes = {limit}); raise kafka.message_max_bytes and the topic's \
         max.message.bytes"
    )]
    SpanTooLarge { span_bytes: usize, limit: usize },
    #[error("the batch's OTLP payload does not decode: {0}")]
    Decode(String),
}

/// The record key for `batch` (docs/kafka.md, "Keys and partitions").
pub fn key(batch: &Batch, strategy: PartitionKey) -> Vec<u8> {
    match strategy {
        PartitionKey::Project => {
            let mut k = Vec::with_capacity(batch.org_id.len() + 1 + batch.project_id.len());
            k.extend_from_slice(batch.org_id.as_bytes());
            k.push(b'/');
            k.extend_from_slice(batch.project_id.as_bytes());
            k
        }
        // The request's key, so a request sent again goes to the partition of its first copy
        // and the writer that owns it sees both (retry-safe ingest); the batch id for
        // envelopes without one.
        PartitionKey::Batch if !batch.dedup_key.is_empty() => batch.dedup_key.to_vec(),
        PartitionKey::Batch => batch.batch_id.to_vec(),
    }
}

/// True when `batch` must be split (a decompression and a byte-range copy of the whole payload:
/// run that on the blocking pool).
pub fn needs_split(batch: &Batch, key_len: usize, max_message_bytes: usize) -> bool {
    batch.encoded_len() + key_len + RECORD_OVERHEAD > max_message_bytes
}

/// Encodes `batch` as one or more messages of at most `max_message_bytes` (value + key +
/// [`RECORD_OVERHEAD`]).
pub fn to_messages(
    batch: Batch,
    strategy: PartitionKey,
    max_message_bytes: usize,
) -> Result<Vec<KafkaMessage>, SplitError> {
    let key = key(&batch, strategy);
    if !needs_split(&batch, key.len(), max_message_bytes) {
        let spans = batch.span_count;
        return Ok(vec![KafkaMessage {
            key,
            value: Bytes::from(batch.encode_to_vec()),
            spans,
        }]);
    }
    // A compressed payload is decompressed to be split; the parts are plain (identity,
    // schema version 1). The plain request is split by byte ranges, never decoded into
    // messages and re-encoded (issue 21: that cost 2.6x the unsplit path per byte).
    let plain =
        tracegate_otlp::envelope::plain_request(&batch, tracegate_otlp::envelope::MAX_PLAIN_BYTES)
            .map_err(|e| SplitError::Decode(e.to_string()))?;
    let mut head = batch;
    tracegate_otlp::envelope::set_plain(&mut head, Bytes::new());
    head.span_count = 0;
    // Envelope fields other than the payload, plus the payload's own tag/length and the part
    // fields (each at most 1 tag byte + 5-byte varint).
    let envelope = head.encoded_len() + FIELD_OVERHEAD + 2 * 6 + 2 * 6;
    let budget = max_message_bytes
        .saturating_sub(key.len() + RECORD_OVERHEAD + envelope)
        .max(1);
    let parts = chunk(&plain, budget)?.map_err(|span_bytes| SplitError::SpanTooLarge {
        span_bytes,
        limit: max_message_bytes,
    })?;
    let count = parts.len() as u32;
    Ok(parts
        .iter()
        .enumerate()
        .map(|(i, part)| {
            let mut h = head.clone();
            h.span_count = part.spans;
            h.part_index = i as u32;
            h.part_count = count;
            // The head without its (empty) payload, then the payload field written straight
            // from the plain request's byte ranges: each span byte is copied once. Protobuf
            // readers accept fields in any order, so the payload may come last.
            let len = part.encoded_len();
            let mut value = Vec::with_capacity(h.encoded_len() + FIELD_OVERHEAD + len);
            h.encode_raw(&mut value);
            prost::encoding::encode_key(
                PAYLOAD_FIELD,
                prost::encoding::WireType::LengthDelimited,
                &mut value,
            );
            prost::encoding::encode_varint(len as u64, &mut value);
            part.write(&plain, &mut value);
            KafkaMessage {
                key: key.clone(),
                value: Bytes::from(value),
                spans: part.spans,
            }
        })
        .collect())
}

/// The one message of a batch that needs no split, written around its payload where it lies:
/// `room` is the whole buffer the payload (`otlp_request`, a slice of it) was read into, with
/// free bytes before it (`ingest::body::Body::room`). The envelope's other fields, then the
/// payload's tag and length, are written into those bytes, so the message is the buffer itself
/// and the payload is not copied (issue 21, goal 2: before, the body was copied once to join its
/// frames and once more into the envelope). Protobuf readers take fields in any order, so the
/// payload may come last, as the split's parts have it. When the room is too small or another
/// handle to it is alive (writing into it would be seen), the message is encoded with one
/// copy, as `to_messages` does. The flag says whether the message was written in place.
pub fn message_in_room(batch: Batch, room: Bytes, strategy: PartitionKey) -> (KafkaMessage, bool) {
    let key = key(&batch, strategy);
    let spans = batch.span_count;
    let mut head = batch;
    let payload = std::mem::take(&mut head.otlp_request);
    let mut prefix = Vec::with_capacity(head.encoded_len() + FIELD_OVERHEAD);
    head.encode_raw(&mut prefix);
    prost::encoding::encode_key(
        PAYLOAD_FIELD,
        prost::encoding::WireType::LengthDelimited,
        &mut prefix,
    );
    prost::encoding::encode_varint(payload.len() as u64, &mut prefix);
    let len = payload.len();
    let start = tracegate_pipeline::queue::offset_in(&payload, &room);
    let payload = if let Some(start) = start.filter(|s| *s >= prefix.len()) {
        // The payload's handle goes first: the room must be the buffer's only one.
        drop(payload);
        match room.try_into_mut() {
            Ok(mut buf) => {
                let from = start - prefix.len();
                buf[from..start].copy_from_slice(&prefix);
                let value = buf.freeze().slice(from..start + len);
                return (KafkaMessage { key, value, spans }, true);
            }
            Err(room) => room.slice(start..start + len),
        }
    } else {
        payload
    };
    let mut value = prefix;
    value.extend_from_slice(&payload);
    let value = Bytes::from(value);
    (KafkaMessage { key, value, spans }, false)
}

/// `tracegate.v1.Batch.otlp_request`'s field number (proto/tracegate/v1/envelope.proto).
const PAYLOAD_FIELD: u32 = 11;
/// `ExportTraceServiceRequest.resource_spans`, `ResourceSpans.scope_spans`, `ScopeSpans.spans`.
const CHILD_FIELD_RS: u32 = 1;
const CHILD_FIELD: u32 = 2;

type Range = std::ops::Range<usize>;

/// One protobuf field of a message: its number, the range of the whole field (key included)
/// and, for a length-delimited field, the range of its contents.
struct Field {
    number: u32,
    whole: Range,
    body: Option<Range>,
}

/// The fields of the message in `buf[range]`, in order, read with the writer's zero-copy reader
/// (`clickhouse::pb`, the one varint rule). A (deprecated) group it skips is counted into the
/// range of the field after it and carried along; one at the very end is dropped, as prost
/// drops groups.
fn fields(buf: &[u8], range: Range) -> Result<Vec<Field>, SplitError> {
    let msg = &buf[range.clone()];
    let mut r = Reader::new(msg);
    let mut out = Vec::new();
    let mut start = 0;
    while let Some((number, v)) = r
        .next_field()
        .map_err(|e| SplitError::Decode(e.to_string()))?
    {
        let end = r.pos();
        // A length-delimited field's contents end where the field does.
        let body = match v {
            Value::Bytes(b) => Some(range.start + end - b.len()..range.start + end),
            _ => None,
        };
        out.push(Field {
            number,
            whole: range.start + start..range.start + end,
            body,
        });
        start = end;
    }
    Ok(out)
}

/// Bytes in `ranges`.
fn total(ranges: &[Range]) -> usize {
    ranges.iter().map(|r| r.len()).sum()
}

/// A message's "head" (every field but its children, as byte ranges copied verbatim into each
/// part, so a resource or scope field this code does not know survives the split) and its
/// children.
fn head_and_children(
    buf: &[u8],
    range: Range,
    child: u32,
) -> Result<(Vec<Range>, Vec<Field>), SplitError> {
    let (mut head, mut children) = (Vec::new(), Vec::new());
    for f in fields(buf, range)? {
        if f.number == child && f.body.is_some() {
            children.push(f);
        } else {
            head.push(f.whole);
        }
    }
    Ok((head, children))
}

/// One ScopeSpans of a part: the scope's head ranges and the spans' whole-field ranges.
struct PartScope {
    head: Vec<Range>,
    spans: Vec<Range>,
}

impl PartScope {
    fn body_len(&self) -> usize {
        total(&self.head) + total(&self.spans)
    }
}

struct PartResource {
    head: Vec<Range>,
    scopes: Vec<PartScope>,
}

impl PartResource {
    fn body_len(&self) -> usize {
        total(&self.head)
            + self
                .scopes
                .iter()
                .map(|s| len_delimited(s.body_len()))
                .sum::<usize>()
    }
}

/// One part: an `ExportTraceServiceRequest` made of byte ranges of the plain request.
#[derive(Default)]
struct Part {
    resources: Vec<PartResource>,
    spans: u32,
}

/// Bytes of a length-delimited field (1-byte key, as every field here has) with `len` bytes.
fn len_delimited(len: usize) -> usize {
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

impl Part {
    fn encoded_len(&self) -> usize {
        self.resources
            .iter()
            .map(|r| len_delimited(r.body_len()))
            .sum()
    }

    fn write(&self, plain: &[u8], out: &mut Vec<u8>) {
        use prost::encoding::{encode_key, encode_varint, WireType};
        for r in &self.resources {
            encode_key(CHILD_FIELD_RS, WireType::LengthDelimited, out);
            encode_varint(r.body_len() as u64, out);
            for h in &r.head {
                out.extend_from_slice(&plain[h.clone()]);
            }
            for s in &r.scopes {
                encode_key(CHILD_FIELD, WireType::LengthDelimited, out);
                encode_varint(s.body_len() as u64, out);
                for h in s.head.iter().chain(&s.spans) {
                    out.extend_from_slice(&plain[h.clone()]);
                }
            }
        }
    }
}

/// Packs the spans of the plain request greedily, in order, into parts whose encoding is at
/// most `budget` bytes; each keeps its spans' resource and scope (their other fields copied
/// verbatim). Sizes are over-estimated (every nested length counted at its maximum), so the
/// real encodings are never larger. Inner Err(size) when one span cannot fit alone.
fn chunk(plain: &[u8], budget: usize) -> Result<Result<Vec<Part>, usize>, SplitError> {
    let mut out = Vec::new();
    let mut cur = Part::default();
    let mut cur_size = 0usize;
    for rs in fields(plain, 0..plain.len())? {
        let (Some(rs_body), CHILD_FIELD_RS) = (rs.body, rs.number) else {
            continue; // no other field in ExportTraceServiceRequest; prost skipped them too
        };
        let (rs_head, scopes) = head_and_children(plain, rs_body, CHILD_FIELD)?;
        let rs_cost = total(&rs_head) + FIELD_OVERHEAD;
        let mut rs_open = false;
        for ss in scopes {
            let ss_body = ss.body.expect("children are length-delimited");
            let (ss_head, spans) = head_and_children(plain, ss_body, CHILD_FIELD)?;
            let ss_cost = total(&ss_head) + FIELD_OVERHEAD;
            let mut ss_open = false;
            for span in spans {
                let cost = span.whole.len();
                let opening = |rs_open, ss_open| {
                    cost + if ss_open { 0 } else { ss_cost } + if rs_open { 0 } else { rs_cost }
                };
                if cur_size + opening(rs_open, ss_open) > budget && cur.spans > 0 {
                    out.push(std::mem::take(&mut cur));
                    cur_size = 0;
                    (rs_open, ss_open) = (false, false);
                }
                let need = opening(rs_open, ss_open);
                if need > budget {
                    return Ok(Err(cost));
                }
                if !rs_open {
                    cur.resources.push(PartResource {
                        head: rs_head.clone(),
                        scopes: Vec::new(),
                    });
                    rs_open = true;
                }
                let r = cur.resources.last_mut().expect("just pushed");
                if !ss_open {
                    r.scopes.push(PartScope {
                        head: ss_head.clone(),
                        spans: Vec::new(),
                    });
                    ss_open = true;
                }
                r.scopes
                    .last_mut()
                    .expect("just pushed")
                    .spans
                    .push(span.whole);
                cur_size += need;
                cur.spans += 1;
            }
        }
    }
    if cur.spans > 0 {
        out.push(cur);
    }
    Ok(Ok(out))
}

#[cfg(test)]
#[path = "split_tests.rs"]
mod tests;
