//! Control-plane tokens: short-lived JWTs signed with EdDSA (Ed25519), verified offline against
//! a JWKS from a file or URL (RFC 8725 practice). The algorithm list is pinned to EdDSA — `none`,
//! HS256 (including HS256 "signed" with the public key) and every other alg are refused before
//! any key lookup — iss/aud/exp/nbf are checked with explicit settings, the key is chosen by
//! `kid`, and an unknown `kid` triggers a JWKS refetch at most once per configured interval.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::TokensConfig;

#[derive(Debug, Clone, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub exp: u64,
    #[serde(default)]
    pub iat: Option<u64>,
    #[serde(default)]
    pub sub: Option<String>,
    #[serde(default)]
    pub jti: Option<String>,
    pub org_id: String,
    #[serde(default)]
    pub workspace_id: Option<String>,
    pub project_id: String,
    pub region: String,
    /// An array of scopes, or the OAuth-style space-separated `scope` string.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub spans_per_sec: Option<u64>,
    #[serde(default)]
    pub bytes_per_sec: Option<u64>,
}

impl Claims {
    pub fn all_scopes(&self) -> Vec<String> {
        let mut s = self.scopes.clone().unwrap_or_default();
        if let Some(sc) = &self.scope {
            s.extend(sc.split_whitespace().map(str::to_string));
        }
        s
    }
}

/// Why a token was refused: a bounded set (audit reasons, metric labels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    AlgorithmNotAllowed,
    UnknownKid,
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    LifetimeTooLong,
    MissingClaims,
    Disabled,
}

impl TokenError {
    pub fn reason(self) -> &'static str {
        match self {
            TokenError::Malformed => "token_malformed",
            TokenError::AlgorithmNotAllowed => "token_alg_not_allowed",
            TokenError::UnknownKid => "token_unknown_kid",
            TokenError::BadSignature => "token_bad_signature",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::WrongIssuer => "token_wrong_issuer",
            TokenError::WrongAudience => "token_wrong_audience",
            TokenError::LifetimeTooLong => "token_lifetime_too_long",
            TokenError::MissingClaims => "token_missing_claims",
            TokenError::Disabled => "tokens_disabled",
        }
    }
}

enum Source {
    File(PathBuf),
    Url(String),
}

pub struct TokenVerifier {
    cfg: TokensConfig,
    source: Source,
    keys: RwLock<HashMap<String, DecodingKey>>,
    last_fetch: Mutex<Option<Instant>>,
    http: reqwest::Client,
}

/// Looks like a JWT (three base64url segments), as opposed to an API key.
pub fn looks_like_jwt(s: &str) -> bool {
    s.starts_with("eyJ") && s.bytes().filter(|b| *b == b'.').count() == 2
}

impl TokenVerifier {
    /// `None` when tokens are not configured.
    pub fn new(cfg: &TokensConfig) -> Option<Self> {
        if cfg.jwks.is_empty() {
            return None;
        }
        let source = if cfg.jwks.starts_with("http://") || cfg.jwks.starts_with("https://") {
            Source::Url(cfg.jwks.clone())
        } else {
            Source::File(PathBuf::from(cfg.jwks.trim_start_matches("file://")))
        };
        Some(Self {
            cfg: cfg.clone(),
            source,
            keys: RwLock::new(HashMap::new()),
            last_fetch: Mutex::new(None),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        })
    }

    /// Loads the JWKS now; keeps the previous keys if that fails.
    pub async fn refresh(&self) -> anyhow::Result<usize> {
        *self.last_fetch.lock().expect("lock") = Some(Instant::now());
        let text = match &self.source {
            Source::File(p) => tokio::fs::read_to_string(p).await?,
            Source::Url(u) => {
                self.http
                    .get(u)
                    .send()
                    .await?
                    .error_for_status()?
                    .text()
                    .await?
            }
        };
        let set: JwkSet = serde_json::from_str(&text)?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            // Only Ed25519 (OKP) keys can verify EdDSA tokens; ignore everything else.
            if !matches!(jwk.algorithm, AlgorithmParameters::OctetKeyPair(_)) {
                continue;
            }
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            if let Ok(k) = DecodingKey::from_jwk(jwk) {
                keys.insert(kid, k);
            }
        }
        let n = keys.len();
        *self.keys.write().expect("lock") = keys;
        Ok(n)
    }

    pub fn spawn_refresher(self: &std::sync::Arc<Self>) -> tokio::task::JoinHandle<()> {
        let v = std::sync::Arc::downgrade(self);
        let every = Duration::from_secs(self.cfg.refresh_interval_secs.max(1));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(v) = v.upgrade() else { break };
                if let Err(e) = v.refresh().await {
                    tracing::warn!(error = %format!("{e:#}"), "JWKS refresh failed; keeping previous keys");
                }
            }
        })
    }

    fn refetch_allowed(&self) -> bool {
        let last = *self.last_fetch.lock().expect("lock");
        last.is_none_or(|t| t.elapsed() >= Duration::from_secs(self.cfg.min_refetch_interval_secs))
    }

    pub async fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::AlgorithmNotAllowed);
        }
        let kid = header.kid.ok_or(TokenError::UnknownKid)?;
        let have = self.keys.read().expect("lock").contains_key(&kid);
        if !have && self.refetch_allowed() {
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %format!("{e:#}"), "JWKS refetch for unknown kid failed");
            }
        }
        let keys = self.keys.read().expect("lock");
        let key = keys.get(&kid).ok_or(TokenError::UnknownKid)?;
        let mut v = Validation::new(Algorithm::EdDSA);
        v.algorithms = vec![Algorithm::EdDSA];
        v.leeway = self.cfg.leeway_secs;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.validate_aud = true;
        v.set_audience(&[&self.cfg.audience]);
        v.set_issuer(&[&self.cfg.issuer]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Claims>(token, key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature => TokenError::Expired,
                K::ImmatureSignature => TokenError::NotYetValid,
                K::InvalidIssuer => TokenError::WrongIssuer,
                K::InvalidAudience => TokenError::WrongAudience,
                K::InvalidSignature => TokenError::BadSignature,
                K::InvalidAlgorithm => TokenError::AlgorithmNotAllowed,
                K::MissingRequiredClaim(_) | K::Json(_) => TokenError::MissingClaims,
                _ => TokenError::Malformed,
            }
        })?;
        let c = data.claims;
        let now = jsonwebtoken::get_current_timestamp();
        let max = self.cfg.max_lifetime_secs;
        // A short-lived token stays short-lived whatever `iat` claims.
        let lifetime_from_iat = c
            .iat
            .map(|iat| c.exp.saturating_sub(iat))
            .unwrap_or(u64::MAX);
        if lifetime_from_iat > max || c.exp.saturating_sub(now) > max + self.cfg.leeway_secs {
            return Err(TokenError::LifetimeTooLong);
        }
        if c.project_id.is_empty() || c.org_id.is_empty() || c.region.is_empty() {
            return Err(TokenError::MissingClaims);
        }
        Ok(c)
    }
}
