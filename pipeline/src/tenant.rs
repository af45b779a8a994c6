//! What a tenant's ids look like. Org, workspace, project and region ids end up in object
//! paths (the archive), SQL (ClickHouse), Kafka keys and logs: they are kept to a safe alphabet
//! wherever one is created (API keys) or named (per-tenant KMS keys).

/// `Ok` when `value` is 1–64 characters of `[A-Za-z0-9._-]` not starting with `.`; the error
/// names `what`.
pub fn validate_name(what: &str, value: &str) -> anyhow::Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !value.starts_with('.');
    if !ok {
        anyhow::bail!("{what} must be 1-64 chars of [A-Za-z0-9._-], not starting with '.'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("project", "ok-name_1.x").is_ok());
        assert!(validate_name("project", "../etc").is_err());
        assert!(validate_name("project", ".hidden").is_err());
        assert!(validate_name("project", "").is_err());
        assert!(validate_name("project", &"a".repeat(65)).is_err());
        assert!(validate_name("project", "a/b").is_err());
        assert!(validate_name("project", "a'b").is_err());
    }
}
