//! The configuration's error and the checks every section shares. A leaf: the sections'
//! own files (`kafka/config.rs`, `clickhouse/config.rs`, `netconfig.rs`) use it, and
//! `config/mod.rs` uses them, so nothing here may use either.

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration error: {0}")]
    Parse(String),
    #[error("configuration error: `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

impl From<tracegate_archive::config::InvalidSetting> for ConfigError {
    fn from(e: tracegate_archive::config::InvalidSetting) -> Self {
        ConfigError::Invalid {
            key: e.key,
            message: e.message,
        }
    }
}

/// zstd levels the config accepts (archive, Kafka payloads, ClickHouse blocks): 1..=19, or
/// zstd's fast levels -7..=-1. 0 would mean "zstd's default" and hide the choice.
pub fn zstd_level(key: &'static str, level: i32) -> Result<(), ConfigError> {
    if (-7..=19).contains(&level) && level != 0 {
        return Ok(());
    }
    Err(ConfigError::Invalid {
        key,
        message: format!("{level} is not a zstd level (1..=19, or -7..=-1 for zstd's fast levels)"),
    })
}
