//! Metric names (one place, all prefixed `tracegate_`) and the Prometheus recorder.
//! Label values are bounded enums only: never tenant ids, keys or client input.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const SPANS_ACCEPTED: &str = "tracegate_spans_accepted_total";
pub const SPANS_REJECTED: &str = "tracegate_spans_rejected_total";
pub const LOG_RECORDS_ACCEPTED: &str = "tracegate_log_records_accepted_total";
pub const LOG_RECORDS_REJECTED: &str = "tracegate_log_records_rejected_total";
pub const DATA_POINTS_ACCEPTED: &str = "tracegate_data_points_accepted_total";
pub const DATA_POINTS_REJECTED: &str = "tracegate_data_points_rejected_total";
pub const REQUESTS: &str = "tracegate_requests_total";
pub const REQUEST_DURATION: &str = "tracegate_request_duration_seconds";
/// Phases of an export inside `REQUEST_DURATION`: reading the body after the headers (OTLP/HTTP
/// only: a slow client or a busy receiver), and decoding + validating it on the blocking pool
/// (both transports, queue wait included: a saturated core shows here first). The rest is the
/// queue's durable write.
pub const REQUEST_BODY_READ_DURATION: &str = "tracegate_request_body_read_seconds";
pub const REQUEST_DECODE_DURATION: &str = "tracegate_request_decode_seconds";
pub const REQUEST_BYTES: &str = "tracegate_request_bytes_total";
/// Requests by validation path: `scan` (protobuf proven clean, bytes forwarded) or `prost`
/// (JSON, or a request with something to drop or stamp, or malformed).
pub const VALIDATION_PATH: &str = "tracegate_validation_path_requests_total";
pub const INFLIGHT_BYTES: &str = "tracegate_inflight_bytes";
pub const INFLIGHT_BYTES_LIMIT: &str = "tracegate_inflight_bytes_limit";
pub const BATCHES_WRITTEN: &str = "tracegate_batches_written_total";
pub use tracegate_archive::store::{
    BYTES_WRITTEN as ARCHIVE_BYTES_WRITTEN, OBJECTS_WRITTEN as ARCHIVE_OBJECTS_WRITTEN,
};
pub const WRITE_DURATION: &str = "tracegate_write_duration_seconds";
pub const WRITE_ERRORS: &str = "tracegate_write_errors_total";
pub const QUEUE_BATCHES: &str = "tracegate_queue_batches";
pub const AUTH_CACHE_LOOKUPS: &str = "tracegate_auth_store_lookups_total";
pub const AUTH_STORE_ERRORS: &str = "tracegate_auth_store_errors_total";
pub const AUTH_REFUSED: &str = "tracegate_auth_refused_total";
pub const CONNECTIONS_REFUSED: &str = "tracegate_connections_refused_total";
pub const ADMISSION_REFUSED: &str = "tracegate_admission_refused_total";
/// Requests that waited before their body for their project's decode backlog (ingest/readahead.rs).
pub const READ_AHEAD_WAITS: &str = "tracegate_read_ahead_waits_total";
pub const CONNECTIONS_SHED: &str = "tracegate_connections_shed_total";
pub const CONNECTIONS_CLOSED: &str = "tracegate_connections_closed_total";
pub const CONNECTIONS_OPEN: &str = "tracegate_connections_open";
/// Refused connections closed at once because `server::linger::MAX_HELD` were already held.
pub const CONNECTIONS_UNHELD: &str = "tracegate_connections_unheld_total";
pub const TLS_CERT_RELOADS: &str = "tracegate_tls_cert_reloads_total";
/// notAfter of the certificate each OTLP listener serves (Unix seconds), for expiry alerts.
pub const TLS_CERT_NOT_AFTER: &str = "tracegate_tls_cert_not_after_timestamp_seconds";
pub const RATE_LIMITED: &str = "tracegate_rate_limited_requests_total";
pub const BUILD_INFO: &str = "tracegate_build_info";
// ClickHouse sink (gateway/src/clickhouse/sink.rs).
pub const CLICKHOUSE_INSERTS: &str = "tracegate_clickhouse_inserts_total";
pub const CLICKHOUSE_ROWS: &str = "tracegate_clickhouse_rows_inserted_total";
pub const CLICKHOUSE_INSERT_DURATION: &str = "tracegate_clickhouse_insert_duration_seconds";
pub const CLICKHOUSE_ENCODE_DURATION: &str = "tracegate_clickhouse_encode_duration_seconds";
pub const CLICKHOUSE_WRITE_DURATION: &str = "tracegate_clickhouse_write_duration_seconds";
pub const CLICKHOUSE_DEAD_LETTER_BATCHES: &str = "tracegate_clickhouse_dead_letter_batches_total";
/// 1 while an endpoint of `clickhouse.url` takes inserts, by position in the list.
pub const CLICKHOUSE_ENDPOINT_UP: &str = "tracegate_clickhouse_endpoint_up";
/// Inserts moved to the next endpoint after a failure.
pub const CLICKHOUSE_FAILOVERS: &str = "tracegate_clickhouse_failovers_total";

