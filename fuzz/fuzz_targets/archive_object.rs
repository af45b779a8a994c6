//! The v2 (encrypted) archive object as a reader meets it (`tracegate_archive::crypto`): the
//! header parser on arbitrary bytes, opening with a key that is not the object's (the key
//! commitment or AES-GCM must refuse, never panic), the decrypted payload's zstd record frame
//! under a cap, and a seal → parse → open round trip of arbitrary payloads and contexts.
#![no_main]

use libfuzzer_sys::fuzz_target;

use tracegate_archive::crypto;

const CAP: usize = 1 << 20;
const KEY: [u8; crypto::DATA_KEY_LEN] = [7; crypto::DATA_KEY_LEN];

fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = crypto::parse(data) {
        // No fuzzer input carries a commitment for KEY: opening must fail cleanly.
        assert!(crypto::open(&parsed, &KEY).is_err());
        let _ = crypto::check_context(
            &parsed.header.context,
            &crypto::EncryptionContext::new("o", "p", "r", "g"),
        );
    }
    for codec in [crypto::CODEC_ZSTD, crypto::CODEC_STORED] {
        if let Ok(records) = crypto::decode_payload(data.to_vec(), codec, CAP) {
            assert!(records.iter().map(|(_, b)| b.len() + 8).sum::<usize>() <= CAP);
        }
    }
    // Round trip: the first bytes choose the context, the rest is the payload.
    let split = data.first().map_or(0, |&n| (n as usize).min(data.len().saturating_sub(1)));
    let (ctx, payload) = data.get(1..).unwrap_or_default().split_at(split);
    let name = String::from_utf8_lossy(ctx);
    let context = crypto::EncryptionContext::new(&name, "p", "r", &name);
    let wrapped = ctx.get(..ctx.len().min(64)).unwrap_or_default();
    let key = crypto::SealKey {
        provider: crypto::Provider::Keyring,
        key_id: &name,
        wrapped_key: wrapped,
        data_key: &KEY,
        context: &context,
        group_batches: data.len() as u32,
    };
    let codec = if data.len() % 2 == 0 { crypto::CODEC_ZSTD } else { crypto::CODEC_STORED };
    let object = crypto::seal(&key, codec, payload)
        .expect("sealing never fails for inputs that fit the header");
    let parsed = crypto::parse(&object).expect("a sealed object parses");
    assert_eq!(parsed.header.context, context);
    assert_eq!(parsed.header.key_id, name);
    assert_eq!(parsed.header.codec, codec);
    assert_eq!(crypto::open(&parsed, &KEY).expect("opens with its key"), payload);
});
