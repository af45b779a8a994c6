//! The `[kafka]` config section (docs/configuration.md, docs/kafka.md) and the librdkafka
//! client configurations derived from it. Its presence switches `tracegate serve` from the
//! embedded queue to the Kafka producer; `tracegate write` requires it.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

use super::security::{self, KafkaSasl, KafkaTls, SecurityProtocol};
use crate::config::error::{zstd_level, ConfigError, Problems};

/// Kafka record key, which decides the partition (murmur2, as Java clients do).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PartitionKey {
    /// `<org>/<project>`: all of a project's batches on one partition (tenant locality).
    Project,
    /// The batch id: batches spread evenly over all partitions (no locality).
    Batch,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Each message's OTLP payload is zstd once: the client's zstd/gzip body as it came, or a
    /// plain body compressed by the gateway (one shot, a context per thread, level
    /// `payload_zstd_level`); librdkafka then compresses nothing.
    PayloadZstd,
    /// librdkafka compresses every message (plain payloads included).
    Zstd,
    Lz4,
    None,
}

fn invalid_key(key: &'static str, message: String) -> ConfigError {
    ConfigError::Invalid { key, message }
}

impl KafkaConfig {
    /// The MSK cluster's region when the clients authenticate with MSK IAM tokens.
    pub fn msk_iam_region(&self) -> Option<&str> {
        security::msk_iam_region(self.security_protocol, &self.sasl)
    }

    /// The zstd level at which the gateway compresses plain payloads itself, if it does.
    pub fn gateway_payload_zstd(&self) -> Option<i32> {
        (self.compression == Compression::PayloadZstd).then_some(self.payload_zstd_level)
    }
}

