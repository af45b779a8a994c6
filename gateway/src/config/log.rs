//! `[log]`: how `serve` and `write` log to stderr.

use std::io::IsTerminal;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines; colours only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields`, and the spans the
    /// event is in with their fields: listener, client, vpce, tenant, batch), for log shippers.
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (the default: what a person reads on a terminal or in `journalctl`) or `json`.
    /// The filter is `RUST_LOG` (default `info`).
    pub format: LogFormat,
}

impl LogConfig {
    /// Installs the global subscriber on stderr. Text has ANSI colours only when stderr is a
    /// terminal: a file or a pipe gets plain text.
    pub fn init(&self) {
        let filter =
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        match self.format {
            LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
            LogFormat::Json => builder
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .init(),
        }
    }
}