// Kafka transport (gateway/src/kafka). `client` label: producer | consumer.
pub const KAFKA_PRODUCED_MESSAGES: &str = "tracegate_kafka_produced_messages_total";
pub const KAFKA_PRODUCED_BYTES: &str = "tracegate_kafka_produced_bytes_total";
pub const KAFKA_DELIVERY_DURATION: &str = "tracegate_kafka_delivery_duration_seconds";
pub const KAFKA_DELIVERY_FAILURES: &str = "tracegate_kafka_delivery_failures_total";
pub const KAFKA_SPLIT_BATCHES: &str = "tracegate_kafka_split_batches_total";
pub const KAFKA_IN_PLACE_MESSAGES: &str = "tracegate_kafka_in_place_messages_total";
pub const KAFKA_PRODUCER_REBUILDS: &str = "tracegate_kafka_producer_rebuilds_total";
pub const KAFKA_PRODUCER_QUEUE_BYTES: &str = "tracegate_kafka_producer_queue_bytes";
pub const KAFKA_PRODUCER_QUEUE_BYTES_LIMIT: &str = "tracegate_kafka_producer_queue_bytes_limit";
pub const KAFKA_PRODUCER_QUEUE_LATENCY: &str = "tracegate_kafka_producer_queue_latency_seconds";
pub const KAFKA_CLIENT_QUEUE_MESSAGES: &str = "tracegate_kafka_client_queue_messages";
pub const KAFKA_CLIENT_QUEUE_BYTES: &str = "tracegate_kafka_client_queue_bytes";
pub const KAFKA_BROKERS_UP: &str = "tracegate_kafka_brokers_up";
pub const KAFKA_BROKER_RTT: &str = "tracegate_kafka_broker_rtt_seconds";
pub const KAFKA_BROKER_ERRORS: &str = "tracegate_kafka_broker_errors_total";
pub const KAFKA_CLIENT_ERRORS: &str = "tracegate_kafka_client_errors_total";
pub const KAFKA_CONSUMER_LAG: &str = "tracegate_kafka_consumer_lag_messages";
pub const KAFKA_WRITER_BATCHES: &str = "tracegate_kafka_writer_batches_total";
pub const KAFKA_WRITER_MESSAGES: &str = "tracegate_kafka_writer_messages_total";
pub const KAFKA_WRITER_SPANS: &str = "tracegate_kafka_writer_spans_total";
pub const KAFKA_WRITER_BATCH_DURATION: &str = "tracegate_kafka_writer_batch_duration_seconds";
pub const KAFKA_WRITER_COMMITS: &str = "tracegate_kafka_writer_commits_total";
pub const KAFKA_WRITER_REBALANCES: &str = "tracegate_kafka_writer_rebalances_total";
pub const KAFKA_WRITER_BUFFERED_BYTES: &str = "tracegate_kafka_writer_buffered_bytes";
pub const KAFKA_WRITER_ASSIGNED_PARTITIONS: &str = "tracegate_kafka_writer_assigned_partitions";
pub const KAFKA_WRITER_PAUSED_PARTITIONS: &str = "tracegate_kafka_writer_paused_partitions";
pub const KAFKA_WRITER_QUARANTINED: &str = "tracegate_kafka_writer_quarantined_messages_total";
pub const DEDUP_REPEATS: &str = "tracegate_dedup_repeated_requests_total";
pub const DEDUP_REPEATED_SPANS: &str = "tracegate_dedup_repeated_spans_total";
pub const DEDUP_WINDOW_REQUESTS: &str = "tracegate_dedup_window_requests";
pub const DEDUP_EVICTED_EARLY: &str = "tracegate_dedup_evicted_early_total";
pub const DEDUP_REPLAYED: &str = "tracegate_dedup_replayed_messages_total";

