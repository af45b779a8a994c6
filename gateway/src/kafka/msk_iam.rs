//! Amazon MSK IAM authentication for the Kafka clients (SASL/OAUTHBEARER,
//! `oauthbearer_provider = "aws_msk_iam"`).
//!
//! The token is what AWS's own signer libraries (aws-msk-iam-sasl-signer-python/-go/-java)
//! send: the request `GET https://kafka.<region>.amazonaws.com/?Action=kafka-cluster:Connect`
//! presigned with SigV4 (service `kafka-cluster`, valid 900 s), as a URL, base64url without
//! padding. The signing is the AWS SDK's `aws-sigv4`, the credentials the SDK's default chain
//! (`tracegate_archive::aws`: IRSA, Pod Identity, ECS, IMDS, environment), so no AWS
//! cryptography is written here.
//!
//! librdkafka asks for tokens through a refresh callback that the Rust binding does not let
//! us register; tokens are instead pushed into each client (`rd_kafka_oauthbearer_set_token`):
//! one is minted at start and again every `REFRESH`, well inside its 900 s, and every client
//! built later (a rebuilt producer pool) gets the current one at once. librdkafka keeps using
//! the last token until a new one arrives, and re-authenticates long-lived connections with it.

use std::ffi::CString;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Context, Result};
use arc_swap::ArcSwapOption;
use aws_credential_types::provider::ProvideCredentials;
use aws_credential_types::Credentials;
use base64::Engine;
use rdkafka::client::{Client, ClientContext};
use reqwest::Url;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a token is valid (the value AWS's signers use).
const EXPIRES: Duration = Duration::from_secs(900);
/// A new token this often: a third of its life, so two refreshes can fail before it expires.
const REFRESH: Duration = Duration::from_secs(300);
/// After a failed refresh (credentials endpoint unreachable), try again this soon.
const RETRY: Duration = Duration::from_secs(10);
/// One attempt to get credentials.
const CREDENTIALS_TIMEOUT: Duration = Duration::from_secs(10);

/// A token and when it expires (ms since the epoch). Debug never shows the token: it is a
/// credential for as long as it lives.
pub struct Token {
    pub value: String,
    pub expires_ms: i64,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("value", &"<redacted>")
            .field("expires_ms", &self.expires_ms)
            .finish()
    }
}

/// Presigns `url` (query parameters added) for `service` with SigV4, valid for `expires`.
fn presign(
    url: &mut Url,
    service: &str,
    region: &str,
    creds: Credentials,
    at: SystemTime,
    expires: Duration,
    body: aws_sigv4::http_request::SignableBody<'_>,
) -> Result<()> {
    use aws_sigv4::http_request::{sign, SignableRequest, SignatureLocation, SigningSettings};
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(expires);
    let identity = creds.into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(at)
        .settings(settings)
        .build()
        .context("SigV4 signing parameters")?;
    let request = SignableRequest::new("GET", url.as_str(), std::iter::empty(), body)
        .context("the request to sign")?;
    let (instructions, _) = sign(request, &params.into())
        .context("SigV4 signing")?
        .into_parts();
    let mut query = url.query_pairs_mut();
    for (name, value) in instructions.params() {
        query.append_pair(name, value);
    }
    Ok(())
}

/// The MSK IAM token for `region`, signed at `at`.
pub fn token(region: &str, creds: Credentials, at: SystemTime) -> Result<Token> {
    let mut url = Url::parse(&format!("https://kafka.{region}.amazonaws.com/"))
        .with_context(|| format!("no MSK endpoint for region {region:?}"))?;
    url.query_pairs_mut()
        .append_pair("Action", "kafka-cluster:Connect");
    presign(
        &mut url,
        "kafka-cluster",
        region,
        creds,
        at,
        EXPIRES,
        aws_sigv4::http_request::SignableBody::Bytes(&[]),
    )?;
    // Not signed, as in AWS's signers: who is connecting, for the broker's logs.
    url.query_pairs_mut().append_pair(
        "User-Agent",
        concat!("tracegate/", env!("CARGO_PKG_VERSION")),
    );
    let signed_at = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| anyhow!("the clock is before 1970"))?;
    // X-Amz-Date has whole seconds: the token expires EXPIRES after that second.
    let expires_ms = (signed_at.as_secs() + EXPIRES.as_secs()) as i64 * 1000;
    Ok(Token {
        value: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(url.as_str()),
        expires_ms,
    })
}

/// The current token, shared by the refresher and whoever builds clients.
#[derive(Default)]
pub struct Tokens(ArcSwapOption<Token>);

impl Tokens {
    pub fn current(&self) -> Option<Arc<Token>> {
        self.0.load_full()
    }

    /// Gives `client` the current token, if there is one yet (the refresher gives it the
    /// first one otherwise).
    pub fn apply_to<C: ClientContext>(&self, client: &Client<C>) {
        if let Some(t) = self.current() {
            if let Err(e) = set_token(client, &t) {
                tracing::error!(error = %e, "kafka: could not set the MSK IAM token");
            }
        }
    }
}

