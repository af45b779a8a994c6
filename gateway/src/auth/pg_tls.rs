//! TLS to PostgreSQL (the key store), set the way every PostgreSQL client is set: libpq's
//! parameters in the connection URL (`?sslmode=verify-full&sslrootcert=/etc/rds-ca.pem`), so
//! the URL an RDS, Cloud SQL or Azure console shows works as it is.
//!
//! tokio-postgres knows only `sslmode` disable | prefer | require and refuses the other
//! parameters, so they are taken off the URL here and carried out by the rustls connector
//! (`tokio-postgres-rustls`, ring, TLS 1.2+):
//!
//! | sslmode | TLS | server certificate |
//! |---|---|---|
//! | `disable` (the default, as before) | never | — |
//! | `allow`, `prefer` | if the server offers it | not checked (libpq's meaning: no protection against an active attacker) |
//! | `require` | always | not checked (libpq's meaning) |
//! | `verify-ca` | always | chains to `sslrootcert` |
//! | `verify-full` | always | chains to `sslrootcert` and is valid for the URL's host |
//!
//! `sslrootcert` is a PEM file, or `system` for the public web roots compiled in; `sslcert` and
//! `sslkey` give a client certificate.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::tls_client;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    #[default]
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// The TLS parameters of a connection URL.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PgTls {
    pub mode: SslMode,
    /// `sslrootcert`: a PEM file; `None` with `system` set means the public roots.
    pub root_cert: Option<PathBuf>,
    pub system_roots: bool,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Splits the TLS parameters off `url` (a `postgres://` URL or a `key=value` string): the URL
/// tokio-postgres is given, and the TLS settings. Errors never repeat the URL (it may hold a
/// password).
pub fn split(url: &str) -> Result<(String, PgTls)> {
    let mut tls = PgTls::default();
    let mut take = |k: &str, v: &str| -> Result<bool> {
        match k {
            "sslmode" => {
                tls.mode = match v {
                    "disable" => SslMode::Disable,
                    "allow" | "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    other => bail!(
                        "PostgreSQL URL: sslmode={other} is not one of disable, allow, prefer, \
                         require, verify-ca, verify-full"
                    ),
                }
            }
            "sslrootcert" if v == "system" => tls.system_roots = true,
            "sslrootcert" => tls.root_cert = Some(PathBuf::from(v)),
            "sslcert" => tls.cert = Some(PathBuf::from(v)),
            "sslkey" => tls.key = Some(PathBuf::from(v)),
            k if k.starts_with("ssl") => {
                bail!("PostgreSQL URL: parameter {k} is not supported (sslmode, sslrootcert, sslcert, sslkey are)")
            }
            _ => return Ok(false),
        }
        Ok(true)
    };
    let rest = if let Some((base, query)) = url
        .split_once('?')
        .filter(|_| url.starts_with("postgres://") || url.starts_with("postgresql://"))
    {
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            if !take(k, &v)? {
                kept.push(pair);
            }
        }
        if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        }
    } else if url.contains("://") {
        url.to_string()
    } else {
        let mut kept = Vec::new();
        for pair in url.split_whitespace() {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if !take(k, v.trim_matches('\''))? {
                kept.push(pair);
            }
        }
        kept.join(" ")
    };
    if tls.cert.is_some() != tls.key.is_some() {
        bail!("PostgreSQL URL: sslcert and sslkey go together");
    }
    let verifies = matches!(tls.mode, SslMode::VerifyCa | SslMode::VerifyFull);
    if verifies && tls.root_cert.is_none() && !tls.system_roots {
        bail!(
            "PostgreSQL URL: sslmode=verify-ca/verify-full needs sslrootcert=<PEM file> (your \
             provider's CA bundle) or sslrootcert=system"
        );
    }
    Ok((rest, tls))
}

/// `%XX` escapes in a URL parameter's value (a file path may carry them).
fn percent_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl PgTls {
    /// tokio-postgres's own mode: whether TLS is tried, and whether it is required.
    pub fn tokio_mode(&self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as T;
        match self.mode {
            SslMode::Disable => T::Disable,
            SslMode::Prefer => T::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => T::Require,
        }
    }

    /// The connector (unused by tokio-postgres when the mode is `disable`).
    pub fn connector(&self) -> Result<MakeRustlsConnect> {
        let provider = tls_client::provider();
        let chain = match self.mode {
            SslMode::Disable | SslMode::Prefer | SslMode::Require => None,
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let root = if self.system_roots {
                    None
                } else {
                    self.root_cert.as_deref()
                };
                let roots = tls_client::roots(root, "sslrootcert")?;
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .context("sslrootcert")?;
                Some(webpki)
            }
        };
        let verifier = Arc::new(LibpqVerifier {
            chain,
            names: self.mode == SslMode::VerifyFull,
            provider: provider.clone(),
        });
        let builder = tls_client::builder(provider)?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let pair = self.cert.as_deref().zip(self.key.as_deref());
        let config = tls_client::with_client_cert(builder, pair, ("sslcert", "sslkey"))?;
        Ok(MakeRustlsConnect::new(config))
    }
}

/// The server certificate as libpq's `sslmode` checks it: not at all (`prefer`, `require`:
/// encrypted, no protection against an active attacker), the chain only (`verify-ca`), or the
/// chain and the host name (`verify-full`). The handshake's signatures are always checked.
#[derive(Debug)]
struct LibpqVerifier {
    /// The chain's verifier; `None`: the certificate is not checked.
    chain: Option<Arc<WebPkiServerVerifier>>,
    /// Whether a certificate valid only for another name is refused.
    names: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for LibpqVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            // webpki checks the chain before the name: a name error means the chain is good.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.names => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_parameters_come_off_the_url() {
        let (url, tls) = split(
            "postgres://u:p@db:5432/keys?sslmode=verify-full&application_name=x&sslrootcert=/etc/ca%20b.pem",
        )
        .unwrap();
        assert_eq!(url, "postgres://u:p@db:5432/keys?application_name=x");
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.root_cert, Some(PathBuf::from("/etc/ca b.pem")));
        let (url, tls) = split("postgres://u@db/keys?sslmode=require").unwrap();
        assert_eq!(url, "postgres://u@db/keys");
        assert_eq!(tls.mode, SslMode::Require);
        let (url, tls) = split("host=db user=u sslmode=prefer dbname=keys").unwrap();
        assert_eq!(url, "host=db user=u dbname=keys");
        assert_eq!(tls.mode, SslMode::Prefer);
        let (_, tls) = split("postgres://u@db/keys").unwrap();
        assert_eq!(tls.mode, SslMode::Disable);
    }

    #[test]
    fn bad_parameters_are_named_without_the_url() {
        for (url, want) in [
            ("postgres://u:secret@db/k?sslmode=maybe", "sslmode=maybe"),
            (
                "postgres://u:secret@db/k?sslmode=verify-full",
                "needs sslrootcert",
            ),
            (
                "postgres://u:secret@db/k?sslcrl=/x",
                "sslcrl is not supported",
            ),
            (
                "postgres://u:secret@db/k?sslmode=require&sslcert=/c",
                "sslcert and sslkey",
            ),
        ] {
            let err = split(url).unwrap_err().to_string();
            assert!(err.contains(want), "{url}: {err}");
            assert!(!err.contains("secret"), "{err}");
        }
    }
}
