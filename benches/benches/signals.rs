//! The three signals side by side (issue 25, item 5): the same 512 realistic span models as
//! spans, as log records (GenAI events carrying the span's attributes; also with an 8 KiB
//! prompt each) and as metric data points (4 attributes and an exemplar each), through
//! - the gateway's CPU path: `prepare_*` (traces: the scan fast path, `ingest::prepare`;
//!   logs and metrics: `ingest::signals::prepare_decoded`, prost decode + validate + stamp);
//! - the writer's: RowBinary rows straight from the queued bytes (`clickhouse::rows`).
//!
//! Each line prints items (spans, records, points) and request MB per CPU-second of this thread,
//! with memcpy of the same bytes as the physical reference, measured in the same run.
//! Run: `cargo bench -p tracegate-benches --bench signals`.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use prost::Message;
use tracegate::clickhouse::rows::{EncodeOptions, Encoded, Encoder, LogEncoder, MetricEncoder};
use tracegate_benches::per_cpu_second;
use tracegate_otlp::codec::{Compression, Format};
use tracegate_proto::otlp::collector::logs::v1::ExportLogsServiceRequest;
use tracegate_proto::otlp::collector::metrics::v1::ExportMetricsServiceRequest;
use tracegate_proto::v1::{Batch, Signal};

const N: usize = 512;

fn batch(signal: Signal, body: &Bytes) -> Batch {
    let mut b = Batch {
        org_id: "org".into(),
        workspace_id: "ws".into(),
        project_id: "project".into(),
        region: "eu".into(),
        batch_id: vec![7; 16].into(),
        span_count: N as u32,
        otlp_request: body.clone(),
        ..Default::default()
    };
    b.set_signal(signal);
    b
}

/// Prints items and MB per CPU-second of `f` over `body`.
fn measure<T>(label: &str, body: &Bytes, rounds: usize, f: impl FnMut() -> T) -> f64 {
    let rate = per_cpu_second(label, N, rounds, f);
    eprintln!(
        "  {label}: {:.0} MB of request per CPU-second ({} B per item)",
        rate * body.len() as f64 / N as f64 / 1e6,
        body.len() / N
    );
    rate
}

fn bench(c: &mut Criterion) {
    tracegate_benches::tune_allocator_like_the_binary();
    let setup = tracegate_benches::IngestSetup::default();
    let traces = Bytes::from(tracegate_spangen::realistic_request(N, 7).encode_to_vec());
    let logs = Bytes::from(tracegate_spangen::realistic_logs(N, 0, 7).encode_to_vec());
    let logs_8k = Bytes::from(tracegate_spangen::realistic_logs(N, 8192, 7).encode_to_vec());
    let metrics = Bytes::from(tracegate_spangen::realistic_metrics(N, 7).encode_to_vec());
    let logs_json =
        Bytes::from(serde_json::to_vec(&tracegate_spangen::realistic_logs(N, 0, 7)).unwrap());
    let rounds = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);

    // The gateway.
    let (pb, none) = (Format::Protobuf, Compression::Identity);
    measure("prepare_traces_protobuf", &traces, rounds, || {
        setup.prepare(pb, none, &traces)
    });
    measure("prepare_logs_protobuf", &logs, rounds, || {
        setup.prepare_signal::<ExportLogsServiceRequest>(pb, none, &logs)
    });
    measure(
        "prepare_logs_8k_prompts_protobuf",
        &logs_8k,
        rounds / 4,
        || setup.prepare_signal::<ExportLogsServiceRequest>(pb, none, &logs_8k),
    );
    measure("prepare_logs_json", &logs_json, rounds / 8, || {
        setup.prepare_signal::<ExportLogsServiceRequest>(Format::Json, none, &logs_json)
    });
    measure("prepare_metrics_protobuf", &metrics, rounds, || {
        setup.prepare_signal::<ExportMetricsServiceRequest>(pb, none, &metrics)
    });

    // The writer.
    let opts = EncodeOptions::default();
    let (mut spans_enc, mut logs_enc, mut metrics_enc) = (
        Encoder::new(opts),
        LogEncoder::new(opts),
        MetricEncoder::new(),
    );
    let mut out = Encoded::default();
    let (tb, lb, l8b, mb) = (
        batch(Signal::Traces, &traces),
        batch(Signal::Logs, &logs),
        batch(Signal::Logs, &logs_8k),
        batch(Signal::Metrics, &metrics),
    );
    measure("rowbinary_traces", &traces, rounds, || {
        out.clear();
        spans_enc.encode_batch(&tb, &mut out).unwrap();
    });
    measure("rowbinary_logs", &logs, rounds, || {
        out.clear();
        logs_enc.encode_batch(&lb, &mut out).unwrap();
    });
    measure("rowbinary_logs_8k_prompts", &logs_8k, rounds / 4, || {
        out.clear();
        logs_enc.encode_batch(&l8b, &mut out).unwrap();
    });
    measure("rowbinary_metrics", &metrics, rounds, || {
        out.clear();
        metrics_enc.encode_batch(&mb, &mut out).unwrap();
    });
    measure("memcpy_reference_logs_8k", &logs_8k, rounds * 4, || {
        logs_8k.to_vec()
    });

    let mut g = c.benchmark_group("signals_512");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("prepare_logs_protobuf", |b| {
        b.iter(|| setup.prepare_signal::<ExportLogsServiceRequest>(pb, none, &logs))
    });
    g.bench_function("prepare_metrics_protobuf", |b| {
        b.iter(|| setup.prepare_signal::<ExportMetricsServiceRequest>(pb, none, &metrics))
    });
    g.bench_function("rowbinary_logs", |b| {
        b.iter(|| {
            out.clear();
            logs_enc.encode_batch(&lb, &mut out).unwrap();
        })
    });
    g.bench_function("rowbinary_metrics", |b| {
        b.iter(|| {
            out.clear();
            metrics_enc.encode_batch(&mb, &mut out).unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
