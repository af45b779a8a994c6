//! ClickHouse: the `[clickhouse]` config, the schema and its migrations (`tracegate migrate`),
//! tenant-scoped read access (`tracegate migrate tenant-reader`), the RowBinary row encoding
//! and the writer sink. See docs/clickhouse.md.

pub mod blocks;
pub mod cluster;
pub mod config;
pub mod endpoints;
pub mod migration_v3;
pub mod migrations;
pub mod pb;
pub mod rows;
pub mod schema;
pub mod sink;
pub mod tables;
pub mod tenant_access;
pub mod tls;
