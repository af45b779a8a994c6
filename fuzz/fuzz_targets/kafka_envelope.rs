//! What the writer reads from Kafka and from the archive: a `tracegate.v1.Batch` envelope and
//! its OTLP payload (`tracegate_otlp::envelope`, forwarded zstd/gzip bodies inflated under a cap
//! and checked against the declared length), and a v1 archive object
//! (`tracegate_archive::format`). None may panic; a payload that reads must be exactly its
//! declared length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tracegate_proto::v1::{Batch, PayloadEncoding};

use tracegate_otlp::envelope;

use tracegate_archive::format;

const CAP: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = Batch::decode(data) {
        if let Ok(plain) = envelope::plain_request(&batch, CAP) {
            if envelope::encoding(&batch) != Ok(PayloadEncoding::Identity) {
                assert_eq!(plain.len() as u64, batch.otlp_request_plain_len);
                assert!(plain.len() <= CAP);
            }
        }
    }
    if let Ok(batches) = format::decode(data, CAP) {
        assert!(batches.iter().map(|b| b.encoded_len()).sum::<usize>() <= CAP);
    }
});