impl Compression {
    fn as_rdkafka(self) -> &'static str {
        match self {
            Compression::Zstd => "zstd",
            Compression::Lz4 => "lz4",
            Compression::None | Compression::PayloadZstd => "none",
        }
    }

    /// librdkafka's `compression.level` for this codec (-1 = the codec's own default).
    fn default_level(self) -> &'static str {
        match self {
            Compression::Zstd => "1",
            Compression::Lz4 | Compression::None | Compression::PayloadZstd => "-1",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` bootstrap list. Required.
    pub brokers: String,
    pub topic: String,
    pub partition_key: PartitionKey,
    pub compression: Compression,
    /// zstd level of payloads the gateway compresses (`compression = "payload_zstd"`).
    pub payload_zstd_level: i32,
    /// Largest Kafka message the producer sends (≤ the topic's `max.message.bytes`); larger
    /// batches are split by resource / scope / span.
    pub message_max_bytes: usize,
    /// Bound on bytes of messages waiting for a broker acknowledgement (503 over it).
    pub queue_max_bytes: usize,
    /// A message not acknowledged within this time fails its request (503, retryable).
    pub delivery_timeout_ms: u64,
    /// Producer clients of the gateway, used in turn. Each has its own broker connections, and
    /// an idempotent producer keeps at most 5 requests in flight per connection: a burst of
    /// large requests queues behind that limit (docs/benchmarks.md, session 6).
    pub producers: usize,
    /// A batch whose messages (keys and values) total fewer bytes goes through one more
    /// producer, kept for such batches, whose librdkafka threads run under `SCHED_BATCH` (Linux,
    /// sched.rs), so that small requests share produce requests. 0: no such producer.
    pub small_batch_bytes: usize,
    /// How long a partition's messages wait for more before they are sent…
    pub linger_ms: u64,
    /// …unless this many bytes are already waiting (librdkafka `batch.size`), which is also the
    /// most one produce request carries for a partition.
    pub produce_batch_bytes: usize,
    /// How often librdkafka statistics are turned into metrics.
    pub statistics_interval_ms: u64,
    // --- writer (`tracegate write`) ---
    pub group_id: String,
    /// A writer that stops heartbeating loses its partitions after this long.
    pub session_timeout_ms: u64,
    /// A writer batch (one offset range of one partition) is cut at this many spans…
    pub batch_max_spans: usize,
    /// …or this many bytes of messages…
    pub batch_max_bytes: usize,
    /// …or when its first message has waited this long.
    pub batch_max_age_ms: u64,
    /// Above this many buffered bytes the writer pauses partitions that are waiting for sinks.
    pub writer_max_buffered_bytes: usize,
    /// `/metrics`, `/healthz`, `/readyz` of `tracegate write` (flag `--admin-addr`).
    pub writer_admin_addr: SocketAddr,
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl` (security.rs).
    pub security_protocol: SecurityProtocol,
    pub tls: KafkaTls,
    pub sasl: KafkaSasl,
    /// Extra librdkafka properties for every client (e.g. `"ssl.cipher.suites"`), applied
    /// last. The properties that carry the delivery guarantees or the security settings
    /// cannot be changed here.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            topic: "tracegate-batches".into(),
            partition_key: PartitionKey::Project,
            // The gateway adds no compression work of its own: what the client compressed
            // travels compressed (forwarded as sent), plain stays plain, and the writer
            // compresses once for the archive and ClickHouse. Compressing plain payloads here
            // costs ~0.5-1 µs of gateway CPU per realistic span (zstd at 1-2 GB/s against
            // ~1 µs for everything else), i.e. 40-45 % of a core's spans; `payload_zstd` buys
            // ~6x smaller Kafka messages for that (docs/kafka.md, docs/benchmarks.md).
            compression: Compression::None,
            payload_zstd_level: 1,
            message_max_bytes: 1_000_000,
            queue_max_bytes: 64 * 1024 * 1024,
            delivery_timeout_ms: 10_000,
            // The gateway answers only after the broker's ack, so a linger is request latency,
            // and it does not buy batching here: messages gather anyway while a connection's
            // produce requests are in flight (librdkafka keeps at most 5 per connection with
            // idempotence), i.e. exactly when the gateway is busy, and go out at once when it
            // is not. No linger and a batch of up to 1 MB per produce request (batch.size is
            // also the cap of one request's batch): small requests share produce requests, so
            // the broker round trip, the broker thread's wake-ups and the delivery reports are
            // paid per batch, not per request. Against 2 ms and 128 KiB, which cut a batch after
            // two 64-span requests: 64-span requests +8-26 % spans per gateway CPU-second,
            // 512-span ones unchanged, and p99 at 70 % load no worse (docs/benchmarks.md,
            // "Issue 21, session 23"). A linger with a batch size above what is in flight made
            // every request wait the whole linger (1 MB, 2 ms: p50 +1 ms).
            linger_ms: 0,
            producers: 2,
            // Half a produce request's batch: a batch under it leaves room for another in one
            // produce request, which is what waiting under SCHED_BATCH gathers. Measured against
            // none (docs/benchmarks.md, "Issue 21, session 24"): 64-, 128- and 256-span requests
            // (78-312 KB) +17-83 % spans per gateway CPU-second; 512-span ones (625 KB, one per
            // produce request) gained nothing and lost up to 8 % under SCHED_BATCH, so they stay
            // on the pool's producers.
            small_batch_bytes: 500_000,
            // At most one produce request's batch of a partition (see `linger_ms`); the
            // default message limit, so a batch holds as much as one message may.
            produce_batch_bytes: 1_000_000,
            statistics_interval_ms: 1_000,
            group_id: "tracegate-writer".into(),
            session_timeout_ms: 45_000,
            batch_max_spans: 50_000,
            batch_max_bytes: 32 * 1024 * 1024,
            batch_max_age_ms: 1_000,
            writer_max_buffered_bytes: 256 * 1024 * 1024,
            writer_admin_addr: ([127, 0, 0, 1], 8889).into(),
            security_protocol: SecurityProtocol::Plaintext,
            tls: KafkaTls::default(),
            sasl: KafkaSasl::default(),
            properties: BTreeMap::new(),
        }
    }
}

/// librdkafka properties that carry the delivery guarantees; `kafka.properties` may not set
/// them.
pub const PROTECTED_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "group.id",
    "message.max.bytes",
    "queue.buffering.max.kbytes",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "transactional.id",
];

/// Smallest `message_max_bytes`: room for the envelope, the key and a useful payload.
pub const MIN_MESSAGE_BYTES: usize = 16 * 1024;

