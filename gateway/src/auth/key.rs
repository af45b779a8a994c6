//! API key format: `tg_<key id>_<secret><checksum>`.
//!
//! - `tg_` says what the string is (secret scanners and humans recognise it).
//! - key id: 16 lowercase hex chars (64 random bits); the store looks records up by it, so the
//!   secret is never an index.
//! - secret: 64 lowercase hex chars (256 random bits).
//! - checksum: 8 lowercase hex chars, CRC-32 of everything before it, so a mistyped or truncated
//!   key is refused before any cache or store lookup.
//!
//! Only `HMAC-SHA256(pepper, secret)` is stored.

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;

pub const PREFIX: &str = "tg_";
const ID_HEX: usize = 16;
const SECRET_HEX: usize = 64;
const CRC_HEX: usize = 8;
pub const KEY_LEN: usize = PREFIX.len() + ID_HEX + 1 + SECRET_HEX + CRC_HEX;

/// A parsed key. `Debug` never prints the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub key_id: String,
    secret: String,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("key_id", &self.key_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    #[error("API key has the wrong length or prefix")]
    Shape,
    #[error("API key has a bad checksum")]
    Checksum,
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Constant-time equality for secrets: no early exit, no data-dependent branch. Works a machine
/// word at a time, several times faster than a byte-wise loop on the request's hot path.
/// Lengths are not secret (every key has the same length).
pub fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut acc = 0u64;
    let (ac, ar) = (a.chunks_exact(8), a.chunks_exact(8).remainder());
    let (bc, br) = (b.chunks_exact(8), b.chunks_exact(8).remainder());
    for (x, y) in ac.zip(bc) {
        let x = u64::from_ne_bytes(x.try_into().unwrap_or([0; 8]));
        let y = u64::from_ne_bytes(y.try_into().unwrap_or([0; 8]));
        acc |= x ^ y;
    }
    for (x, y) in ar.iter().zip(br) {
        acc |= u64::from(x ^ y);
    }
    // Keep the compiler from turning the accumulation into an early exit.
    std::hint::black_box(acc) == 0
}

/// A parsed key borrowing the request's text: the request path's allocation-free form.
#[derive(Clone, Copy)]
pub struct KeyRef<'a> {
    pub key_id: &'a str,
    pub secret: &'a str,
}

impl<'a> KeyRef<'a> {
    /// Shape and checksum check; no lookup, no allocation.
    pub fn parse(text: &'a str) -> Result<Self, KeyFormatError> {
        if text.len() != KEY_LEN || !text.is_ascii() || !text.starts_with(PREFIX) {
            return Err(KeyFormatError::Shape);
        }
        let rest = &text[PREFIX.len()..];
        let (id, rest) = rest.split_at(ID_HEX);
        let Some(rest) = rest.strip_prefix('_') else {
            return Err(KeyFormatError::Shape);
        };
        let (secret, crc) = rest.split_at(SECRET_HEX);
        if !is_lower_hex(id) || !is_lower_hex(secret) || !is_lower_hex(crc) {
            return Err(KeyFormatError::Shape);
        }
        let body = &text[..text.len() - CRC_HEX];
        let want = u32::from_str_radix(crc, 16).map_err(|_| KeyFormatError::Shape)?;
        if crc32fast::hash(body.as_bytes()) != want {
            return Err(KeyFormatError::Checksum);
        }
        Ok(KeyRef { key_id: id, secret })
    }

    /// Constant-time check of the secret against a stored `HMAC-SHA256(pepper, secret)`.
    pub fn verify(&self, pepper: &[u8], stored: &[u8]) -> bool {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(pepper).expect("HMAC takes any key");
        mac.update(self.secret.as_bytes());
        let h: [u8; 32] = mac.finalize().into_bytes().into();
        h.ct_eq(stored).into()
    }
}

