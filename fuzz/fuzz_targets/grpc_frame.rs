//! gRPC unary message framing (gateway/src/server/grpc_frame.rs): never panics, and accepts
//! exactly the bodies of one prefix plus exactly the declared number of bytes.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

#[path = "../../gateway/src/server/grpc_frame.rs"]
mod grpc_frame;

fuzz_target!(|data: &[u8]| {
    let declared = (data.len() >= 5)
        .then(|| u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize);
    match grpc_frame::split_message(Bytes::copy_from_slice(data)) {
        Ok((flag, msg)) => {
            assert_eq!(flag, data[0]);
            assert_eq!(Some(msg.len()), declared);
            assert_eq!(&msg[..], &data[5..]);
        }
        Err(_) => assert!(declared != Some(data.len().saturating_sub(5))),
    }
});
