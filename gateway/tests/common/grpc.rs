//! OTLP/gRPC exports from the tests (tonic's generated client, a runtime per call).

use super::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use tonic_types::StatusExt;

/// One OTLP/gRPC export of `req`, with `Authorization: Bearer key`; returns the status (Ok →
/// `tonic::Code::Ok`) and whether RetryInfo was attached. Bounded by 20 s.
pub fn grpc_export(gw: &Gateway, key: &str, req: ExportTraceServiceRequest) -> (tonic::Code, bool) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let fut = async {
            let mut client = TraceServiceClient::connect(gw.grpc_url())
                .await
                .expect("connect");
            let mut req = tonic::Request::new(req);
            req.metadata_mut()
                .insert("authorization", format!("Bearer {key}").parse().unwrap());
            match client.export(req).await {
                Ok(_) => (tonic::Code::Ok, false),
                Err(s) => (s.code(), s.get_details_retry_info().is_some()),
            }
        };
        tokio::time::timeout(Duration::from_secs(20), fut)
            .await
            .expect("gRPC export timed out")
    })
}