/// Fine between 1 and 10 ms: an ingest SLO is typically "p99 under 10 ms", and a p99 read off
/// the histogram can only be as exact as the buckets around it.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.008, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the global recorder once per process and returns a handle that renders the
/// Prometheus text format. Later calls (tests starting several servers) reuse the first.
pub fn install() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("static bucket list is non-empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (e.g. in unit tests); keep our handle
            // working either way.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            process().describe();
            handle
        })
        .clone()
}

/// The `process_*` series (resident memory, CPU seconds, open and maximum file descriptors,
/// threads, start time), read from /proc at each scrape by [`render`].
fn process() -> &'static metrics_process::Collector {
    static PROCESS: std::sync::OnceLock<metrics_process::Collector> = std::sync::OnceLock::new();
    PROCESS.get_or_init(metrics_process::Collector::default)
}

/// The Prometheus text of every series, the `process_*` ones read now.
pub fn render(handle: &PrometheusHandle) -> String {
    process().collect();
    handle.render()
}

/// What each signal's ingest accepted and rejected.
fn describe_signals() {
    use metrics::describe_counter;
    describe_counter!(SPANS_ACCEPTED, "Spans accepted and durably queued");
    describe_counter!(SPANS_REJECTED, "Spans rejected, by reason");
    describe_counter!(
        LOG_RECORDS_ACCEPTED,
        "Log records accepted and durably queued"
    );
    describe_counter!(LOG_RECORDS_REJECTED, "Log records rejected, by reason");
    describe_counter!(
        DATA_POINTS_ACCEPTED,
        "Metric data points accepted and durably queued"
    );
    describe_counter!(
        DATA_POINTS_REJECTED,
        "Metric data points rejected, by reason"
    );
}

