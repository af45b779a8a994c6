//! TLS termination with rustls (ring provider).
//!
//! - TLS 1.3 and 1.2 only, with ring's default suites: AEAD (AES-GCM, ChaCha20-Poly1305) with
//!   ECDHE key exchange, so forward secrecy. No CBC, no RSA key exchange, no TLS ≤ 1.1.
//! - ALPN: `h2` + `http/1.1` on OTLP/HTTP, `h2` on OTLP/gRPC.
//! - The certificate is served by a resolver that reads an [`ArcSwap`]: a handshake never waits
//!   for a reload, and a reload is one pointer swap. A task polls the PEM files every
//!   `tls.reload_interval_ms`; when their bytes change it loads the new pair, checks that the key
//!   matches the certificate, and swaps it in. A pair that does not load (half-written files, a
//!   key of another certificate, garbage) is logged and counted, and the old one stays.
//! - mTLS: with `client_ca_file`, clients must present a certificate chaining to that bundle
//!   (webpki verification). The bundle is reloaded the same way (a new `ServerConfig` with the
//!   same resolver is swapped in; connections already open are not affected).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::metrics as m;
use crate::netconfig::{OtlpListener, ResolvedTls};

/// The crypto provider: ring, chosen explicitly so nothing depends on a process default.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Serves whatever pair is current.
#[derive(Debug)]
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// One listener's TLS state: the current `ServerConfig` (swapped when the client CA bundle
/// changes) around a shared cert resolver (swapped when the certificate changes).
pub struct TlsListener {
    listener: &'static str,
    alpn: Vec<Vec<u8>>,
    settings: ResolvedTls,
    provider: Arc<CryptoProvider>,
    resolver: Arc<CertResolver>,
    config: ArcSwap<ServerConfig>,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("listener", &self.listener)
            .field("settings", &self.settings)
            .finish()
    }
}

/// Reads a certificate chain and its key, and checks that they belong together.
pub fn load_pair(
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<CertifiedKey> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("reading PEM certificates: {e}"))?;
    if chain.is_empty() {
        return Err(anyhow!("no CERTIFICATE block found"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| anyhow!("reading the PEM private key: {e}"))?;
    let ck = CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| anyhow!("certificate and key do not form a usable pair: {e}"))?;
    // `from_der` accepts "cannot tell"; a pair we cannot check is not one we serve.
    ck.keys_match()
        .map_err(|e| anyhow!("private key does not match the certificate: {e}"))?;
    Ok(ck)
}

/// Reads a CA bundle for client-certificate verification.
pub fn load_client_ca(pem: &[u8]) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem) {
        let c = c.map_err(|e| anyhow!("reading PEM certificates: {e}"))?;
        roots
            .add(c)
            .map_err(|e| anyhow!("not a usable CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err(anyhow!("no CERTIFICATE block found"));
    }
    Ok(roots)
}

fn read(path: &Path, key: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("`{key}`: reading {}", path.display()))
}

