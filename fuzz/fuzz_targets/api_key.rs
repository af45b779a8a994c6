//! API key parsing (gateway/src/auth/key.rs): shape and checksum are checked before any lookup.
//! Whatever the text, parsing must not panic; a key it accepts must print back to the same text
//! and verify against its own hash.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../gateway/src/auth/key.rs"]
#[allow(dead_code)]
mod key;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let by_ref = key::KeyRef::parse(text);
    match key::ApiKey::parse(text) {
        Ok(k) => {
            let r = by_ref.expect("KeyRef and ApiKey disagree");
            assert_eq!(r.key_id, k.key_id.as_str());
            assert!(text.contains(r.secret));
            assert_eq!(k.to_text(), text);
            let pepper = b"fuzz-pepper";
            assert!(k.verify(pepper, &k.hash(pepper)));
        }
        Err(_) => assert!(by_ref.is_err()),
    }
});