/// The listeners' connection series.
fn describe_connections() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections closed before serving a request: PROXY header or TLS handshake refused, no request head in time, or no seat (max_connections, max_connections_per_client), by listener and reason"
    );
    describe_counter!(
        CONNECTIONS_SHED,
        "Idle connections asked to close to seat a new one, by limit (max_connections, max_connections_per_client)"
    );
    describe_counter!(
        CONNECTIONS_CLOSED,
        "Connections closed by the gateway's deadlines, by listener and reason (idle, max_age)"
    );
    describe_gauge!(CONNECTIONS_OPEN, "Open connections, by listener");
    describe_counter!(
        CONNECTIONS_UNHELD,
        "Refused connections closed at once, without the short hold that lets the client read its answer, because the most were already held (the client may see a reset)"
    );
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_signals();
    describe_counter!(REQUESTS, "Export requests by transport and status");
    describe_histogram!(REQUEST_DURATION, Unit::Seconds, "Export request latency");
    describe_histogram!(
        REQUEST_BODY_READ_DURATION,
        Unit::Seconds,
        "OTLP/HTTP: time to read the request body after its headers, the wait for the project's read-ahead included"
    );
    describe_histogram!(
        REQUEST_DECODE_DURATION,
        Unit::Seconds,
        "Decode and validation of a request on the blocking pool, waits for a decode slot and a thread included"
    );
    describe_counter!(REQUEST_BYTES, Unit::Bytes, "Decompressed request bytes");
    describe_counter!(
        VALIDATION_PATH,
        "Requests by validation path: scan (clean protobuf, bytes forwarded) or prost"
    );
    describe_gauge!(INFLIGHT_BYTES, Unit::Bytes, "Bytes of requests in flight");
    describe_gauge!(
        INFLIGHT_BYTES_LIMIT,
        Unit::Bytes,
        "Bound on in-flight bytes"
    );
    describe_counter!(BATCHES_WRITTEN, "Batches written by the writer");
    describe_counter!(ARCHIVE_OBJECTS_WRITTEN, "Archive objects written");
    describe_counter!(ARCHIVE_BYTES_WRITTEN, Unit::Bytes, "Archive bytes written");
    describe_histogram!(WRITE_DURATION, Unit::Seconds, "Writer flush latency");
    describe_counter!(WRITE_ERRORS, "Writer flush failures");
    describe_gauge!(QUEUE_BATCHES, "Batches waiting in the embedded queue");
    describe_counter!(AUTH_CACHE_LOOKUPS, "API key store lookups (cache misses)");
    describe_counter!(AUTH_STORE_ERRORS, "Key store lookups that failed");
    describe_counter!(AUTH_REFUSED, "Refused credentials, by reason");
    describe_connections();
    describe_counter!(
        ADMISSION_REFUSED,
        "Requests refused by in-flight byte admission, by limit (global: 503, project: 429, read_ahead: 429 after waiting server.body_timeout_ms for the project's decode backlog)"
    );
    describe_counter!(
        READ_AHEAD_WAITS,
        "Requests whose body waited unread, in the socket, while their project had limits.read_ahead_bytes_per_project waiting for decode"
    );
    describe_counter!(
        TLS_CERT_RELOADS,
        "Certificate/CA reloads, by result (ok, error)"
    );
    describe_gauge!(
        TLS_CERT_NOT_AFTER,
        Unit::Seconds,
        "notAfter of the served TLS certificate (Unix time), by listener"
    );
    describe_counter!(RATE_LIMITED, "Requests refused by a project quota");
    describe_counter!(
        CLICKHOUSE_INSERTS,
        "ClickHouse insert attempts by table and result (ok, error = retried, rejected)"
    );
    describe_counter!(CLICKHOUSE_ROWS, "Rows inserted into ClickHouse, by table");
    describe_histogram!(
        CLICKHOUSE_INSERT_DURATION,
        Unit::Seconds,
        "One successful ClickHouse insert"
    );
    describe_histogram!(
        CLICKHOUSE_ENCODE_DURATION,
        Unit::Seconds,
        "RowBinary encoding of one group"
    );
    describe_histogram!(
        CLICKHOUSE_WRITE_DURATION,
        Unit::Seconds,
        "One group written to ClickHouse"
    );
    describe_counter!(
        CLICKHOUSE_DEAD_LETTER_BATCHES,
        "Batches ClickHouse rejected (or unreadable) kept in the dead-letter archive, by reason"
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the `version` label is the running build's version"
    );
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    describe_kafka();
}

/// The series of the Kafka producer and of librdkafka's client statistics (both sides).
fn describe_kafka() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        KAFKA_PRODUCED_MESSAGES,
        "Kafka messages acknowledged by the broker"
    );
    describe_counter!(
        KAFKA_PRODUCED_BYTES,
        Unit::Bytes,
        "Bytes of acknowledged Kafka messages"
    );
    describe_histogram!(
        KAFKA_DELIVERY_DURATION,
        Unit::Seconds,
        "Time from produce to broker acknowledgement of a request's messages"
    );
    describe_counter!(
        KAFKA_DELIVERY_FAILURES,
        "Requests refused or failed on the Kafka path, by reason"
    );
    describe_counter!(
        KAFKA_SPLIT_BATCHES,
        "Batches split into several Kafka messages"
    );
    describe_counter!(
        KAFKA_IN_PLACE_MESSAGES,
        "Kafka messages written around the request body in the buffer it was read into (the body not copied again)"
    );
    describe_gauge!(
        KAFKA_PRODUCER_QUEUE_BYTES,
        Unit::Bytes,
        "Bytes waiting for a broker acknowledgement"
    );
    describe_counter!(
        KAFKA_PRODUCER_REBUILDS,
        "Kafka producer pools replaced after a fatal librdkafka error"
    );
    describe_gauge!(
        KAFKA_PRODUCER_QUEUE_BYTES_LIMIT,
        Unit::Bytes,
        "kafka.queue_max_bytes"
    );
    describe_histogram!(
        KAFKA_PRODUCER_QUEUE_LATENCY,
        Unit::Seconds,
        "librdkafka: time messages spend in the producer queue (int_latency), placed at the quantiles of each statistics window"
    );
    describe_gauge!(
        KAFKA_CLIENT_QUEUE_MESSAGES,
        "librdkafka: messages in the producer queue / consumer fetch queues"
    );
    describe_gauge!(
        KAFKA_CLIENT_QUEUE_BYTES,
        Unit::Bytes,
        "librdkafka: bytes in the producer queue / consumer fetch queues"
    );
    describe_gauge!(
        KAFKA_BROKERS_UP,
        "librdkafka: brokers with an UP connection"
    );
    describe_histogram!(
        KAFKA_BROKER_RTT,
        Unit::Seconds,
        "librdkafka: broker request round-trip time, placed at the quantiles of each statistics window"
    );
    describe_counter!(
        KAFKA_BROKER_ERRORS,
        "librdkafka: broker transmit/receive errors, request timeouts, retries"
    );
    describe_counter!(
        KAFKA_CLIENT_ERRORS,
        "librdkafka: client errors by error code"
    );
    describe_gauge!(
        KAFKA_CONSUMER_LAG,
        "librdkafka: messages behind the partition end, summed over assigned partitions"
    );
    describe_kafka_writer();
    describe_dedup();
}

