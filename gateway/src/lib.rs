//! tracegate: an OpenTelemetry trace ingestion gateway.
//!
//! Request path: listener → OTLP/HTTP or OTLP/gRPC receiver → auth → admission →
//! decode + validate (blocking pool) → queue → writer → sinks (archive). See `docs/`.

pub mod admission;
pub mod alloc;
pub mod app;
pub mod archive;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod clickhouse;
pub mod config;
pub mod error;
pub mod fair;
pub mod ingest;
pub mod kafka;
pub mod metrics;
pub mod netconfig;
pub mod queue;
pub mod server;
pub mod tls_client;
