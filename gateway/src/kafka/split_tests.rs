//! Tests of `split.rs`: parts within the limit, in order, with their resource and scope
//! (byte for byte), spans too large alone, compressed payloads, malformed payloads.

use super::*;
use tracegate_proto::otlp::collector::trace::v1::ExportTraceServiceRequest;
use tracegate_proto::otlp::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use tracegate_proto::otlp::resource::v1::Resource;
use tracegate_proto::otlp::trace::v1::Span;
use tracegate_proto::otlp::trace::v1::{ResourceSpans, ScopeSpans};

fn span(i: u64, attr_bytes: usize) -> Span {
    Span {
        trace_id: vec![1; 16],
        span_id: (i + 1).to_be_bytes().to_vec(),
        name: format!("s{i}"),
        attributes: vec![KeyValue {
            key: "gen_ai.prompt".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue("x".repeat(attr_bytes))),
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn request(
    resources: u64,
    scopes: u64,
    spans: u64,
    attr_bytes: usize,
) -> ExportTraceServiceRequest {
    let mut n = 0;
    ExportTraceServiceRequest {
        resource_spans: (0..resources)
            .map(|r| ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![KeyValue {
                        key: "service.name".into(),
                        value: Some(AnyValue {
                            value: Some(any_value::Value::StringValue(format!("svc{r}"))),
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                scope_spans: (0..scopes)
                    .map(|s| ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: format!("scope{s}"),
                            ..Default::default()
                        }),
                        spans: (0..spans)
                            .map(|_| {
                                n += 1;
                                span(n, attr_bytes)
                            })
                            .collect(),
                        schema_url: "https://opentelemetry.io/schemas/1.0".into(),
                    })
                    .collect(),
                schema_url: String::new(),
            })
            .collect(),
    }
}

fn batch(req: &ExportTraceServiceRequest) -> Batch {
    Batch {
        schema_version: 1,
        batch_id: Bytes::from_static(&[7; 16]),
        org_id: "org".into(),
        project_id: "proj".into(),
        span_count: req
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len() as u32)
            .sum(),
        otlp_request: Bytes::from(req.encode_to_vec()),
        ..Default::default()
    }
}

/// (resource service name, scope name, span name) of every span, in order.
fn flatten(req: &ExportTraceServiceRequest) -> Vec<(String, String, String)> {
    let mut v = vec![];
    for rs in &req.resource_spans {
        let r = format!("{:?}", rs.resource);
        for ss in &rs.scope_spans {
            let s = format!("{:?}{}", ss.scope, ss.schema_url);
            for sp in &ss.spans {
                v.push((r.clone(), s.clone(), sp.name.clone()));
            }
        }
    }
    v
}

#[test]
fn small_batch_is_one_unsplit_message() {
    let req = request(1, 1, 10, 100);
    let b = batch(&req);
    let m = to_messages(b.clone(), PartitionKey::Project, 1_000_000).unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].key, b"org/proj");
    assert_eq!(Batch::decode(&m[0].value[..]).unwrap(), b);
    let m = to_messages(b.clone(), PartitionKey::Batch, 1_000_000).unwrap();
    assert_eq!(m[0].key, vec![7; 16]);
}

#[test]
fn large_batch_is_split_in_order_without_loss_and_every_part_fits() {
    let req = request(3, 2, 40, 3_000); // ~720 KB
    let b = batch(&req);
    let limit = 64 * 1024;
    let msgs = to_messages(b.clone(), PartitionKey::Project, limit).unwrap();
    assert!(msgs.len() > 5, "{}", msgs.len());
    let mut all = vec![];
    for (i, m) in msgs.iter().enumerate() {
        assert!(
            m.value.len() + m.key.len() + RECORD_OVERHEAD <= limit,
            "part {i}"
        );
        let p = Batch::decode(&m.value[..]).unwrap();
        assert_eq!(p.batch_id, b.batch_id);
        assert_eq!(p.project_id, "proj");
        assert_eq!(p.part_index, i as u32);
        assert_eq!(p.part_count, msgs.len() as u32);
        let r = ExportTraceServiceRequest::decode(p.otlp_request).unwrap();
        assert_eq!(p.span_count as usize, flatten(&r).len());
        assert_eq!(m.spans, p.span_count);
        all.extend(flatten(&r));
    }
    assert_eq!(all, flatten(&req));
}

#[test]
fn a_span_larger_than_the_limit_is_refused_not_dropped() {
    let req = request(1, 1, 3, 40_000);
    let e = to_messages(batch(&req), PartitionKey::Project, 20_000).unwrap_err();
    assert!(
        matches!(e, SplitError::SpanTooLarge { limit: 20_000, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("kafka.message_max_bytes"));
}

/// `req` with every attribute value replaced by incompressible text of the same length.
fn noisy(mut req: ExportTraceServiceRequest) -> ExportTraceServiceRequest {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for sp in req
        .resource_spans
        .iter_mut()
        .flat_map(|r| &mut r.scope_spans)
        .flat_map(|s| &mut s.spans)
    {
        for kv in &mut sp.attributes {
            if let Some(AnyValue {
                value: Some(any_value::Value::StringValue(v)),
            }) = &mut kv.value
            {
                *v = (0..v.len())
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        char::from(b'a' + (x % 26) as u8)
                    })
                    .collect();
            }
        }
    }
    req
}