/// Retry-safe ingest (`[dedup]`), in whichever writer applies it.
fn describe_dedup() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        DEDUP_REPEATS,
        "Requests not stored because they repeat one stored within dedup.window_secs"
    );
    describe_counter!(
        DEDUP_REPEATED_SPANS,
        "Spans in requests not stored as repeats"
    );
    describe_gauge!(
        DEDUP_WINDOW_REQUESTS,
        "Requests remembered in the dedup window"
    );
    describe_counter!(
        DEDUP_EVICTED_EARLY,
        "Requests forgotten before dedup.window_secs to stay within dedup.max_bytes"
    );
    describe_counter!(
        DEDUP_REPLAYED,
        "Messages read back to rebuild the dedup window of a newly assigned partition"
    );
}

/// The series of `tracegate write`'s batches, commits and partitions.
fn describe_kafka_writer() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        KAFKA_WRITER_BATCHES,
        "Writer batches (offset ranges) written to every sink and committed"
    );
    describe_counter!(
        KAFKA_WRITER_MESSAGES,
        "Kafka messages in committed writer batches"
    );
    describe_counter!(KAFKA_WRITER_SPANS, "Spans in committed writer batches");
    describe_histogram!(
        KAFKA_WRITER_BATCH_DURATION,
        Unit::Seconds,
        "Writer batch cut → committed"
    );
    describe_counter!(
        KAFKA_WRITER_COMMITS,
        "Writer offset commits by kind (intent, done) and result"
    );
    describe_counter!(
        KAFKA_WRITER_REBALANCES,
        "Writer partition assignments and revocations"
    );
    describe_gauge!(
        KAFKA_WRITER_BUFFERED_BYTES,
        Unit::Bytes,
        "Bytes consumed and not yet cut into a batch"
    );
    describe_gauge!(
        KAFKA_WRITER_ASSIGNED_PARTITIONS,
        "Partitions assigned to this writer"
    );
    describe_gauge!(
        KAFKA_WRITER_PAUSED_PARTITIONS,
        "Partitions paused for backpressure"
    );
    describe_counter!(
        KAFKA_WRITER_QUARANTINED,
        "Unreadable Kafka messages kept in the quarantine dir, by reason"
    );
}

/// What runs in this process, so that [`register`] creates exactly its series. A series that
/// only appears after the first event makes `rate()`-based alerts blind until then, and an
/// absent series cannot be told from a broken scrape; a Kafka gauge at 0 in a process without
/// Kafka would fire alerts, so each part registers only its own metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct Parts {
    /// `tracegate serve`: OTLP receivers, auth, admission.
    pub receivers: bool,
    /// The embedded queue and writer (`serve` without `[kafka]`).
    pub embedded_writer: bool,
    /// The Kafka producer (`serve` with `[kafka]`).
    pub kafka_producer: bool,
    /// The Kafka consumer-group writer (`tracegate write`).
    pub kafka_writer: bool,
    /// The archive sink (embedded writer or `tracegate write`).
    pub archive: bool,
    /// The ClickHouse sink.
    pub clickhouse: bool,
}

