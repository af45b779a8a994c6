//! OTLP/JSON decoding (`tracegate_otlp::codec`, `decode(Format::Json, ..)`, with the proto3
//! `null` handling): it must never panic or overflow the stack, and whatever it accepts must
//! survive a protobuf round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tracegate_proto::otlp::collector::trace::v1::ExportTraceServiceRequest;

use tracegate_otlp::codec as decode;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = decode::decode(decode::Format::Json, data) {
        let bytes = req.encode_to_vec();
        let again = ExportTraceServiceRequest::decode(&bytes[..]).expect("re-decode");
        assert_eq!(again, req);
    }
});
