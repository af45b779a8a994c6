//! ClickHouse row encoding: RowBinary rows of `otel_traces` straight from the queued protobuf
//! bytes of one 512-span realistic request (~870 B/span, 20 string attributes + 1 int), on one
//! core; next to prost's owned decode of the same bytes (what an encoder over owned structs
//! would pay first) and the LZ4 framing the insert adds.
//! Run: `cargo bench -p tracegate-benches --bench clickhouse`.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use prost::Message;
use tracegate::clickhouse::rows::{EncodeOptions, Encoded, Encoder};
use tracegate_proto::otlp::collector::trace::v1::ExportTraceServiceRequest;
use tracegate_proto::v1::Batch;

const SPANS: usize = 512;

fn bench(c: &mut Criterion) {
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
        out.spans.len(),
        out.spans.len() / SPANS
    );

    // Spans per CPU-second of this thread: what "per core" means, even when other processes
    // share the machine (criterion below reports wall-clock throughput).
    let cpu = || {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes the timespec we pass.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
    };
    for (label, lz4) in [("rowbinary_encode", false), ("rowbinary_encode+lz4", true)] {
        let rounds = 400;
        let t0 = cpu();
        for _ in 0..rounds {
            out.clear();
            enc.encode_batch(&batch, &mut out).unwrap();
            if lz4 {
                std::hint::black_box(
                    clickhouse::insert_formatted::CompressedData::new(
                        &out.spans,
                        clickhouse::Compression::Lz4,
                    )
                    .unwrap(),
                );
            }
        }
        let secs = cpu() - t0;
        eprintln!(
            "{label}: {:.0} spans per CPU-second (thread CPU time, {rounds} x {SPANS} spans)",
            (rounds * SPANS) as f64 / secs
        );
    }

    let mut g = c.benchmark_group("clickhouse_512_spans");
    g.throughput(Throughput::Elements(SPANS as u64));
    g.bench_function("rowbinary_encode", |b| {
        b.iter(|| {
            out.clear();
            enc.encode_batch(&batch, &mut out).unwrap();
            out.span_rows
        })
    });
    g.bench_function("rowbinary_encode+lz4", |b| {
        b.iter(|| {
            out.clear();
            enc.encode_batch(&batch, &mut out).unwrap();
            clickhouse::insert_formatted::CompressedData::new(
                &out.spans,
                clickhouse::Compression::Lz4,
            )
            .unwrap()
        })
    });
    g.bench_function("prost_owned_decode_reference", |b| {
        b.iter(|| ExportTraceServiceRequest::decode(batch.otlp_request.clone()).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
