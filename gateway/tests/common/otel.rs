//! OpenTelemetry SDK exporters pointed at a test gateway (the otel_* tests).

/// The OTLP transports the SDK's exporters speak.
#[derive(Clone, Copy, Debug)]
pub enum OtlpTransport {
    HttpProtobuf,
    HttpJson,
    Grpc,
}

/// An exporter from `$builder` (`LogExporter::builder()`, `MetricExporter::builder()`, …) for
/// `$transport`, authenticated with `$key`: HTTP posts to the gateway's `$path` (`/v1/logs`),
/// gRPC goes to its gRPC port (the channel is made on `$rt`). A macro: the builders share their
/// method names but no trait.
#[macro_export]
macro_rules! otlp_exporter {
    ($builder:expr, $gw:expr, $key:expr, $transport:expr, $path:expr, $rt:expr) => {{
        use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig, WithTonicConfig};
        let bearer = format!("Bearer {}", $key);
        match $transport {
            common::OtlpTransport::Grpc => {
                let mut md = tonic::metadata::MetadataMap::new();
                md.insert("authorization", bearer.parse().expect("metadata"));
                let _guard = $rt.enter();
                $builder
                    .with_tonic()
                    .with_endpoint($gw.grpc_url())
                    .with_timeout(std::time::Duration::from_secs(10))
                    .with_metadata(md)
                    .build()
                    .expect("OTLP/gRPC exporter")
            }
            t => $builder
                .with_http()
                .with_endpoint(format!("{}{}", $gw.http_url(), $path))
                .with_protocol(match t {
                    common::OtlpTransport::HttpJson => Protocol::HttpJson,
                    _ => Protocol::HttpBinary,
                })
                .with_timeout(std::time::Duration::from_secs(10))
                .with_headers(std::collections::HashMap::from([(
                    "authorization".to_string(),
                    bearer,
                )]))
                .build()
                .expect("OTLP/HTTP exporter"),
        }
    }};
}
