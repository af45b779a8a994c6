//! Audit events: JSON lines to a file or stdout. Key lifecycle events are written one by one;
//! refusals (bad keys, tokens, scope, region) are counted per (credential id, reason) and written
//! once per window, so a flood of bad requests cannot fill the disk. No secret ever goes in.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

/// Refusal buckets kept per window; beyond this, refusals are counted under one overflow bucket.
const MAX_BUCKETS: usize = 10_000;

#[derive(Clone)]
pub struct Audit {
    inner: Arc<Inner>,
}

struct Inner {
    out: Mutex<Option<Box<dyn Write + Send>>>,
    refusals: Mutex<HashMap<(String, &'static str), Refusal>>,
}

struct Refusal {
    count: u64,
    project: String,
    client_addr: String,
    vpc_endpoint_id: String,
    first_at: String,
}

impl Audit {
    /// An audit log that drops everything (`audit.sink = "off"`, and tests).
    pub fn off() -> Self {
        Self::with_writer(None)
    }

    pub fn stdout() -> Self {
        Self::with_writer(Some(Box::new(std::io::stdout())))
    }

    pub fn file(path: &Path) -> anyhow::Result<Self> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        Ok(Self::with_writer(Some(Box::new(f))))
    }

    pub fn from_config(cfg: &crate::config::Config) -> anyhow::Result<Self> {
        match cfg.audit.sink.as_str() {
            "stdout" => Ok(Self::stdout()),
            "off" => Ok(Self::off()),
            _ => Self::file(&cfg.audit_path()),
        }
    }

    fn with_writer(w: Option<Box<dyn Write + Send>>) -> Self {
        Self {
            inner: Arc::new(Inner {
                out: Mutex::new(w),
                refusals: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Writes one event now. `fields` must not hold secrets.
    pub fn event(&self, event: &str, fields: Value) {
        let mut line = json!({ "ts": chrono::Utc::now().to_rfc3339(), "event": event });
        if let (Some(obj), Value::Object(extra)) = (line.as_object_mut(), fields) {
            obj.extend(extra);
        }
        let mut out = self.inner.out.lock().expect("audit lock poisoned");
        if let Some(w) = out.as_mut() {
            let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
            bytes.push(b'\n');
            if let Err(e) = w.write_all(&bytes).and_then(|_| w.flush()) {
                tracing::error!(error = %e, "audit write failed");
            }
        }
    }

    /// Counts a refusal; written by `flush_refusals`.
    pub fn refusal(
        &self,
        credential_id: &str,
        reason: &'static str,
        project: &str,
        client_addr: &str,
        vpc_endpoint_id: Option<&str>,
    ) {
        let mut map = self.inner.refusals.lock().expect("audit lock poisoned");
        let id = if map.len() >= MAX_BUCKETS
            && !map.contains_key(&(credential_id.to_string(), reason))
        {
            "<overflow>".to_string()
        } else {
            credential_id.to_string()
        };
        let e = map.entry((id, reason)).or_insert_with(|| Refusal {
            count: 0,
            project: project.to_string(),
            client_addr: client_addr.to_string(),
            vpc_endpoint_id: vpc_endpoint_id.unwrap_or_default().to_string(),
            first_at: chrono::Utc::now().to_rfc3339(),
        });
        e.count += 1;
    }

    pub fn flush_refusals(&self) {
        let drained: Vec<_> = {
            let mut map = self.inner.refusals.lock().expect("audit lock poisoned");
            map.drain().collect()
        };
        for ((id, reason), r) in drained {
            self.event(
                "auth.refused",
                json!({
                    "credential_id": id,
                    "reason": reason,
                    "count": r.count,
                    "project_id": r.project,
                    "client_addr": r.client_addr,
                    "vpc_endpoint_id": (!r.vpc_endpoint_id.is_empty()).then_some(r.vpc_endpoint_id),
                    "first_at": r.first_at,
                }),
            );
        }
    }

    /// Flushes aggregated refusals every `window` until the returned task is aborted.
    pub fn spawn_flusher(&self, window: Duration) -> tokio::task::JoinHandle<()> {
        let a = self.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(window.max(Duration::from_millis(10)));
            t.tick().await;
            loop {
                t.tick().await;
                a.flush_refusals();
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_aggregated() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("audit.log");
        let a = Audit::file(&p).unwrap();
        for _ in 0..1000 {
            a.refusal("abcd", "unknown_key", "", "127.0.0.1:1", None);
        }
        a.refusal("ef01", "revoked", "p", "127.0.0.1:2", Some("vpce-1"));
        a.flush_refusals();
        a.event("key.created", json!({"key_id": "k", "project_id": "p"}));
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        let agg = lines.iter().find(|l| l["credential_id"] == "abcd").unwrap();
        assert_eq!(agg["count"], 1000);
        assert!(agg["vpc_endpoint_id"].is_null());
        let one = lines.iter().find(|l| l["credential_id"] == "ef01").unwrap();
        assert_eq!(one["vpc_endpoint_id"], "vpce-1");
        assert_eq!(lines[2]["event"], "key.created");
    }
}
