//! CORS on OTLP/HTTP (`[server.cors]`), so the OTel browser SDK can export from a web page.
//!
//! A browser sends a preflight (`OPTIONS /v1/traces` with `Origin`,
//! `Access-Control-Request-Method` and `-Headers`) before a POST with an API key header or a
//! protobuf body. A preflight carries no credentials, so it is answered before authentication
//! and reads nothing: 204 with the allowed method and headers for an allowed origin, 403
//! without any `Access-Control-*` header otherwise. The POST's answer (200, and the errors too,
//! so the page can read a 429's `Retry-After`) carries `Access-Control-Allow-Origin` for an
//! allowed origin. `Access-Control-Allow-Credentials` is never sent: the SDK authenticates
//! with a header, not cookies, and a page of an origin allowed by `*` must never be handed the
//! user's cookies. An exact origin or a `*.` subdomain pattern is echoed with `Vary: Origin`
//! (caches must not serve one origin's answer to another); `*` answers `*`.

use http::header::{self, HeaderMap, HeaderValue};

use crate::config::cors::{CorsConfig, Pattern};

/// The request headers a page may send: the OTLP/HTTP ones and both API key headers.
const ALLOW_HEADERS: &str = "content-type, content-encoding, authorization, x-api-key";

pub struct Cors {
    any: bool,
    patterns: Vec<Pattern>,
    max_age: String,
}

impl Cors {
    /// The `Access-Control-Allow-Origin` value for a request's `Origin`, if it is allowed.
    fn allow(&self, req: &HeaderMap) -> Option<HeaderValue> {
        let origin = req.get(header::ORIGIN)?;
        if self.any {
            return Some(HeaderValue::from_static("*"));
        }
        let parsed = Pattern::parse(origin.to_str().ok()?)?;
        self.patterns
            .iter()
            .any(|p| p.matches(&parsed))
            .then(|| origin.clone())
    }

    /// The answer to a preflight: 204 and what may be sent, or 403 (no CORS headers).
    pub fn preflight(&self, req: &HeaderMap) -> (http::StatusCode, HeaderMap) {
        let mut h = HeaderMap::new();
        let method_ok = req
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .is_some_and(|m| m.as_bytes() == b"POST");
        let Some(allow) = self.allow(req).filter(|_| method_ok) else {
            return (http::StatusCode::FORBIDDEN, h);
        };
        self.vary(allow.as_bytes(), &mut h);
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("POST"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOW_HEADERS),
        );
        if let Ok(v) = HeaderValue::from_str(&self.max_age) {
            h.insert(header::ACCESS_CONTROL_MAX_AGE, v);
        }
        (http::StatusCode::NO_CONTENT, h)
    }

    /// Adds the CORS headers of an actual request's answer (its origin allowed).
    pub fn decorate(&self, req: &HeaderMap, resp: &mut HeaderMap) {
        let Some(allow) = self.allow(req) else {
            return;
        };
        self.vary(allow.as_bytes(), resp);
        resp.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        resp.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("retry-after"),
        );
    }

    fn vary(&self, allow: &[u8], h: &mut HeaderMap) {
        if allow != b"*" {
            h.append(header::VARY, HeaderValue::from_static("origin"));
        }
    }
}

impl Cors {
    /// None when CORS is off.
    pub fn build(cfg: &CorsConfig) -> Option<Cors> {
        if cfg.allowed_origins.is_empty() {
            return None;
        }
        Some(Cors {
            any: cfg.allowed_origins.iter().any(|o| o == "*"),
            patterns: cfg
                .allowed_origins
                .iter()
                .filter_map(|o| Pattern::parse(o))
                .collect(),
            max_age: cfg.max_age_secs.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str]) -> Cors {
        let cfg = CorsConfig {
            allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        Cors::build(&cfg).unwrap()
    }

    fn origin(o: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        h.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_static("POST"),
        );
        h
    }

    #[test]
    fn exact_and_subdomain_origins() {
        let c = cors(&[
            "https://app.example.com",
            "https://*.corp.example",
            "http://localhost:3000",
        ]);
        for ok in [
            "https://app.example.com",
            "HTTPS://APP.example.com",
            "https://a.corp.example",
            "https://a.b.corp.example",
            "http://localhost:3000",
        ] {
            assert!(c.allow(&origin(ok)).is_some(), "{ok}");
        }
        for no in [
            "http://app.example.com",
            "https://app.example.com:8443",
            "https://corp.example",
            "https://evilcorp.example",
            "https://a.corp.example.evil",
            "http://localhost:3001",
            "null",
            "https://*.corp.example",
        ] {
            assert!(c.allow(&origin(no)).is_none(), "{no}");
        }
        let (status, h) = c.preflight(&origin("https://a.corp.example"));
        assert_eq!(status, 204);
        assert_eq!(
            h[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://a.corp.example"
        );
        assert_eq!(h[header::VARY], "origin");
        assert!(!h.contains_key(header::ACCESS_CONTROL_ALLOW_CREDENTIALS));
        let (status, h) = c.preflight(&origin("https://evil.example"));
        assert_eq!(status, 403);
        assert!(h.is_empty());
    }

    #[test]
    fn star_answers_star_and_never_credentials() {
        let c = cors(&["*"]);
        let (status, h) = c.preflight(&origin("https://anyone.example"));
        assert_eq!(status, 204);
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert!(!h.contains_key(header::ACCESS_CONTROL_ALLOW_CREDENTIALS));
        assert!(!h.contains_key(header::VARY));
        let mut get = origin("https://anyone.example");
        get.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_static("DELETE"),
        );
        assert_eq!(c.preflight(&get).0, 403, "only POST");
    }

    #[test]
    fn bad_patterns_are_config_errors() {
        for bad in [
            "example.com",
            "https://",
            "https://a.example.com/path",
            "ftp://x",
            "https://*",
        ] {
            let cfg = CorsConfig {
                allowed_origins: vec![bad.into()],
                ..Default::default()
            };
            assert!(cfg.validate().is_err(), "{bad}");
        }
    }
}
