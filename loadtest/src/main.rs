//! `loadtest`: a minimal OTLP trace load generator for tracegate.
//!
//! ```text
//! loadtest --endpoint http://127.0.0.1:4318 --api-key tg_... [--protocol http|grpc]
//!          [--duration 30s] [--rate 0] [--concurrency 8] [--spans-per-request 100]
//!          [--compression none|gzip] [--threads 1] [--max-requests 0]
//! ```
//! Requests carry realistic spans (about 870 B encoded: 20 string attributes and one int, like
//! the field notes' measurements), pre-encoded once. `--rate` is requests per second over all
//! workers (0 = as fast as the answers come: a closed loop with `--concurrency` requests in
//! flight). A request counts as accepted only on HTTP 200 / gRPC OK; the gateway answers that
//! only once the spans are durable (with `[kafka]`: acknowledged by the broker), so the
//! `spans_per_sec` figure is throughput through to the broker ack. Prints one summary line:
//! `loadtest protocol=… seconds=… requests_ok=… requests_failed=… spans_ok=… spans_per_sec=…
//! p50_ms=… p99_ms=… max_ms=… failures=<code>:<n>,…`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use rand::RngCore;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Protocol {
    Http,
    Grpc,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Compression {
    None,
    Gzip,
}

#[derive(Parser, Debug)]
#[command(name = "loadtest", about = "OTLP trace load generator for tracegate")]
struct Args {
    /// Base URL: OTLP/HTTP `http://host:4318` (POSTs to /v1/traces) or OTLP/gRPC `http://host:4317`.
    #[arg(long)]
    endpoint: String,
    /// API key, sent as `Authorization: Bearer <key>`.
    #[arg(long)]
    api_key: String,
    #[arg(long, value_enum, default_value = "http")]
    protocol: Protocol,
    /// How long to send, e.g. `30s`, `2m`, `500ms`.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Requests per second over all workers; 0 = closed loop (as fast as answers come).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Requests in flight at most (one per worker).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    #[arg(long, default_value_t = 100)]
    spans_per_request: usize,
    #[arg(long, value_enum, default_value = "none")]
    compression: Compression,
    /// Tokio worker threads of the load generator.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Per-request timeout.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
    /// Stop after this many requests were sent (0 = no limit; --duration still applies).
    #[arg(long, default_value_t = 0)]
    max_requests: u64,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(v) = s.strip_suffix("ms") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('m') {
        (v, 60.0)
    } else {
        (s, 1.0)
    };
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    if !(n.is_finite() && n > 0.0) {
        return Err(format!("bad duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(n * mult))
}

fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

/// One request of `n` realistic spans (fresh random ids): 20 string attributes + 1 int.
fn request(n: usize, rng: &mut impl RngCore) -> ExportTraceServiceRequest {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut trace_id = vec![0u8; 16];
    let spans = (0..n)
        .map(|i| {
            if i % 10 == 0 {
                rng.fill_bytes(&mut trace_id);
            }
            let mut span_id = vec![0u8; 8];
            rng.fill_bytes(&mut span_id);
            let mut attributes: Vec<KeyValue> = (0..20)
                .map(|a| {
                    kv(
                        &format!("app.attribute.{a:02}"),
                        any_value::Value::StringValue(format!(
                            "value-{a:02}-{:08x}-lorem-ipsum-dolor",
                            rng.next_u32()
                        )),
                    )
                })
                .collect();
            attributes.push(kv(
                "gen_ai.usage.input_tokens",
                any_value::Value::IntValue(i64::from(rng.next_u32() % 4096)),
            ));
            Span {
                trace_id: trace_id.clone(),
                span_id,
                name: format!("chat gpt-4o {i}"),
                kind: 3,
                start_time_unix_nano: now,
                end_time_unix_nano: now + 1_500_000,
                attributes,
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv(
                    "service.name",
                    any_value::Value::StringValue("loadtest".into()),
                )],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "loadtest".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

#[derive(Default)]
struct Tally {
    ok: u64,
    failed: BTreeMap<String, u64>,
    latencies_us: Vec<u32>,
}

enum Client {
    Http {
        client: reqwest::Client,
        url: String,
        auth: String,
        gzip: bool,
        bodies: Vec<Bytes>,
    },
    Grpc {
        client: TraceServiceClient<tonic::transport::Channel>,
        auth: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
        requests: Vec<ExportTraceServiceRequest>,
    },
}

impl Client {
    /// Sends request `i`; Ok(()) on 200/OK, Err(label) otherwise.
    async fn send(&mut self, i: usize) -> Result<(), String> {
        match self {
            Client::Http {
                client,
                url,
                auth,
                gzip,
                bodies,
            } => {
                let mut rb = client
                    .post(url.as_str())
                    .header("content-type", "application/x-protobuf")
                    .header("authorization", auth.as_str())
                    .body(bodies[i % bodies.len()].clone());
                if *gzip {
                    rb = rb.header("content-encoding", "gzip");
                }
                match rb.send().await {
                    Ok(r) if r.status().as_u16() == 200 => {
                        let _ = r.bytes().await;
                        Ok(())
                    }
                    Ok(r) => Err(format!("http_{}", r.status().as_u16())),
                    Err(e) if e.is_timeout() => Err("timeout".into()),
                    Err(_) => Err("transport".into()),
                }
            }
            Client::Grpc {
                client,
                auth,
                requests,
            } => {
                let mut req = tonic::Request::new(requests[i % requests.len()].clone());
                req.metadata_mut().insert("authorization", auth.clone());
                match client.export(req).await {
                    Ok(_) => Ok(()),
                    Err(s) => Err(format!("grpc_{:?}", s.code()).to_lowercase()),
                }
            }
        }
    }
}

async fn build_client(a: &Args, pool: &[ExportTraceServiceRequest]) -> Result<Client> {
    let auth = format!("Bearer {}", a.api_key);
    Ok(match a.protocol {
        Protocol::Http => {
            let gzip = a.compression == Compression::Gzip;
            let bodies = pool
                .iter()
                .map(|r| {
                    let raw = r.encode_to_vec();
                    if gzip {
                        use std::io::Write;
                        let mut e =
                            flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                        e.write_all(&raw).expect("gzip in memory");
                        Bytes::from(e.finish().expect("gzip in memory"))
                    } else {
                        Bytes::from(raw)
                    }
                })
                .collect();
            Client::Http {
                client: reqwest::Client::builder()
                    .timeout(a.timeout)
                    .no_proxy()
                    .build()?,
                url: format!("{}/v1/traces", a.endpoint.trim_end_matches('/')),
                auth,
                gzip,
                bodies,
            }
        }
        Protocol::Grpc => {
            let channel = tonic::transport::Endpoint::from_shared(a.endpoint.clone())?
                .timeout(a.timeout)
                .connect()
                .await
                .with_context(|| format!("connecting to {}", a.endpoint))?;
            let mut client = TraceServiceClient::new(channel)
                .max_encoding_message_size(usize::MAX)
                .max_decoding_message_size(64 << 20);
            if a.compression == Compression::Gzip {
                client = client.send_compressed(tonic::codec::CompressionEncoding::Gzip);
            }
            Client::Grpc {
                client,
                auth: auth.parse()?,
                requests: pool.to_vec(),
            }
        }
    })
}

fn main() -> Result<()> {
    let a = Args::parse();
    if a.concurrency == 0 || a.spans_per_request == 0 || a.threads == 0 {
        bail!("--concurrency, --spans-per-request and --threads must be > 0");
    }
    let mut rng = rand::rng();
    let pool: Vec<ExportTraceServiceRequest> = (0..16)
        .map(|_| request(a.spans_per_request, &mut rng))
        .collect();
    let request_bytes = pool[0].encoded_len();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads)
        .enable_all()
        .build()?;
    rt.block_on(run(a, pool, request_bytes))
}

async fn run(a: Args, pool: Vec<ExportTraceServiceRequest>, request_bytes: usize) -> Result<()> {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let max_requests = if a.max_requests == 0 {
        u64::MAX
    } else {
        a.max_requests
    };
    let started = Instant::now();
    let deadline = started + a.duration;
    // Each worker sends one request at a time; with --rate they share the rate evenly.
    let interval = (a.rate > 0.0).then(|| Duration::from_secs_f64(a.concurrency as f64 / a.rate));
    let mut tasks = Vec::new();
    for w in 0..a.concurrency {
        let mut client = build_client(&a, &pool).await?;
        let (tally, stop, sent) = (tally.clone(), stop.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            let mut next = Instant::now()
                + interval.map_or(Duration::ZERO, |iv| {
                    iv.mul_f64(w as f64 / a.concurrency as f64)
                });
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Some(iv) = interval {
                    tokio::time::sleep_until(next.into()).await;
                    next += iv;
                }
                if sent.fetch_add(1, Ordering::Relaxed) >= max_requests {
                    break;
                }
                let t = Instant::now();
                let r = client.send(i).await;
                let us = t.elapsed().as_micros().min(u32::MAX as u128) as u32;
                let mut tl = tally.lock().unwrap();
                match r {
                    Ok(()) => {
                        tl.ok += 1;
                        tl.latencies_us.push(us);
                    }
                    Err(label) => *tl.failed.entry(label).or_default() += 1,
                }
                i += a.concurrency;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    stop.store(true, Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    let mut tl = tally.lock().unwrap();
    tl.latencies_us.sort_unstable();
    let pct = |p: f64| -> f64 {
        if tl.latencies_us.is_empty() {
            return 0.0;
        }
        let idx =
            ((tl.latencies_us.len() as f64 * p).ceil() as usize).clamp(1, tl.latencies_us.len());
        f64::from(tl.latencies_us[idx - 1]) / 1000.0
    };
    let failed: u64 = tl.failed.values().sum();
    let spans_ok = tl.ok * a.spans_per_request as u64;
    let failures = if tl.failed.is_empty() {
        "-".to_string()
    } else {
        tl.failed
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    println!(
        "loadtest protocol={:?} seconds={secs:.1} concurrency={} spans_per_request={} \
         request_bytes={request_bytes} requests_ok={} requests_failed={failed} spans_ok={spans_ok} \
         spans_per_sec={:.0} p50_ms={:.1} p99_ms={:.1} max_ms={:.1} failures={failures}",
        a.protocol,
        a.concurrency,
        a.spans_per_request,
        tl.ok,
        spans_ok as f64 / secs,
        pct(0.50),
        pct(0.99),
        pct(1.0),
    );
    Ok(())
}
