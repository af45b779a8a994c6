//! Archive object format v2: envelope encryption (documented in `docs/archive-format.md`).
//!
//! ```text
//! magic        "TGA2"                  4 bytes
//! header_len   u32 LE                  length H of the header that follows
//! header       H bytes                 (all of it is authenticated as AAD, see below)
//!   version    u8 = 1                  header layout
//!   suite      u8 = 1                  AES-256-GCM payload, HKDF-SHA256 derivation, key commitment
//!   codec      u8                      1 = zstd, 2 = stored (the batches' payloads are compressed)
//!   provider   u8                      1 = local keyring, 2 = AWS KMS
//!   key id     u16 LE len + UTF-8      the key-encryption key (keyring key id / KMS key ARN)
//!   wrapped    u16 LE len + bytes      the data key, wrapped by that KEK
//!   context    u16 LE count, then count × (u16 len + UTF-8 key, u16 len + UTF-8 value),
//!              keys sorted and unique: org_id, project_id, region, group_id
//!   group_batches u32 LE               batches in the whole writer group (every tenant)
//!   message id [32]                    random, the HKDF salt
//!   commitment [32]                    HKDF(data key, message id, "…commitment")
//!   nonce      [12]                    random
//! ciphertext   rest                    AES-256-GCM(payload key, nonce, AAD = bytes 0..8+H)
//!                                      of the payload, then the 16-byte tag
//! ```
//! The payload is records `u32 LE len`, `u32 LE index of the batch in its writer group`, `len`
//! bytes of an encoded `tracegate.v1.Batch`: in one zstd frame (content checksum), or stored as
//! they are when the batches carry compressed OTLP payloads (compressing them again cost CPU
//! and saved nothing; AES-GCM authenticates every byte either way).
//!
//! Every object has a fresh random 256-bit data key. The payload key and a key commitment are
//! derived from it with HKDF-SHA256 (salt = message id), as in the AWS Encryption SDK's
//! committing suites: a reader checks the commitment before decrypting, so an object cannot
//! decrypt to two different plaintexts under two keys. Any change to any byte (header or
//! ciphertext) fails authentication. The encryption context is both in the AAD and in the
//! wrapping of the data key (keyring: AAD of the key wrap; KMS: the EncryptionContext of
//! GenerateDataKey/Decrypt), so an object moved to another tenant's path, or read with another
//! tenant's context, does not decrypt.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{bail, ensure, Context, Result};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

pub const MAGIC: &[u8; 4] = b"TGA2";
pub const HEADER_VERSION: u8 = 1;
pub const SUITE_AES256GCM_HKDF_SHA256_COMMIT: u8 = 1;
pub const CODEC_ZSTD: u8 = 1;
/// The records uncompressed: chosen when most of their bytes are already-compressed payloads.
pub const CODEC_STORED: u8 = 2;
pub const DATA_KEY_LEN: usize = 32;
pub const MESSAGE_ID_LEN: usize = 32;
pub const COMMITMENT_LEN: usize = 32;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;

const INFO_PAYLOAD_KEY: &[u8] = b"tracegate/archive/v2 payload key";
const INFO_COMMITMENT: &[u8] = b"tracegate/archive/v2 commitment";

/// Context keys, in the order they sort.
pub const CTX_GROUP: &str = "group_id";
pub const CTX_ORG: &str = "org_id";
pub const CTX_PROJECT: &str = "project_id";
pub const CTX_REGION: &str = "region";

/// A fresh data key in plaintext; wiped from memory on drop.
pub type DataKey = Zeroizing<[u8; DATA_KEY_LEN]>;

/// Who wrapped the data key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Keyring = 1,
    AwsKms = 2,
}

impl Provider {
    fn from_u8(v: u8) -> Result<Self> {
        match v {
            1 => Ok(Provider::Keyring),
            2 => Ok(Provider::AwsKms),
            _ => bail!("corrupt archive header: unknown key provider {v}"),
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Provider::Keyring => "keyring",
            Provider::AwsKms => "aws-kms",
        })
    }
}

