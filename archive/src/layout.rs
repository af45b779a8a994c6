//! Where an archive object lives: `<prefix>/<org>/<project>/<yyyy>/<mm>/<dd>/<group>.tga`,
//! the one place that writes and reads that key (the store, the dead-letter area under
//! [`DEAD_LETTER_SEGMENT`], and the listing that `archive ls`, `cat` and `replay` walk).

use chrono::{Datelike, NaiveDate};

pub const OBJECT_EXT: &str = "tga";

/// The first key segment of the ClickHouse dead-letter area, inside the archive's own location
/// (`<prefix>/.clickhouse-dead-letter/<org>/<project>/…`). Org names never start with '.', so
/// no tenant can own it, and the archive's listing (exactly six segments under its prefix) never
/// sees a dead letter as a span object.
pub const DEAD_LETTER_SEGMENT: &str = ".clickhouse-dead-letter";

/// The six key segments of one tenant's object of group `group_id`, written on `date`.
pub fn object_segments(org: &str, project: &str, date: NaiveDate, group_id: &str) -> [String; 6] {
    [
        safe_segment(org),
        safe_segment(project),
        format!("{:04}", date.year()),
        format!("{:02}", date.month()),
        format!("{:02}", date.day()),
        format!("{}.{OBJECT_EXT}", safe_segment(group_id)),
    ]
}

/// What an object's key says, read back from its six segments under the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedKey {
    pub org: String,
    pub project: String,
    pub date: NaiveDate,
    /// The group id as it appears in the key (sanitised).
    pub name: String,
}

/// The inverse of [`object_segments`]; `None` for anything else (other files, other depths).
pub fn parse_segments(rel: &[String]) -> Option<ParsedKey> {
    let [org, project, y, m, d, file] = rel else {
        return None;
    };
    let name = file.strip_suffix(&format!(".{OBJECT_EXT}"))?;
    Some(ParsedKey {
        org: org.clone(),
        project: project.clone(),
        date: NaiveDate::from_ymd_opt(y.parse().ok()?, m.parse().ok()?, d.parse().ok()?)?,
        name: name.to_string(),
    })
}

/// Names are validated when keys are made; this second guard keeps any name inside its
/// directory and object keys to `[A-Za-z0-9._-]` (Kafka group ids `t:p:a-b` become `t_p_a-b`).
pub fn safe_segment(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    match cleaned.as_str() {
        "" | "." | ".." => "_".to_string(),
        _ => cleaned,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_stay_inside_their_directory() {
        let date = NaiveDate::from_ymd_opt(2026, 3, 9).unwrap();
        let segs = object_segments("acme", "../web", date, "t:0:1-5");
        assert_eq!(segs.join("/"), "acme/.._web/2026/03/09/t_0_1-5.tga");
        let back = parse_segments(&segs).unwrap();
        assert_eq!(
            back,
            ParsedKey {
                org: "acme".into(),
                project: ".._web".into(),
                date,
                name: "t_0_1-5".into()
            }
        );
        assert!(parse_segments(&segs[1..]).is_none());
        let mut other = segs.clone();
        other[5] = "x.tmp".into();
        assert!(parse_segments(&other).is_none());
        assert_eq!(safe_segment(".."), "_");
        assert_eq!(safe_segment(""), "_");
        assert_eq!(safe_segment("a/b"), "a_b");
    }
}
