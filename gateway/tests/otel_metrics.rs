//! OTLP metrics (issue 25): the real OpenTelemetry Rust SDK's metric exporter
//! (`opentelemetry-otlp` 0.33) over OTLP/HTTP protobuf, OTLP/HTTP JSON and OTLP/gRPC to a real
//! `tracegate serve`: a counter, a histogram and a gauge arrive once each, under the key's
//! project, in the encrypted archive (`archive cat --signal metrics`). Raw requests check
//! `partial_success.rejected_data_points` (bad points rejected one by one, an exponential
//! histogram and a summary kept) and the `metrics:write` scope.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::Gateway;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::KeyValue as OtelKeyValue;
use opentelemetry_otlp::MetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::Resource;
use prost::Message;
use tracegate_proto::otlp::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use tracegate_proto::otlp::metrics::v1::exponential_histogram_data_point::Buckets;
use tracegate_proto::otlp::metrics::v1::metric::Data;
use tracegate_proto::otlp::metrics::v1::summary_data_point::ValueAtQuantile;
use tracegate_proto::otlp::metrics::v1::{
    ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint,
    Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Summary, SummaryDataPoint,
};

type Transport = common::OtlpTransport;

fn exporter(gw: &Gateway, key: &str, t: Transport, rt: &tokio::runtime::Runtime) -> MetricExporter {
    otlp_exporter!(MetricExporter::builder(), gw, key, t, "/v1/metrics", rt)
}

fn record(exporter: MetricExporter) {
    let reader = PeriodicReader::builder(exporter)
        .with_interval(Duration::from_secs(3600))
        .build();
    let provider = SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(
            Resource::builder()
                .with_service_name("metrics-test")
                .build(),
        )
        .build();
    let meter = provider.meter("tracegate-test");
    let tokens = meter.u64_counter("gen_ai.client.token.usage.total").build();
    tokens.add(
        120,
        &[OtelKeyValue::new("gen_ai.request.model", "gpt-test")],
    );
    tokens.add(30, &[OtelKeyValue::new("gen_ai.request.model", "gpt-test")]);
    let latency = meter
        .f64_histogram("gen_ai.client.operation.duration")
        .build();
    latency.record(0.8, &[]);
    latency.record(2.5, &[]);
    let queue = meter.i64_gauge("queue.depth").build();
    queue.record(7, &[]);
    // One export, at shutdown: a flush before it would export the cumulative values twice.
    provider.shutdown().expect("shutdown");
}

fn metrics_in(gw: &Gateway, project: &str) -> Vec<serde_json::Value> {
    common::archive_cat(&gw.data_dir, Some(project), &["--signal", "metrics"])
}

fn run_case(t: Transport) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let gw = Gateway::start(&[]);
    let project = format!("metrics-{t:?}").to_lowercase();
    let key = gw.create_key(&project);
    record(exporter(&gw, &key, t, &rt));
    let lines = metrics_in(&gw, &project);
    let by_name: HashMap<&str, &serde_json::Value> = lines
        .iter()
        .map(|l| (l["metric"]["name"].as_str().unwrap_or(""), &l["metric"]))
        .collect();
    assert_eq!(lines.len(), 3, "{t:?}: {lines:#?}");
    let sum = &by_name["gen_ai.client.token.usage.total"]["sum"];
    assert_eq!(sum["dataPoints"][0]["asInt"], "150", "{t:?}: {sum}");
    let hist = &by_name["gen_ai.client.operation.duration"]["histogram"];
    assert_eq!(hist["dataPoints"][0]["count"], "2", "{t:?}: {hist}");
    let gauge = &by_name["queue.depth"]["gauge"];
    assert_eq!(gauge["dataPoints"][0]["asInt"], "7", "{t:?}: {gauge}");
    assert_eq!(lines[0]["project_id"], project.as_str());
    let m = gw.metrics();
    assert_eq!(
        common::metric_value(&m, "tracegate_data_points_accepted_total"),
        3.0
    );
}

#[test]
fn sdk_metrics_over_http_protobuf() {
    run_case(Transport::HttpProtobuf);
}

#[test]
fn sdk_metrics_over_http_json() {
    run_case(Transport::HttpJson);
}

#[test]
fn sdk_metrics_over_grpc() {
    run_case(Transport::Grpc);
}

