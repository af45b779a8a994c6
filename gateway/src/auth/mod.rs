//! Authentication: API key format, the key store, and the cached authenticator that the request
//! path calls.

pub mod authenticator;
pub mod file_store;
pub mod key;