/// The encryption context: who the object belongs to. Bound to the ciphertext and to the
/// wrapped data key; also the KMS EncryptionContext (so it shows in CloudTrail).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EncryptionContext(pub BTreeMap<String, String>);

impl EncryptionContext {
    pub fn new(org: &str, project: &str, region: &str, group_id: &str) -> Self {
        let mut m = BTreeMap::new();
        m.insert(CTX_ORG.to_string(), org.to_string());
        m.insert(CTX_PROJECT.to_string(), project.to_string());
        m.insert(CTX_REGION.to_string(), region.to_string());
        m.insert(CTX_GROUP.to_string(), group_id.to_string());
        Self(m)
    }

    pub fn get(&self, k: &str) -> &str {
        self.0.get(k).map(String::as_str).unwrap_or("")
    }

    /// Canonical bytes: count, then sorted (key, value) pairs, each u16-length-prefixed.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(self.0.len() as u16).to_le_bytes());
        for (k, v) in &self.0 {
            put_str16(&mut out, k);
            put_str16(&mut out, v);
        }
        out
    }
}

impl fmt::Display for EncryptionContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (k, v) in &self.0 {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

/// Everything in a v2 header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// `CODEC_ZSTD` or `CODEC_STORED`.
    pub codec: u8,
    pub provider: Provider,
    pub key_id: String,
    pub wrapped_key: Vec<u8>,
    pub context: EncryptionContext,
    pub group_batches: u32,
    pub message_id: [u8; MESSAGE_ID_LEN],
    pub commitment: [u8; COMMITMENT_LEN],
    pub nonce: [u8; NONCE_LEN],
}

/// A parsed object: the header and where its bytes end.
#[derive(Debug)]
pub struct Parsed<'a> {
    pub header: Header,
    /// magic + header_len + header: the AAD.
    pub aad: &'a [u8],
    pub ciphertext: &'a [u8],
}

pub fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| anyhow::anyhow!("the system random number generator failed"))?;
    Ok(b)
}

/// A fresh random data key (used by the keyring provider; KMS makes its own).
pub fn new_data_key() -> Result<DataKey> {
    Ok(Zeroizing::new(random_bytes::<DATA_KEY_LEN>()?))
}

struct Len(usize);
impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-SHA256(ikm, salt) expanded with `info` into `out`.
pub fn hkdf_sha256(ikm: &[u8], salt: &[u8], info: &[u8], out: &mut [u8]) -> Result<()> {
    hkdf::Salt::new(hkdf::HKDF_SHA256, salt)
        .extract(ikm)
        .expand(&[info], Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .map_err(|_| anyhow::anyhow!("HKDF failed"))
}

fn derive(
    data_key: &[u8; DATA_KEY_LEN],
    message_id: &[u8; MESSAGE_ID_LEN],
) -> Result<(Zeroizing<[u8; 32]>, [u8; COMMITMENT_LEN])> {
    let mut payload_key = Zeroizing::new([0u8; 32]);
    hkdf_sha256(data_key, message_id, INFO_PAYLOAD_KEY, &mut payload_key[..])?;
    let mut commitment = [0u8; COMMITMENT_LEN];
    hkdf_sha256(data_key, message_id, INFO_COMMITMENT, &mut commitment)?;
    Ok((payload_key, commitment))
}

/// AES-256-GCM seal of `in_out` in place (tag appended).
pub fn aead_seal(
    key: &[u8; 32],
    nonce: [u8; NONCE_LEN],
    aad: &[u8],
    in_out: &mut Vec<u8>,
) -> Result<()> {
    let k = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, key).map_err(|_| anyhow::anyhow!("bad AES-256 key"))?,
    );
    k.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), in_out)
        .map_err(|_| anyhow::anyhow!("AES-256-GCM seal failed"))
}