fn labels(pairs: &[(&'static str, &'static str)]) -> Vec<metrics::Label> {
    pairs
        .iter()
        .map(|(k, v)| metrics::Label::new(*k, *v))
        .collect()
}

fn zero_counter(name: &'static str, pairs: &[(&'static str, &'static str)]) {
    metrics::counter!(name, labels(pairs)).increment(0);
}

fn zero_gauge(name: &'static str, pairs: &[(&'static str, &'static str)]) {
    metrics::gauge!(name, labels(pairs)).increment(0.0);
}

fn histogram(name: &'static str, pairs: &[(&'static str, &'static str)]) {
    // Registering is enough: the exporter renders a registered histogram with zero counts.
    let _ = metrics::histogram!(name, labels(pairs));
}

/// Registers, at zero, every series the given parts of the process export, with the label values
/// the alert rules and the dashboard in deploy/ select on (gateway/tests/deploy_metrics.rs checks
/// them against the scraped output). Counters and gauges are only touched (`+0`), so calling this
/// after some were already updated changes nothing.
pub fn register(parts: Parts) {
    if parts.receivers {
        register_receivers();
    }
    register_writers(&parts);
    if parts.clickhouse {
        register_clickhouse();
    }
    register_kafka(&parts);
}

/// The OTLP receivers: requests, spans, admission, auth, connections.
fn register_receivers() {
    for transport in ["http", "grpc"] {
        for status in ["ok", "unavailable"] {
            zero_counter(REQUESTS, &[("transport", transport), ("status", status)]);
        }
        histogram(REQUEST_DURATION, &[("transport", transport)]);
    }
    histogram(REQUEST_BODY_READ_DURATION, &[]);
    histogram(REQUEST_DECODE_DURATION, &[]);
    zero_counter(REQUEST_BYTES, &[]);
    zero_counter(SPANS_ACCEPTED, &[]);
    zero_counter(LOG_RECORDS_ACCEPTED, &[]);
    zero_counter(DATA_POINTS_ACCEPTED, &[]);
    for r in tracegate_otlp::validate::Reason::ALL {
        zero_counter(SPANS_REJECTED, &[("reason", r.label())]);
    }
    zero_gauge(INFLIGHT_BYTES, &[]);
    zero_gauge(INFLIGHT_BYTES_LIMIT, &[]);
    zero_counter(AUTH_CACHE_LOOKUPS, &[]);
    zero_counter(AUTH_STORE_ERRORS, &[]);
    zero_counter(AUTH_REFUSED, &[]);
    zero_counter(CONNECTIONS_REFUSED, &[]);
    zero_counter(CONNECTIONS_SHED, &[]);
    zero_counter(CONNECTIONS_UNHELD, &[]);
    zero_counter(ADMISSION_REFUSED, &[("limit", "global")]);
    zero_counter(ADMISSION_REFUSED, &[("limit", "project")]);
    zero_counter(ADMISSION_REFUSED, &[("limit", "read_ahead")]);
    zero_counter(READ_AHEAD_WAITS, &[]);
    zero_counter(CONNECTIONS_CLOSED, &[]);
    zero_counter(RATE_LIMITED, &[]);
}

/// The embedded writer and the archive sink.
fn register_writers(parts: &Parts) {
    if parts.embedded_writer || parts.kafka_writer {
        zero_counter(BATCHES_WRITTEN, &[]);
        histogram(WRITE_DURATION, &[]);
        zero_counter(DEDUP_REPEATS, &[]);
        zero_counter(DEDUP_REPEATED_SPANS, &[]);
        zero_gauge(DEDUP_WINDOW_REQUESTS, &[]);
        zero_counter(DEDUP_EVICTED_EARLY, &[]);
    }
    if parts.embedded_writer {
        zero_gauge(QUEUE_BATCHES, &[]);
    }
    if parts.archive {
        zero_counter(ARCHIVE_OBJECTS_WRITTEN, &[]);
        zero_counter(ARCHIVE_BYTES_WRITTEN, &[]);
        zero_counter(WRITE_ERRORS, &[("sink", "archive")]);
    }
}

