//! An application left on its SDK's defaults (issue 25): the OpenTelemetry Rust SDK with all
//! three signals on, its exporters built with no code configuration at all, so they read only
//! the standard variables (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_PROTOCOL`,
//! `OTEL_EXPORTER_OTLP_HEADERS`), for each protocol the SDK speaks (`http/protobuf`,
//! `http/json`, `grpc`). Every export succeeds (no exporter error) and every span, log record
//! and data point is archived once under the key's project, and lands once in ClickHouse's
//! `otel_traces`, `otel_logs` and `otel_metrics_sum`.
//!
//! One test in this binary: it sets the process's environment, which the exporters read.

mod common;

use std::time::Duration;

use common::Gateway;
use opentelemetry::logs::{AnyValue as LogValue, LogRecord as _, Logger as _, LoggerProvider as _};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::{Tracer as _, TracerProvider as _};
use opentelemetry_otlp::{LogExporter, MetricExporter, SpanExporter};
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;

fn send_all_three(tag: &str) {
    let spans = SdkTracerProvider::builder()
        .with_batch_exporter(SpanExporter::builder().build().expect("span exporter"))
        .build();
    let logs = SdkLoggerProvider::builder()
        .with_batch_exporter(LogExporter::builder().build().expect("log exporter"))
        .build();
    let reader =
        PeriodicReader::builder(MetricExporter::builder().build().expect("metric exporter"))
            .with_interval(Duration::from_secs(3600))
            .build();
    let meters = SdkMeterProvider::builder().with_reader(reader).build();

    let tracer = spans.tracer("env-test");
    for i in 0..3 {
        tracer.in_span(format!("{tag}-span-{i}"), |_| {});
    }
    let logger = logs.logger("env-test");
    for i in 0..3 {
        let mut r = logger.create_log_record();
        r.set_body(LogValue::from(format!("{tag}-log-{i}")));
        logger.emit(r);
    }
    meters
        .meter("env-test")
        .u64_counter(format!("{tag}.requests"))
        .build()
        .add(3, &[]);
    // The exporters' results: an error here is what an application would log.
    spans.force_flush().expect("span export");
    spans.shutdown().expect("span exporter shutdown");
    logs.force_flush().expect("log export");
    logs.shutdown().expect("log exporter shutdown");
    meters.shutdown().expect("metric export");
}

#[test]
fn all_three_signals_from_the_standard_variables_over_each_protocol() {
    // With ClickHouse: all three land in the Collector's tables as well as the archive.
    let front = common::ChFront::start(&[]);
    let env = common::clickhouse_env(&front, "sdk");
    common::migrate(&env);
    let gw = Gateway::start(&common::env_refs(&env));
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (protocol, endpoint) in [
        ("http/protobuf", gw.http_url()),
        ("http/json", gw.http_url()),
        ("grpc", gw.grpc_url()),
    ] {
        let tag = protocol.replace('/', "-");
        let project = format!("env-{tag}");
        let key = gw.create_key(&project);
        std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint);
        std::env::set_var("OTEL_EXPORTER_OTLP_PROTOCOL", protocol);
        std::env::set_var(
            "OTEL_EXPORTER_OTLP_HEADERS",
            format!("authorization=Bearer {key}"),
        );
        {
            // The gRPC exporter's channel runs on the ambient runtime.
            let _guard = rt.enter();
            send_all_three(&tag);
        }
        let metrics = common::assert_all_three_signals(&gw.data_dir, &project, &tag, protocol);
        assert_eq!(metrics[0]["metric"]["sum"]["dataPoints"][0]["asInt"], "3");
        common::assert_all_three_in_clickhouse(&front, "sdk", &project, &tag);
    }
}
