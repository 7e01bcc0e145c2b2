//! cgroup v2 support for the exec driver: one cgroup per task under `<root>/berth/<task_id>`,
//! with `memory.max`, `memory.swap.max`, `cpu.max`, `pids.max` and `cpuset.cpus` set from the
//! task's resources, and OOM detection through `memory.events`.
//!
//! Everything here is best effort: when the host has no writable cgroup v2 hierarchy the
//! driver runs tasks without limits (and says so once in the log).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Controllers Berth enables for task cgroups when the host offers them.
const WANTED_CONTROLLERS: [&str; 4] = ["memory", "cpu", "pids", "cpuset"];

/// The CFS period used for `cpu.max` (100 ms).
pub const CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cgroup v2 unavailable: {0}")]
    Unavailable(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Limits applied to one task's cgroup. `None` means "no limit".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    /// CPU quota in microseconds per [`CPU_PERIOD_US`].
    pub cpu_quota_us: Option<u64>,
    pub pids_max: Option<u64>,
    pub cpuset: Vec<u32>,
}

impl Limits {
    /// Limits from a task's reserved resources: `mem` in MiB, `cpus` as a fraction of cores.
    pub fn from_resources(cpus: f64, mem_mib: f64, pids_max: Option<u64>, cpuset: &[u32]) -> Self {
        let memory_bytes = (mem_mib.is_finite() && mem_mib > 0.0)
            .then(|| (mem_mib * 1024.0 * 1024.0).round() as u64);
        // The kernel's minimum quota is 1 ms.
        let cpu_quota_us = (cpus.is_finite() && cpus > 0.0)
            .then(|| ((cpus * CPU_PERIOD_US as f64).round() as u64).max(1_000));
        Self {
            memory_bytes,
            cpu_quota_us,
            pids_max,
            cpuset: cpuset.to_vec(),
        }
    }

    /// The value written to `cpu.max`.
    pub fn cpu_max(&self) -> Option<String> {
        self.cpu_quota_us.map(|q| format!("{q} {CPU_PERIOD_US}"))
    }
}

/// A usable cgroup v2 hierarchy with Berth's parent cgroup created.
#[derive(Debug, Clone)]
pub struct CgroupManager {
    /// `<cgroup_root>/berth`.
    parent: PathBuf,
    /// Controllers enabled for task cgroups.
    controllers: Vec<String>,
}

impl CgroupManager {
    /// Checks that `cgroup_root` is a writable cgroup v2 hierarchy, creates `<root>/berth` and
    /// enables the wanted controllers that the host offers for it. Missing controllers are not an
    /// error (tasks are still grouped, which makes killing and accounting reliable), but a
    /// hierarchy that is not cgroup v2 or not writable is.
    pub fn detect(cgroup_root: &Path) -> Result<Self, CgroupError> {
        let controllers_file = cgroup_root.join("cgroup.controllers");
        let offered = fs::read_to_string(&controllers_file).map_err(|e| {
            CgroupError::Unavailable(format!(
                "{} is not a cgroup v2 hierarchy ({}: {e})",
                cgroup_root.display(),
                controllers_file.display()
            ))
        })?;
        let offered: Vec<&str> = offered.split_whitespace().collect();
        let parent = cgroup_root.join("berth");
        if let Err(e) = fs::create_dir(&parent)
            && e.kind() != io::ErrorKind::AlreadyExists
        {
            return Err(CgroupError::Unavailable(format!(
                "cannot create {}: {e}",
                parent.display()
            )));
        }
        let mut controllers = Vec::new();
        for c in WANTED_CONTROLLERS {
            if !offered.contains(&c) {
                continue;
            }
            // Enable the controller in the root (for `berth`) and in `berth` (for tasks).
            let ok = enable(cgroup_root, c).and_then(|()| enable(&parent, c));
            match ok {
                Ok(()) => controllers.push(c.to_string()),
                Err(e) => {
                    tracing::warn!(controller = c, error = %e, "cannot enable cgroup controller")
                }
            }
        }
        Ok(Self {
            parent,
            controllers,
        })
    }

    pub fn controllers(&self) -> &[String] {
        &self.controllers
    }

    pub fn has_controller(&self, name: &str) -> bool {
        self.controllers.iter().any(|c| c == name)
    }

