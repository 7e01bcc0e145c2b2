//! cgroup support for the exec driver: one cgroup per task, on cgroup v2 or cgroup v1 hosts.
//!
//! - cgroup v2: `<root>/berth/<task_id>` with `memory.max` (+ `memory.swap.max` 0,
//!   `memory.oom.group` 1), `cpu.weight` from the CPU shares, `cpu.max` for a hard quota,
//!   `pids.max` and `cpuset.cpus`; OOM kills are counted in `memory.events`.
//! - cgroup v1: `<root>/<controller>/berth/<task_id>` in each of the `memory`, `cpu`,
//!   `cpuacct`, `pids` and `cpuset` hierarchies (a combined mount such as `cpu,cpuacct` gets one
//!   directory) with `memory.limit_in_bytes` (and `memory.memsw.limit_in_bytes` equal to it,
//!   so no silent swap), `cpu.shares`, `cpu.cfs_quota_us`/`cpu.cfs_period_us` for a hard quota,
//!   `pids.max`, `cpuset.cpus` and `cpuset.mems` (copied from the parent); OOM kills are counted
//!   in `memory.oom_control`.
//!
//! CPU policy (the same as the Docker driver's): CPU shares of 1024 per `cpus`, plus a hard
//! quota of `cpus` worth of CPU time when the app asks for one (label `BERTH_CPU_QUOTA=true`).
//!
//! Everything here is best effort: when the host has no writable cgroup hierarchy the driver
//! runs tasks without limits (and says so once in the log).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Controllers Berth uses for task cgroups when the host offers them (v2 has no `cpuacct`: its
/// `cpu` controller accounts usage).
const WANTED_CONTROLLERS: [&str; 4] = ["memory", "cpu", "pids", "cpuset"];
const WANTED_V1_CONTROLLERS: [&str; 5] = ["memory", "cpu", "cpuacct", "pids", "cpuset"];

/// The CFS period used for hard CPU quotas (100 ms).
pub const CPU_PERIOD_US: u64 = 100_000;

/// v1 `memory.limit_in_bytes` / `memory.memsw.limit_in_bytes` value meaning "no limit".
const V1_NO_LIMIT: &str = "-1";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cgroups unavailable: {0}")]
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
    /// Relative CPU weight, in Docker's `--cpu-shares` units (1024 = one CPU).
    pub cpu_shares: Option<u64>,
    /// Hard CPU quota in microseconds per [`CPU_PERIOD_US`] (only when asked for).
    pub cpu_quota_us: Option<u64>,
    pub pids_max: Option<u64>,
    /// Cores the task may run on (empty: every core of the parent cgroup).
    pub cpuset: Vec<u32>,
}

impl Limits {
    /// Limits from a task's reserved resources: `mem` in MiB, `cpus` as a fraction of cores;
    /// `hard_quota` adds a CFS quota of `cpus` worth of CPU time to the shares.
    pub fn from_resources(
        cpus: f64,
        mem_mib: f64,
        hard_quota: bool,
        pids_max: Option<u64>,
        cpuset: &[u32],
    ) -> Self {
        let memory_bytes = (mem_mib.is_finite() && mem_mib > 0.0)
            .then(|| (mem_mib * 1024.0 * 1024.0).round() as u64);
        let cpu_ok = cpus.is_finite() && cpus > 0.0;
        // The kernel's minimum shares value is 2, its minimum quota 1 ms.
        let cpu_shares = cpu_ok.then(|| ((cpus * 1024.0).round() as u64).max(2));
        let cpu_quota_us = (cpu_ok && hard_quota)
            .then(|| ((cpus * CPU_PERIOD_US as f64).round() as u64).max(1_000));
        Self {
            memory_bytes,
            cpu_shares,
            cpu_quota_us,
            pids_max,
            cpuset: cpuset.to_vec(),
        }
    }

    /// The value written to v2 `cpu.max`.
    pub fn cpu_max(&self) -> Option<String> {
        self.cpu_quota_us.map(|q| format!("{q} {CPU_PERIOD_US}"))
    }

