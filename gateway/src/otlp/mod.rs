//! OTLP request handling shared by the HTTP and gRPC receivers: capped decompression, decoding,
//! span validation (a scan of the protobuf bytes first, prost only when that is not enough;
//! spans too deep for prost cut out first by `prune`) and response encoding.

pub mod decode;
pub mod prune;
pub mod response;
pub mod scan;
pub mod validate;