/// AES-256-GCM open in place; returns the plaintext length (the tag is cut off `in_out`).
pub fn aead_open(
    key: &[u8; 32],
    nonce: [u8; NONCE_LEN],
    aad: &[u8],
    in_out: &mut Vec<u8>,
) -> Result<(), ring::error::Unspecified> {
    let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key)?);
    let n = k
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), in_out)?
        .len();
    in_out.truncate(n);
    Ok(())
}

/// Who an object is for: its key-encryption key, data key and context.
pub struct SealKey<'a> {
    pub provider: Provider,
    pub key_id: &'a str,
    pub wrapped_key: &'a [u8],
    pub data_key: &'a [u8; DATA_KEY_LEN],
    pub context: &'a EncryptionContext,
    pub group_batches: u32,
}

/// Builds a v2 object: header for `key` and `context`, `payload` (already encoded as `codec`
/// says) sealed with a key derived from `data_key`.
pub fn seal(key: &SealKey<'_>, codec: u8, payload: &[u8]) -> Result<Vec<u8>> {
    seal_with(key, codec, payload.len(), |out| {
        out.extend_from_slice(payload);
        Ok(())
    })
}

/// Builds a v2 object whose payload `write` appends (about `size_hint` bytes) straight after the
/// header, then encrypts it in place: the payload is written once, never copied into the object.
pub fn seal_with(
    key: &SealKey<'_>,
    codec: u8,
    size_hint: usize,
    write: impl FnOnce(&mut Vec<u8>) -> Result<()>,
) -> Result<Vec<u8>> {
    ensure!(
        codec == CODEC_ZSTD || codec == CODEC_STORED,
        "unknown archive codec {codec}"
    );
    let SealKey {
        provider,
        key_id,
        wrapped_key,
        data_key,
        context,
        group_batches,
    } = *key;
    let message_id = random_bytes::<MESSAGE_ID_LEN>()?;
    let nonce = random_bytes::<NONCE_LEN>()?;
    let (payload_key, commitment) = derive(data_key, &message_id)?;
    let header = Header {
        codec,
        provider,
        key_id: key_id.to_string(),
        wrapped_key: wrapped_key.to_vec(),
        context: context.clone(),
        group_batches,
        message_id,
        commitment,
        nonce,
    };
    let mut out = Vec::with_capacity(size_hint + 512 + TAG_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[0u8; 4]);
    encode_header(&header, &mut out)?;
    let h = (out.len() - 8) as u32;
    out[4..8].copy_from_slice(&h.to_le_bytes());
    let aad_len = out.len();
    write(&mut out)?;
    let k = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, &payload_key[..])
            .map_err(|_| anyhow::anyhow!("bad AES-256 key"))?,
    );
    let (aad, body) = out.split_at_mut(aad_len);
    let tag = k
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&*aad), body)
        .map_err(|_| anyhow::anyhow!("AES-256-GCM seal failed"))?;
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

fn encode_header(h: &Header, out: &mut Vec<u8>) -> Result<()> {
    ensure!(h.key_id.len() <= u16::MAX as usize, "key id too long");
    ensure!(
        h.wrapped_key.len() <= u16::MAX as usize,
        "wrapped key too long"
    );
    out.extend_from_slice(&[
        HEADER_VERSION,
        SUITE_AES256GCM_HKDF_SHA256_COMMIT,
        h.codec,
        h.provider as u8,
    ]);
    put_str16(out, &h.key_id);
    out.extend_from_slice(&(h.wrapped_key.len() as u16).to_le_bytes());
    out.extend_from_slice(&h.wrapped_key);
    out.extend_from_slice(&h.context.to_bytes());
    out.extend_from_slice(&h.group_batches.to_le_bytes());
    out.extend_from_slice(&h.message_id);
    out.extend_from_slice(&h.commitment);
    out.extend_from_slice(&h.nonce);
    Ok(())
}