    /// The v2 `cpu.weight` for the shares (runc's conversion: [2, 262144] to [1, 10000]).
    pub fn cpu_weight(&self) -> Option<u64> {
        self.cpu_shares
            .map(|s| 1 + (s.clamp(2, 262_144) - 2) * 9_999 / 262_142)
    }
}

/// `0-3,8` from core ids.
pub fn format_cpu_list(cpus: &[u32]) -> String {
    cpus.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Core ids from a kernel CPU list such as `0-3,8` (`None` when malformed).
pub fn parse_cpu_list(text: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in text
        .trim()
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if a > b || b - a > 65_536 {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    out.sort_unstable();
    out.dedup();
    Some(out)
}

/// One v1 hierarchy Berth uses: its mount point and the controllers it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
struct V1Hierarchy {
    /// `<root>/<controller>` (resolved, so `cpu` and `cpuacct` of a combined mount are one).
    mount: PathBuf,
    controllers: Vec<String>,
}

#[derive(Debug, Clone)]
enum Version {
    /// `<cgroup_root>/berth`.
    V2 {
        parent: PathBuf,
    },
    V1 {
        hierarchies: Vec<V1Hierarchy>,
    },
}

/// A usable cgroup hierarchy (v2, or the v1 controller hierarchies) with Berth's parent
/// cgroup(s) created.
#[derive(Debug, Clone)]
pub struct CgroupManager {
    version: Version,
    /// Controllers usable for task cgroups.
    controllers: Vec<String>,
}

impl CgroupManager {
    /// Finds the cgroup hierarchy under `cgroup_root`: cgroup v2 when `cgroup_root` is a v2
    /// mount, else the v1 hierarchies mounted as `<cgroup_root>/<controller>`. Creates the
    /// parent `berth` cgroup(s) and, on v2, enables the wanted controllers that the host offers.
    /// Missing controllers are not an error (tasks are still grouped, which makes killing and
    /// accounting reliable), but no writable hierarchy at all is.
    pub fn detect(cgroup_root: &Path) -> Result<Self, CgroupError> {
        let controllers_file = cgroup_root.join("cgroup.controllers");
        match fs::read_to_string(&controllers_file) {
            Ok(offered) => Self::detect_v2(cgroup_root, &offered),
            Err(v2_err) => Self::detect_v1(cgroup_root).map_err(|v1_err| {
                CgroupError::Unavailable(format!(
                    "{} is neither a cgroup v2 hierarchy ({}: {v2_err}) nor holds cgroup v1 hierarchies ({v1_err})",
                    cgroup_root.display(),
                    controllers_file.display()
                ))
            }),
        }
    }

    fn detect_v2(cgroup_root: &Path, offered: &str) -> Result<Self, CgroupError> {
        let offered: Vec<&str> = offered.split_whitespace().collect();
        let parent = cgroup_root.join("berth");
        mkdir(&parent).map_err(|e| {
            CgroupError::Unavailable(format!("cannot create {}: {e}", parent.display()))
        })?;
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
            version: Version::V2 { parent },
            controllers,
        })
    }

    fn detect_v1(cgroup_root: &Path) -> Result<Self, String> {
        let mut hierarchies: Vec<V1Hierarchy> = Vec::new();
        let mut problems = Vec::new();
        for c in WANTED_V1_CONTROLLERS {
            let mount = cgroup_root.join(c);
            if !mount.join("cgroup.procs").is_file() {
                problems.push(format!("{c}: not mounted"));
                continue;
            }
            let mount = fs::canonicalize(&mount).unwrap_or(mount);
            if let Some(h) = hierarchies.iter_mut().find(|h| h.mount == mount) {
                h.controllers.push(c.to_string());
                continue;
            }
            let parent = mount.join("berth");
            if let Err(e) = mkdir(&parent) {
                problems.push(format!("cannot create {}: {e}", parent.display()));
                continue;
            }
            if c == "cpuset"
                && let Err(e) = init_v1_cpuset(&mount, &parent)
            {
                problems.push(e.to_string());
                continue;
            }
            hierarchies.push(V1Hierarchy {
                mount,
                controllers: vec![c.to_string()],
            });
        }
        if hierarchies.is_empty() {
            return Err(problems.join("; "));
        }
        for p in &problems {
            tracing::warn!(problem = %p, "cgroup v1 controller not used for task limits");
        }
        let controllers = hierarchies
            .iter()
            .flat_map(|h| h.controllers.iter().cloned())
            .collect();
        Ok(Self {
            version: Version::V1 { hierarchies },
            controllers,
        })
    }

    /// `true` on cgroup v1 hosts.
    pub fn is_v1(&self) -> bool {
        matches!(self.version, Version::V1 { .. })
    }

    pub fn controllers(&self) -> &[String] {
        &self.controllers
    }

    pub fn has_controller(&self, name: &str) -> bool {
        self.controllers.iter().any(|c| c == name)
    }

    /// The cgroup directories of a task (whether or not they exist): one on v2, one per
    /// hierarchy on v1.
    pub fn task_paths(&self, task_id: &str) -> Vec<PathBuf> {
        match &self.version {
            Version::V2 { parent } => vec![parent.join(task_id)],
            Version::V1 { hierarchies } => hierarchies
                .iter()
                .map(|h| h.mount.join("berth").join(task_id))
                .collect(),
        }
    }

    /// The task's directory in the hierarchy carrying `controller` (v2: the only one).
    pub fn task_path(&self, task_id: &str, controller: &str) -> Option<PathBuf> {
        match &self.version {
            Version::V2 { parent } => self
                .has_controller(controller)
                .then(|| parent.join(task_id)),
            Version::V1 { hierarchies } => hierarchies
                .iter()
                .find(|h| h.controllers.iter().any(|c| c == controller))
                .map(|h| h.mount.join("berth").join(task_id)),
        }
    }

    /// The cores tasks may use at all (the parent cgroup's `cpuset.cpus`), when known.
    pub fn available_cpus(&self) -> Option<Vec<u32>> {
        let dir = match &self.version {
            Version::V2 { parent } => parent.clone(),
            Version::V1 { hierarchies } => hierarchies
                .iter()
                .find(|h| h.controllers.iter().any(|c| c == "cpuset"))?
                .mount
                .join("berth"),
        };
        [
            "cpuset.cpus.effective",
            "cpuset.effective_cpus",
            "cpuset.cpus",
        ]
        .iter()
        .find_map(|f| fs::read_to_string(dir.join(f)).ok())
        .and_then(|t| parse_cpu_list(&t))
        .filter(|c| !c.is_empty())
    }

    /// Creates the task's cgroup(s) and writes its limits; returns the directories (to join
    /// and later remove). Existing cgroups are reused. On error nothing is left behind.
    pub fn create(&self, task_id: &str, limits: &Limits) -> Result<Vec<PathBuf>, CgroupError> {
        let paths = self.task_paths(task_id);
        let mut created = Vec::new();
        let result = (|| {
            for p in &paths {
                if let Err(e) = fs::create_dir(p)
                    && e.kind() != io::ErrorKind::AlreadyExists
                {
                    return Err(CgroupError::Io {
                        path: p.clone(),
                        source: e,
                    });
                }
                created.push(p.clone());
            }
            match &self.version {
                Version::V2 { .. } => self.write_v2_limits(&paths[0], limits),
                Version::V1 { hierarchies } => {
                    for (h, p) in hierarchies.iter().zip(&paths) {
                        write_v1_limits(h, p, limits)?;
                    }
                    Ok(())
                }
            }
        })();
        match result {
            Ok(()) => Ok(paths),
            Err(e) => {
                for p in &created {
                    let _ = fs::remove_dir(p);
                }
                Err(e)
            }
        }
    }

    /// Changes the cores of a running task's cgroup.
    pub fn set_cpuset(&self, task_id: &str, cpus: &[u32]) -> Result<(), CgroupError> {
        if cpus.is_empty() {
            return Ok(());
        }
        match self.task_path(task_id, "cpuset") {
            Some(dir) => write(&dir.join("cpuset.cpus"), &format_cpu_list(cpus)),
            None => Ok(()),
        }
    }

    fn write_v2_limits(&self, path: &Path, limits: &Limits) -> Result<(), CgroupError> {
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
        if self.has_controller("cpu") {
            if let Some(weight) = limits.cpu_weight() {
                write(&path.join("cpu.weight"), &weight.to_string())?;
            }
            write(
                &path.join("cpu.max"),
                &limits
                    .cpu_max()
                    .unwrap_or_else(|| format!("max {CPU_PERIOD_US}")),
            )?;
        }
        if self.has_controller("pids") {
            let max = limits.pids_max.map_or("max".to_string(), |m| m.to_string());
            write(&path.join("pids.max"), &max)?;
        }
        if self.has_controller("cpuset") && !limits.cpuset.is_empty() {
            write(&path.join("cpuset.cpus"), &format_cpu_list(&limits.cpuset))?;
        }
        Ok(())
    }
}