fn request(metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            scope_metrics: vec![ScopeMetrics {
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn post_metrics(
    gw: &Gateway,
    key: &str,
    req: &ExportMetricsServiceRequest,
) -> common::HttpResponse {
    common::post_otlp(gw, key, "/v1/metrics", req.encode_to_vec())
}

#[test]
fn bad_points_are_rejected_one_by_one_and_the_scope_is_required() {
    let gw = Gateway::start(&[]);
    let key = gw.create_key("raw-metrics");
    let hist = |counts: Vec<u64>, count: u64| HistogramDataPoint {
        bucket_counts: counts,
        explicit_bounds: vec![1.0, 10.0],
        count,
        ..Default::default()
    };
    let req = request(vec![
        Metric {
            name: "h".into(),
            data: Some(Data::Histogram(Histogram {
                data_points: vec![hist(vec![1, 2, 3], 6), hist(vec![1, 2], 3)],
                aggregation_temporality: 2,
            })),
            ..Default::default()
        },
        Metric {
            name: "e".into(),
            data: Some(Data::ExponentialHistogram(ExponentialHistogram {
                data_points: vec![ExponentialHistogramDataPoint {
                    scale: 2,
                    count: 3,
                    zero_count: 1,
                    positive: Some(Buckets {
                        offset: 0,
                        bucket_counts: vec![2],
                    }),
                    ..Default::default()
                }],
                aggregation_temporality: 2,
            })),
            ..Default::default()
        },
        Metric {
            name: "s".into(),
            data: Some(Data::Summary(Summary {
                data_points: vec![
                    SummaryDataPoint {
                        count: 1,
                        quantile_values: vec![ValueAtQuantile {
                            quantile: 0.5,
                            value: 3.0,
                        }],
                        ..Default::default()
                    },
                    SummaryDataPoint {
                        quantile_values: vec![ValueAtQuantile {
                            quantile: 2.0,
                            value: 3.0,
                        }],
                        ..Default::default()
                    },
                ],
            })),
            ..Default::default()
        },
    ]);
    let (status, _, body) = post_metrics(&gw, &key, &req);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let resp = ExportMetricsServiceResponse::decode(&body[..]).unwrap();
    let ps = resp.partial_success.expect("partial_success");
    assert_eq!(ps.rejected_data_points, 2, "{ps:?}");
    assert!(
        ps.error_message.contains("2 data point(s) rejected"),
        "{ps:?}"
    );
    let kept: Vec<String> = metrics_in(&gw, "raw-metrics")
        .iter()
        .map(|l| l["metric"]["name"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(kept, ["h", "e", "s"]);
    let m = gw.metrics();
    assert!(
        m.contains(r#"tracegate_data_points_rejected_total{reason="invalid_data_point"} 2"#),
        "{m}"
    );

    // A point whose attribute is nested deeper than the decoder follows (60 arrays: prost's
    // recursion limit would fail the whole request) costs that point alone.
    use tracegate_proto::otlp::common::v1::{any_value, AnyValue, ArrayValue, KeyValue};
    let mut deep = AnyValue {
        value: Some(any_value::Value::IntValue(1)),
    };
    for _ in 0..60 {
        deep = AnyValue {
            value: Some(any_value::Value::ArrayValue(ArrayValue {
                values: vec![deep],
            })),
        };
    }
    let point = |attributes: Vec<KeyValue>| NumberDataPoint {
        attributes,
        value: Some(tracegate_proto::otlp::metrics::v1::number_data_point::Value::AsInt(1)),
        ..Default::default()
    };
    let deep_attr = KeyValue {
        key: "deep".into(),
        value: Some(deep),
        ..Default::default()
    };
    let req_deep = request(vec![Metric {
        name: "deep-gauge".into(),
        data: Some(Data::Gauge(Gauge {
            data_points: vec![point(vec![]), point(vec![deep_attr]), point(vec![])],
        })),
        ..Default::default()
    }]);
    let (status, _, body) = post_metrics(&gw, &key, &req_deep);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let ps = ExportMetricsServiceResponse::decode(&body[..])
        .unwrap()
        .partial_success
        .expect("partial_success");
    assert_eq!(ps.rejected_data_points, 1, "{ps:?}");
    assert!(ps.error_message.contains("nested deeper"), "{ps:?}");

    let logs_only =
        common::create_key_with(&gw.data_dir, "raw-metrics", &["--scopes", "logs:write"]);
    let (status, _, _) = post_metrics(&gw, &logs_only, &req);
    assert_eq!(status, 403);
}
