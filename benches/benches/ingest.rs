//! The gateway's CPU cost per request of 512 realistic spans, step by step, next to the
//! physical references over the same bytes (bare `prost` decode into owned structs, gunzip,
//! zstd decompression, memcpy):
//! - `scan_validate_protobuf`: the fast path alone (`tracegate_otlp::scan::scan`);
//! - `decode_validate_protobuf_slow`: the prost path (decode, validate, stamp) that the fast
//!   path replaces for clean requests; `decode_validate_json`: JSON, always the prost path;
//! - `prepare_*`: the whole `ingest::prepare` step (reserve, decompress, scan, envelope bytes);
//! - `request_digest_xxh3`, `dedup_window_check`: retry-safe ingest's digest of a request
//!   (in every `prepare_*`) and a writer's window decision for it;
//! - `envelope_encode`: a `Batch` around the request, encoded as the Kafka producer does;
//! - `archive_payload_zstd3` and `archive_seal`: the writer's archive object for one batch
//!   (zstd frame of records, then the v2 AES-256-GCM envelope);
//! - `*_forwarded_zstd`: the same steps for an envelope that carries the client's zstd body as
//!   it is (what `prepare_protobuf_zstd` / `_gzip` now produce for a clean request), and
//!   `plain_request_zstd`: a reader decompressing it (`envelope::plain_request`).
//!
//! Before criterion runs, each bench prints spans per CPU-second of this thread (CLOCK_THREAD_
//! CPUTIME_ID), which holds on a shared machine where criterion's wall-clock figures do not.
//! Run: `cargo bench -p tracegate-benches --bench ingest`.

use std::io::{Read, Write};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use prost::Message;
use tracegate_archive::crypto;
use tracegate_benches::per_cpu_second;
use tracegate_otlp::codec::{self as decode, Compression, Format};
use tracegate_otlp::scan;
use tracegate_otlp::stamp::stamp_tenant;
use tracegate_otlp::validate;
use tracegate_proto::otlp::collector::trace::v1::ExportTraceServiceRequest;
use tracegate_proto::v1::{Batch, PayloadEncoding};

const SPANS: usize = 512;

