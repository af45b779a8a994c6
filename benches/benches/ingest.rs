//! Decode + validate of a 512-span realistic request — the gateway's CPU cost per request —
//! next to a bare `prost` decode of the same bytes (the physical reference) and gunzip/zstd.
//! Run: `cargo bench -p tracegate-benches --bench ingest`.

use std::io::{Read, Write};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use prost::Message;
use tracegate::admission::Admission;
use tracegate::auth::authenticator::Principal;
use tracegate::config::LimitsConfig;
use tracegate::ingest::prepare;
use tracegate::otlp::decode::{Compression, Format};
use tracegate_proto::otlp::collector::trace::v1::ExportTraceServiceRequest;

const SPANS: usize = 512;

fn bench(c: &mut Criterion) {
    let req = tracegate_benches::realistic_request(SPANS, 7);
    let proto = Bytes::from(req.encode_to_vec());
    let json = Bytes::from(serde_json::to_vec(&req).unwrap());
    let gz = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&proto).unwrap();
        Bytes::from(e.finish().unwrap())
    };
    let zs = Bytes::from(zstd::encode_all(&proto[..], 3).unwrap());
    eprintln!(
        "request: {SPANS} spans, protobuf {} B ({} B/span), json {} B, gzip {} B, zstd {} B",
        proto.len(),
        proto.len() / SPANS,
        json.len(),
        gz.len(),
        zs.len()
    );
    let limits = LimitsConfig::default();
    let admission = Admission::new(limits.max_inflight_bytes);
    let keys = tracegate::config::AuthConfig::default().tenant_attribute_keys;
    let principal = Principal {
        project_id: "bench".into(),
        org_id: "o".into(),
        ..Default::default()
    };
    // What the request path does per request: reserve, decompress, decode, validate, stamp.
    let run = |format: Format, compression: Compression, body: &Bytes| {
        let permit = admission.try_reserve(body.len()).unwrap();
        prepare(
            format,
            compression,
            body.clone(),
            &limits,
            permit,
            Some((&keys, &principal)),
        )
        .unwrap()
    };

    let mut g = c.benchmark_group("ingest_512_spans");
    g.throughput(Throughput::Elements(SPANS as u64));
    g.bench_function("prost_decode_reference", |b| {
        b.iter(|| ExportTraceServiceRequest::decode(proto.clone()).unwrap())
    });
    g.bench_function("decode_validate_protobuf", |b| {
        b.iter(|| run(Format::Protobuf, Compression::Identity, &proto))
    });
    g.bench_function("decode_validate_protobuf_gzip", |b| {
        b.iter(|| run(Format::Protobuf, Compression::Gzip, &gz))
    });
    g.bench_function("decode_validate_protobuf_zstd", |b| {
        b.iter(|| run(Format::Protobuf, Compression::Zstd, &zs))
    });
    g.bench_function("decode_validate_json", |b| {
        b.iter(|| run(Format::Json, Compression::Identity, &json))
    });
    g.bench_function("gunzip_reference", |b| {
        b.iter_batched(
            || Vec::with_capacity(proto.len()),
            |mut out| {
                flate2::read::GzDecoder::new(&gz[..])
                    .read_to_end(&mut out)
                    .unwrap();
                out
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("memcpy_reference", |b| b.iter(|| proto.to_vec()));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