/// The ClickHouse sink, per table.
fn register_clickhouse() {
    zero_counter(WRITE_ERRORS, &[("sink", "clickhouse")]);
    for table in crate::clickhouse::schema::Table::ALL.map(|t| t.name()) {
        for result in ["ok", "error", "rejected"] {
            zero_counter(CLICKHOUSE_INSERTS, &[("table", table), ("result", result)]);
        }
        zero_counter(CLICKHOUSE_ROWS, &[("table", table)]);
        histogram(CLICKHOUSE_INSERT_DURATION, &[("table", table)]);
    }
    histogram(CLICKHOUSE_ENCODE_DURATION, &[]);
    histogram(CLICKHOUSE_WRITE_DURATION, &[]);
    zero_counter(CLICKHOUSE_DEAD_LETTER_BATCHES, &[]);
    zero_counter(CLICKHOUSE_FAILOVERS, &[]);
}

/// The Kafka producer (serve) or consumer (write).
fn register_kafka(parts: &Parts) {
    let kafka_client = if parts.kafka_producer {
        Some("producer")
    } else if parts.kafka_writer {
        Some("consumer")
    } else {
        None
    };
    if let Some(client) = kafka_client {
        zero_gauge(KAFKA_CLIENT_QUEUE_MESSAGES, &[("client", client)]);
        zero_gauge(KAFKA_CLIENT_QUEUE_BYTES, &[("client", client)]);
        histogram(KAFKA_BROKER_RTT, &[("client", client)]);
        for kind in ["tx", "rx", "request_timeout", "retry"] {
            zero_counter(KAFKA_BROKER_ERRORS, &[("client", client), ("kind", kind)]);
        }
        zero_counter(KAFKA_CLIENT_ERRORS, &[("client", client)]);
        // KAFKA_BROKERS_UP is not registered: 0 before the first statistics would read as
        // "every broker down"; it appears with the first statistics (kafka.statistics_interval_ms).
    }
    if parts.kafka_producer {
        zero_counter(KAFKA_PRODUCED_MESSAGES, &[]);
        zero_counter(KAFKA_PRODUCED_BYTES, &[]);
        histogram(KAFKA_DELIVERY_DURATION, &[]);
        zero_counter(KAFKA_DELIVERY_FAILURES, &[]);
        zero_counter(KAFKA_SPLIT_BATCHES, &[]);
        zero_counter(KAFKA_IN_PLACE_MESSAGES, &[]);
        zero_counter(KAFKA_PRODUCER_REBUILDS, &[]);
        zero_gauge(KAFKA_PRODUCER_QUEUE_BYTES, &[]);
        zero_gauge(KAFKA_PRODUCER_QUEUE_BYTES_LIMIT, &[]);
        histogram(KAFKA_PRODUCER_QUEUE_LATENCY, &[]);
    }
    if parts.kafka_writer {
        zero_gauge(KAFKA_CONSUMER_LAG, &[]);
        zero_counter(KAFKA_WRITER_BATCHES, &[]);
        zero_counter(KAFKA_WRITER_MESSAGES, &[]);
        zero_counter(KAFKA_WRITER_SPANS, &[]);
        histogram(KAFKA_WRITER_BATCH_DURATION, &[]);
        for kind in ["intent", "done"] {
            for result in ["ok", "error"] {
                zero_counter(KAFKA_WRITER_COMMITS, &[("kind", kind), ("result", result)]);
            }
        }
        for kind in ["assign", "revoke"] {
            zero_counter(KAFKA_WRITER_REBALANCES, &[("kind", kind)]);
        }
        zero_gauge(KAFKA_WRITER_BUFFERED_BYTES, &[]);
        zero_gauge(KAFKA_WRITER_ASSIGNED_PARTITIONS, &[]);
        zero_gauge(KAFKA_WRITER_PAUSED_PARTITIONS, &[]);
        zero_counter(KAFKA_WRITER_QUARANTINED, &[]);
        zero_counter(DEDUP_REPLAYED, &[]);
    }
}
