//! The tables the writer inserts into, one [`Table`] each, with their columns in RowBinary order
//! (the order every encoder in `rows/` writes them; names as in the INSERT). Column names and
//! types of the logs and metrics tables are the OpenTelemetry Collector's clickhouseexporter's
//! (`migration_v3.rs` has the DDL); tracegate's additions come first (tenant) or last.

/// The tenant columns every table starts with.
const TENANT: [&str; 4] = ["OrgId", "WorkspaceId", "ProjectId", "Region"];

/// A table rows are inserted into. The order of [`Table::ALL`] is the insert order: a payload
/// row is never written before the row that points to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Table {
    Spans,
    Payloads,
    Logs,
    LogPayloads,
    Gauge,
    Sum,
    Histogram,
    ExpHistogram,
    Summary,
}

/// Number of [`Table`]s.
pub const TABLES: usize = 9;

impl Table {
    pub const ALL: [Table; TABLES] = [
        Table::Spans,
        Table::Payloads,
        Table::Logs,
        Table::LogPayloads,
        Table::Gauge,
        Table::Sum,
        Table::Histogram,
        Table::ExpHistogram,
        Table::Summary,
    ];

    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn name(self) -> &'static str {
        match self {
            Table::Spans => "otel_traces",
            Table::Payloads => "otel_traces_payloads",
            Table::Logs => "otel_logs",
            Table::LogPayloads => "otel_logs_payloads",
            Table::Gauge => "otel_metrics_gauge",
            Table::Sum => "otel_metrics_sum",
            Table::Histogram => "otel_metrics_histogram",
            Table::ExpHistogram => "otel_metrics_exponential_histogram",
            Table::Summary => "otel_metrics_summary",
        }
    }

    /// Whether rows of this table count towards an insert's row limit: payload rows ride along
    /// with the rows that point to them.
    pub const fn is_primary(self) -> bool {
        !matches!(self, Table::Payloads | Table::LogPayloads)
    }

    /// The columns, tenant first, in RowBinary order.
    pub fn columns(self) -> Vec<&'static str> {
        let own: &[&str] = match self {
            Table::Spans => SPAN_COLUMNS,
            Table::Payloads => PAYLOAD_COLUMNS,
            Table::Logs => LOG_COLUMNS,
            Table::LogPayloads => LOG_PAYLOAD_COLUMNS,
            Table::Gauge => GAUGE_COLUMNS,
            Table::Sum => SUM_COLUMNS,
            Table::Histogram => HISTOGRAM_COLUMNS,
            Table::ExpHistogram => EXP_HISTOGRAM_COLUMNS,
            Table::Summary => SUMMARY_COLUMNS,
        };
        let metric = matches!(
            self,
            Table::Gauge | Table::Sum | Table::Histogram | Table::ExpHistogram | Table::Summary
        );
        let mut cols: Vec<&str> = TENANT.to_vec();
        if metric {
            cols.extend_from_slice(METRIC_COMMON);
        }
        cols.extend_from_slice(own);
        cols
    }
}

/// `otel_traces` after the tenant columns.
const SPAN_COLUMNS: &[&str] = &[
    "Timestamp",
    "TraceId",
    "SpanId",
    "ParentSpanId",
    "TraceState",
    "SpanName",
    "SpanKind",
    "ServiceName",
    "ResourceAttributes",
    "ScopeName",
    "ScopeVersion",
    "SpanAttributes",
    "Duration",
    "StatusCode",
    "StatusMessage",
    "Events.Timestamp",
    "Events.Name",
    "Events.Attributes",
    "Links.TraceId",
    "Links.SpanId",
    "Links.TraceState",
    "Links.Attributes",
    "ScopeAttributes",
    "Flags",
    "DroppedAttributesCount",
    "DroppedEventsCount",
    "DroppedLinksCount",
    "GenAiProvider",
    "GenAiOperation",
    "GenAiRequestModel",
    "GenAiResponseModel",
    "GenAiInputTokens",
    "GenAiOutputTokens",
    "PayloadKeys",
    "ReceivedAt",
];

