//! The audit log: every write a user sends (who, what, when, result), kept in memory for the
//! API (`GET /api/v1/audit`) and appended to `audit.log` (JSON lines) in the data dir, which
//! is rotated to `audit.log.1` past [`MAX_FILE_BYTES`].

use berth_core::rbac::Role;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// Records kept in memory (the newest).
pub const MAX_RECORDS: usize = 10_000;
/// Size at which `audit.log` is rotated.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    /// Milliseconds since the epoch.
    pub at: i64,
    pub who: String,
    pub role: Option<Role>,
    pub client: String,
    pub method: String,
    pub path: String,
    /// The HTTP status answered: 2xx done, 401/403 refused, other 4xx invalid.
    pub status: u16,
}

impl AuditRecord {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "at": berth_core::time::format_millis(self.at),
            "who": self.who,
            "role": self.role,
            "client": self.client,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "result": match self.status {
                200..=399 => "ok",
                401 | 403 => "denied",
                _ => "failed",
            },
        })
    }
}

struct Sink {
    path: PathBuf,
    file: File,
    bytes: u64,
}

pub struct AuditLog {
    recent: Mutex<VecDeque<AuditRecord>>,
    sink: Mutex<Option<Sink>>,
}

impl AuditLog {
    /// In memory only.
    pub fn in_memory() -> Self {
        Self {
            recent: Mutex::new(VecDeque::new()),
            sink: Mutex::new(None),
        }
    }

    /// Appends to `<dir>/audit.log`, after loading its newest records.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        let path = dir.join("audit.log");
        let mut recent = VecDeque::new();
        if let Ok(f) = File::open(&path) {
            for line in BufReader::new(f).lines() {
                let Ok(line) = line else { break };
                if let Ok(r) = serde_json::from_str::<AuditRecord>(&line) {
                    if recent.len() == MAX_RECORDS {
                        recent.pop_front();
                    }
                    recent.push_back(r);
                }
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Self {
            recent: Mutex::new(recent),
            sink: Mutex::new(Some(Sink { path, file, bytes })),
        })
    }

    pub fn record(&self, r: AuditRecord) {
        if let Some(sink) = self.sink.lock().as_mut() {
            match serde_json::to_string(&r) {
                Ok(mut line) => {
                    line.push('\n');
                    if let Err(e) = sink.write(line.as_bytes()) {
                        tracing::error!(error = %e, path = %sink.path.display(), "writing the audit log failed");
                    }
                }
                Err(e) => tracing::error!(error = %e, "encoding an audit record failed"),
            }
        }
        let mut recent = self.recent.lock();
        if recent.len() == MAX_RECORDS {
            recent.pop_front();
        }
        recent.push_back(r);
    }

    /// The newest records first, at most `limit`, those at or after `since` (ms) whose
    /// `who` contains `who`.
    pub fn query(&self, limit: usize, since: Option<i64>, who: Option<&str>) -> Vec<AuditRecord> {
        self.recent
            .lock()
            .iter()
            .rev()
            .filter(|r| since.is_none_or(|s| r.at >= s))
            .filter(|r| who.is_none_or(|w| r.who.contains(w)))
            .take(limit)
            .cloned()
            .collect()
    }
}

impl Sink {
    fn write(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.bytes + line.len() as u64 > MAX_FILE_BYTES {
            let rotated = self.path.with_extension("log.1");
            std::fs::rename(&self.path, &rotated)?;
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.bytes = 0;
        }
        self.file.write_all(line)?;
        self.bytes += line.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(at: i64, who: &str) -> AuditRecord {
        AuditRecord {
            at,
            who: who.into(),
            role: Some(Role::AppAdmin),
            client: "127.0.0.1".into(),
            method: "POST".into(),
            path: "/v2/apps".into(),
            status: 201,
        }
    }

    #[test]
    fn records_survive_a_reopen_and_are_queried_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        log.record(rec(1, "alice"));
        log.record(rec(2, "bob"));
        log.record(rec(3, "alice"));
        drop(log);
        let log = AuditLog::open(dir.path()).unwrap();
        let all = log.query(10, None, None);
        assert_eq!(all.iter().map(|r| r.at).collect::<Vec<_>>(), vec![3, 2, 1]);
        assert_eq!(log.query(10, None, Some("alice")).len(), 2);
        assert_eq!(log.query(10, Some(2), None).len(), 2);
        assert_eq!(log.query(1, None, None)[0].at, 3);
        assert_eq!(rec(1, "a").to_json()["result"], "ok");
    }
}
