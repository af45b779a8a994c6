//! Fuzzes the PROXY protocol header parser exactly as the listener drives it: the fixed 16
//! bytes, then the declared length (`parse_v2_stream`), and the v1 line parser.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../gateway/src/server/proxy_header.rs"]
#[allow(dead_code)]
mod proxy_header;

fuzz_target!(|data: &[u8]| {
    if let Ok((info, n)) = proxy_header::parse_v2_stream(data) {
        assert!(n <= data.len() && n <= proxy_header::MAX_V2_HEADER_BYTES);
        if let Some(id) = &info.vpc_endpoint_id {
            assert!(!id.is_empty() && id.len() <= proxy_header::MAX_VPCE_ID_LEN);
        }
    }
    let _ = proxy_header::parse_v1(&data[..data.len().min(proxy_header::MAX_V1_HEADER_BYTES)]);
});