impl ApiKey {
    pub fn generate() -> (Self, String) {
        let mut rng = rand::rng();
        let mut id = [0u8; ID_HEX / 2];
        let mut secret = [0u8; SECRET_HEX / 2];
        rng.fill_bytes(&mut id);
        rng.fill_bytes(&mut secret);
        let key = ApiKey {
            key_id: hex::encode(id),
            secret: hex::encode(secret),
        };
        let text = key.to_text();
        (key, text)
    }

    /// A new secret for an existing key id (rotation).
    pub fn regenerate(key_id: &str) -> Result<String, KeyFormatError> {
        if key_id.len() != ID_HEX || !is_lower_hex(key_id) {
            return Err(KeyFormatError::Shape);
        }
        let mut secret = [0u8; SECRET_HEX / 2];
        rand::rng().fill_bytes(&mut secret);
        Ok(ApiKey {
            key_id: key_id.to_string(),
            secret: hex::encode(secret),
        }
        .to_text())
    }

    pub fn secret(&self) -> &str {
        &self.secret
    }

    fn body(&self) -> String {
        format!("{PREFIX}{}_{}", self.key_id, self.secret)
    }

    /// The full key text, to be shown to its owner once.
    pub fn to_text(&self) -> String {
        let body = self.body();
        let crc = crc32fast::hash(body.as_bytes());
        format!("{body}{crc:08x}")
    }

    /// Shape and checksum check; no lookup.
    pub fn parse(text: &str) -> Result<Self, KeyFormatError> {
        let k = KeyRef::parse(text)?;
        Ok(ApiKey {
            key_id: k.key_id.to_string(),
            secret: k.secret.to_string(),
        })
    }

    /// `HMAC-SHA256(pepper, secret)`: a fast keyed hash fits a 256-bit random secret (no
    /// dictionary to slow down), and the pepper keeps a leaked key file useless on its own.
    pub fn hash(&self, pepper: &[u8]) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(pepper).expect("HMAC takes any key");
        mac.update(self.secret.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Constant-time comparison against a stored hash.
    pub fn verify(&self, pepper: &[u8], stored: &[u8]) -> bool {
        let h = self.hash(pepper);
        h.ct_eq(stored).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_verify() {
        let (k, text) = ApiKey::generate();
        assert_eq!(text.len(), KEY_LEN);
        let parsed = ApiKey::parse(&text).unwrap();
        assert_eq!(parsed, k);
        let h = k.hash(b"pepper");
        assert!(parsed.verify(b"pepper", &h));
        assert!(!parsed.verify(b"other pepper", &h));
    }

    #[test]
    fn bad_checksum_and_shape_are_refused() {
        let (_, text) = ApiKey::generate();
        let mut bad = text.clone().into_bytes();
        // flip one secret char
        let i = PREFIX.len() + ID_HEX + 5;
        bad[i] = if bad[i] == b'a' { b'b' } else { b'a' };
        assert_eq!(
            ApiKey::parse(std::str::from_utf8(&bad).unwrap()),
            Err(KeyFormatError::Checksum)
        );
        assert_eq!(ApiKey::parse("tg_short"), Err(KeyFormatError::Shape));
        assert_eq!(
            ApiKey::parse(&text.replace("tg_", "xx_")),
            Err(KeyFormatError::Shape)
        );
        assert_eq!(
            ApiKey::parse(&text.to_uppercase()),
            Err(KeyFormatError::Shape)
        );
    }

    #[test]
    fn secrets_equal_matches_eq() {
        let a = b"0123456789abcdef0123456789abcdefX";
        assert!(secrets_equal(a, a));
        for i in 0..a.len() {
            let mut b = *a;
            b[i] ^= 1;
            assert!(!secrets_equal(a, &b), "differs at {i}");
        }
        assert!(!secrets_equal(a, &a[..32]));
        assert!(secrets_equal(b"", b""));
    }

    #[test]
    fn debug_redacts_secret() {
        let (k, text) = ApiKey::generate();
        let secret = &text[PREFIX.len() + ID_HEX + 1..text.len() - CRC_HEX];
        assert!(!format!("{k:?}").contains(secret));
    }
}
