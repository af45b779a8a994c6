//! Shared harness for tracegate's integration tests.
//!
//! Starts the real `tracegate` binary (`env!("CARGO_BIN_EXE_tracegate")`) as a child process,
//! waits for its `tracegate listening ...` line and exposes its addresses, plus helpers to build,
//! encode and POST OTLP requests. Every wait is bounded: nothing here can hang a test forever.
#![allow(dead_code, unused_imports)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

mod archive;
mod certs;
mod clickhouse;
mod cloud;
mod grpc;
mod http;
mod inproc;
mod kafka;
mod load;
mod otel;
mod otlp;
mod pg;
mod powerloss;
mod process;
mod s3;

pub use archive::*;

/// The gateway package's directory, where the scripts and files the tests run are found from.
/// Cargo sets `CARGO_MANIFEST_DIR` when it runs a test, so the checkout being tested is used
/// even by a test binary that a shared build cache carried over from another checkout (its
/// compile-time path would point there).
pub fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}
pub use certs::*;
pub use clickhouse::*;
pub use cloud::*;
pub use grpc::*;
pub use http::*;
pub use inproc::*;
pub use kafka::*;
pub use load::*;
pub use otel::*;
pub use otlp::*;
pub use pg::*;
pub use powerloss::*;
pub use process::*;
pub use s3::*;
