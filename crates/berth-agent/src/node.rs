//! What the agent reports about its host: a stable node id, hostname, capacity.

use std::path::Path;

/// The node id kept in the data dir, created on first start, so that an agent restart (or a
/// hostname change) keeps its identity and its tasks.
pub fn load_or_create_node_id(data_dir: &Path) -> std::io::Result<String> {
    let file = data_dir.join("node-id");
    match std::fs::read_to_string(&file) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        _ => {
            std::fs::create_dir_all(data_dir)?;
            let id = format!("node-{}", uuid::Uuid::new_v4());
            let tmp = data_dir.join("node-id.tmp");
            std::fs::write(&tmp, &id)?;
            std::fs::rename(&tmp, &file)?;
            Ok(id)
        }
    }
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// CPUs usable by this process (respects cpusets).
pub fn cpus() -> f64 {
    std::thread::available_parallelism()
        .map(|n| n.get() as f64)
        .unwrap_or(1.0)
}

/// Total memory in MiB, from /proc/meminfo.
pub fn mem_mb() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| (kb / 1024.0).floor())
        .unwrap_or(1024.0)
}

/// Free disk in MiB where `path` lives, via `df` (no unsafe statvfs needed).
pub fn disk_mb(path: &Path) -> f64 {
    std::process::Command::new("df")
        .arg("-Pm")
        .arg(path)
        .output()
        .ok()
        .and_then(|o| {
            let out = String::from_utf8_lossy(&o.stdout).into_owned();
            out.lines()
                .nth(1)
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_node_id(dir.path()).unwrap();
        let b = load_or_create_node_id(dir.path()).unwrap();
        assert_eq!(a, b);
        assert!(a.starts_with("node-"));
        assert!(cpus() >= 1.0);
        assert!(mem_mb() > 0.0);
        assert!(disk_mb(dir.path()) > 0.0);
    }
}
