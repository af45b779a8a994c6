//! OTLP request handling shared by the HTTP and gRPC receivers: capped decompression, decoding,
//! span validation (a scan of the protobuf bytes first, prost only when that is not enough) and
//! response encoding.

pub mod decode;
pub mod response;
pub mod scan;
pub mod validate;
