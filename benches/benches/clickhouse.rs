//! ClickHouse row encoding: RowBinary rows of `otel_traces` straight from the queued protobuf
//! bytes of one 512-span realistic request (~870 B/span, 20 string attributes + 1 int), on one
//! core; next to prost's owned decode of the same bytes (what an encoder over owned structs
//! would pay first) and the native compressed blocks the insert adds (zstd at level -3, the
//! default `clickhouse.compression`; LZ4 beside it).
//! `writer_envelope_to_compressed_rowbinary` is the writer's whole CPU path for a group of Kafka
//! messages: envelope decode → RowBinary rows → compressed blocks; `_forwarded_zstd` is the same
//! with envelopes that carry the client's zstd body (schema version 2), which the writer
//! decompresses first (`envelope::plain_request`).
//! Run: `cargo bench -p tracegate-benches --bench clickhouse`.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use prost::Message;
use tracegate::clickhouse::blocks::native;
use tracegate::clickhouse::config::ClickHouseConfig;
use tracegate::clickhouse::rows::{EncodeOptions, Encoded, Encoder};
use tracegate::clickhouse::sink;
use tracegate_benches::per_cpu_second;
use tracegate_proto::otlp::collector::trace::v1::ExportTraceServiceRequest;
use tracegate_proto::v1::Batch;

const SPANS: usize = 512;
/// Batches per writer group in the writer bench (10 240 spans per group).
const GROUP: usize = 20;

/// The default codec (`clickhouse.compression`), derived once, not inside the measured loops.
static DEFAULT_CODEC: std::sync::LazyLock<clickhouse::Compression> =
    std::sync::LazyLock::new(|| sink::codec(&ClickHouseConfig::default()));

/// The sink's native compressed blocks with the default codec.
fn blocks(data: &[u8]) -> Vec<bytes::Bytes> {
    native(data, *DEFAULT_CODEC).unwrap()
}

fn lz4_blocks(data: &[u8]) -> Vec<bytes::Bytes> {
    native(data, clickhouse::Compression::Lz4).unwrap()
}

