//! Network front: the accept loop shared by all listeners, the OTLP/HTTP and OTLP/gRPC
//! receivers, and the admin endpoints.

pub mod admin;
pub mod body;
pub mod grpc;
pub mod http;
pub mod listener;
