//! `[tls]` and `[proxy_protocol]` config sections (part of `Config`, kept in their own file).
//!
//! Global keys apply to both OTLP listeners; `[tls.http]`, `[tls.grpc]`, `[proxy_protocol.http]`
//! and `[proxy_protocol.grpc]` override them per listener. The admin listener (metrics, health;
//! the gateway's and the writer's) is plain HTTP unless `[tls.admin]` turns TLS on (it then
//! inherits the global files it does not set itself, client CA included); it never takes
//! PROXY headers.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::error::ConfigError;

/// The listeners that can have TLS: the two client-facing ones, and the admin listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpListener {
    Http,
    Grpc,
    /// `/metrics`, `/livez`, `/readyz` (gateway and writer).
    Admin,
}

impl OtlpListener {
    /// The client-facing ones (the admin listener is not an OTLP listener).
    pub const ALL: [OtlpListener; 2] = [OtlpListener::Http, OtlpListener::Grpc];

    pub fn name(self) -> &'static str {
        match self {
            OtlpListener::Http => "otlp_http",
            OtlpListener::Grpc => "otlp_grpc",
            OtlpListener::Admin => "admin",
        }
    }

    fn addr_key(self) -> &'static str {
        match self {
            OtlpListener::Http => "server.http_addr",
            OtlpListener::Grpc => "server.grpc_addr",
            OtlpListener::Admin => "server.admin_addr",
        }
    }

    /// ALPN protocols offered: HTTP serves both versions, gRPC needs HTTP/2, and the admin
    /// listener's scrapers and probes speak HTTP/1.1.
    pub fn alpn(self) -> Vec<Vec<u8>> {
        match self {
            OtlpListener::Http => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            OtlpListener::Grpc => vec![b"h2".to_vec()],
            OtlpListener::Admin => vec![b"http/1.1".to_vec()],
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain (leaf first). Setting it turns TLS on for both OTLP listeners.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the leaf certificate.
    pub key_file: Option<PathBuf>,
    /// PEM CA bundle: when set, clients must present a certificate that chains to it (mTLS).
    pub client_ca_file: Option<PathBuf>,
    /// Plain text on a non-loopback address is refused unless this is true.
    pub allow_plaintext_non_loopback: bool,
    /// How often the certificate and key files are checked for changes.
    pub reload_interval_ms: u64,
    /// A connection whose TLS handshake takes longer is closed.
    pub handshake_timeout_ms: u64,
    pub http: ListenerTlsConfig,
    pub grpc: ListenerTlsConfig,
    /// The admin listener: off unless `enabled = true` or a `cert_file` of its own is set.
    pub admin: ListenerTlsConfig,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_file: None,
            key_file: None,
            client_ca_file: None,
            allow_plaintext_non_loopback: false,
            reload_interval_ms: 500,
            handshake_timeout_ms: 10_000,
            http: ListenerTlsConfig::default(),
            grpc: ListenerTlsConfig::default(),
            admin: ListenerTlsConfig::default(),
        }
    }
}

/// Per-listener overrides of `[tls]`; unset keys inherit the global ones.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerTlsConfig {
    /// Default: on when a certificate is configured (globally or here).
    pub enabled: Option<bool>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub client_ca_file: Option<PathBuf>,
}

/// The effective TLS settings of one listener.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
    /// Config key names, for error messages.
    pub cert_key: &'static str,
    pub key_key: &'static str,
    pub ca_key: &'static str,
}

impl TlsConfig {
    fn listener(&self, l: OtlpListener) -> &ListenerTlsConfig {
        match l {
            OtlpListener::Http => &self.http,
            OtlpListener::Grpc => &self.grpc,
            OtlpListener::Admin => &self.admin,
        }
    }