impl KafkaConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut p = Problems::default();
        self.problems(&mut p);
        p.into_vec().into_iter().next().map_or(Ok(()), Err)
    }

    /// Each group of checks' first problem (`tracegate validate` lists them all).
    pub fn problems(&self, p: &mut Problems) {
        p.check(self.validate_endpoint());
        p.check(zstd_level(
            "kafka.payload_zstd_level",
            self.payload_zstd_level,
        ));
        p.check(self.validate_sizes());
        p.check(self.validate_bounds());
        p.check(self.validate_writer());
        p.check(security::validate(
            self.security_protocol,
            &self.tls,
            &self.sasl,
        ));
    }

    /// Brokers, topic and group.
    fn validate_endpoint(&self) -> Result<(), ConfigError> {
        let brokers: Vec<&str> = self
            .brokers
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if brokers.is_empty() {
            return Err(invalid_key(
                "kafka.brokers",
                "required: a comma-separated host:port list (env TRACEGATE_KAFKA__BROKERS)".into(),
            ));
        }
        for b in &brokers {
            let ok = b
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                return Err(invalid_key(
                    "kafka.brokers",
                    format!("{b:?} is not host:port"),
                ));
            }
        }
        // Kafka topic names: 1-249 of [a-zA-Z0-9._-].
        let t = &self.topic;
        if t.is_empty()
            || t.len() > 249
            || t == "."
            || t == ".."
            || !t
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(invalid_key(
                "kafka.topic",
                format!("{t:?} is not a valid Kafka topic name (1-249 of [a-zA-Z0-9._-])"),
            ));
        }
        if self.group_id.trim().is_empty() {
            return Err(invalid_key("kafka.group_id", "must not be empty".into()));
        }
        Ok(())
    }

    /// Message and producer-queue sizes.
    fn validate_sizes(&self) -> Result<(), ConfigError> {
        if self.message_max_bytes < MIN_MESSAGE_BYTES || self.message_max_bytes > 1_000_000_000 {
            return Err(invalid_key(
                "kafka.message_max_bytes",
                format!("must be between {MIN_MESSAGE_BYTES} and 1000000000"),
            ));
        }
        if self.queue_max_bytes < self.message_max_bytes {
            return Err(invalid_key(
                "kafka.queue_max_bytes",
                format!(
                    "must be at least kafka.message_max_bytes ({})",
                    self.message_max_bytes
                ),
            ));
        }
        if self.queue_max_bytes > (i32::MAX as usize) * 1024
            || self.queue_max_bytes > u32::MAX as usize
        {
            return Err(invalid_key(
                "kafka.queue_max_bytes",
                "must be below 4 GiB".into(),
            ));
        }
        Ok(())
    }

    /// Durations and counts, each within its range.
    fn validate_bounds(&self) -> Result<(), ConfigError> {
        // Every bounded number (durations in ms, counts, sizes): the key and its range named.
        let bounded = |key: &'static str, v: u64, lo: u64, hi: u64| {
            if v < lo || v > hi {
                Err(invalid_key(key, format!("must be between {lo} and {hi}")))
            } else {
                Ok(())
            }
        };
        bounded(
            "kafka.delivery_timeout_ms",
            self.delivery_timeout_ms,
            100,
            3_600_000,
        )?;
        bounded("kafka.linger_ms", self.linger_ms, 0, 900_000)?;
        bounded("kafka.producers", self.producers as u64, 1, 16)?;
        bounded(
            "kafka.small_batch_bytes",
            self.small_batch_bytes as u64,
            0,
            1_000_000_000,
        )?;
        bounded(
            "kafka.produce_batch_bytes",
            self.produce_batch_bytes as u64,
            1,
            1_000_000_000,
        )?;
        bounded(
            "kafka.statistics_interval_ms",
            self.statistics_interval_ms,
            100,
            3_600_000,
        )?;
        bounded(
            "kafka.session_timeout_ms",
            self.session_timeout_ms,
            1_000,
            3_600_000,
        )?;
        bounded(
            "kafka.batch_max_age_ms",
            self.batch_max_age_ms,
            1,
            3_600_000,
        )?;
        Ok(())
    }

    /// The writer's batches and buffer, and the librdkafka properties left to the operator.
    fn validate_writer(&self) -> Result<(), ConfigError> {
        if self.batch_max_spans == 0 {
            return Err(invalid_key(
                "kafka.batch_max_spans",
                "must be greater than 0".into(),
            ));
        }
        if self.batch_max_bytes == 0 {
            return Err(invalid_key(
                "kafka.batch_max_bytes",
                "must be greater than 0".into(),
            ));
        }
        if self.writer_max_buffered_bytes < self.batch_max_bytes {
            return Err(invalid_key(
                "kafka.writer_max_buffered_bytes",
                format!(
                    "must be at least kafka.batch_max_bytes ({})",
                    self.batch_max_bytes
                ),
            ));
        }
        for k in self.properties.keys() {
            if PROTECTED_PROPERTIES.contains(&k.as_str()) {
                return Err(invalid_key(
                    "kafka.properties",
                    format!(
                        "{k:?} cannot be set here: tracegate sets it to keep its delivery \
                         guarantees (use the dedicated kafka.* key where there is one)"
                    ),
                ));
            }
            if security::SECURITY_PROPERTIES.contains(&k.as_str()) {
                return Err(invalid_key(
                    "kafka.properties",
                    format!(
                        "{k:?} cannot be set here: use kafka.security_protocol, [kafka.tls] and \
                         [kafka.sasl] (secrets from a file or the environment)"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn common(&self, client_id: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.brokers.trim())
            .set("client.id", client_id)
            .set(
                "statistics.interval.ms",
                self.statistics_interval_ms.to_string(),
            )
            // Come back quickly after a broker outage (librdkafka's default backs off to 10 s).
            .set("reconnect.backoff.max.ms", "1000");
        security::apply(self.security_protocol, &self.tls, &self.sasl, &mut c);
        c
    }

    fn extra(&self, c: &mut ClientConfig) {
        for (k, v) in &self.properties {
            c.set(k, v);
        }
    }

    /// The gateway's producer: idempotent, acks=all, compressed, bounded.
    pub fn producer_config(&self) -> ClientConfig {
        let mut c = self.common("tracegate-gateway");
        // Our own byte bound (queue_max_bytes) refuses first; librdkafka's is a backstop.
        let kbytes = (self.queue_max_bytes / 1024 + 1024).min(i32::MAX as usize);
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", self.compression.as_rdkafka())
            // zstd at level 1, not librdkafka's default 3: compressing each message is the
            // gateway's largest CPU cost on the Kafka path (benches/benches/ingest.rs,
            // kafka_message_zstd{1,3}: 255 vs 339 µs per 512 spans, more than the whole scan +
            // envelope step). `kafka.properties."compression.level"` overrides it.
            .set("compression.level", self.compression.default_level())
            .set("linger.ms", self.linger_ms.to_string())
            .set("batch.size", self.produce_batch_bytes.to_string())
            .set("message.timeout.ms", self.delivery_timeout_ms.to_string())
            .set("message.max.bytes", self.message_max_bytes.to_string())
            .set("queue.buffering.max.kbytes", kbytes.to_string())
            .set("queue.buffering.max.messages", "1000000")
            // Java-compatible key hashing; keyless messages (none today) spread randomly.
            .set("partitioner", "murmur2_random");
        self.extra(&mut c);
        c
    }

    /// The writer's consumer: offsets are stored and committed only by the writer, after its
    /// sinks succeeded.
    pub fn consumer_config(&self) -> ClientConfig {
        let mut c = self.common("tracegate-writer");
        let heartbeat = (self.session_timeout_ms / 3).clamp(100, 3_000);
        let fetch = self.message_max_bytes.max(1024 * 1024);
        c.set("group.id", &self.group_id)
            // librdkafka's own pre-fetch queue sits in front of the writer's buffer; its default
            // (64 MiB) would double a small `writer_max_buffered_bytes`. A quarter of that bound,
            // but at least two fetches, keeps the writer's total memory near the configured one.
            .set(
                "queued.max.messages.kbytes",
                prefetch_kbytes(self.writer_max_buffered_bytes, fetch).to_string(),
            )
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", self.session_timeout_ms.to_string())
            .set("heartbeat.interval.ms", heartbeat.to_string())
            .set("isolation.level", "read_committed")
            .set("fetch.message.max.bytes", fetch.to_string())
            .set("enable.partition.eof", "false");
        self.extra(&mut c);
        c
    }
}

/// The consumer's pre-fetch queue bound in KiB (see `consumer_config`).
fn prefetch_kbytes(max_buffered: usize, fetch: usize) -> usize {
    (max_buffered / 4).max(2 * fetch).min(64 * 1024 * 1024) / 1024
}

#[cfg(test)]
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetch_queue_follows_the_writer_buffer_bound() {
        // The default 256 MiB buffer: 64 MiB of pre-fetch (librdkafka's own default).
        assert_eq!(prefetch_kbytes(256 << 20, 1 << 20), 64 << 10);
        // A small buffer: two fetches, not 64 MiB.
        assert_eq!(prefetch_kbytes(1 << 20, 1 << 20), 2 << 10);
        // Never above librdkafka's default.
        assert_eq!(prefetch_kbytes(usize::MAX / 2, 1 << 20), 64 << 10);
    }

    fn cfg() -> KafkaConfig {
        KafkaConfig {
            brokers: "127.0.0.1:9092, kafka-2:9092".into(),
            ..Default::default()
        }
    }

    fn err(k: KafkaConfig) -> String {
        k.validate().unwrap_err().to_string()
    }

    #[test]
    fn validation_names_keys() {
        cfg().validate().unwrap();
        assert!(err(KafkaConfig::default()).contains("kafka.brokers"));
        // One bad value at a time; the error names its key.
        type Spoil = fn(&mut KafkaConfig);
        let bad: [(&str, Spoil); 8] = [
            ("kafka.brokers", |k| k.brokers = "nohost".into()),
            ("kafka.topic", |k| k.topic = "a b".into()),
            ("kafka.message_max_bytes", |k| k.message_max_bytes = 10),
            ("kafka.queue_max_bytes", |k| k.queue_max_bytes = 20_000),
            ("kafka.produce_batch_bytes", |k| k.produce_batch_bytes = 0),
            ("kafka.producers", |k| k.producers = 0),
            ("kafka.producers", |k| k.producers = 17),
            ("kafka.small_batch_bytes", |k| k.small_batch_bytes = 1 << 31),
        ];
        for (key, spoil) in bad {
            let mut k = cfg();
            spoil(&mut k);
            let e = err(k);
            assert!(e.contains(key), "{key}: {e}");
        }
        let mut k = cfg();
        k.properties
            .insert("enable.idempotence".into(), "false".into());
        let e = err(k);
        assert!(
            e.contains("kafka.properties") && e.contains("enable.idempotence"),
            "{e}"
        );
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail dictates the closure type
    fn kafka_section_from_env_and_file_with_keys_named() {
        use crate::config::{Config, Overrides};
        figment::Jail::expect_with(|jail| {
            let o = Overrides::default();
            assert!(Config::load(None, &o).unwrap().kafka.is_none());
            jail.set_env("TRACEGATE_KAFKA__BROKERS", "127.0.0.1:9092");
            jail.set_env("TRACEGATE_KAFKA__TOPIC", "t1");
            let k = Config::load(None, &o).unwrap().kafka.unwrap();
            assert_eq!(k.brokers, "127.0.0.1:9092");
            assert_eq!(k.topic, "t1");
            assert_eq!(k.group_id, "tracegate-writer");
            jail.set_env("TRACEGATE_KAFKA__BROKERZ", "x");
            let e = Config::load(None, &o).unwrap_err().to_string();
            assert!(e.contains("brokerz"), "{e}");
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[kafka]\ntopic = \"t\"\n")?;
            let e = Config::load(Some(std::path::Path::new("c.toml")), &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains("kafka.brokers"), "{e}");
            jail.create_file(
                "d.toml",
                "[kafka]\nbrokers = \"b:1\"\npartition_key = \"trace\"\n",
            )?;
            let e = Config::load(Some(std::path::Path::new("d.toml")), &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains("partition_key"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn client_configs_carry_the_guarantees() {
        let mut k = cfg();
        k.properties
            .insert("socket.timeout.ms".into(), "5000".into());
        let p = k.producer_config();
        assert_eq!(p.get("enable.idempotence"), Some("true"));
        assert_eq!(p.get("acks"), Some("all"));
        // Payloads travel as the client sent them: neither librdkafka nor the gateway compresses.
        assert_eq!(p.get("compression.type"), Some("none"));
        assert_eq!(p.get("linger.ms"), Some("0"));
        assert_eq!(p.get("batch.size"), Some("1000000"));
        assert_eq!(k.gateway_payload_zstd(), None);
        k.compression = Compression::PayloadZstd;
        assert_eq!(k.gateway_payload_zstd(), Some(1));
        assert_eq!(k.producer_config().get("compression.type"), Some("none"));
        k.compression = Compression::Zstd;
        assert_eq!(k.gateway_payload_zstd(), None);
        let p = k.producer_config();
        assert_eq!(p.get("compression.type"), Some("zstd"));
        assert_eq!(p.get("compression.level"), Some("1"));
        assert_eq!(p.get("socket.timeout.ms"), Some("5000"));
        // The operator's level wins.
        k.properties.insert("compression.level".into(), "6".into());
        assert_eq!(k.producer_config().get("compression.level"), Some("6"));
        let c = k.consumer_config();
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(c.get("group.id"), Some("tracegate-writer"));
    }
}
