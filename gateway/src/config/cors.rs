//! `[server.cors]`: the origins whose pages may send spans from a browser (the answers are
//! built in `server::cors`).

use serde::{Deserialize, Serialize};

use super::ConfigError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Origins allowed to POST from a browser: `https://app.example.com` (exact, scheme and
    /// port included), `https://*.example.com` (any subdomain, not the domain itself), or `*`.
    /// Empty (the default): no CORS, a preflight gets 405.
    pub allowed_origins: Vec<String>,
    /// How long a browser may cache a preflight's answer (`Access-Control-Max-Age`).
    pub max_age_secs: u64,
}

impl Default for CorsConfig {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            max_age_secs: 7200,
        }
    }
}

impl CorsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        for o in &self.allowed_origins {
            if o != "*" && Pattern::parse(o).is_none() {
                return Err(ConfigError::Invalid {
                    key: "server.cors.allowed_origins",
                    message: format!(
                        "{o:?} is not an origin: scheme://host[:port], `*.` before the host for \
                         its subdomains, or `*`"
                    ),
                });
            }
        }
        Ok(())
    }
}

/// `scheme://[*.]host[:port]`, lowercased.
#[derive(Debug, Clone)]
pub(crate) struct Pattern {
    scheme: String,
    /// The host, or for `*.host` the suffix `.host`.
    host: String,
    subdomains: bool,
    port: Option<u16>,
}

impl Pattern {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        let s = s.to_ascii_lowercase();
        let (scheme, rest) = s.split_once("://")?;
        if !matches!(scheme, "http" | "https") || rest.is_empty() || rest.contains(['/', '?', '#'])
        {
            return None;
        }
        let (host, port) = match rest.find(']') {
            // An IPv6 literal: `[::1]` or `[::1]:3000`.
            Some(end) => {
                let (h, tail) = rest.split_at(end + 1);
                match tail.strip_prefix(':') {
                    Some(p) => (h, Some(p.parse::<u16>().ok()?)),
                    None if tail.is_empty() => (h, None),
                    None => return None,
                }
            }
            None => match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p.parse::<u16>().ok()?)),
                None => (rest, None),
            },
        };
        // Browsers leave the scheme's default port out of `Origin`.
        let default = if scheme == "https" { 443 } else { 80 };
        let port = port.filter(|&p| p != default);
        let (host, subdomains) = match host.strip_prefix("*.") {
            Some(h) => (format!(".{h}"), true),
            None => (host.to_string(), false),
        };
        if host.is_empty() || host.contains('*') || host == "." {
            return None;
        }
        Some(Self {
            scheme: scheme.to_string(),
            host,
            subdomains,
            port,
        })
    }

    pub(crate) fn matches(&self, origin: &Pattern) -> bool {
        if origin.subdomains || self.scheme != origin.scheme || self.port != origin.port {
            return false;
        }
        if self.subdomains {
            origin.host.len() > self.host.len() && origin.host.ends_with(&self.host)
        } else {
            self.host == origin.host
        }
    }
}
