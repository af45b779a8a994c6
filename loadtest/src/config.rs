//! What a run is asked to do (from the command line), echoed in its report. A leaf: the run and
//! the report both read it.

use std::path::PathBuf;

use serde::Serialize;

use crate::client::{Compression, Protocol};
use crate::payload::{Encoding, Shape, Signal};

/// Everything a run needs (from the command line); echoed in the report.
#[derive(Clone, Debug, Serialize)]
pub struct RunConfig {
    pub endpoint: String,
    pub protocol: Protocol,
    /// Traces, logs or metrics (`payload::Signal`); "spans" below are its items.
    pub signal: Signal,
    pub encoding: Encoding,
    pub compression: Compression,
    pub compression_level: Option<i32>,
    #[serde(skip)]
    pub api_keys: Vec<String>,
    pub projects: usize,
    pub ca_cert: Option<PathBuf>,
    /// Source address of the HTTP connections (None: the kernel's choice).
    pub local_addr: Option<std::net::IpAddr>,
    pub duration_secs: Option<f64>,
    /// Total spans (rounded up to whole requests).
    pub spans: Option<u64>,
    pub max_requests: Option<u64>,
    /// Spans per second (open loop); None = closed loop.
    pub rate: Option<f64>,
    /// How the open loop's requests fall due (ignored by the closed loop).
    pub arrivals: Arrivals,
    pub concurrency: usize,
    pub connections: usize,
    pub spans_per_request: u64,
    pub shape: Shape,
    pub llm_min_bytes: usize,
    pub llm_max_bytes: usize,
    /// One prompt attribute of exactly this many bytes per span (0: none).
    pub attr_bytes: usize,
    pub run_id: String,
    pub seed: u64,
    pub body_pool: usize,
    /// Template requests with different values, used in turn (at least 1).
    pub templates: usize,
    pub max_retries: u32,
    pub retry_default_ms: u64,
    pub retry_max_ms: u64,
    pub timeout_ms: u64,
    pub drain_timeout_ms: u64,
    pub threads: usize,
    pub watch_pids: Vec<(u32, String)>,
    #[serde(skip)]
    pub progress: bool,
}

/// When the open loop's requests fall due, at the same mean rate either way.
#[derive(Clone, Copy, Debug, clap::ValueEnum, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arrivals {
    /// Evenly spaced, one request every `spans_per_request / rate` seconds.
    Even,
    /// A Poisson process: independent, exponentially distributed gaps, which is what the sum of
    /// many independent exporters looks like. Several requests sometimes fall due within a
    /// millisecond, so queues in the server (and in its Kafka producer) are exercised the way
    /// real traffic exercises them; even spacing never does.
    Poisson,
}
