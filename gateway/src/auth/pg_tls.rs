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
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

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
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .context("TLS protocol versions")?;
        let verifier: Arc<dyn ServerCertVerifier> = match self.mode {
            SslMode::Disable | SslMode::Prefer | SslMode::Require => {
                Arc::new(Unverified(provider.clone()))
            }
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let mut roots = RootCertStore::empty();
                match &self.root_cert {
                    Some(path) => {
                        let certs = CertificateDer::pem_file_iter(path)
                            .with_context(|| {
                                format!("sslrootcert: cannot read {}", path.display())
                            })?
                            .collect::<Result<Vec<_>, _>>()
                            .with_context(|| {
                                format!("sslrootcert: {} is not PEM", path.display())
                            })?;
                        if certs.is_empty() {
                            bail!("sslrootcert: no certificate in {}", path.display());
                        }
                        for c in certs {
                            roots
                                .add(c)
                                .context("sslrootcert: a certificate is not usable")?;
                        }
                    }
                    None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
                }
                let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .context("sslrootcert")?;
                if self.mode == SslMode::VerifyFull {
                    webpki
                } else {
                    Arc::new(ChainOnly(webpki))
                }
            }
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .with_context(|| format!("sslcert: cannot read {}", cert.display()))?
                    .collect::<Result<Vec<_>, _>>()
                    .with_context(|| format!("sslcert: {} is not PEM", cert.display()))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .with_context(|| format!("sslkey: no private key in {}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .context("sslcert / sslkey do not match")?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(MakeRustlsConnect::new(config))
    }
}

/// `verify-ca`: the chain is checked, the name is not (libpq's meaning).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            // webpki checks the chain before the name: a name error means the chain is good.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` / `require`: encrypted, the certificate not checked (libpq's meaning; the
/// handshake's signatures still are).
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
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