fn put_str16(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    let n = b.len().min(u16::MAX as usize);
    out.extend_from_slice(&(n as u16).to_le_bytes());
    out.extend_from_slice(&b[..n]);
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.b.len() < n {
            bail!("corrupt archive header: truncated at {what}");
        }
        let (a, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(a)
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn bytes16(&mut self, what: &str) -> Result<&'a [u8]> {
        let n = self.u16(what)? as usize;
        self.take(n, what)
    }
    fn str16(&mut self, what: &str) -> Result<String> {
        let b = self.bytes16(what)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| anyhow::anyhow!("corrupt archive header: {what} is not UTF-8"))
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
}

/// Parses the v2 header (no key needed). Fails on anything malformed.
pub fn parse(object: &[u8]) -> Result<Parsed<'_>> {
    if object.len() < 8 || &object[..4] != MAGIC {
        bail!("not a v2 tracegate archive object (bad magic)");
    }
    let h = u32::from_le_bytes([object[4], object[5], object[6], object[7]]) as usize;
    if object.len() < 8 + h + TAG_LEN {
        bail!(
            "corrupt archive object: truncated (header length {h}, object {} bytes)",
            object.len()
        );
    }
    let mut r = Reader {
        b: &object[8..8 + h],
    };
    let version = r.u8("version")?;
    if version != HEADER_VERSION {
        bail!("unsupported archive header version {version} (this build reads {HEADER_VERSION})");
    }
    let suite = r.u8("suite")?;
    if suite != SUITE_AES256GCM_HKDF_SHA256_COMMIT {
        bail!("unsupported archive cipher suite {suite}");
    }
    let codec = r.u8("codec")?;
    if codec != CODEC_ZSTD && codec != CODEC_STORED {
        bail!("unsupported archive codec {codec}");
    }
    let provider = Provider::from_u8(r.u8("provider")?)?;
    let key_id = r.str16("key id")?;
    let wrapped_key = r.bytes16("wrapped key")?.to_vec();
    let n = r.u16("context")? as usize;
    let mut ctx = BTreeMap::new();
    for _ in 0..n {
        let k = r.str16("context key")?;
        let v = r.str16("context value")?;
        if let Some((last, _)) = ctx.last_key_value() {
            if &k <= last {
                bail!("corrupt archive header: context keys not sorted and unique");
            }
        }
        ctx.insert(k, v);
    }
    let group_batches = r.u32("group batches")?;
    let message_id = r.array::<MESSAGE_ID_LEN>("message id")?;
    let commitment = r.array::<COMMITMENT_LEN>("commitment")?;
    let nonce = r.array::<NONCE_LEN>("nonce")?;
    if !r.b.is_empty() {
        bail!("corrupt archive header: {} trailing bytes", r.b.len());
    }
    Ok(Parsed {
        header: Header {
            codec,
            provider,
            key_id,
            wrapped_key,
            context: EncryptionContext(ctx),
            group_batches,
            message_id,
            commitment,
            nonce,
        },
        aad: &object[..8 + h],
        ciphertext: &object[8 + h..],
    })
}

/// Checks the key commitment, then decrypts and authenticates the payload.
pub fn open(parsed: &Parsed<'_>, data_key: &[u8; DATA_KEY_LEN]) -> Result<Vec<u8>> {
    let h = &parsed.header;
    let (payload_key, commitment) = derive(data_key, &h.message_id)?;
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        &commitment[..],
        &h.commitment[..],
    )) {
        bail!(
            "integrity check failed: key commitment mismatch (the header was modified or the \
             data key is not this object's)"
        );
    }
    let mut buf = parsed.ciphertext.to_vec();
    aead_open(&payload_key, h.nonce, parsed.aad, &mut buf).map_err(|_| {
        anyhow::anyhow!(
            "integrity check failed: AES-256-GCM authentication of the payload failed (the \
             object was modified)"
        )
    })?;
    Ok(buf)
}

