//! Cost follows bytes (issue 21): the gateway's and the archive's steps per uncompressed OTLP
//! byte, for realistic spans (`tracegate_spangen`, ~1.2 KB encoded) and for the same spans
//! carrying one 8 KiB or 64 KiB prompt each (`+8KiB`, `+64KiB`), in 512- and 64-span requests, next to the physical references measured in the
//! same run (memcpy, zstd compression of the same bytes).
//!
//! Steps, each over one request:
//! - `scan`: `tracegate_otlp::scan::scan` (validate + tenant check, no copy);
//! - `prepare`: the whole `ingest::prepare` step of a plain body (admission, scan, envelope
//!   bytes);
//! - `kafka_messages`: `kafka::split::to_messages` at the default `kafka.message_max_bytes`
//!   (1 000 000): one encoded envelope, or the byte-range split above the limit;
//! - `archive_payload_zstd1`: the archive's zstd frame of the batch (level 1, the default
//!   `writer.compression_level`).
//!
//! Each line prints MB of OTLP per CPU-second of this thread (`per_cpu_second`, which holds on a
//! shared machine), and the ratio to memcpy of the same bytes. Run:
//! `cargo bench -p tracegate-benches --bench bytes`.

use bytes::Bytes;
use prost::Message;
use tracegate::kafka::{config::PartitionKey, split};
use tracegate_archive::crypto;
use tracegate_benches::per_cpu_second;
use tracegate_otlp::codec::{Compression, Format};
use tracegate_otlp::scan;
use tracegate_proto::v1::Batch;

struct Shape {
    name: &'static str,
    spans: usize,
    attr_bytes: usize,
}

const SHAPES: &[Shape] = &[
    Shape {
        name: "1.2KB x512",
        spans: 512,
        attr_bytes: 0,
    },
    Shape {
        name: "+8KiB x512",
        spans: 512,
        attr_bytes: 8192,
    },
    Shape {
        name: "+64KiB x64",
        spans: 64,
        attr_bytes: 65536,
    },
    Shape {
        name: "1.2KB x64",
        spans: 64,
        attr_bytes: 0,
    },
    Shape {
        name: "+8KiB x64",
        spans: 64,
        attr_bytes: 8192,
    },
];

fn main() {
    // criterion's `cargo bench -- <filter>` arguments are accepted and ignored: every line runs.
    tracegate_benches::tune_allocator_like_the_binary();
    let setup = tracegate_benches::IngestSetup::default();
    let (span_limits, claims) = (&setup.span_limits, setup.claims());
    let mut table = Vec::new();
    for shape in SHAPES {
        let req = tracegate_spangen::realistic_with_prompts(shape.spans, shape.attr_bytes, 7);
        let proto = Bytes::from(req.encode_to_vec());
        let bytes = proto.len();
        // Rounds sized so each line moves ~200 MB.
        let rounds = (200_000_000 / bytes).clamp(20, 5000);
        let mb = |spans_per_s: f64| spans_per_s / shape.spans as f64 * bytes as f64 / 1e6;
        let line = |step: &str, rate: f64| (shape.name, step.to_string(), mb(rate));
        eprintln!(
            "== {}: {} spans, {} B per request, {} B per span",
            shape.name,
            shape.spans,
            bytes,
            bytes / shape.spans
        );
        assert_eq!(scan::scan(&proto, span_limits, &claims), Ok(shape.spans));
        let batch = Batch {
            org_id: "org".into(),
            project_id: "project".into(),
            region: "eu".into(),
            span_count: shape.spans as u32,
            batch_id: Bytes::from_static(&[7; 16]),
            otlp_request: proto.clone(),
            ..Default::default()
        };
        let n = shape.spans;
        let memcpy = per_cpu_second("memcpy", n, rounds * 4, || proto.to_vec());
        table.push(line("memcpy_reference", memcpy));
        let r = per_cpu_second("scan", n, rounds, || {
            scan::scan(&proto, span_limits, &claims).unwrap()
        });
        table.push(line("scan", r));
        let r = per_cpu_second("prepare", n, rounds, || {
            setup.prepare(Format::Protobuf, Compression::Identity, &proto)
        });
        table.push(line("prepare", r));
        let parts = split::to_messages(batch.clone(), PartitionKey::Project, 1_000_000)
            .unwrap()
            .len();
        let r = per_cpu_second("kafka_messages", n, rounds, || {
            split::to_messages(batch.clone(), PartitionKey::Project, 1_000_000).unwrap()
        });
        table.push(line(&format!("kafka_messages ({parts} msg)"), r));
        let r = per_cpu_second("archive_payload_zstd1", n, rounds / 4 + 1, || {
            crypto::encode_payload(&[(0, &batch)], crypto::CODEC_ZSTD, 1).unwrap()
        });
        table.push(line("archive_payload_zstd1", r));
        for level in [1, 3] {
            let r = per_cpu_second("zstd_reference", n, rounds / 4 + 1, || {
                zstd::bulk::compress(&proto, level).unwrap()
            });
            table.push(line(&format!("zstd{level}_bulk_reference"), r));
        }
    }
    println!(
        "\n{:<12} {:<28} {:>10} {:>9}",
        "shape", "step", "MB/cpu-s", "÷memcpy"
    );
    let mut memcpy = 0.0;
    for (shape, step, mb) in &table {
        if step == "memcpy_reference" {
            memcpy = *mb;
        }
        println!("{shape:<12} {step:<28} {mb:>10.0} {:>9.3}", mb / memcpy);
    }
}