/// One DER TLV: (tag, value, the bytes after it); `None` if truncated or longer than 4 GiB.
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&l0, rest) = rest.split_first()?;
    let (len, rest) = if l0 < 0x80 {
        (l0 as usize, rest)
    } else {
        let n = (l0 & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &x| (a << 8) | x as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The serial number of a DER certificate as lowercase hex (for logs), if it parses.
pub fn serial_hex(cert: &[u8]) -> Option<String> {
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serial INTEGER …
    let (_, cert, _) = tlv(cert)?;
    let (_, tbs, _) = tlv(cert)?;
    let (tag, v, rest) = tlv(tbs)?;
    let serial = if tag == 0xA0 {
        let (t, s, _) = tlv(rest)?;
        (t == 0x02).then_some(s)?
    } else {
        (tag == 0x02).then_some(v)?
    };
    Some(hex::encode(serial))
}

/// notAfter of a DER certificate as Unix seconds (UTCTime or GeneralizedTime, `Z` form as RFC
/// 5280 requires), for the expiry gauge; `None` if the structure is not what RFC 5280 says.
pub fn not_after_unix(cert: &[u8]) -> Option<i64> {
    // tbsCertificate: [0] version OPTIONAL, serial, signature, issuer, validity, …
    let (_, cert, _) = tlv(cert)?;
    let (_, tbs, _) = tlv(cert)?;
    let (tag, _, mut rest) = tlv(tbs)?;
    if tag == 0xA0 {
        rest = tlv(rest)?.2; // serial
    }
    let rest = tlv(rest)?.2; // signature algorithm
    let rest = tlv(rest)?.2; // issuer
    let (tag, validity, _) = tlv(rest)?;
    if tag != 0x30 {
        return None;
    }
    let (_, _, after) = tlv(validity)?; // notBefore
    let (tag, t, _) = tlv(after)?;
    let t = std::str::from_utf8(t).ok()?;
    let full = match (tag, t.len()) {
        // UTCTime YYMMDDHHMMSSZ: YY < 50 is 20YY (RFC 5280 4.1.2.5.1)
        (0x17, 13) => {
            let yy: u32 = t[..2].parse().ok()?;
            format!("{}{t}", if yy < 50 { "20" } else { "19" })
        }
        (0x18, 15) => t.to_string(),
        _ => return None,
    };
    chrono::NaiveDateTime::parse_from_str(full.trim_end_matches('Z'), "%Y%m%d%H%M%S")
        .ok()
        .filter(|_| full.ends_with('Z'))
        .map(|d| d.and_utc().timestamp())
}

/// Publishes the served certificate's notAfter (alert: deploy/prometheus/alerts.yaml).
fn record_not_after(listener: &'static str, ck: &CertifiedKey) {
    if let Some(t) = ck.cert.first().and_then(|c| not_after_unix(c)) {
        metrics::gauge!(m::TLS_CERT_NOT_AFTER, "listener" => listener).set(t as f64);
    }
}

impl TlsListener {
    /// Loads the certificate, key and (optional) client CA; errors name the config key.
    pub fn new(l: OtlpListener, settings: ResolvedTls) -> Result<Arc<Self>> {
        let provider = provider();
        let cert_pem = read(&settings.cert_file, settings.cert_key)?;
        let key_pem = read(&settings.key_file, settings.key_key)?;
        let ck = load_pair(&cert_pem, &key_pem, &provider).with_context(|| {
            format!(
                "`{}` / `{}`: {} / {}",
                settings.cert_key,
                settings.key_key,
                settings.cert_file.display(),
                settings.key_file.display()
            )
        })?;
        record_not_after(l.name(), &ck);
        // Registered at zero, so reload-failure alerts see the series before the first reload.
        for result in ["ok", "error"] {
            metrics::counter!(m::TLS_CERT_RELOADS, "result" => result).increment(0);
        }
        let resolver = Arc::new(CertResolver {
            current: ArcSwap::from_pointee(ck),
        });
        let ca = match &settings.client_ca_file {
            Some(p) => Some(
                load_client_ca(&read(p, settings.ca_key)?)
                    .with_context(|| format!("`{}`: {}", settings.ca_key, p.display()))?,
            ),
            None => None,
        };
        let alpn = l.alpn();
        let config = build_config(&provider, &resolver, ca, &alpn)
            .with_context(|| format!("`{}`", settings.ca_key))?;
        Ok(Arc::new(Self {
            listener: l.name(),
            alpn,
            settings,
            provider,
            resolver,
            config: ArcSwap::from_pointee(config),
        }))
    }

    /// The current server config (one per handshake: cheap `Arc` clone).
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.load_full())
    }

    /// Whether client certificates are required.
    pub fn mtls(&self) -> bool {
        self.settings.client_ca_file.is_some()
    }

    /// Serial (hex) of the certificate being served.
    pub fn current_serial(&self) -> Option<String> {
        let ck = self.resolver.current.load();
        ck.cert.first().and_then(|c| serial_hex(c))
    }

    /// Polls the files every `every` and swaps in changed, valid material. Stops when the
    /// listener is dropped.
    pub fn spawn_reloader(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        let files = Files::of(&self.settings);
        tokio::spawn(async move {
            let mut last = files.read().await;
            // New bytes that failed once: certificate and key are two files, so a rotation is
            // briefly "new certificate, old key". Such a pair is retried on the next tick and
            // only reported if it still fails then.
            let mut failed_once: Option<Pair> = None;
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(me) = weak.upgrade() else { break };
                let now = files.read().await;
                if now.pair != last.pair {
                    let settled = failed_once.as_ref() == Some(&now.pair);
                    if me.reload_pair(&now.pair, settled) || settled {
                        last.pair = now.pair;
                        failed_once = None;
                    } else {
                        failed_once = Some(now.pair);
                    }
                }
                if now.ca != last.ca {
                    me.reload_ca(now.ca.as_deref());
                    last.ca = now.ca;
                }
            }
        })
    }

    /// Loads and swaps in `pair`; `report`: log and count a failure (else debug only).
    fn reload_pair(&self, pair: &Pair, report: bool) -> bool {
        let s = &self.settings;
        let result = match pair {
            Some((c, k)) => load_pair(c, k, &self.provider),
            None => Err(anyhow!("cannot read the files")),
        };
        match result {
            Ok(ck) => {
                let serial = ck.cert.first().and_then(|c| serial_hex(c));
                record_not_after(self.listener, &ck);
                self.resolver.current.store(Arc::new(ck));
                metrics::counter!(m::TLS_CERT_RELOADS, "result" => "ok").increment(1);
                tracing::info!(
                    listener = self.listener,
                    cert_file = %s.cert_file.display(),
                    serial = serial.as_deref().unwrap_or("?"),
                    "TLS certificate reloaded"
                );
                true
            }
            Err(e) if !report => {
                tracing::debug!(listener = self.listener, error = %format!("{e:#}"), "new TLS certificate/key not loadable yet; retrying once");
                false
            }
            Err(e) => {
                metrics::counter!(m::TLS_CERT_RELOADS, "result" => "error").increment(1);
                tracing::warn!(
                    listener = self.listener,
                    cert_file = %s.cert_file.display(),
                    key_file = %s.key_file.display(),
                    error = %format!("{e:#}"),
                    "new TLS certificate/key not loaded; still serving the previous one"
                );
                false
            }
        }
    }

    fn reload_ca(&self, ca: Option<&[u8]>) {
        let Some(path) = &self.settings.client_ca_file else {
            return;
        };
        let result = ca
            .ok_or_else(|| anyhow!("cannot read the file"))
            .and_then(load_client_ca)
            .and_then(|roots| {
                build_config(&self.provider, &self.resolver, Some(roots), &self.alpn)
            });
        match result {
            Ok(cfg) => {
                self.config.store(Arc::new(cfg));
                metrics::counter!(m::TLS_CERT_RELOADS, "result" => "ok").increment(1);
                tracing::info!(listener = self.listener, client_ca_file = %path.display(), "client CA bundle reloaded");
            }
            Err(e) => {
                metrics::counter!(m::TLS_CERT_RELOADS, "result" => "error").increment(1);
                tracing::warn!(
                    listener = self.listener,
                    client_ca_file = %path.display(),
                    error = %format!("{e:#}"),
                    "new client CA bundle not loaded; still using the previous one"
                );
            }
        }
    }
}

