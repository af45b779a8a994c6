//! The HTTP client every ClickHouse request goes through, plain or TLS (`[clickhouse.tls]`).
//! ClickHouse Cloud and managed ClickStack accept only HTTPS (port 8443).
//!
//! Built here rather than with the `clickhouse` crate's TLS features: those bring aws-lc or
//! system roots and a rustls config we cannot shape. Ours uses ring and TLS 1.2+, as the
//! listeners (`server/tls.rs`), and adds what the crate has no setting for: a CA file
//! instead of the public roots, a client certificate (mTLS), and a server-name override for
//! endpoints reached by address (PrivateLink).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use serde::{Deserialize, Serialize};

use crate::config::error::ConfigError;
use crate::tls_client;

/// `[clickhouse.tls]`: only read for an `https://` URL.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseTls {
    /// PEM file of the CA certificates to trust. Unset: the public web roots (Mozilla's list,
    /// compiled in), which ClickHouse Cloud's certificates chain to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) for servers that require mutual TLS…
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// …and its private key (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The name the server's certificate must carry (and the SNI sent), when the URL names the
    /// server otherwise (an address, a PrivateLink endpoint). Unset: the URL's host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

impl ClickHouseTls {
    pub fn validate(&self, https: bool) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| ConfigError::Invalid {
            key,
            message: message.into(),
        };
        let any = self.ca_file.is_some()
            || self.cert_file.is_some()
            || self.key_file.is_some()
            || self.server_name.is_some();
        if any && !https {
            return Err(invalid(
                "clickhouse.tls",
                "is set but clickhouse.url is not https://: TLS settings would be ignored",
            ));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(invalid(
                "clickhouse.tls.cert_file",
                "and clickhouse.tls.key_file go together (mutual TLS)",
            ));
        }
        if let Some(name) = &self.server_name {
            if ServerName::try_from(name.as_str()).is_err() {
                return Err(invalid(
                    "clickhouse.tls.server_name",
                    "is not a DNS name or IP address",
                ));
            }
        }
        Ok(())
    }

    /// The rustls client config: TLS 1.2+ with ring, the roots, the client certificate.
    /// ALPN (http/1.1) is set by the connector (`enable_http1`).
    fn client_config(&self) -> Result<ClientConfig> {
        let roots = tls_client::roots(self.ca_file.as_deref(), "clickhouse.tls.ca_file")?;
        let builder = tls_client::builder(tls_client::provider())?.with_root_certificates(roots);
        let pair = self.cert_file.as_deref().zip(self.key_file.as_deref());
        tls_client::with_client_cert(
            builder,
            pair,
            ("clickhouse.tls.cert_file", "clickhouse.tls.key_file"),
        )
    }
}

/// TCP keep-alive on idle connections to ClickHouse, as the `clickhouse` crate's own client.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// Below ClickHouse's `keep_alive_timeout` (3 s before 23.11, 10 s since), as the crate's own
/// client: a connection the server is about to close is not reused.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(2);

/// A `clickhouse` client for `url`: plain HTTP, or HTTPS with `tls`.
pub fn client(url: &str, tls: &ClickHouseTls) -> Result<clickhouse::Client> {
    let mut http = HttpConnector::new();
    http.set_keepalive(Some(TCP_KEEPALIVE));
    let mut builder = HyperClient::builder(TokioExecutor::new());
    builder.pool_idle_timeout(POOL_IDLE_TIMEOUT);
    if !url.starts_with("https://") {
        return Ok(clickhouse::Client::with_http_client(builder.build(http)).with_url(url));
    }
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls.client_config()?);
    let https = match &tls.server_name {
        Some(name) => {
            let name = ServerName::try_from(name.clone()).context("clickhouse.tls.server_name")?;
            https
                .https_only()
                .with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
        }
        None => https.https_only(),
    };
    let connector = https.enable_http1().wrap_connector(http);
    Ok(clickhouse::Client::with_http_client(builder.build(connector)).with_url(url))
}

/// The rustls error somewhere in `e`'s chain. An `io::Error` hides the error it wraps from
/// `source()` (it returns that error's own source), and the connector nests them, so each is
/// opened by hand.
pub fn tls_failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r.to_string());
        }
        cur = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        let mut t = ClickHouseTls::default();
        assert!(t.validate(false).is_ok());
        t.server_name = Some("clickhouse.internal".into());
        assert!(t.validate(false).is_err(), "TLS settings on an http:// URL");
        assert!(t.validate(true).is_ok());
        t.server_name = Some("not a name".into());
        assert!(t.validate(true).is_err());
        t.server_name = None;
        t.cert_file = Some("c.pem".into());
        assert!(t.validate(true).is_err(), "a certificate without its key");
    }

    #[test]
    fn a_tls_error_is_found_inside_nested_io_errors() {
        let rustls_err = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let inner = std::io::Error::new(std::io::ErrorKind::InvalidData, rustls_err);
        let outer = std::io::Error::other(inner);
        let found = tls_failure(&outer).unwrap();
        assert!(found.contains("UnknownIssuer"), "{found}");
        assert!(tls_failure(&std::io::Error::other("connection refused")).is_none());
    }

    #[test]
    fn an_unreadable_ca_file_names_the_key() {
        let t = ClickHouseTls {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let err = client("https://127.0.0.1:8443", &t).err().unwrap();
        assert!(
            format!("{err:#}").contains("clickhouse.tls.ca_file"),
            "{err:#}"
        );
    }
}