fn zstd_batch(req: &ExportTraceServiceRequest) -> Batch {
    let plain = req.encode_to_vec();
    let mut b = batch(req);
    b.schema_version = 2;
    b.otlp_request = zstd::encode_all(&plain[..], 3).unwrap().into();
    b.otlp_request_encoding = tracegate_proto::v1::PayloadEncoding::Zstd as i32;
    b.otlp_request_plain_len = plain.len() as u64;
    b
}

#[test]
fn a_compressed_batch_that_fits_goes_as_it_is() {
    // ~720 KB plain, a few KB compressed: one message, the compressed bytes unchanged.
    let req = request(3, 2, 40, 3_000);
    let b = zstd_batch(&req);
    assert!(b.otlp_request.len() < 20_000);
    let m = to_messages(b.clone(), PartitionKey::Project, 64 * 1024).unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(Batch::decode(&m[0].value[..]).unwrap(), b);
}

#[test]
fn a_compressed_batch_too_large_is_split_into_plain_parts() {
    let req = noisy(request(3, 2, 40, 3_000));
    let b = zstd_batch(&req);
    let limit = 64 * 1024;
    assert!(b.otlp_request.len() > limit);
    let msgs = to_messages(b.clone(), PartitionKey::Project, limit).unwrap();
    assert!(msgs.len() > 5, "{}", msgs.len());
    let mut all = vec![];
    for (i, m) in msgs.iter().enumerate() {
        assert!(m.value.len() + m.key.len() + RECORD_OVERHEAD <= limit);
        let p = Batch::decode(&m.value[..]).unwrap();
        assert_eq!((p.schema_version, p.otlp_request_encoding), (1, 0));
        assert_eq!(p.otlp_request_plain_len, 0);
        assert_eq!(
            (p.part_index, p.batch_id.clone()),
            (i as u32, b.batch_id.clone())
        );
        let r = ExportTraceServiceRequest::decode(p.otlp_request).unwrap();
        assert_eq!(p.span_count as usize, flatten(&r).len());
        all.extend(flatten(&r));
    }
    assert_eq!(all, flatten(&req));
    // A corrupt compressed payload is an error, never parts of garbage.
    let mut bad = b;
    bad.otlp_request_plain_len += 1;
    assert!(matches!(
        to_messages(bad, PartitionKey::Project, limit),
        Err(SplitError::Decode(_))
    ));
}

#[test]
fn parts_keep_resource_and_scope_fields_byte_for_byte() {
    let mut req = request(2, 2, 30, 500);
    for rs in &mut req.resource_spans {
        rs.schema_url = "https://example.com/r".into();
        if let Some(r) = rs.resource.as_mut() {
            r.dropped_attributes_count = 3;
        }
        for ss in &mut rs.scope_spans {
            if let Some(sc) = ss.scope.as_mut() {
                sc.version = "1.2.3".into();
            }
        }
    }
    let b = batch(&req);
    let msgs = to_messages(b, PartitionKey::Project, 4_000).unwrap();
    assert!(msgs.len() > 5, "{}", msgs.len());
    let mut spans = Vec::new();
    for m in &msgs {
        let p = Batch::decode(&m.value[..]).unwrap();
        let r = ExportTraceServiceRequest::decode(p.otlp_request).unwrap();
        for rs in r.resource_spans {
            let orig = req
                .resource_spans
                .iter()
                .find(|o| o.resource == rs.resource)
                .expect("a resource of the request");
            assert_eq!(rs.schema_url, orig.schema_url);
            for ss in rs.scope_spans {
                let o = orig
                    .scope_spans
                    .iter()
                    .find(|o| o.scope == ss.scope)
                    .expect("a scope of that resource");
                assert_eq!(ss.schema_url, o.schema_url);
                spans.extend(ss.spans);
            }
        }
    }
    let all: Vec<_> = req
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| s.spans.clone())
        .collect();
    assert_eq!(spans, all);
}

#[test]
fn a_malformed_payload_is_an_error_not_a_panic() {
    let mut b = batch(&request(1, 1, 50, 200));
    let mut bad = b.otlp_request.to_vec();
    bad.truncate(bad.len() - 7);
    bad.extend_from_slice(&[0x0a, 0xff, 0xff, 0xff]);
    b.otlp_request = bad.into();
    let e = to_messages(b, PartitionKey::Project, 2_000).unwrap_err();
    assert!(matches!(e, SplitError::Decode(_)), "{e:?}");
}