/// Checks that the object's context names the tenant and group its location says.
pub fn check_context(found: &EncryptionContext, expected: &EncryptionContext) -> Result<()> {
    for k in [CTX_ORG, CTX_PROJECT, CTX_GROUP] {
        if let Some(want) = expected.0.get(k) {
            if found.get(k) != want {
                bail!(
                    "encryption context mismatch: the object is bound to {found}, but its \
                     location says {expected} (moved or copied between tenants?)"
                );
            }
        }
    }
    Ok(())
}

/// Splits the decrypted payload (encoded as `codec` says) into (group index, batch bytes)
/// records after decompressing at most `max_plain` bytes: the payload is authenticated, but a
/// reader must not trust a key holder (or a bug) to bound the frame either (found while writing
/// the `archive_object` fuzz target).
pub fn decode_payload(
    payload: Vec<u8>,
    codec: u8,
    max_plain: usize,
) -> Result<Vec<(u32, bytes::Bytes)>> {
    use std::io::Read;
    let raw = match codec {
        CODEC_ZSTD => {
            let mut raw = Vec::new();
            zstd::stream::read::Decoder::new(&payload[..])?
                .take(max_plain as u64 + 1)
                .read_to_end(&mut raw)
                .context("decompressing archive payload")?;
            raw
        }
        CODEC_STORED => payload,
        other => bail!("unsupported archive codec {other}"),
    };
    ensure!(
        raw.len() <= max_plain,
        "archive payload inflates to more than {max_plain} bytes"
    );
    let raw = bytes::Bytes::from(raw);
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < raw.len() {
        ensure!(raw.len() - at >= 8, "truncated record header");
        let len = u32::from_le_bytes(raw[at..at + 4].try_into().unwrap_or_default()) as usize;
        let idx = u32::from_le_bytes(raw[at + 4..at + 8].try_into().unwrap_or_default());
        at += 8;
        ensure!(raw.len() - at >= len, "truncated record");
        out.push((idx, raw.slice(at..at + len)));
        at += len;
    }
    Ok(out)
}

/// `(group index, batch)` records, as an object's payload holds them.
pub type Records<'a> = [(u32, &'a tracegate_proto::v1::Batch)];

/// The codec for `records`: stored when at least 7/8 of their bytes are OTLP payloads that are
/// already compressed (a client's zstd / gzip body forwarded as it was, or the gateway's
/// `payload_zstd`): zstd over them found nothing to gain and cost ~5 % of the embedded path's
/// CPU on zstd bodies (docs/benchmarks.md, issue 21). Otherwise zstd.
pub fn choose_codec(records: &Records<'_>) -> u8 {
    let all = records_len(records);
    let compressed: usize = records
        .iter()
        .filter(|(_, b)| b.otlp_request_encoding != 0)
        .map(|(_, b)| b.otlp_request.len())
        .sum();
    if compressed.saturating_mul(8) >= all.saturating_mul(7) && all > 0 {
        CODEC_STORED
    } else {
        CODEC_ZSTD
    }
}

/// Appends the records to `out`, uncompressed.
fn write_records(records: &Records<'_>, out: &mut Vec<u8>) -> Result<()> {
    use prost::Message;
    for (idx, b) in records {
        let len = u32::try_from(b.encoded_len()).context("a batch record over 4 GiB")?;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&idx.to_le_bytes());
        b.encode(out)?;
    }
    Ok(())
}

/// Builds the payload as `codec` (`choose_codec`) says: the records stored, or one zstd frame
/// of them. For zstd the records are encoded into one buffer, then compressed in one call
/// (`tracegate_pipeline::zstd_once`): zstd's streaming encoder fed record by record took its
/// slow external-dictionary path, ~60 % of the embedded path's CPU on 8 KiB prompts (issue 21).
pub fn encode_payload(records: &Records<'_>, codec: u8, level: i32) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    append_payload(records, records_len(records), codec, level, &mut out)?;
    Ok(out)
}

