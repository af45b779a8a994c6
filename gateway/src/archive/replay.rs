//! Replay: re-sends archived groups through the writer's sinks (ClickHouse), exactly as the
//! writer first handed them over, so the sinks' dedup tokens (derived from the group id and the
//! group's content) match and a replay over data that is still there adds nothing.
//!
//! A writer group is archived as one object per tenant; every v2 object records the index of
//! each of its batches in the group and the group's batch count. Replay lists the objects of
//! the date range, gathers the objects of each group (they share a directory date: the date
//! of the group's first batch), merges their batches back into group order and checks that none
//! is missing, then hands `WriteGroup { id: <the group id>, batches }` to every sink. With
//! `--project`, the groups that hold that project are replayed whole (other tenants' batches in
//! them are re-sent too, and dropped by the sinks' dedup where present), because a partial group
//! would not reproduce the original tokens.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{bail, Result};
use chrono::NaiveDate;
use tracegate_proto::v1::Batch;

use tracegate_archive::layout::safe_segment;
use tracegate_archive::store::{ArchiveStore, ObjectInfo};
use tracegate_pipeline::{Sink, WriteGroup};

/// The objects of one archived writer group.
#[derive(Debug, Clone)]
pub struct PlannedGroup {
    pub date: NaiveDate,
    pub name: String,
    pub objects: Vec<ObjectInfo>,
}

/// Groups `objects` by writer group, keeping only groups holding `project` (if given).
pub fn plan(objects: Vec<ObjectInfo>, project: Option<&str>) -> Vec<PlannedGroup> {
    let mut groups: BTreeMap<(NaiveDate, String), Vec<ObjectInfo>> = BTreeMap::new();
    for o in objects {
        groups.entry((o.date, o.name.clone())).or_default().push(o);
    }
    groups
        .into_iter()
        .filter(|(_, objs)| {
            project.is_none_or(|p| objs.iter().any(|o| o.project == safe_segment(p)))
        })
        .map(|((date, name), objects)| PlannedGroup {
            date,
            name,
            objects,
        })
        .collect()
}

/// Reads and decrypts a group's objects and rebuilds the group as the writer had it.
pub async fn assemble(store: &ArchiveStore, g: &PlannedGroup) -> Result<WriteGroup> {
    let mut id: Option<String> = None;
    let mut expected: Option<u32> = None;
    let mut any_v1 = false;
    let mut records: Vec<(u32, Batch)> = Vec::new();
    for o in &g.objects {
        let c = store.read(o).await?;
        match &id {
            None => id = Some(c.group_id.clone()),
            Some(prev) if *prev != c.group_id => bail!(
                "objects of {}/{} disagree on their group id ({prev:?} vs {:?})",
                g.date,
                g.name,
                c.group_id
            ),
            _ => {}
        }
        match c.group_batches {
            None => any_v1 = true,
            Some(n) => match expected {
                None => expected = Some(n),
                Some(m) if m != n => bail!(
                    "objects of group {} disagree on its size ({m} vs {n} batches)",
                    c.group_id
                ),
                _ => {}
            },
        }
        records.extend(c.batches);
    }
    let id = id.unwrap_or_else(|| g.name.clone());
    if any_v1 {
        // Format 1 recorded no group positions: tenants' batches follow each other.
        return Ok(WriteGroup {
            id,
            batches: records.into_iter().map(|(_, b)| b).collect(),
            class: Default::default(),
        });
    }
    records.sort_by_key(|(i, _)| *i);
    let want = expected.unwrap_or(0) as usize;
    let complete = records.len() == want
        && records
            .iter()
            .enumerate()
            .all(|(n, (i, _))| *i as usize == n);
    if !complete {
        bail!(
            "group {id} ({}): the archive holds {} of its {want} batches (an object is missing), \
             so it cannot be replayed with its original dedup tokens",
            g.date,
            records.len()
        );
    }
    Ok(WriteGroup {
        id,
        batches: records.into_iter().map(|(_, b)| b).collect(),
        class: Default::default(),
    })
}

/// Totals of a replay.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub groups: u64,
    pub objects: u64,
    pub batches: u64,
    pub spans: u64,
    pub failed: u64,
}