    fn keys(l: OtlpListener) -> [&'static str; 4] {
        match l {
            OtlpListener::Http => [
                "tls.http.enabled",
                "tls.http.cert_file",
                "tls.http.key_file",
                "tls.http.client_ca_file",
            ],
            OtlpListener::Grpc => [
                "tls.grpc.enabled",
                "tls.grpc.cert_file",
                "tls.grpc.key_file",
                "tls.grpc.client_ca_file",
            ],
            OtlpListener::Admin => [
                "tls.admin.enabled",
                "tls.admin.cert_file",
                "tls.admin.key_file",
                "tls.admin.client_ca_file",
            ],
        }
    }

    /// The effective settings of `l`: `Ok(None)` = plain text.
    pub fn resolve(&self, l: OtlpListener) -> Result<Option<ResolvedTls>, ConfigError> {
        let o = self.listener(l);
        let [enabled_key, cert_k, key_k, ca_k] = Self::keys(l);
        let pick = |local: &Option<PathBuf>, global: &Option<PathBuf>, lk, gk| {
            local
                .clone()
                .map(|p| (p, lk))
                .or_else(|| global.clone().map(|p| (p, gk)))
        };
        let cert = pick(&o.cert_file, &self.cert_file, cert_k, "tls.cert_file");
        let key = pick(&o.key_file, &self.key_file, key_k, "tls.key_file");
        let ca = pick(
            &o.client_ca_file,
            &self.client_ca_file,
            ca_k,
            "tls.client_ca_file",
        );
        // The admin listener follows only its own settings: a certificate for the OTLP
        // listeners does not move the scrapers and probes to TLS unasked.
        let enabled = match l {
            OtlpListener::Admin => o.enabled.unwrap_or(o.cert_file.is_some()),
            _ => o.enabled.unwrap_or(cert.is_some()),
        };
        if !enabled && l == OtlpListener::Admin {
            return Ok(None);
        }
        if !enabled {
            if let Some((_, k)) = &ca {
                if o.enabled == Some(false) && *k == "tls.client_ca_file" {
                    // Global mTLS with this listener's TLS switched off: plain text, no mTLS.
                    return Ok(None);
                }
                return Err(ConfigError::Invalid {
                    key: k,
                    message: "client certificates need TLS: set tls.cert_file and tls.key_file"
                        .into(),
                });
            }
            return Ok(None);
        }
        let Some((cert_file, cert_key)) = cert else {
            return Err(ConfigError::Invalid {
                key: if o.enabled == Some(true) {
                    enabled_key
                } else {
                    "tls.cert_file"
                },
                message: "TLS is enabled but no certificate is set (tls.cert_file)".into(),
            });
        };
        let Some((key_file, key_key)) = key else {
            return Err(ConfigError::Invalid {
                key: "tls.key_file",
                message: format!("is required with {cert_key}"),
            });
        };
        let (client_ca_file, ca_key) = match ca {
            Some((p, k)) => (Some(p), k),
            None => (None, "tls.client_ca_file"),
        };
        Ok(Some(ResolvedTls {
            cert_file,
            key_file,
            client_ca_file,
            cert_key,
            key_key,
            ca_key,
        }))
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProxyMode {
    #[default]
    Off,
    V1,
    V2,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyProtocolConfig {
    /// `off`, `v2` (AWS NLB, HAProxy `send-proxy-v2`) or `v1` (text).
    pub mode: ProxyMode,
    /// Source networks allowed to send PROXY headers (the load balancer's subnets). Any other
    /// peer is disconnected. Required when `mode` is not `off`.
    pub trusted_cidrs: Vec<ipnet::IpNet>,
    /// A connection that has not sent its whole header by then is closed.
    pub header_timeout_ms: u64,
    pub http: ListenerProxyConfig,
    pub grpc: ListenerProxyConfig,
}

impl Default for ProxyProtocolConfig {
    fn default() -> Self {
        Self {
            mode: ProxyMode::Off,
            trusted_cidrs: Vec::new(),
            header_timeout_ms: 5_000,
            http: ListenerProxyConfig::default(),
            grpc: ListenerProxyConfig::default(),
        }
    }
}

/// Per-listener overrides of `[proxy_protocol]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerProxyConfig {
    pub mode: Option<ProxyMode>,
    pub trusted_cidrs: Option<Vec<ipnet::IpNet>>,
}

impl ProxyProtocolConfig {
    /// `(mode, trusted networks)` of listener `l`.
    pub fn resolve(&self, l: OtlpListener) -> (ProxyMode, Vec<ipnet::IpNet>) {
        let o = match l {
            OtlpListener::Http => &self.http,
            OtlpListener::Grpc => &self.grpc,
            // The admin listener never takes PROXY headers.
            OtlpListener::Admin => return (ProxyMode::Off, Vec::new()),
        };
        (
            o.mode.unwrap_or(self.mode),
            o.trusted_cidrs
                .clone()
                .unwrap_or_else(|| self.trusted_cidrs.clone()),
        )
    }
}

/// Validation of both sections (called from `Config::validate`), with the listeners' addresses
/// (`server.http_addr`, `server.grpc_addr`): a plain-text listener must be on loopback.
pub fn validate(
    t: &TlsConfig,
    proxy: &ProxyProtocolConfig,
    http_addr: SocketAddr,
    grpc_addr: SocketAddr,
) -> Result<(), ConfigError> {
    for (k, v) in [
        ("tls.reload_interval_ms", t.reload_interval_ms),
        ("tls.handshake_timeout_ms", t.handshake_timeout_ms),
        ("proxy_protocol.header_timeout_ms", proxy.header_timeout_ms),
    ] {
        if v == 0 {
            return Err(ConfigError::Invalid {
                key: k,
                message: "must be greater than 0".into(),
            });
        }
    }
    // The admin listener's settings are checked like the others' (their files load at start).
    t.resolve(OtlpListener::Admin)?;
    for l in OtlpListener::ALL {
        let tls = t.resolve(l)?;
        let addr = match l {
            OtlpListener::Http => http_addr,
            _ => grpc_addr,
        };
        if tls.is_none() && !addr.ip().is_loopback() && !t.allow_plaintext_non_loopback {
            return Err(ConfigError::Invalid {
                key: l.addr_key(),
                message: format!(
                    "{addr} is not a loopback address and this listener has no TLS: set \
                     tls.cert_file and tls.key_file, or allow plain text explicitly with \
                     tls.allow_plaintext_non_loopback = true"
                ),
            });
        }
        let (mode, nets) = proxy.resolve(l);
        if mode != ProxyMode::Off && nets.is_empty() {
            let key = match l {
                OtlpListener::Http if proxy.http.mode.is_some() => {
                    "proxy_protocol.http.trusted_cidrs"
                }
                OtlpListener::Grpc if proxy.grpc.mode.is_some() => {
                    "proxy_protocol.grpc.trusted_cidrs"
                }
                _ => "proxy_protocol.trusted_cidrs",
            };
            return Err(ConfigError::Invalid {
                key,
                message: "must list the load balancer's source networks when PROXY protocol \
                          is on (headers from anyone else are refused)"
                    .into(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn with_addr(addr: &str) -> Config {
        let mut c = Config::default();
        c.server.http_addr = addr.parse().unwrap();
        c
    }

    #[test]
    fn plaintext_on_non_loopback_is_refused_unless_allowed() {
        let c = with_addr("0.0.0.0:4318");
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("server.http_addr"), "{e}");
        assert!(e.contains("tls.allow_plaintext_non_loopback"), "{e}");
        let mut c = with_addr("[::]:4318");
        assert!(c.validate().is_err());
        c.tls.allow_plaintext_non_loopback = true;
        c.validate().unwrap();
        // TLS on: fine without the flag.
        let mut c = with_addr("0.0.0.0:4318");
        c.tls.cert_file = Some("c.pem".into());
        c.tls.key_file = Some("k.pem".into());
        c.validate().unwrap();
        // ...unless that one listener turns TLS off.
        c.tls.http.enabled = Some(false);
        assert!(c.validate().is_err());
        with_addr("127.0.0.2:4318").validate().unwrap();
        with_addr("[::1]:4318").validate().unwrap();
    }

    #[test]
    fn tls_keys_resolve_per_listener() {
        let mut t = TlsConfig {
            cert_file: Some("c.pem".into()),
            key_file: Some("k.pem".into()),
            ..Default::default()
        };
        t.grpc.client_ca_file = Some("ca.pem".into());
        let h = t.resolve(OtlpListener::Http).unwrap().unwrap();
        assert_eq!(h.client_ca_file, None);
        let g = t.resolve(OtlpListener::Grpc).unwrap().unwrap();
        assert_eq!(g.client_ca_file, Some("ca.pem".into()));
        assert_eq!(g.ca_key, "tls.grpc.client_ca_file");
        t.http.enabled = Some(false);
        assert_eq!(t.resolve(OtlpListener::Http).unwrap(), None);

        let t = TlsConfig {
            cert_file: Some("c.pem".into()),
            ..Default::default()
        };
        let e = t.resolve(OtlpListener::Http).unwrap_err().to_string();
        assert!(e.contains("tls.key_file"), "{e}");
        let t = TlsConfig {
            client_ca_file: Some("ca.pem".into()),
            ..Default::default()
        };
        let e = t.resolve(OtlpListener::Http).unwrap_err().to_string();
        assert!(e.contains("tls.client_ca_file"), "{e}");
    }

    #[test]
    fn proxy_needs_trusted_cidrs() {
        let mut c = Config::default();
        c.proxy_protocol.mode = ProxyMode::V2;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("proxy_protocol.trusted_cidrs"), "{e}");
        c.proxy_protocol.trusted_cidrs = vec!["10.0.0.0/8".parse().unwrap()];
        c.validate().unwrap();
        c.proxy_protocol.grpc.mode = Some(ProxyMode::Off);
        assert_eq!(
            c.proxy_protocol.resolve(OtlpListener::Grpc).0,
            ProxyMode::Off
        );
        assert_eq!(
            c.proxy_protocol.resolve(OtlpListener::Http).0,
            ProxyMode::V2
        );
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail dictates the closure type
    fn env_keys() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("TRACEGATE_TLS__CERT_FILE", "/c.pem");
            jail.set_env("TRACEGATE_TLS__KEY_FILE", "/k.pem");
            jail.set_env("TRACEGATE_TLS__GRPC__CLIENT_CA_FILE", "/ca.pem");
            jail.set_env("TRACEGATE_PROXY_PROTOCOL__MODE", "v2");
            jail.set_env("TRACEGATE_PROXY_PROTOCOL__TRUSTED_CIDRS", "[10.0.0.0/8]");
            let c = Config::load(None, &Default::default()).unwrap();
            assert_eq!(c.tls.cert_file, Some("/c.pem".into()));
            assert_eq!(c.tls.grpc.client_ca_file, Some("/ca.pem".into()));
            assert_eq!(c.proxy_protocol.mode, ProxyMode::V2);
            assert_eq!(c.proxy_protocol.trusted_cidrs.len(), 1);
            jail.set_env("TRACEGATE_PROXY_PROTOCOL__MODE", "v3");
            let e = Config::load(None, &Default::default())
                .unwrap_err()
                .to_string();
            assert!(e.to_lowercase().contains("proxy_protocol.mode"), "{e}");
            jail.set_env("TRACEGATE_PROXY_PROTOCOL__MODE", "v2");
            jail.set_env("TRACEGATE_TLS__CERT_FLIE", "/c.pem");
            let e = Config::load(None, &Default::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains("cert_flie"), "{e}");
            Ok(())
        });
    }
}