fn write_v1_limits(h: &V1Hierarchy, path: &Path, limits: &Limits) -> Result<(), CgroupError> {
    let has = |c: &str| h.controllers.iter().any(|x| x == c);
    if has("memory") {
        let limit = limits
            .memory_bytes
            .map_or(V1_NO_LIMIT.to_string(), |b| b.to_string());
        let memsw = path.join("memory.memsw.limit_in_bytes");
        let has_memsw = memsw.exists();
        // memsw must stay >= the memory limit: lift it first (a reused cgroup may have a
        // smaller one), then set both to the limit, so memory + swap = the limit.
        if has_memsw {
            write(&memsw, V1_NO_LIMIT)?;
        }
        write(&path.join("memory.limit_in_bytes"), &limit)?;
        if has_memsw {
            write(&memsw, &limit)?;
        } else {
            // Without swap accounting, at least keep the kernel from swapping the task.
            let swappiness = path.join("memory.swappiness");
            if swappiness.exists() && limits.memory_bytes.is_some() {
                let _ = fs::write(&swappiness, "0");
            }
        }
    }
    if has("cpu") {
        if let Some(shares) = limits.cpu_shares {
            write(&path.join("cpu.shares"), &shares.to_string())?;
        }
        let quota = path.join("cpu.cfs_quota_us");
        if quota.exists() {
            match limits.cpu_quota_us {
                Some(q) => {
                    write(&path.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                    write(&quota, &q.to_string())?;
                }
                None => write(&quota, "-1")?,
            }
        } else if limits.cpu_quota_us.is_some() {
            tracing::warn!(
                "cpu.cfs_quota_us missing (kernel without CFS bandwidth control): no hard CPU quota"
            );
        }
    }
    if has("pids") {
        let max = limits.pids_max.map_or("max".to_string(), |m| m.to_string());
        write(&path.join("pids.max"), &max)?;
    }
    if has("cpuset") {
        // A v1 cpuset cgroup starts with empty cpus and mems: no process may join it before
        // both are set.
        let parent = path.parent().unwrap_or(path);
        let mems = fs::read_to_string(parent.join("cpuset.mems")).map_err(io_err(parent))?;
        write(&path.join("cpuset.mems"), mems.trim())?;
        let cpus = if limits.cpuset.is_empty() {
            fs::read_to_string(parent.join("cpuset.cpus"))
                .map_err(io_err(parent))?
                .trim()
                .to_string()
        } else {
            format_cpu_list(&limits.cpuset)
        };
        write(&path.join("cpuset.cpus"), &cpus)?;
    }
    Ok(())
}

/// Gives `<mount>/berth` the root cpuset's cpus and mems (a new v1 cpuset cgroup has none).
fn init_v1_cpuset(mount: &Path, parent: &Path) -> Result<(), CgroupError> {
    for file in ["cpuset.mems", "cpuset.cpus"] {
        let current = fs::read_to_string(parent.join(file)).map_err(io_err(parent))?;
        if !current.trim().is_empty() {
            continue;
        }
        let from = mount.join(file);
        let value = fs::read_to_string(&from).map_err(io_err(&from))?;
        write(&parent.join(file), value.trim())?;
    }
    Ok(())
}

fn mkdir(path: &Path) -> io::Result<()> {
    match fs::create_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
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

/// Number of OOM kills recorded for a task's cgroup directories: v2 `memory.events` or v1
/// `memory.oom_control` (`oom_kill` counter); 0 without a memory controller.
pub fn oom_kills<P: AsRef<Path>>(cgroups: &[P]) -> u64 {
    cgroups
        .iter()
        .map(|cg| {
            let cg = cg.as_ref();
            ["memory.events", "memory.oom_control"]
                .iter()
                .filter_map(|f| fs::read_to_string(cg.join(f)).ok())
                .map(|s| parse_events(&s, "oom_kill"))
                .max()
                .unwrap_or(0)
        })
        .max()
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

/// The pids in a cgroup directory (`cgroup.procs`).
pub fn procs(cgroup: &Path) -> Vec<i32> {
    fs::read_to_string(cgroup.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Kills every process in the task's cgroups: `cgroup.kill` on v2 (Linux 5.14+), else SIGKILL
/// to every pid in `cgroup.procs` until none is left (a fork bomb keeps forking while it is
/// being killed), for a bounded time. Errors are ignored: the caller also kills the process
/// group.
pub fn kill_all<P: AsRef<Path>>(cgroups: &[P]) {
    for cg in cgroups {
        let _ = fs::write(cg.as_ref().join("cgroup.kill"), "1");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let mut any = false;
        for cg in cgroups {
            for pid in procs(cg.as_ref()) {
                any = true;
                let _ = crate::shim::sys::kill(pid, libc::SIGKILL);
            }
        }
        if !any || std::time::Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Removes task cgroups, retrying briefly while the kernel finishes tearing down their
/// processes. Returns whether every directory is gone.
pub fn remove<P: AsRef<Path>>(cgroups: &[P]) -> bool {
    let mut all = true;
    for cg in cgroups {
        all &= remove_one(cg.as_ref());
    }
    all
}

fn remove_one(cgroup: &Path) -> bool {
    for _ in 0..40 {
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
        let l = Limits::from_resources(0.5, 32.0, false, Some(4096), &[1, 3]);
        assert_eq!(l.memory_bytes, Some(32 * 1024 * 1024));
        assert_eq!(l.cpu_shares, Some(512));
        assert_eq!(l.cpu_max(), None, "no hard quota unless asked");
        assert_eq!(l.pids_max, Some(4096));
        let l = Limits::from_resources(0.5, 32.0, true, None, &[]);
        assert_eq!(l.cpu_max().as_deref(), Some("50000 100000"));
        let l = Limits::from_resources(0.0001, 0.0, true, None, &[]);
        assert_eq!(l.memory_bytes, None);
        assert_eq!((l.cpu_shares, l.cpu_quota_us), (Some(2), Some(1_000)));
        let l = Limits::from_resources(0.0, f64::NAN, true, None, &[]);
        assert_eq!(l, Limits::default());
        let w = |s| Limits {
            cpu_shares: Some(s),
            ..Default::default()
        };
        assert_eq!(w(2).cpu_weight(), Some(1));
        assert_eq!(w(1024).cpu_weight(), Some(39));
        assert_eq!(w(262_144).cpu_weight(), Some(10_000));
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,8\n"), Some(vec![0, 1, 2, 3, 8]));
        assert_eq!(parse_cpu_list("1"), Some(vec![1]));
        assert_eq!(parse_cpu_list(""), Some(vec![]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
        assert_eq!(format_cpu_list(&[0, 2]), "0,2");
    }

    #[test]
    fn parses_memory_events() {
        let text = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(parse_events(text, "oom_kill"), 1);
        assert_eq!(parse_events(text, "max"), 12);
        assert_eq!(parse_events(text, "missing"), 0);
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(parse_events(v1, "oom_kill"), 3);
    }

    #[test]
    fn detect_rejects_a_plain_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            CgroupManager::detect(dir.path()),
            Err(CgroupError::Unavailable(_))
        ));
    }
}