/// Hands `token` to one librdkafka client.
pub fn set_token<C: ClientContext>(client: &Client<C>, token: &Token) -> Result<()> {
    let value = CString::new(token.value.as_str()).context("token contains NUL")?;
    // Shown in librdkafka's debug logs only; the token itself names the AWS identity.
    let principal = c"tracegate";
    let mut err = [0 as std::ffi::c_char; 512];
    // SAFETY: the client handle is alive for the call (borrowed); the strings are
    // NUL-terminated and outlive it (librdkafka copies them); no extensions (null, 0); the
    // error buffer's length is passed with it.
    let code = unsafe {
        rdkafka::bindings::rd_kafka_oauthbearer_set_token(
            client.native_ptr(),
            value.as_ptr(),
            token.expires_ms,
            principal.as_ptr(),
            std::ptr::null_mut(),
            0,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if code == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        return Ok(());
    }
    // SAFETY: librdkafka wrote a NUL-terminated message into the zeroed buffer.
    let why = unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) };
    Err(anyhow!("{:?}: {}", code, why.to_string_lossy()))
}

/// Mints a token now and every `REFRESH` (every `RETRY` after a failure) until `stop`, keeps it
/// in `tokens`, and hands each new one to `apply` (which sets it on the clients).
pub fn keep_fresh(
    region: String,
    tokens: Arc<Tokens>,
    apply: impl Fn(&Token) + Send + Sync + 'static,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let sdk = tracegate_archive::aws::sdk_config(CREDENTIALS_TIMEOUT).await;
        let mut failing = false;
        loop {
            let wait = match mint(&sdk, &region).await {
                Ok(t) => {
                    apply(&t);
                    tokens.0.store(Some(Arc::new(t)));
                    if failing {
                        tracing::info!("kafka: MSK IAM token minted again");
                    }
                    failing = false;
                    REFRESH
                }
                Err(e) => {
                    // The error names the credential source, never a secret.
                    tracing::error!(error = %format!("{e:#}"), "kafka: no MSK IAM token; retrying");
                    failing = true;
                    RETRY
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => return,
            }
        }
    })
}

async fn mint(sdk: &tracegate_archive::aws::SdkConfig, region: &str) -> Result<Token> {
    let provider = sdk
        .credentials_provider()
        .context("no AWS credentials provider is configured")?;
    let creds = provider
        .provide_credentials()
        .await
        .context("loading AWS credentials")?;
    token(region, creds, SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        let t = chrono::NaiveDateTime::parse_from_str(s, "%Y%m%dT%H%M%SZ").unwrap();
        SystemTime::UNIX_EPOCH + Duration::from_secs(t.and_utc().timestamp() as u64)
    }

    /// AWS's published example of a presigned URL (Amazon S3 API reference, "Authenticating
    /// Requests: Using Query Parameters (AWS Signature Version 4)"): the same presigning code
    /// the MSK token goes through gives AWS's signature.
    #[test]
    fn presign_matches_the_aws_published_example() {
        let creds = Credentials::new(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            None,
            None,
            "test",
        );
        let mut url = Url::parse("https://examplebucket.s3.amazonaws.com/test.txt").unwrap();
        presign(
            &mut url,
            "s3",
            "us-east-1",
            creds,
            at("20130524T000000Z"),
            Duration::from_secs(86400),
            aws_sigv4::http_request::SignableBody::UnsignedPayload,
        )
        .unwrap();
        let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(
            q["X-Amz-Signature"],
            "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
        );
        assert_eq!(
            q["X-Amz-Credential"],
            "AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request"
        );
        assert_eq!(q["X-Amz-Expires"], "86400");
    }

    /// The token decodes to the presigned URL AWS's signers produce: the same parameters, and
    /// the signature botocore's SigV4QueryAuth (what aws-msk-iam-sasl-signer-python uses)
    /// computes for these credentials and this second (the gateway's kafka_security test checks
    /// live tokens against botocore too).
    #[test]
    fn token_is_the_signed_connect_url() {
        let creds = Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            Some("session-token/with+chars=".into()),
            None,
            "test",
        );
        let t = token("eu-west-1", creds, at("20261207T101500Z")).unwrap();
        assert_eq!(t.expires_ms, (1_796_638_500 + 900) * 1000);
        assert!(!format!("{t:?}").contains(&t.value));
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&t.value)
            .unwrap();
        let url = Url::parse(std::str::from_utf8(&url).unwrap()).unwrap();
        assert_eq!(url.host_str(), Some("kafka.eu-west-1.amazonaws.com"));
        assert_eq!(url.path(), "/");
        let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(q["Action"], "kafka-cluster:Connect");
        assert_eq!(q["X-Amz-Algorithm"], "AWS4-HMAC-SHA256");
        assert_eq!(
            q["X-Amz-Credential"],
            "AKIDEXAMPLE/20261207/eu-west-1/kafka-cluster/aws4_request"
        );
        assert_eq!(q["X-Amz-Date"], "20261207T101500Z");
        assert_eq!(q["X-Amz-Expires"], "900");
        assert_eq!(q["X-Amz-SignedHeaders"], "host");
        assert_eq!(q["X-Amz-Security-Token"], "session-token/with+chars=");
        assert!(q["User-Agent"].starts_with("tracegate/"));
        assert_eq!(q["X-Amz-Signature"], BOTOCORE_SIGNATURE);
    }

    /// botocore 1.44 (scripts/moto.sh python), for the credentials and time above:
    /// SigV4QueryAuth(creds, "kafka-cluster", "eu-west-1", expires=900) on
    /// GET https://kafka.eu-west-1.amazonaws.com/?Action=kafka-cluster%3AConnect.
    const BOTOCORE_SIGNATURE: &str =
        "637a8fde80cc4f583d715c1dea5733feee1a3d23353fd7c67682c2b7a0622a67";
}