/// Replays `groups` into `sinks` (none: dry run), one group at a time; `progress` gets one line
/// per group. A group that fails is reported and counted; the others still run.
pub async fn replay(
    store: &ArchiveStore,
    groups: &[PlannedGroup],
    sinks: &[Arc<dyn Sink>],
    mut progress: impl FnMut(String),
) -> Report {
    let mut r = Report::default();
    for g in groups {
        let group = match assemble(store, g).await {
            Ok(w) => Arc::new(w),
            Err(e) => {
                progress(format!(
                    "failed group={} date={} error={e:#}",
                    g.name, g.date
                ));
                r.failed += 1;
                continue;
            }
        };
        let mut failed = None;
        for s in sinks {
            if let Err(e) = s.write(group.clone()).await {
                failed = Some(format!("{} sink: {e:#}", s.name()));
                break;
            }
        }
        if let Some(e) = failed {
            progress(format!(
                "failed group={} date={} error={e}",
                group.id, g.date
            ));
            r.failed += 1;
            continue;
        }
        let spans = group.span_count();
        progress(format!(
            "replayed group={} date={} objects={} batches={} spans={spans}",
            group.id,
            g.date,
            g.objects.len(),
            group.batches.len()
        ));
        r.groups += 1;
        r.objects += g.objects.len() as u64;
        r.batches += group.batches.len() as u64;
        r.spans += spans;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use futures_util::future::BoxFuture;
    use std::sync::Mutex;
    use tracegate_archive::store::Filter;

    struct Rec(Mutex<Vec<(String, Vec<Vec<u8>>)>>);
    impl Sink for Rec {
        fn name(&self) -> &'static str {
            "rec"
        }
        fn write(&self, g: Arc<WriteGroup>) -> BoxFuture<'static, anyhow::Result<()>> {
            self.0.lock().unwrap().push((
                g.id.clone(),
                g.batches.iter().map(|b| b.batch_id.to_vec()).collect(),
            ));
            Box::pin(async { Ok(()) })
        }
    }

    fn batch(project: &str, n: u8, day: u64) -> Batch {
        Batch {
            schema_version: 1,
            org_id: "o".into(),
            project_id: project.into(),
            region: "local".into(),
            batch_id: vec![n; 16].into(),
            span_count: 1,
            received_at_unix_nano: 1_700_000_000_000_000_000 + day * 86_400_000_000_000,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn rebuilds_groups_exactly_and_detects_missing_objects() {
        let d = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.server.data_dir = d.path().to_path_buf();
        let store = ArchiveStore::open(&cfg.archive_settings(), true).unwrap();
        // Interleaved tenants: the rebuilt group must have the original order.
        let g1 = WriteGroup {
            id: "t:0:0-3".into(),
            batches: vec![
                batch("a", 1, 0),
                batch("b", 2, 0),
                batch("a", 3, 0),
                batch("b", 4, 0),
            ],
            class: Default::default(),
        };
        let g2 = WriteGroup {
            id: "t:0:4-4".into(),
            batches: vec![batch("b", 5, 1)],
            class: Default::default(),
        };
        store.write_group(Arc::new(g1.clone())).await.unwrap();
        store.write_group(Arc::new(g2.clone())).await.unwrap();

        let all = store.list(&Filter::default()).await.unwrap();
        let groups = plan(all.clone(), None);
        assert_eq!(groups.len(), 2);
        let rec = Arc::new(Rec(Mutex::new(vec![])));
        let sinks: Vec<Arc<dyn Sink>> = vec![rec.clone()];
        let r = replay(&store, &groups, &sinks, |_| {}).await;
        assert_eq!((r.groups, r.objects, r.batches, r.failed), (2, 3, 5, 0));
        let got = rec.0.lock().unwrap().clone();
        let ids = |g: &WriteGroup| {
            g.batches
                .iter()
                .map(|b| b.batch_id.to_vec())
                .collect::<Vec<_>>()
        };
        assert_eq!(got[0], (g1.id.clone(), ids(&g1)));
        assert_eq!(got[1], (g2.id.clone(), ids(&g2)));

        // --project a: only the group holding a, but whole.
        let groups = plan(all.clone(), Some("a"));
        assert_eq!(groups.len(), 1);
        assert_eq!(assemble(&store, &groups[0]).await.unwrap().batches.len(), 4);

        // A missing sibling object is detected, not replayed with wrong tokens.
        let mut partial = plan(all, None);
        partial[0].objects.retain(|o| o.project == "a");
        let e = assemble(&store, &partial[0]).await.unwrap_err().to_string();
        assert!(e.contains("2 of its 4 batches"), "{e}");
    }
}
