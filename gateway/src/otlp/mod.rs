//! OTLP request handling shared by the HTTP and gRPC receivers: capped decompression, decoding,
//! span validation and response encoding.

pub mod decode;
pub mod response;
pub mod validate;
