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

/// Problems found by checks that all run (`tracegate validate` lists every one).
#[derive(Debug, Default)]
pub struct Problems(Vec<ConfigError>);

impl Problems {
    pub fn check(&mut self, result: Result<(), ConfigError>) {
        if let Err(e) = result {
            self.0.push(e);
        }
    }

    pub fn invalid(&mut self, key: &'static str, message: impl Into<String>) {
        self.0.push(ConfigError::Invalid {
            key,
            message: message.into(),
        });
    }

    pub fn into_vec(self) -> Vec<ConfigError> {
        self.0
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

/// figment's error as a person fixes it: where the value came from (`file:line:column`, or the
/// environment variable's real name, `TRACEGATE_LIMITS__MAX_ATTRIBUTES`), the key as the config
/// file writes it (no figment profile such as `default.`), and what is wrong.
pub fn describe_figment(e: &figment::Error) -> String {
    let key = e.path.join(".").to_ascii_lowercase();
    let md = e.metadata.as_ref();
    let from_env = md.is_some_and(|m| m.name.contains("environment variable"));
    let file = md.and_then(|m| match &m.source {
        Some(figment::Source::File(p)) => Some(p.clone()),
        _ => None,
    });
    let place = if from_env {
        let var: Vec<String> = e.path.iter().map(|p| p.to_ascii_uppercase()).collect();
        format!("environment variable TRACEGATE_{}: ", var.join("__"))
    } else if let Some(path) = file {
        let at = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| locate(&text, &e.path));
        match at {
            Some((line, col)) => format!("{}:{line}:{col}: ", path.display()),
            None => format!("{}: ", path.display()),
        }
    } else {
        String::new()
    };
    if key.is_empty() {
        format!("{place}{}", e.kind)
    } else {
        format!("{place}`{key}`: {}", e.kind)
    }
}

/// Line and column (1-based) of the dotted key `path` in TOML `text`, when it is written there.
pub(super) fn locate(text: &str, path: &[String]) -> Option<(usize, usize)> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut table: &dyn toml_edit::TableLike = doc.as_table();
    let mut span = None;
    for (i, k) in path.iter().enumerate() {
        let (key, item) = table.get_key_value(k)?;
        span = key.span();
        if i + 1 < path.len() {
            table = item.as_table_like()?;
        }
    }
    let at = span?.start;
    let line = text[..at].matches('\n').count() + 1;
    let col = at - text[..at].rfind('\n').map_or(0, |p| p + 1) + 1;
    Some((line, col))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_keys_in_sections_and_dotted_tables() {
        let text = "# c\n[server]\nhttp_addr = \"x\"\n\n[limits]\n  max_request_bytes = \"lots\"\n";
        let p = |s: &str| s.split('.').map(String::from).collect::<Vec<_>>();
        assert_eq!(locate(text, &p("limits.max_request_bytes")), Some((6, 3)));
        assert_eq!(locate(text, &p("server.http_addr")), Some((3, 1)));
        assert_eq!(locate(text, &p("server.nope")), None);
        assert_eq!(locate("a.b = 1\n", &p("a.b")), Some((1, 3)));
    }
}
