//! How the Kafka clients reach the brokers (docs/kafka.md, docs/deployment-managed.md):
//! `kafka.security_protocol`, `[kafka.tls]` and `[kafka.sasl]`, their checks, and the librdkafka
//! properties they become. librdkafka does TLS (OpenSSL, vendored: gateway/Cargo.toml says why)
//! and SASL PLAIN / SCRAM itself; the OAUTHBEARER token of Amazon MSK IAM is minted by
//! `msk_iam.rs` and handed to each client.

use std::path::PathBuf;

use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

use crate::config::error::ConfigError;

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    #[default]
    Plaintext,
    /// TLS, optionally with a client certificate (mutual TLS).
    Ssl,
    /// SASL without TLS: for a private network only (a PLAIN password would travel in clear).
    SaslPlaintext,
    /// SASL inside TLS: what managed Kafka services ask for.
    SaslSsl,
}

impl SecurityProtocol {
    fn as_rdkafka(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }
    fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
    fn sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

/// `[kafka.tls]`: whom to trust, and who we are (PEM files). The broker's name is always
/// verified against its certificate.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaTls {
    /// CA bundle that signs the brokers' certificates; unset: the system's roots (found where
    /// the distribution keeps them, e.g. /etc/ssl/certs/ca-certificates.crt).
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain for mutual TLS (with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// Its private key (unencrypted PEM; mount it as a secret).
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN", alias = "plain")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256", alias = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512", alias = "scram-sha-512")]
    ScramSha512,
    /// The token comes from `oauthbearer_provider`.
    #[serde(rename = "OAUTHBEARER", alias = "oauthbearer")]
    OAuthBearer,
}

impl SaslMechanism {
    fn as_rdkafka(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::OAuthBearer => "OAUTHBEARER",
        }
    }
}

/// Where OAUTHBEARER tokens come from.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OAuthProvider {
    /// Amazon MSK IAM: a SigV4-signed `kafka-cluster:Connect` request made with the process's
    /// AWS credentials (EKS IRSA or Pod Identity, ECS, EC2, environment), renewed well before
    /// it expires.
    #[default]
    AwsMskIam,
}

/// `[kafka.sasl]`. The password never comes from the config file in clear if it can be
/// helped: `password_file` (a mounted secret) or `TRACEGATE_KAFKA__SASL__PASSWORD`.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSasl {
    pub mechanism: Option<SaslMechanism>,
    /// PLAIN and SCRAM user name (Confluent Cloud: the API key).
    pub username: String,
    /// PLAIN and SCRAM password (Confluent Cloud: the API secret).
    pub password: String,
    pub password_file: Option<PathBuf>,
    pub oauthbearer_provider: OAuthProvider,
    /// The MSK cluster's AWS region (`aws_msk_iam`).
    pub aws_region: Option<String>,
}

impl std::fmt::Debug for KafkaSasl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSasl")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("password_file", &self.password_file)
            .field("oauthbearer_provider", &self.oauthbearer_provider)
            .field("aws_region", &self.aws_region)
            .finish()
    }
}

/// librdkafka properties that `kafka.properties` may not set: the dedicated keys above own
/// them, and secrets must not sit in the config file in clear.
pub const SECURITY_PROPERTIES: &[&str] = &[
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl_key",
    "ssl.keystore.password",
];

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// The checks of the three keys together: each setting only where its protocol uses it.
pub fn validate(
    protocol: SecurityProtocol,
    tls: &KafkaTls,
    sasl: &KafkaSasl,
) -> Result<(), ConfigError> {
    let tls_set = tls.ca_file.is_some() || tls.cert_file.is_some() || tls.key_file.is_some();
    if tls_set && !protocol.tls() {
        return Err(invalid(
            "kafka.tls",
            "is set, but kafka.security_protocol is not \"ssl\" or \"sasl_ssl\"",
        ));
    }
    if tls.cert_file.is_some() != tls.key_file.is_some() {
        return Err(invalid(
            "kafka.tls.cert_file",
            "mutual TLS needs both kafka.tls.cert_file and kafka.tls.key_file",
        ));
    }
    match (protocol.sasl(), sasl.mechanism) {
        (false, Some(_)) => {
            return Err(invalid(
                "kafka.sasl.mechanism",
                "is set, but kafka.security_protocol is not \"sasl_ssl\" or \"sasl_plaintext\"",
            ))
        }
        (true, None) => {
            return Err(invalid(
                "kafka.sasl.mechanism",
                "required with kafka.security_protocol = \"sasl_*\" (PLAIN, SCRAM-SHA-256, \
                 SCRAM-SHA-512 or OAUTHBEARER)",
            ))
        }
        _ => {}
    }
    match sasl.mechanism {
        Some(SaslMechanism::OAuthBearer) => {
            let region = sasl.aws_region.as_deref().unwrap_or("");
            let ok = !region.is_empty()
                && region
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-');
            if !ok {
                return Err(invalid(
                    "kafka.sasl.aws_region",
                    "the MSK cluster's AWS region (e.g. \"eu-west-1\") is required for \
                     oauthbearer_provider = \"aws_msk_iam\"",
                ));
            }
        }
        Some(_) => {
            if sasl.username.is_empty() {
                return Err(invalid(
                    "kafka.sasl.username",
                    "required for PLAIN and SCRAM",
                ));
            }
            if sasl.password.is_empty() {
                return Err(invalid(
                    "kafka.sasl.password",
                    "required for PLAIN and SCRAM: kafka.sasl.password_file or \
                     TRACEGATE_KAFKA__SASL__PASSWORD",
                ));
            }
        }
        None => {}
    }
    Ok(())
}

