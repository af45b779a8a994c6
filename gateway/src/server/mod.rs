//! Network front: the accept loop shared by all listeners, the OTLP/HTTP and OTLP/gRPC
//! receivers, and the admin endpoints.

pub mod admin;
pub mod conn;
pub mod cors;
pub mod grpc;
pub mod grpc_frame;
pub mod http;
pub mod lifecycle;
pub mod linger;
pub mod listener;
pub mod proxy;
pub mod proxy_header;
pub mod tls;