fn bench(c: &mut Criterion) {
    tracegate_benches::tune_allocator_like_the_binary();
    let req = tracegate_benches::realistic_request(SPANS, 7);
    let batch = Batch {
        org_id: "org".into(),
        workspace_id: "ws".into(),
        project_id: "project".into(),
        region: "eu".into(),
        span_count: SPANS as u32,
        otlp_request: Bytes::from(req.encode_to_vec()),
        ..Default::default()
    };
    let mut enc = Encoder::new(EncodeOptions::default());
    let mut out = Encoded::default();
    enc.encode_batch(&batch, &mut out).unwrap();
    eprintln!(
        "request: {SPANS} spans, protobuf {} B, RowBinary {} B ({} B/span)",
        batch.otlp_request.len(),
        out.data[0].len(),
        out.data[0].len() / SPANS
    );

    // Spans per CPU-second of this thread: what "per core" means, even when other processes
    // share the machine (criterion below reports wall-clock throughput).
    // PROFILE_WRITER=N: only the writer's group path, N times, for a profiler
    // (`perf record -g target/release/deps/clickhouse-* --bench`).
    let profile: Option<usize> = std::env::var("PROFILE_WRITER")
        .ok()
        .and_then(|v| v.parse().ok());
    let rounds = if profile.is_some() { 1 } else { 200 };
    per_cpu_second("rowbinary_encode", SPANS, rounds, || {
        out.clear();
        enc.encode_batch(&batch, &mut out).unwrap();
    });
    per_cpu_second("rowbinary_encode+zstd-3", SPANS, rounds, || {
        out.clear();
        enc.encode_batch(&batch, &mut out).unwrap();
        blocks(&out.data[0])
    });
    per_cpu_second("rowbinary_encode+lz4", SPANS, rounds, || {
        out.clear();
        enc.encode_batch(&batch, &mut out).unwrap();
        lz4_blocks(&out.data[0])
    });
    // The writer as a whole, per group of GROUP Kafka messages: envelope decode (from the
    // message's bytes, so the OTLP payload is copied once, as rdkafka's borrowed payload
    // requires), RowBinary rows of every batch into one buffer, then the sink's 1 MiB native
    // blocks (zstd -3, the default).
    let messages: Vec<Vec<u8>> = (0..GROUP)
        .map(|i| {
            let mut b = batch.clone();
            b.otlp_request =
                Bytes::from(tracegate_benches::realistic_request(SPANS, i as u64).encode_to_vec());
            b.encode_to_vec()
        })
        .collect();
    // The same group as the gateway forwards clean zstd requests: zstd (level 3) payloads.
    let messages_zstd: Vec<Vec<u8>> = messages
        .iter()
        .map(|m| {
            let mut b = Batch::decode(&m[..]).unwrap();
            let plain = b.otlp_request.clone();
            b.schema_version = 2;
            b.otlp_request = Bytes::from(zstd::encode_all(&plain[..], 3).unwrap());
            b.otlp_request_encoding = tracegate_proto::v1::PayloadEncoding::Zstd as i32;
            b.otlp_request_plain_len = plain.len() as u64;
            b.encode_to_vec()
        })
        .collect();
    eprintln!(
        "writer group: {} envelope bytes plain, {} forwarded zstd",
        messages.iter().map(Vec::len).sum::<usize>(),
        messages_zstd.iter().map(Vec::len).sum::<usize>()
    );
    let mut group_out = Encoded::default();
    let writer_of = |msgs: &[Vec<u8>], enc: &mut Encoder, out: &mut Encoded| {
        out.clear();
        for m in msgs {
            let b = Batch::decode(&m[..]).unwrap();
            enc.encode_batch(&b, out).unwrap();
        }
        blocks(&out.data[0])
    };
    let writer = |enc: &mut Encoder, out: &mut Encoded| writer_of(&messages, enc, out);
    if let Some(n) = profile {
        per_cpu_second(
            "writer_envelope_to_compressed_rowbinary",
            SPANS * GROUP,
            n,
            || writer(&mut enc, &mut group_out),
        );
        return;
    }
    // 40 groups (~0.4 s of CPU): 10 varied by ±3 % from run to run.
    let group_rounds = (rounds * 4 / GROUP).max(1);
    per_cpu_second(
        "writer_envelope_to_compressed_rowbinary",
        SPANS * GROUP,
        group_rounds,
        || writer(&mut enc, &mut group_out),
    );
    per_cpu_second(
        "writer_envelope_to_compressed_rowbinary_forwarded_zstd",
        SPANS * GROUP,
        group_rounds,
        || writer_of(&messages_zstd, &mut enc, &mut group_out),
    );
    per_cpu_second("writer_rows_only", SPANS * GROUP, rounds / GROUP, || {
        group_out.clear();
        for m in &messages {
            let b = Batch::decode(&m[..]).unwrap();
            enc.encode_batch(&b, &mut group_out).unwrap();
        }
    });
    let rows = group_out.data[0].clone();
    if let Some(path) = std::env::var_os("DUMP_ROWS") {
        std::fs::write(path, &rows).unwrap();
    }
    let blocks_len: usize = blocks(&rows).iter().map(Bytes::len).sum();
    eprintln!(
        "group rows: {} B, zstd -3 blocks {blocks_len} B",
        rows.len()
    );
    per_cpu_second("zstd-3_group_rows", SPANS * GROUP, rounds / GROUP, || {
        blocks(&rows)
    });
    per_cpu_second("lz4_group_rows", SPANS * GROUP, rounds / GROUP, || {
        lz4_blocks(&rows)
    });
    per_cpu_second("lz4_single_batch_rows", SPANS, rounds, || {
        lz4_blocks(&out.data[0])
    });
    per_cpu_second("prost_owned_decode_reference", SPANS, rounds / 4, || {
        ExportTraceServiceRequest::decode(batch.otlp_request.clone()).unwrap()
    });

    let mut g = c.benchmark_group("clickhouse_512_spans");
    g.throughput(Throughput::Elements(SPANS as u64));
    g.bench_function("rowbinary_encode", |b| {
        b.iter(|| {
            out.clear();
            enc.encode_batch(&batch, &mut out).unwrap();
            out.rows[0]
        })
    });
    g.bench_function("rowbinary_encode+lz4", |b| {
        b.iter(|| {
            out.clear();
            enc.encode_batch(&batch, &mut out).unwrap();
            lz4_blocks(&out.data[0])
        })
    });
    g.bench_function("prost_owned_decode_reference", |b| {
        b.iter(|| ExportTraceServiceRequest::decode(batch.otlp_request.clone()).unwrap())
    });
    g.finish();

    let mut g = c.benchmark_group("writer_group_of_20x512_spans");
    g.throughput(Throughput::Elements((SPANS * GROUP) as u64));
    g.bench_function("writer_envelope_to_lz4_rowbinary", |b| {
        b.iter(|| writer(&mut enc, &mut group_out))
    });
    g.bench_function("writer_envelope_to_lz4_rowbinary_forwarded_zstd", |b| {
        b.iter(|| writer_of(&messages_zstd, &mut enc, &mut group_out))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
