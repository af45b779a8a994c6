//! Authentication and tenancy: API key format, the key stores (file, PostgreSQL), the key
//! lifecycle service, control-plane tokens, the cached authenticator the request path calls,
//! and per-project rate limits.

pub mod authenticator;
pub mod file_store;
pub mod key;
pub mod pepper;
pub mod pg_tls;
pub mod postgres;
pub mod ratelimit;
pub mod record;
pub mod service;
pub mod store;
pub mod token;
