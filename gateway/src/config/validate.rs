//! The checks of a parsed configuration that its types cannot express: bounds, relations
//! between keys, required companions. Every check runs, so `tracegate validate` can list every
//! problem; `Config::validate` (start-up) stops at the first.

use super::error::{zstd_level, ConfigError, Problems};
use super::{Config, StoreKind};

impl Config {
    /// The first problem, if any: what start-up refuses to run with.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.problems().into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Every problem, in the order of the sections. A section validated by its own module
    /// (Kafka, ClickHouse, archive, TLS) contributes each of its checks' first problem.
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut p = Problems::default();
        self.server_and_limits(&mut p);
        p.check(self.server.cors.validate());
        self.writer_checks(&mut p);
        p.check(self.dedup.validate());
        self.auth_checks(&mut p);
        p.check(
            self.archive
                .validate(&self.server.data_dir)
                .map_err(ConfigError::from),
        );
        if let Some(ch) = &self.clickhouse {
            p.check(ch.validate());
        }
        if !self.tokens.jwks.is_empty() && self.tokens.issuer.is_empty() {
            p.invalid("tokens.issuer", "is required when tokens.jwks is set");
        }
        if let Some(k) = &self.kafka {
            k.problems(&mut p);
        }
        p.check(crate::netconfig::validate(
            &self.tls,
            &self.proxy_protocol,
            self.server.http_addr,
            self.server.grpc_addr,
        ));
        p.into_vec()
    }

    fn server_and_limits(&self, p: &mut Problems) {
        p.check(positive(
            "server.max_connections",
            self.server.max_connections as u64,
        ));
        p.check(positive(
            "server.request_head_timeout_ms",
            self.server.request_head_timeout_ms,
        ));
        p.check(positive(
            "server.idle_timeout_ms",
            self.server.idle_timeout_ms,
        ));
        let l = &self.limits;
        p.check(positive(
            "limits.max_request_bytes",
            l.max_request_bytes as u64,
        ));
        p.check(positive(
            "limits.max_inflight_bytes",
            l.max_inflight_bytes as u64,
        ));
        if l.decode_concurrency > 1024 {
            p.invalid(
                "limits.decode_concurrency",
                format!("{} is over 1024 (0 = one per CPU)", l.decode_concurrency),
            );
        }
        if l.prefault_bytes > (1 << 30) || l.prefault_bytes > 2 * l.max_inflight_bytes {
            p.invalid(
                "limits.prefault_bytes",
                format!(
                    "{} is over 1 GiB or over twice limits.max_inflight_bytes ({}), more than requests in flight can use",
                    l.prefault_bytes, l.max_inflight_bytes
                ),
            );
        }
        p.check(positive(
            "limits.max_attribute_depth",
            l.max_attribute_depth as u64,
        ));
        if l.max_inflight_bytes < l.max_request_bytes {
            p.invalid(
                "limits.max_inflight_bytes",
                format!(
                    "must be at least limits.max_request_bytes ({}), or a maximal request could never be admitted",
                    l.max_request_bytes
                ),
            );
        }
        if l.max_attribute_depth >= 100 {
            p.invalid(
                "limits.max_attribute_depth",
                "must be below 100 (the protobuf decoder's recursion limit)",
            );
        }
    }

    fn writer_checks(&self, p: &mut Problems) {
        let w = &self.writer;
        p.check(positive("writer.max_batch_spans", w.max_batch_spans as u64));
        p.check(positive("writer.max_batch_bytes", w.max_batch_bytes as u64));
        if w.max_batch_bytes > tracegate_archive::store::MAX_OBJECT_PLAIN_BYTES {
            p.invalid(
                "writer.max_batch_bytes",
                format!(
                    "must be at most {} (the largest archive object a reader inflates)",
                    tracegate_archive::store::MAX_OBJECT_PLAIN_BYTES
                ),
            );
        }
        p.check(positive("writer.queue_capacity", w.queue_capacity as u64));
        p.check(positive(
            "writer.max_concurrent_writes",
            w.max_concurrent_writes as u64,
        ));
        p.check(zstd_level("writer.compression_level", w.compression_level));
    }

    /// Key cache, key store, pepper, audit sink and the gateway's region.
    fn auth_checks(&self, p: &mut Problems) {
        p.check(positive("auth.cache_max_keys", self.auth.cache_max_keys));
        p.check(positive("auth.cache_ttl_ms", self.auth.cache_ttl_ms));
        p.check(positive(
            "server.body_timeout_ms",
            self.server.body_timeout_ms,
        ));
        if let Err(e) =
            tracegate_pipeline::tenant::validate_name("gateway.region", &self.gateway.region)
        {
            p.invalid("gateway.region", e.to_string());
        }
        if self.auth.store == StoreKind::Postgres
            && self.auth.database_url.is_none()
            && self.auth.database_url_file.is_none()
        {
            p.invalid(
                "auth.database_url",
                "(or auth.database_url_file) is required when auth.store = \"postgres\"",
            );
        }
        if let Some(pepper) = &self.auth.pepper {
            if let Err(e) = crate::auth::pepper::Pepper::from_hex(pepper) {
                p.invalid("auth.pepper", e.to_string());
            }
        }
        if !matches!(self.audit.sink.as_str(), "stdout" | "file" | "off") {
            p.invalid("audit.sink", "must be \"stdout\", \"file\" or \"off\"");
        }
    }
}

/// A setting that must not be 0.
fn positive(key: &'static str, v: u64) -> Result<(), ConfigError> {
    if v == 0 {
        return Err(ConfigError::Invalid {
            key,
            message: "must be greater than 0".into(),
        });
    }
    Ok(())
}