fn bench(c: &mut Criterion) {
    tracegate_benches::tune_allocator_like_the_binary();
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
    let setup = tracegate_benches::IngestSetup::default();
    let (span_limits, claims) = (&setup.span_limits, setup.claims());
    let run = |format: Format, compression: Compression, body: &Bytes| {
        setup.prepare(format, compression, body)
    };
    // The prost path, as `prepare` ran it for every request before the scan existed.
    let slow = |body: &[u8]| {
        let mut r = decode::decode(Format::Protobuf, body).unwrap();
        let o = validate::validate(&mut r, span_limits);
        let stamped = stamp_tenant(&mut r, &claims);
        assert!(!o.modified && !stamped);
        o.accepted
    };
    let batch = Batch {
        org_id: "org".into(),
        workspace_id: "ws".into(),
        project_id: "project".into(),
        region: "eu".into(),
        span_count: SPANS as u32,
        batch_id: Bytes::from_static(&[7; 16]),
        otlp_request: proto.clone(),
        ..Default::default()
    };
    // The envelope of a clean zstd request: the client's body, forwarded.
    let forwarded = {
        let p = run(Format::Protobuf, Compression::Zstd, &zs);
        assert_eq!(p.encoding, PayloadEncoding::Zstd);
        assert_eq!(p.otlp_request, zs);
        let mut b = batch.clone();
        p.set_payload(&mut b);
        b
    };
    assert_eq!(
        run(Format::Protobuf, Compression::Gzip, &gz).encoding,
        PayloadEncoding::Gzip
    );
    let ctx = crypto::EncryptionContext::new("org", "project", "eu", "bench:0:1-1");
    let data_key = crypto::new_data_key().unwrap();
    let payload = crypto::encode_payload(&[(0, &batch)], crypto::CODEC_ZSTD, 3).unwrap();
    let key = crypto::SealKey {
        provider: crypto::Provider::Keyring,
        key_id: "k1",
        wrapped_key: &[9; 60],
        data_key: &data_key,
        context: &ctx,
        group_batches: 1,
    };
    let seal = |p: &[u8]| crypto::seal(&key, crypto::CODEC_ZSTD, p).unwrap();
    let gunzip = || {
        let mut out = Vec::with_capacity(proto.len());
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut out)
            .unwrap();
        out
    };
    let unzstd = || zstd::bulk::decompress(&zs, proto.len()).unwrap();
    // What the gateway did per zstd request before it kept a context per thread.
    let unzstd_fresh = || {
        let mut out = Vec::with_capacity(proto.len());
        zstd::stream::read::Decoder::new(&zs[..])
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        out
    };

    // Spans per CPU-second of this thread, one line per step.
    assert_eq!(scan::scan(&proto, span_limits, &claims), Ok(SPANS));
    let rounds = 200;
    per_cpu_second("scan_validate_protobuf", SPANS, rounds, || {
        scan::scan(&proto, span_limits, &claims).unwrap()
    });
    per_cpu_second("prepare_protobuf", SPANS, rounds, || {
        run(Format::Protobuf, Compression::Identity, &proto)
    });
    per_cpu_second("prepare_protobuf_zstd", SPANS, rounds, || {
        run(Format::Protobuf, Compression::Zstd, &zs)
    });
    per_cpu_second("prepare_protobuf_gzip", SPANS, rounds, || {
        run(Format::Protobuf, Compression::Gzip, &gz)
    });
    per_cpu_second("decode_validate_protobuf_slow", SPANS, rounds / 4, || {
        slow(&proto)
    });
    per_cpu_second("decode_validate_json", SPANS, rounds / 8, || {
        run(Format::Json, Compression::Identity, &json)
    });
    // Retry-safe ingest: the gateway's digest over every request's decompressed bytes (part
    // of every `prepare_*` above), and the writer's window decision, once per request.
    per_cpu_second("request_digest_xxh3", SPANS, rounds * 20, || {
        tracegate_pipeline::dedup::digest(&proto)
    });
    let mut window = tracegate_pipeline::dedup::Window::new(std::time::Duration::from_secs(900));
    let mut n = 0u64;
    per_cpu_second("dedup_window_check", SPANS, rounds * 100, || {
        n += 1;
        let e = tracegate_pipeline::dedup::Envelope {
            key: u128::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            copy: u128::from(n),
            parts: 0,
            at: n * 1_000_000,
            position: n as i64,
            tenant: n % 8,
        };
        window.check(e, 1 << 22)
    });
    per_cpu_second("envelope_encode", SPANS, rounds, || batch.encode_to_vec());
    per_cpu_second("archive_payload_zstd3", SPANS, rounds / 4, || {
        crypto::encode_payload(&[(0, &batch)], crypto::CODEC_ZSTD, 3).unwrap()
    });
    per_cpu_second("archive_seal", SPANS, rounds, || seal(&payload));
    // What librdkafka's per-message compression costs the gateway (compression.type=zstd at
    // its default level 3, or level 1), over the encoded envelope.
    let envelope = batch.encode_to_vec();
    eprintln!(
        "envelope {} B; zstd 3: {} B, zstd 1: {} B, lz4: {} B",
        envelope.len(),
        zstd::bulk::compress(&envelope, 3).unwrap().len(),
        zstd::bulk::compress(&envelope, 1).unwrap().len(),
        {
            let mut w = lz4_flex::frame::FrameEncoder::new(Vec::new());
            std::io::Write::write_all(&mut w, &envelope).unwrap();
            w.finish().unwrap().len()
        }
    );
    per_cpu_second("kafka_message_zstd3", SPANS, rounds / 4, || {
        zstd::bulk::compress(&envelope, 3).unwrap()
    });
    per_cpu_second("kafka_message_zstd1", SPANS, rounds / 4, || {
        zstd::bulk::compress(&envelope, 1).unwrap()
    });
    for level in [-1, -3, -5] {
        let name = format!("kafka_message_zstd{level}");
        let n = zstd::bulk::compress(&envelope, level).unwrap().len();
        println!("zstd {level}: {n} B");
        per_cpu_second(&name, SPANS, rounds / 4, || {
            zstd::bulk::compress(&envelope, level).unwrap()
        });
    }
    // librdkafka's lz4 codec (LZ4F frames, bundled C lz4); lz4_flex's frame encoder runs at the
    // same speed as C liblz4 on these bytes (docs/benchmarks.md, writer LZ4).
    per_cpu_second("kafka_message_lz4", SPANS, rounds / 4, || {
        let mut w = lz4_flex::frame::FrameEncoder::new(Vec::with_capacity(envelope.len() / 4));
        std::io::Write::write_all(&mut w, &envelope).unwrap();
        w.finish().unwrap()
    });
    let envelope_fwd = forwarded.encode_to_vec();
    eprintln!(
        "forwarded zstd envelope {} B; zstd 3: {} B",
        envelope_fwd.len(),
        zstd::bulk::compress(&envelope_fwd, 3).unwrap().len()
    );
    per_cpu_second("envelope_encode_forwarded_zstd", SPANS, rounds, || {
        forwarded.encode_to_vec()
    });
    per_cpu_second("kafka_message_zstd3_forwarded_zstd", SPANS, rounds, || {
        zstd::bulk::compress(&envelope_fwd, 3).unwrap()
    });
    per_cpu_second(
        "archive_payload_zstd3_forwarded_zstd",
        SPANS,
        rounds,
        || crypto::encode_payload(&[(0, &forwarded)], crypto::CODEC_ZSTD, 3).unwrap(),
    );
    // What the archive does with them now (`crypto::choose_codec`): stored, sealed in place.
    per_cpu_second("archive_object_forwarded_zstd", SPANS, rounds, || {
        crypto::seal_records(&key, &[(0, &forwarded)], 3).unwrap()
    });
    per_cpu_second("plain_request_zstd", SPANS, rounds, || {
        tracegate_otlp::envelope::plain_request(
            &forwarded,
            tracegate_otlp::envelope::MAX_PLAIN_BYTES,
        )
        .unwrap()
    });
    per_cpu_second("prost_decode_reference", SPANS, rounds / 4, || {
        ExportTraceServiceRequest::decode(proto.clone()).unwrap()
    });
    per_cpu_second("gunzip_reference", SPANS, rounds, gunzip);
    per_cpu_second("zstd_decompress_reference", SPANS, rounds, unzstd);
    per_cpu_second("zstd_stream_fresh_context", SPANS, rounds, unzstd_fresh);
    per_cpu_second("memcpy_reference", SPANS, rounds * 20, || proto.to_vec());

    let mut g = c.benchmark_group("ingest_512_spans");
    g.throughput(Throughput::Elements(SPANS as u64));
    g.bench_function("scan_validate_protobuf", |b| {
        b.iter(|| scan::scan(&proto, span_limits, &claims).unwrap())
    });
    g.bench_function("prepare_protobuf", |b| {
        b.iter(|| run(Format::Protobuf, Compression::Identity, &proto))
    });
    g.bench_function("prepare_protobuf_zstd", |b| {
        b.iter(|| run(Format::Protobuf, Compression::Zstd, &zs))
    });
    g.bench_function("prepare_protobuf_gzip", |b| {
        b.iter(|| run(Format::Protobuf, Compression::Gzip, &gz))
    });
    g.bench_function("decode_validate_protobuf_slow", |b| b.iter(|| slow(&proto)));
    g.bench_function("decode_validate_json", |b| {
        b.iter(|| run(Format::Json, Compression::Identity, &json))
    });
    g.bench_function("envelope_encode", |b| b.iter(|| batch.encode_to_vec()));
    g.bench_function("archive_payload_zstd3", |b| {
        b.iter(|| crypto::encode_payload(&[(0, &batch)], crypto::CODEC_ZSTD, 3).unwrap())
    });
    g.bench_function("archive_seal", |b| b.iter(|| seal(&payload)));
    g.bench_function("prost_decode_reference", |b| {
        b.iter(|| ExportTraceServiceRequest::decode(proto.clone()).unwrap())
    });
    g.bench_function("gunzip_reference", |b| b.iter(gunzip));
    g.bench_function("zstd_decompress_reference", |b| b.iter(unzstd));
    g.bench_function("zstd_stream_fresh_context", |b| b.iter(unzstd_fresh));
    g.bench_function("memcpy_reference", |b| b.iter(|| proto.to_vec()));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