fn build_config(
    provider: &Arc<CryptoProvider>,
    resolver: &Arc<CertResolver>,
    client_ca: Option<RootCertStore>,
    alpn: &[Vec<u8>],
) -> Result<ServerConfig> {
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| anyhow!("TLS versions: {e}"))?;
    let builder = match client_ca {
        Some(roots) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| anyhow!("client certificate verifier: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_cert_resolver(resolver.clone());
    cfg.alpn_protocols = alpn.to_vec();
    Ok(cfg)
}

/// The files a reloader watches, and their last contents.
struct Files {
    cert: PathBuf,
    key: PathBuf,
    ca: Option<PathBuf>,
}

type Pair = Option<(Vec<u8>, Vec<u8>)>;

struct Snapshot {
    pair: Pair,
    ca: Option<Vec<u8>>,
}

impl Files {
    fn of(s: &ResolvedTls) -> Self {
        Self {
            cert: s.cert_file.clone(),
            key: s.key_file.clone(),
            ca: s.client_ca_file.clone(),
        }
    }

    /// Compares contents, not mtimes: atomic renames, in-place rewrites, Kubernetes secret
    /// symlink swaps and coarse timestamps all show up the same way.
    async fn read(&self) -> Snapshot {
        let cert = tokio::fs::read(&self.cert).await.ok();
        let key = tokio::fs::read(&self.key).await.ok();
        let ca = match &self.ca {
            Some(p) => tokio::fs::read(p).await.ok(),
            None => None,
        };
        Snapshot {
            pair: cert.zip(key),
            ca,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(serial: u64) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        p.serial_number = Some(rcgen::SerialNumber::from(serial.to_be_bytes().to_vec()));
        let c = p.self_signed(&key).unwrap();
        (c.pem(), key.serialize_pem())
    }

    #[test]
    fn pairs_load_and_mismatches_are_refused() {
        let prov = provider();
        let (c1, k1) = pair(0x1234);
        let (_c2, k2) = pair(0x5678);
        let ck = load_pair(c1.as_bytes(), k1.as_bytes(), &prov).unwrap();
        assert_eq!(serial_hex(ck.cert[0].as_ref()).as_deref(), Some("1234"));
        let e = load_pair(c1.as_bytes(), k2.as_bytes(), &prov).unwrap_err();
        assert!(format!("{e:#}").contains("match"), "{e:#}");
        assert!(load_pair(b"", k1.as_bytes(), &prov).is_err());
        assert!(load_pair(c1.as_bytes(), b"junk", &prov).is_err());
        assert!(load_pair(&c1.as_bytes()[..100], k1.as_bytes(), &prov).is_err());
        assert!(load_client_ca(c1.as_bytes()).is_ok());
        assert!(load_client_ca(b"").is_err());
        assert_eq!(serial_hex(b"\x30\x80"), None);
    }

    #[test]
    fn not_after_is_read_from_utc_and_generalized_times() {
        let key = rcgen::KeyPair::generate().unwrap();
        // 2049 is written as UTCTime, 2050 and later as GeneralizedTime (RFC 5280).
        for (y, want) in [(2049, 2_514_844_800_i64), (2051, 2_577_916_800)] {
            let mut p = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
            p.not_after = rcgen::date_time_ymd(y, 9, 10);
            let c = p.self_signed(&key).unwrap();
            assert_eq!(not_after_unix(c.der()), Some(want), "year {y}");
        }
        assert_eq!(not_after_unix(b"\x30\x03\x30\x01\x00"), None);
        assert_eq!(not_after_unix(b""), None);
    }

    #[tokio::test]
    async fn reloader_swaps_valid_pairs_and_keeps_the_old_one_on_bad_input() {
        let d = tempfile::tempdir().unwrap();
        let (cp, kp) = (d.path().join("c.pem"), d.path().join("k.pem"));
        let (c1, k1) = pair(1);
        std::fs::write(&cp, &c1).unwrap();
        std::fs::write(&kp, &k1).unwrap();
        let t = TlsListener::new(
            OtlpListener::Http,
            ResolvedTls {
                cert_file: cp.clone(),
                key_file: kp.clone(),
                client_ca_file: None,
                cert_key: "tls.cert_file",
                key_key: "tls.key_file",
                ca_key: "tls.client_ca_file",
            },
        )
        .unwrap();
        let _task = t.spawn_reloader(Duration::from_millis(20));
        let wait_for = |want: &'static str| {
            let t = t.clone();
            async move {
                for _ in 0..200 {
                    if t.current_serial().as_deref() == Some(want) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                panic!("serial {want} not served; have {:?}", t.current_serial());
            }
        };
        wait_for("01").await;
        let (c2, k2) = pair(2);
        // New certificate with the old key: refused, old pair kept.
        std::fs::write(&cp, &c2).unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(t.current_serial().as_deref(), Some("01"));
        // Its key arrives: swapped.
        std::fs::write(&kp, &k2).unwrap();
        wait_for("02").await;
        // Garbage: kept.
        std::fs::write(&cp, "garbage").unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(t.current_serial().as_deref(), Some("02"));
        std::fs::remove_file(&kp).unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(t.current_serial().as_deref(), Some("02"));
        let (c3, k3) = pair(3);
        std::fs::write(&kp, &k3).unwrap();
        std::fs::write(&cp, &c3).unwrap();
        wait_for("03").await;
    }
}
