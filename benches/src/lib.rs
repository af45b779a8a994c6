//! Payload generators shared by the benchmarks (and the load generator): realistic OTLP spans
//! shaped like the field notes' reference request (20 string attributes + 1 int, ~870 B/span);
//! and the per-CPU-second measurement every bench prints before criterion runs.

use tracegate_proto::otlp::collector::trace::v1::ExportTraceServiceRequest;
use tracegate_proto::otlp::common::v1::{
    any_value::Value, AnyValue, InstrumentationScope, KeyValue,
};
use tracegate_proto::otlp::resource::v1::Resource;
use tracegate_proto::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

fn kv(k: &str, v: Value) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

/// splitmix64's finaliser: attribute values look random, as in loadtest's realistic shape and
/// in real traffic (request ids, hashes). Sequential values would compress ~32x instead of
/// ~6x and flatter every compression and LZ4 figure.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One request of `n` realistic spans; `seed` makes ids unique across requests.
pub fn realistic_request(n: usize, seed: u64) -> ExportTraceServiceRequest {
    let spans = (0..n as u64)
        .map(|i| {
            let id = seed.wrapping_mul(1_000_003).wrapping_add(i + 1);
            let mut trace_id = [0u8; 16];
            trace_id[..8].copy_from_slice(&seed.wrapping_add(1).to_be_bytes());
            trace_id[8..].copy_from_slice(&(i / 8 + 1).to_be_bytes());
            let mut attributes: Vec<KeyValue> = (0..20)
                .map(|a| {
                    kv(
                        &format!("app.attribute.number_{a}"),
                        Value::StringValue(format!("value-{a}-{:016x}", mix(id << 5 | a))),
                    )
                })
                .collect();
            attributes.push(kv("http.response.status_code", Value::IntValue(200)));
            Span {
                trace_id: trace_id.to_vec(),
                span_id: id.to_be_bytes().to_vec(),
                parent_span_id: if i % 8 == 0 {
                    vec![]
                } else {
                    (id - 1).to_be_bytes().to_vec()
                },
                name: format!("GET /api/v1/items/{}", i % 100),
                kind: 2,
                start_time_unix_nano: 1_700_000_000_000_000_000 + i * 1000,
                end_time_unix_nano: 1_700_000_000_000_500_000 + i * 1000,
                attributes,
                status: Some(Status {
                    code: 1,
                    message: String::new(),
                }),
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", Value::StringValue("checkout".into())),
                    kv("service.version", Value::StringValue("1.4.2".into())),
                    kv(
                        "deployment.environment",
                        Value::StringValue("production".into()),
                    ),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "tracegate-bench".into(),
                    version: "1".into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// CPU time of the calling thread, in seconds (`CLOCK_THREAD_CPUTIME_ID`): unlike wall time it
/// does not count the time other processes on a shared machine take from this thread.
pub fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Runs `f` `rounds` times (after one warm-up call), prints and returns `spans` per CPU-second
/// of this thread, and the CPU time per call.
pub fn per_cpu_second<T>(
    label: &str,
    spans: usize,
    rounds: usize,
    mut f: impl FnMut() -> T,
) -> f64 {
    std::hint::black_box(f());
    let t0 = thread_cpu_seconds();
    for _ in 0..rounds {
        std::hint::black_box(f());
    }
    let secs = (thread_cpu_seconds() - t0).max(1e-9);
    let rate = (rounds * spans) as f64 / secs;
    eprintln!(
        "{label}: {rate:.0} spans per CPU-second ({:.1} µs CPU per call, {rounds} calls)",
        secs / rounds as f64 * 1e6
    );
    rate
}

/// Tunes glibc malloc as the `tracegate` binary does at start-up (`tracegate::alloc`), unless
/// `TRACEGATE_BENCH_DEFAULT_MALLOC=1` asks for glibc's defaults (to measure the difference).
pub fn tune_allocator_like_the_binary() {
    if std::env::var_os("TRACEGATE_BENCH_DEFAULT_MALLOC").is_some_and(|v| v == "1") {
        eprintln!("allocator: glibc defaults (TRACEGATE_BENCH_DEFAULT_MALLOC=1)");
    } else {
        tracegate::alloc::tune_malloc();
        eprintln!("allocator: tuned as the tracegate binary (tracegate::alloc)");
    }
}