/// The MSK cluster's region when tokens come from MSK IAM (the only OAUTHBEARER provider).
pub fn msk_iam_region(protocol: SecurityProtocol, sasl: &KafkaSasl) -> Option<&str> {
    match (protocol.sasl(), sasl.mechanism, sasl.oauthbearer_provider) {
        (true, Some(SaslMechanism::OAuthBearer), OAuthProvider::AwsMskIam) => {
            sasl.aws_region.as_deref()
        }
        _ => None,
    }
}

/// Sets the security properties on a client configuration.
pub fn apply(protocol: SecurityProtocol, tls: &KafkaTls, sasl: &KafkaSasl, c: &mut ClientConfig) {
    c.set("security.protocol", protocol.as_rdkafka());
    if protocol.tls() {
        let path = |p: &PathBuf| p.to_string_lossy().into_owned();
        // "probe": the system's CA bundle wherever the distribution keeps it. The vendored
        // OpenSSL's own default directory is a path inside the build tree.
        let ca = tls.ca_file.as_ref().map_or("probe".into(), path);
        c.set("ssl.ca.location", ca)
            .set("ssl.endpoint.identification.algorithm", "https");
        if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
            c.set("ssl.certificate.location", path(cert))
                .set("ssl.key.location", path(key));
        }
    }
    if let (true, Some(m)) = (protocol.sasl(), sasl.mechanism) {
        c.set("sasl.mechanisms", m.as_rdkafka());
        if m != SaslMechanism::OAuthBearer {
            c.set("sasl.username", &sasl.username)
                .set("sasl.password", &sasl.password);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sasl(m: SaslMechanism) -> KafkaSasl {
        KafkaSasl {
            mechanism: Some(m),
            username: "u".into(),
            password: "p".into(),
            ..Default::default()
        }
    }

    #[test]
    fn each_setting_needs_its_protocol() {
        use SecurityProtocol::*;
        let none = KafkaSasl::default();
        let ca = KafkaTls {
            ca_file: Some("/ca.pem".into()),
            ..Default::default()
        };
        validate(Plaintext, &KafkaTls::default(), &none).unwrap();
        validate(Ssl, &ca, &none).unwrap();
        let e = |p, t: &KafkaTls, s: &KafkaSasl| validate(p, t, s).unwrap_err().to_string();
        assert!(e(Plaintext, &ca, &none).contains("kafka.tls"));
        assert!(e(SaslSsl, &ca, &none).contains("kafka.sasl.mechanism"));
        assert!(e(Ssl, &ca, &sasl(SaslMechanism::Plain)).contains("kafka.sasl.mechanism"));
        let half = KafkaTls {
            cert_file: Some("/c.pem".into()),
            ..Default::default()
        };
        assert!(e(Ssl, &half, &none).contains("kafka.tls.cert_file"));
        let mut s = sasl(SaslMechanism::ScramSha512);
        validate(SaslSsl, &ca, &s).unwrap();
        s.password.clear();
        assert!(e(SaslSsl, &ca, &s).contains("kafka.sasl.password"));
        let mut o = sasl(SaslMechanism::OAuthBearer);
        assert!(e(SaslSsl, &ca, &o).contains("kafka.sasl.aws_region"));
        o.aws_region = Some("eu-west-1".into());
        validate(SaslSsl, &KafkaTls::default(), &o).unwrap();
    }

    #[test]
    fn properties_and_no_password_in_debug() {
        let mut c = ClientConfig::new();
        let s = sasl(SaslMechanism::ScramSha256);
        apply(SecurityProtocol::SaslSsl, &KafkaTls::default(), &s, &mut c);
        assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(c.get("ssl.ca.location"), Some("probe"));
        assert_eq!(c.get("sasl.mechanisms"), Some("SCRAM-SHA-256"));
        assert_eq!(c.get("sasl.password"), Some("p"));
        let d = format!("{s:?} {c:?}");
        assert!(!d.contains("\"p\""), "{d}");
        let mut c = ClientConfig::new();
        let tls = KafkaTls {
            ca_file: Some("/ca.pem".into()),
            cert_file: Some("/c.pem".into()),
            key_file: Some("/k.pem".into()),
        };
        apply(SecurityProtocol::Ssl, &tls, &s, &mut c);
        assert_eq!(c.get("ssl.ca.location"), Some("/ca.pem"));
        assert_eq!(c.get("ssl.key.location"), Some("/k.pem"));
        assert_eq!(c.get("sasl.mechanisms"), None);
        let mut c = ClientConfig::new();
        apply(
            SecurityProtocol::SaslSsl,
            &KafkaTls::default(),
            &KafkaSasl {
                mechanism: Some(SaslMechanism::OAuthBearer),
                aws_region: Some("us-east-1".into()),
                ..Default::default()
            },
            &mut c,
        );
        assert_eq!(c.get("sasl.mechanisms"), Some("OAUTHBEARER"));
        assert_eq!(c.get("sasl.username"), None);
    }
}