/// Bytes of `records` uncompressed (their headers included).
fn records_len(records: &Records<'_>) -> usize {
    use prost::Message;
    records.iter().map(|(_, b)| 8 + b.encoded_len()).sum()
}

/// Appends the payload of `records` (`raw_len` bytes uncompressed) as `codec` says to `out`.
fn append_payload(
    records: &Records<'_>,
    raw_len: usize,
    codec: u8,
    level: i32,
    out: &mut Vec<u8>,
) -> Result<()> {
    if codec == CODEC_STORED {
        return write_records(records, out);
    }
    let mut raw = Vec::with_capacity(raw_len);
    write_records(records, &mut raw)?;
    let taken = std::mem::take(out);
    *out = tracegate_pipeline::zstd_once::compress_append(&raw, level, true, taken)?;
    Ok(())
}

/// A whole object for `records`: the codec chosen, the payload written straight into the object
/// after its header and sealed in place (one pass over the records' bytes when stored).
pub fn seal_records(key: &SealKey<'_>, records: &Records<'_>, level: i32) -> Result<Vec<u8>> {
    let codec = choose_codec(records);
    let raw_len = records_len(records);
    let hint = if codec == CODEC_STORED {
        raw_len
    } else {
        raw_len / 2
    };
    seal_with(key, codec, hint, |out| {
        append_payload(records, raw_len, codec, level, out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> EncryptionContext {
        EncryptionContext::new("acme", "web", "eu", "g:0:1-5")
    }

    fn key<'a>(dk: &'a DataKey, context: &'a EncryptionContext) -> SealKey<'a> {
        SealKey {
            provider: Provider::Keyring,
            key_id: "k1",
            wrapped_key: b"wrapped",
            data_key: dk,
            context,
            group_batches: 7,
        }
    }

    fn sample() -> (DataKey, Vec<u8>, Vec<u8>) {
        let dk = new_data_key().unwrap();
        let payload = b"zstd frame stand-in".to_vec();
        let obj = seal(&key(&dk, &ctx()), CODEC_ZSTD, &payload).unwrap();
        (dk, payload, obj)
    }

    #[test]
    fn round_trip() {
        let (dk, payload, obj) = sample();
        let p = parse(&obj).unwrap();
        assert_eq!(p.header.key_id, "k1");
        assert_eq!(p.header.wrapped_key, b"wrapped");
        assert_eq!(p.header.context, ctx());
        assert_eq!(p.header.group_batches, 7);
        assert_eq!(open(&p, &dk).unwrap(), payload);
        check_context(&p.header.context, &ctx()).unwrap();
    }

    #[test]
    fn every_single_byte_flip_fails() {
        let (dk, _, obj) = sample();
        for i in 0..obj.len() {
            let mut bad = obj.clone();
            bad[i] ^= 0x01;
            let r = parse(&bad).and_then(|p| {
                check_context(&p.header.context, &ctx())?;
                open(&p, &dk)
            });
            assert!(
                r.is_err(),
                "flip at byte {i} of {} went unnoticed",
                obj.len()
            );
        }
    }

    #[test]
    fn wrong_key_and_wrong_context_fail_clearly() {
        let (_, _, obj) = sample();
        let p = parse(&obj).unwrap();
        let other = new_data_key().unwrap();
        let e = open(&p, &other).unwrap_err().to_string();
        assert!(e.contains("integrity check failed"), "{e}");
        let e = check_context(
            &p.header.context,
            &EncryptionContext::new("other", "web", "eu", "g:0:1-5"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("encryption context mismatch"), "{e}");
    }

    #[test]
    fn payload_records_round_trip() {
        let a = tracegate_proto::v1::Batch {
            schema_version: 1,
            project_id: "p".into(),
            ..Default::default()
        };
        for codec in [CODEC_ZSTD, CODEC_STORED] {
            let frame = encode_payload(&[(3, &a), (9, &a)], codec, 3).unwrap();
            let recs = decode_payload(frame, codec, 1 << 20).unwrap();
            assert_eq!(recs.iter().map(|r| r.0).collect::<Vec<_>>(), vec![3, 9]);
        }
        let e = decode_payload(vec![0; 8], 9, 1 << 20).unwrap_err();
        assert!(e.to_string().contains("unsupported archive codec 9"), "{e}");
    }

    /// A batch whose payload is `n` bytes, compressed (zstd) or plain.
    fn batch(n: usize, compressed: bool) -> tracegate_proto::v1::Batch {
        tracegate_proto::v1::Batch {
            schema_version: if compressed { 2 } else { 1 },
            project_id: "p".into(),
            otlp_request: vec![0xa5; n].into(),
            otlp_request_encoding: i32::from(compressed),
            otlp_request_plain_len: if compressed { 4 * n as u64 } else { 0 },
            ..Default::default()
        }
    }

    #[test]
    fn compressed_payloads_are_stored_and_the_rest_compressed() {
        let (z, plain) = (batch(4096, true), batch(4096, false));
        assert_eq!(choose_codec(&[(0, &z), (1, &z)]), CODEC_STORED);
        assert_eq!(choose_codec(&[(0, &plain)]), CODEC_ZSTD);
        assert_eq!(choose_codec(&[(0, &z), (1, &plain)]), CODEC_ZSTD);
        assert_eq!(choose_codec(&[]), CODEC_ZSTD);
        // Small compressed payloads under a large envelope head are not worth storing.
        assert_eq!(choose_codec(&[(0, &batch(8, true))]), CODEC_ZSTD);
        let dk = new_data_key().unwrap();
        for (records, codec) in [
            (vec![(4, &z), (2, &z)], CODEC_STORED),
            (vec![(4, &plain), (2, &plain)], CODEC_ZSTD),
        ] {
            let obj = seal_records(&key(&dk, &ctx()), &records, 1).unwrap();
            let p = parse(&obj).unwrap();
            assert_eq!(p.header.codec, codec);
            let recs = decode_payload(open(&p, &dk).unwrap(), p.header.codec, 1 << 20).unwrap();
            assert_eq!(recs.len(), 2);
            assert_eq!(recs[0].0, 4);
            use prost::Message;
            let back = tracegate_proto::v1::Batch::decode(recs[1].1.clone()).unwrap();
            assert_eq!(&back, records[1].1);
            if codec == CODEC_STORED {
                // Stored: the object is the records plus header and tag, not compressed.
                assert!(obj.len() > 2 * 4096);
            } else {
                assert!(obj.len() < 4096);
            }
        }
    }

    #[test]
    fn payload_that_inflates_past_the_cap_is_refused() {
        let a = tracegate_proto::v1::Batch {
            schema_version: 1,
            project_id: "p".repeat(64 << 10),
            ..Default::default()
        };
        // 64 KiB of 'p' compresses to a few hundred bytes: a small bomb.
        let frame = encode_payload(&[(0, &a)], CODEC_ZSTD, 3).unwrap();
        assert!(frame.len() < 4096);
        let e = decode_payload(frame.clone(), CODEC_ZSTD, 32 << 10)
            .unwrap_err()
            .to_string();
        assert!(e.contains("inflates to more than"), "{e}");
        assert_eq!(
            decode_payload(frame, CODEC_ZSTD, 128 << 10).unwrap().len(),
            1
        );
        // Stored records are held to the same cap.
        let stored = encode_payload(&[(0, &a)], CODEC_STORED, 3).unwrap();
        let e = decode_payload(stored, CODEC_STORED, 32 << 10).unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");
    }
}
