//! What every outgoing TLS connection shares (ClickHouse `clickhouse/tls.rs`, PostgreSQL
//! `auth/pg_tls.rs`): rustls with ring and TLS 1.2+, as the listeners; the trusted roots (a
//! PEM file, or the public web roots compiled in); an optional client certificate. Errors name
//! the setting the file came from. A leaf: it uses nothing else of the crate.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rustls::client::WantsClientCert;
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, ConfigBuilder, RootCertStore, WantsVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The crypto provider of outgoing connections.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client config builder on `provider`, TLS 1.3 and 1.2 only.
pub fn builder(
    provider: Arc<CryptoProvider>,
) -> Result<ConfigBuilder<ClientConfig, WantsVerifier>> {
    ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS protocol versions")
}

/// The certificates of a PEM file (at least one); `key` names the setting in errors.
pub fn read_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("{key}: cannot read {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{key}: {} is not PEM", path.display()))?;
    if certs.is_empty() {
        bail!("{key}: no certificate in {}", path.display());
    }
    Ok(certs)
}

/// The roots to trust: the CA certificates of `ca_file`, or the public web roots (Mozilla's
/// list, compiled in) without one.
pub fn roots(ca_file: Option<&Path>, key: &str) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in read_certs(path, key)? {
                roots.add(cert).with_context(|| {
                    format!("{key}: a certificate in {} is not usable", path.display())
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(roots)
}

/// The config, with the client certificate chain and key when both are given. `keys` name
/// the two settings in errors.
pub fn with_client_cert(
    builder: ConfigBuilder<ClientConfig, WantsClientCert>,
    cert_and_key: Option<(&Path, &Path)>,
    keys: (&str, &str),
) -> Result<ClientConfig> {
    let Some((cert, key)) = cert_and_key else {
        return Ok(builder.with_no_client_auth());
    };
    let chain = read_certs(cert, keys.0)?;
    let key_der = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("{}: no private key in {}", keys.1, key.display()))?;
    builder
        .with_client_auth_cert(chain, key_der)
        .with_context(|| format!("{} / {} do not match", keys.0, keys.1))
}