    /// The cgroup directory of a task (whether or not it exists).
    pub fn task_path(&self, task_id: &str) -> PathBuf {
        self.parent.join(task_id)
    }

    /// Creates the task's cgroup and writes its limits. An existing cgroup is reused.
    pub fn create(&self, task_id: &str, limits: &Limits) -> Result<PathBuf, CgroupError> {
        let path = self.task_path(task_id);
        if let Err(e) = fs::create_dir(&path)
            && e.kind() != io::ErrorKind::AlreadyExists
        {
            return Err(CgroupError::Io { path, source: e });
        }
        let result = self.write_limits(&path, limits);
        if result.is_err() {
            let _ = fs::remove_dir(&path);
        }
        result.map(|()| path)
    }

    fn write_limits(&self, path: &Path, limits: &Limits) -> Result<(), CgroupError> {
        if self.has_controller("memory") {
            if let Some(bytes) = limits.memory_bytes {
                write(&path.join("memory.max"), &bytes.to_string())?;
                // The memory limit is the whole budget: no swapping beyond it.
                let swap = path.join("memory.swap.max");
                if swap.exists() {
                    write(&swap, "0")?;
                }
            }
            // On OOM kill the whole task, not a random process of it.
            let group = path.join("memory.oom.group");
            if group.exists() {
                write(&group, "1")?;
            }
        }
        if self.has_controller("cpu")
            && let Some(cpu_max) = limits.cpu_max()
        {
            write(&path.join("cpu.max"), &cpu_max)?;
        }
        if self.has_controller("pids")
            && let Some(max) = limits.pids_max
        {
            write(&path.join("pids.max"), &max.to_string())?;
        }
        if self.has_controller("cpuset") && !limits.cpuset.is_empty() {
            let cpus = limits
                .cpuset
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",");
            write(&path.join("cpuset.cpus"), &cpus)?;
        }
        Ok(())
    }
}

fn enable(cgroup: &Path, controller: &str) -> Result<(), CgroupError> {
    let file = cgroup.join("cgroup.subtree_control");
    let current = fs::read_to_string(&file).map_err(io_err(&file))?;
    if current.split_whitespace().any(|c| c == controller) {
        return Ok(());
    }
    write(&file, &format!("+{controller}"))
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io_err(path))
}

/// Number of OOM kills recorded in a cgroup's `memory.events` (`oom_kill` counter), 0 when the
/// file is missing (no memory controller).
pub fn oom_kills(cgroup: &Path) -> u64 {
    fs::read_to_string(cgroup.join("memory.events"))
        .map(|s| parse_events(&s, "oom_kill"))
        .unwrap_or(0)
}

/// Reads one counter of a flat-keyed cgroup file (`key value` per line).
pub fn parse_events(text: &str, key: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Kills every process in the cgroup (`cgroup.kill`, Linux 5.14+). Errors are ignored: the
/// caller also kills the process group.
pub fn kill_all(cgroup: &Path) {
    let _ = fs::write(cgroup.join("cgroup.kill"), "1");
}

/// Removes a task cgroup, retrying briefly while the kernel finishes tearing down its
/// processes. Returns whether the directory is gone.
pub fn remove(cgroup: &Path) -> bool {
    for _ in 0..20 {
        match fs::remove_dir(cgroup) {
            Ok(()) => return true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return true,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(25)),
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_from_resources() {
        let l = Limits::from_resources(0.5, 32.0, Some(4096), &[1, 3]);
        assert_eq!(l.memory_bytes, Some(32 * 1024 * 1024));
        assert_eq!(l.cpu_max().as_deref(), Some("50000 100000"));
        assert_eq!(l.pids_max, Some(4096));
        let l = Limits::from_resources(0.0001, 0.0, None, &[]);
        assert_eq!(l.memory_bytes, None);
        assert_eq!(l.cpu_quota_us, Some(1_000));
        let l = Limits::from_resources(0.0, f64::NAN, None, &[]);
        assert_eq!(l, Limits::default());
    }

    #[test]
    fn parses_memory_events() {
        let text = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(parse_events(text, "oom_kill"), 1);
        assert_eq!(parse_events(text, "max"), 12);
        assert_eq!(parse_events(text, "missing"), 0);
    }

    #[test]
    fn detect_rejects_non_cgroup2() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            CgroupManager::detect(dir.path()),
            Err(CgroupError::Unavailable(_))
        ));
    }
}