/// `otel_traces_payloads` after the tenant columns.
const PAYLOAD_COLUMNS: &[&str] = &[
    "Timestamp",
    "TraceId",
    "SpanId",
    "Location",
    "EventIndex",
    "Key",
    "Value",
    "ValueBytes",
];

/// `otel_logs` after the tenant columns (`TimestampTime` is computed by ClickHouse).
const LOG_COLUMNS: &[&str] = &[
    "Timestamp",
    "TraceId",
    "SpanId",
    "TraceFlags",
    "SeverityText",
    "SeverityNumber",
    "ServiceName",
    "Body",
    "ResourceSchemaUrl",
    "ResourceAttributes",
    "ScopeSchemaUrl",
    "ScopeName",
    "ScopeVersion",
    "ScopeAttributes",
    "LogAttributes",
    "EventName",
    "GenAiProvider",
    "GenAiOperation",
    "GenAiRequestModel",
    "GenAiResponseModel",
    "GenAiInputTokens",
    "GenAiOutputTokens",
    "RecordId",
    "PayloadKeys",
    "ReceivedAt",
];

/// `otel_logs_payloads` after the tenant columns.
const LOG_PAYLOAD_COLUMNS: &[&str] = &[
    "Timestamp",
    "TraceId",
    "SpanId",
    "RecordId",
    "Location",
    "Key",
    "Value",
    "ValueBytes",
];

/// What every `otel_metrics_*` table has after the tenant columns.
const METRIC_COMMON: &[&str] = &[
    "ResourceAttributes",
    "ResourceSchemaUrl",
    "ScopeName",
    "ScopeVersion",
    "ScopeAttributes",
    "ScopeDroppedAttrCount",
    "ScopeSchemaUrl",
    "ServiceName",
    "MetricName",
    "MetricDescription",
    "MetricUnit",
    "Attributes",
    "StartTimeUnix",
    "TimeUnix",
];

const EXEMPLARS: [&str; 5] = [
    "Exemplars.FilteredAttributes",
    "Exemplars.TimeUnix",
    "Exemplars.Value",
    "Exemplars.SpanId",
    "Exemplars.TraceId",
];

const GAUGE_COLUMNS: &[&str] = &[
    "Value",
    "Flags",
    EXEMPLARS[0],
    EXEMPLARS[1],
    EXEMPLARS[2],
    EXEMPLARS[3],
    EXEMPLARS[4],
];

const SUM_COLUMNS: &[&str] = &[
    "Value",
    "Flags",
    EXEMPLARS[0],
    EXEMPLARS[1],
    EXEMPLARS[2],
    EXEMPLARS[3],
    EXEMPLARS[4],
    "AggregationTemporality",
    "IsMonotonic",
];

const HISTOGRAM_COLUMNS: &[&str] = &[
    "Count",
    "Sum",
    "BucketCounts",
    "ExplicitBounds",
    EXEMPLARS[0],
    EXEMPLARS[1],
    EXEMPLARS[2],
    EXEMPLARS[3],
    EXEMPLARS[4],
    "Flags",
    "Min",
    "Max",
    "AggregationTemporality",
];

const EXP_HISTOGRAM_COLUMNS: &[&str] = &[
    "Count",
    "Sum",
    "Scale",
    "ZeroCount",
    "PositiveOffset",
    "PositiveBucketCounts",
    "NegativeOffset",
    "NegativeBucketCounts",
    EXEMPLARS[0],
    EXEMPLARS[1],
    EXEMPLARS[2],
    EXEMPLARS[3],
    EXEMPLARS[4],
    "Flags",
    "Min",
    "Max",
    "AggregationTemporality",
];

const SUMMARY_COLUMNS: &[&str] = &[
    "Count",
    "Sum",
    "ValueAtQuantiles.Quantile",
    "ValueAtQuantiles.Value",
    "Flags",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_follow_the_insert_order() {
        for (i, t) in Table::ALL.iter().enumerate() {
            assert_eq!(t.index(), i);
            let cols = t.columns();
            assert_eq!(&cols[..4], &TENANT);
            let mut uniq = cols.clone();
            uniq.sort();
            uniq.dedup();
            assert_eq!(uniq.len(), cols.len(), "{t:?}");
        }
    }
}
