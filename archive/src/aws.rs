//! The AWS SDK's shared configuration as tracegate builds it for every AWS API it calls (KMS
//! for the archive's keys, the MSK IAM token of the Kafka client): region, endpoint and
//! credentials from the SDK's usual sources (`AWS_REGION`, `AWS_ENDPOINT_URL…`,
//! `AWS_ACCESS_KEY_ID`…, profiles, web identity (EKS IRSA), the container credentials endpoint
//! (ECS, EKS Pod Identity), IMDS), over rustls with the ring provider (no aws-lc-sys build),
//! with bounded timeouts and the SDK's standard retries.

use std::time::Duration;

pub use aws_config::SdkConfig;

/// Loads the configuration. `timeout` bounds one attempt of a call; the SDK retries transient
/// errors (3 attempts in all).
pub async fn sdk_config(timeout: Duration) -> SdkConfig {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http)
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(timeout)
                .operation_attempt_timeout(timeout)
                .operation_timeout(timeout * 3)
                .build(),
        )
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(3))
        .load()
        .await
}