#[test]
fn every_part_of_a_keyed_request_goes_to_its_partition_under_its_key() {
    let req = request(3, 2, 40, 3_000);
    let mut b = batch(&req);
    b.dedup_key = Bytes::from_static(&[9; 16]);
    let msgs = to_messages(b, PartitionKey::Batch, 64 * 1024).unwrap();
    assert!(msgs.len() > 5);
    for m in msgs {
        assert_eq!(m.key, vec![9; 16]);
        let p = Batch::decode(&m.value[..]).unwrap();
        assert_eq!(&p.dedup_key[..], &[9; 16]);
    }
}

/// A payload read into a buffer with `room` free bytes before it (as `ingest::body` joins a
/// body of several frames), and `b` with that payload.
fn in_room(b: &Batch, room: usize) -> (Batch, Bytes) {
    let mut buf = vec![0xEE; room];
    buf.extend_from_slice(&b.otlp_request);
    let whole = Bytes::from(buf);
    let mut b = b.clone();
    b.otlp_request = whole.slice(room..);
    (b, whole)
}

/// True when `part`'s bytes are inside the allocation that `ptr..ptr + len` spans.
fn within(part: &[u8], ptr: usize, len: usize) -> bool {
    let p = part.as_ptr() as usize;
    p >= ptr && p + part.len() <= ptr + len
}

#[test]
fn an_unsplit_message_is_written_around_its_payload_in_its_room() {
    let want = batch(&request(2, 2, 20, 300));
    let (b, whole) = in_room(&want, 512);
    let (ptr, len) = (whole.as_ptr() as usize, whole.len());
    let (m, in_place) = message_in_room(b, whole, PartitionKey::Project);
    assert!(in_place);
    assert_eq!(m.key, b"org/proj");
    assert_eq!(m.spans, want.span_count);
    assert_eq!(Batch::decode(&m.value[..]).unwrap(), want);
    // The message is the room itself: the envelope was written before the payload, which
    // was not copied.
    assert!(within(&m.value, ptr, len), "the value is the room's buffer");
    assert_eq!(m.value.as_ptr() as usize + m.value.len(), ptr + len);
}

#[test]
fn a_shared_or_small_room_falls_back_to_one_copy() {
    let want = batch(&request(1, 1, 5, 100));
    // Another handle to the buffer is alive: writing into it would be seen there.
    let (b, whole) = in_room(&want, 512);
    let (ptr, len, other) = (whole.as_ptr() as usize, whole.len(), whole.clone());
    let (m, in_place) = message_in_room(b, whole, PartitionKey::Batch);
    assert!(!in_place, "a shared buffer is not written into");
    assert_eq!(Batch::decode(&m.value[..]).unwrap(), want);
    assert!(!within(&m.value, ptr, len));
    assert!(
        other[..512].iter().all(|&x| x == 0xEE),
        "the room is untouched"
    );
    // Too little room for the envelope's fields.
    let (b, whole) = in_room(&want, 8);
    let (ptr, len) = (whole.as_ptr() as usize, whole.len());
    let (m, in_place) = message_in_room(b, whole, PartitionKey::Batch);
    assert!(!in_place, "no room for the head");
    assert_eq!(Batch::decode(&m.value[..]).unwrap(), want);
    assert!(!within(&m.value, ptr, len));
    // A payload that is not in the room at all.
    let (_, whole) = in_room(&want, 512);
    let (m, in_place) = message_in_room(want.clone(), whole, PartitionKey::Batch);
    assert!(!in_place);
    assert_eq!(Batch::decode(&m.value[..]).unwrap(), want);
}

#[test]
fn the_envelope_of_a_realistic_tenant_fits_the_room_a_body_is_read_into() {
    // Ids as long as the control plane issues them, every field of the envelope set.
    let mut b = batch(&request(1, 1, 1, 10));
    let id = "0123456789abcdef0123456789abcdef";
    b.org_id = format!("org_{id}");
    b.workspace_id = format!("ws_{id}");
    b.project_id = format!("proj_{id}");
    b.region = "ap-southeast-2".into();
    b.key_id = format!("key_{id}");
    b.received_at_unix_nano = u64::MAX;
    b.dedup_key = Bytes::from_static(&[9; 18]);
    b.source = Some(tracegate_proto::v1::Source {
        client_addr: "[2001:db8:ffff:ffff:ffff:ffff:ffff:ffff]:65535".into(),
        vpc_endpoint_id: "vpce-0123456789abcdef0".into(),
    });
    let mut head = b.clone();
    head.otlp_request = Bytes::new();
    let room = crate::ingest::body::ROOM;
    assert!(
        head.encoded_len() + FIELD_OVERHEAD <= room,
        "{} bytes of envelope need more than ROOM = {room}",
        head.encoded_len() + FIELD_OVERHEAD
    );
    let (b2, whole) = in_room(&b, room);
    let (ptr, len) = (whole.as_ptr() as usize, whole.len());
    let (m, in_place) = message_in_room(b2, whole, PartitionKey::Project);
    assert!(in_place);
    assert!(within(&m.value, ptr, len));
    assert_eq!(Batch::decode(&m.value[..]).unwrap(), b);
}
