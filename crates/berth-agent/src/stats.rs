//! Per-task resource usage read straight from the kernel: the cgroup of the task's main
//! process (found through `/proc/<pid>/cgroup`, so the same code serves exec tasks and Docker
//! containers without asking dockerd, whose per-container `stats` call is slow on dense hosts)
//! and its network namespace's `/proc/<pid>/net/dev`.
//!
//! - cgroup v2: `cpu.stat` `usage_usec`, `memory.current`, `memory.max`.
//! - cgroup v1: `cpuacct.usage` (ns), `memory.usage_in_bytes`, `memory.limit_in_bytes`, each
//!   under its controller's hierarchy (`/sys/fs/cgroup/{cpuacct,memory}/...`, or a combined
//!   mount such as `cpu,cpuacct`).
//!   Exec tasks have their own there too (`berth/<task_id>`, see [`crate::cgroup`]).
//! - A task without a cgroup of its own (it shares the agent's, e.g. exec tasks on a host
//!   without usable cgroups) is measured from its main process instead: `utime + stime`
//!   of itself and its reaped children, and its `VmRSS`; no memory limit.
//!
//! Network counters are those of the task's network namespace, all interfaces but `lo`: for
//! tasks on the host network that is the HOST's traffic, not the task's.
//!
//! Every reader takes the `/proc` and `/sys/fs/cgroup` directories ([`HostPaths`]) so tests can
//! point them at fixtures.

use std::fs;
use std::path::{Path, PathBuf};

/// Kernel clock ticks per second as `/proc/<pid>/stat` counts them (`USER_HZ`, 100 on every
/// Linux architecture Berth runs on).
const USER_HZ: f64 = 100.0;

/// v1 memory limits at or above this mean "no limit" (the kernel reports a huge page-rounded
/// number such as 9223372036854771712).
const V1_UNLIMITED: u64 = 1 << 60;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPaths {
    /// Usually `/proc`.
    pub proc_dir: PathBuf,
    /// Usually `/sys/fs/cgroup`.
    pub cgroup_dir: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        Self {
            proc_dir: PathBuf::from("/proc"),
            cgroup_dir: PathBuf::from("/sys/fs/cgroup"),
        }
    }
}

/// Where the numbers came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    CgroupV2,
    CgroupV1,
    /// The task's main process (no cgroup of its own).
    Process,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskStats {
    pub cpu_seconds: Option<f64>,
    pub memory_usage_bytes: Option<u64>,
    /// `None`: no limit (or unknown).
    pub memory_limit_bytes: Option<u64>,
    pub network_receive_bytes: Option<u64>,
    pub network_transmit_bytes: Option<u64>,
    pub source: Option<Source>,
}

/// One line of `/proc/<pid>/cgroup`: `hierarchy-id:controllers:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLine {
    pub hierarchy: String,
    /// Empty for the cgroup v2 line (`0::/path`); `name=systemd` style entries are kept.
    pub controllers: Vec<String>,
    pub path: String,
}

impl CgroupLine {
    fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }

    fn is_v2(&self) -> bool {
        self.hierarchy == "0" && self.controllers.is_empty()
    }
}

pub fn parse_proc_cgroup(text: &str) -> Vec<CgroupLine> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let hierarchy = parts.next()?.trim().to_string();
            let controllers = parts
                .next()?
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect();
            let path = parts.next()?.trim().to_string();
            Some(CgroupLine {
                hierarchy,
                controllers,
                path,
            })
        })
        .collect()
}

/// Joins a cgroup path (`/docker/abc`) under a hierarchy's mount point.
fn under(mount: &Path, cgroup_path: &str) -> PathBuf {
    mount.join(cgroup_path.trim_start_matches('/'))
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A flat-keyed file (`key value` per line), one key.
pub fn flat_key(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.split_once(char::is_whitespace))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
}

/// `memory.max` of cgroup v2: `max` is no limit.
pub fn parse_v2_max(text: &str) -> Option<u64> {
    match text.trim() {
        "max" | "" => None,
        v => v.parse().ok(),
    }
}

/// `memory.limit_in_bytes` of cgroup v1: a huge number is no limit.
pub fn parse_v1_limit(text: &str) -> Option<u64> {
    text.trim().parse().ok().filter(|&v| v < V1_UNLIMITED)
}

/// Sum of receive and transmit bytes over every interface but `lo` in `/proc/<pid>/net/dev`.
pub fn parse_net_dev(text: &str) -> Option<(u64, u64)> {
    let mut rx = 0u64;
    let mut tx = 0u64;
    let mut seen = false;
    for line in text.lines().skip(2) {
        let Some((iface, rest)) = line.split_once(':') else {
            continue;
        };
        if iface.trim() == "lo" {
            seen = true;
            continue;
        }
        let fields: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        if fields.len() >= 9 {
            rx = rx.saturating_add(fields[0]);
            tx = tx.saturating_add(fields[8]);
            seen = true;
        }
    }
    seen.then_some((rx, tx))
}

/// `utime + stime + cutime + cstime` of `/proc/<pid>/stat`, in seconds.
pub fn parse_proc_stat_cpu(text: &str) -> Option<f64> {
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14.
    let tick = |i: usize| -> Option<f64> { fields.get(i - 3)?.parse::<f64>().ok() };
    let total = tick(14)? + tick(15)? + tick(16)? + tick(17)?;
    Some(total / USER_HZ)
}

/// `VmRSS` of `/proc/<pid>/status`, in bytes.
pub fn parse_vm_rss(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// The mount point of a v1 hierarchy: `cpuacct` may be mounted alone or combined
/// (`cpu,cpuacct`, `cpuacct,cpu`).
fn v1_mount(paths: &HostPaths, line: &CgroupLine, controller: &str) -> Option<PathBuf> {
    let joined = line.controllers.join(",");
    let mut candidates = vec![
        paths.cgroup_dir.join(&joined),
        paths.cgroup_dir.join(controller),
    ];
    if controller == "cpuacct" {
        candidates.push(paths.cgroup_dir.join("cpu,cpuacct"));
        candidates.push(paths.cgroup_dir.join("cpuacct,cpu"));
    }
    candidates.into_iter().find(|p| p.is_dir())
}

/// The unified (v2) hierarchy: `/sys/fs/cgroup` on pure v2 hosts, `/sys/fs/cgroup/unified` on
/// hybrid ones.
fn v2_mount(paths: &HostPaths) -> Option<PathBuf> {
    [paths.cgroup_dir.clone(), paths.cgroup_dir.join("unified")]
        .into_iter()
        .find(|p| p.join("cgroup.controllers").is_file())
}

/// Whether the task's cgroup for a controller is its own: not the root and not the agent's.
fn own_cgroup(task: &CgroupLine, agent: &[CgroupLine]) -> bool {
    if task.path == "/" || task.path.is_empty() {
        return false;
    }
    !agent
        .iter()
        .any(|a| a.hierarchy == task.hierarchy && a.path == task.path)
}

/// Reads the usage of the task whose main process is `pid`. `None` when the process is gone.
pub fn task_stats(paths: &HostPaths, pid: i32) -> Option<TaskStats> {
    let proc_pid = paths.proc_dir.join(pid.to_string());
    let task_cg = parse_proc_cgroup(&fs::read_to_string(proc_pid.join("cgroup")).ok()?);
    let agent_cg = fs::read_to_string(paths.proc_dir.join("self/cgroup"))
        .map(|t| parse_proc_cgroup(&t))
        .unwrap_or_default();
    let mut stats = TaskStats::default();

    let v1_cpu = task_cg.iter().find(|l| l.has("cpuacct"));
    let v1_mem = task_cg.iter().find(|l| l.has("memory"));
    let v2 = task_cg.iter().find(|l| l.is_v2());
    let v2_dir = v2_mount(paths);
    // v1 when the host has v1 cpu/memory hierarchies; else v2.
    if v1_cpu.is_some() || v1_mem.is_some() {
        if let Some(l) = v1_cpu.filter(|l| own_cgroup(l, &agent_cg))
            && let Some(m) = v1_mount(paths, l, "cpuacct")
        {
            stats.cpu_seconds =
                read_u64(&under(&m, &l.path).join("cpuacct.usage")).map(|ns| ns as f64 / 1e9);
        }
        if let Some(l) = v1_mem.filter(|l| own_cgroup(l, &agent_cg))
            && let Some(m) = v1_mount(paths, l, "memory")
        {
            let dir = under(&m, &l.path);
            stats.memory_usage_bytes = read_u64(&dir.join("memory.usage_in_bytes"));
            stats.memory_limit_bytes = fs::read_to_string(dir.join("memory.limit_in_bytes"))
                .ok()
                .and_then(|t| parse_v1_limit(&t));
        }
        if stats.cpu_seconds.is_some() || stats.memory_usage_bytes.is_some() {
            stats.source = Some(Source::CgroupV1);
        }
    } else if let (Some(l), Some(root)) = (v2.filter(|l| own_cgroup(l, &agent_cg)), v2_dir) {
        let dir = under(&root, &l.path);
        stats.cpu_seconds = fs::read_to_string(dir.join("cpu.stat"))
            .ok()
            .and_then(|t| flat_key(&t, "usage_usec"))
            .map(|us| us as f64 / 1e6);
        stats.memory_usage_bytes = read_u64(&dir.join("memory.current"));
        stats.memory_limit_bytes = fs::read_to_string(dir.join("memory.max"))
            .ok()
            .and_then(|t| parse_v2_max(&t));
        if stats.cpu_seconds.is_some() || stats.memory_usage_bytes.is_some() {
            stats.source = Some(Source::CgroupV2);
        }
    }
    // No cgroup of its own: the main process's numbers.
    if stats.cpu_seconds.is_none() {
        stats.cpu_seconds = fs::read_to_string(proc_pid.join("stat"))
            .ok()
            .and_then(|t| parse_proc_stat_cpu(&t));
        stats.source.get_or_insert(Source::Process);
    }
    if stats.memory_usage_bytes.is_none() {
        stats.memory_usage_bytes = fs::read_to_string(proc_pid.join("status"))
            .ok()
            .and_then(|t| parse_vm_rss(&t));
    }
    // A task in the agent's own network namespace (host networking, exec tasks) sees the
    // node's interfaces: those counters are the node's, not the task's.
    let host_network = match (
        fs::read_link(proc_pid.join("ns/net")),
        fs::read_link(paths.proc_dir.join("self/ns/net")),
    ) {
        (Ok(task), Ok(agent)) => task == agent,
        _ => false,
    };
    if !host_network
        && let Some((rx, tx)) = fs::read_to_string(proc_pid.join("net/dev"))
            .ok()
            .and_then(|t| parse_net_dev(&t))
    {
        stats.network_receive_bytes = Some(rx);
        stats.network_transmit_bytes = Some(tx);
    }
    Some(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET_DEV: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:  123456     100    0    0    0     0          0         0   123456     100    0    0    0     0       0          0
  eth0: 1000 10 0 0 0 0 0 0 2000 20 0 0 0 0 0 0
  eth1:   500    5    0    0    0     0          0         0      70     1    0    0    0     0       0          0
";

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    fn paths(root: &Path) -> HostPaths {
        HostPaths {
            proc_dir: root.join("proc"),
            cgroup_dir: root.join("cgroup"),
        }
    }

    #[test]
    fn parses_small_files() {
        let lines = parse_proc_cgroup(
            "12:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n1:name=systemd:/x\n0::/system.slice/docker-abc.scope\n",
        );
        assert_eq!(lines.len(), 4);
        assert!(lines[0].has("cpuacct") && lines[0].has("cpu"));
        assert_eq!(lines[1].path, "/docker/abc");
        assert!(lines[3].is_v2());
        assert!(!lines[2].is_v2());
        assert_eq!(parse_net_dev(NET_DEV), Some((1500, 2070)));
        assert_eq!(
            parse_net_dev("h\nh\n    lo: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n"),
            Some((0, 0))
        );
        assert_eq!(parse_net_dev(""), None);
        assert_eq!(parse_v2_max("max\n"), None);
        assert_eq!(parse_v2_max("67108864\n"), Some(67_108_864));
        assert_eq!(parse_v1_limit("9223372036854771712\n"), None);
        assert_eq!(parse_v1_limit("268435456"), Some(268_435_456));
        assert_eq!(
            flat_key("usage_usec 2500000\nuser_usec 2000000\n", "usage_usec"),
            Some(2_500_000)
        );
        let stat = "4242 (my (odd) app) S 1 4242 4242 0 -1 4194560 300 0 0 0 150 50 20 30 20 0 1 0 100 1000 200";
        assert_eq!(parse_proc_stat_cpu(stat), Some(2.5));
        assert_eq!(
            parse_vm_rss("Name:\tsh\nVmRSS:\t    1024 kB\nThreads:\t1\n"),
            Some(1024 * 1024)
        );
    }

    #[test]
    fn cgroup_v2_task() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "proc/100/cgroup", "0::/berth/web.1\n");
        write(root, "proc/100/net/dev", NET_DEV);
        write(
            root,
            "proc/self/cgroup",
            "0::/system.slice/berth-agent.service\n",
        );
        write(root, "cgroup/cgroup.controllers", "cpu memory pids\n");
        write(
            root,
            "cgroup/berth/web.1/cpu.stat",
            "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n",
        );
        write(root, "cgroup/berth/web.1/memory.current", "4096000\n");
        write(root, "cgroup/berth/web.1/memory.max", "33554432\n");
        let s = task_stats(&paths(root), 100).unwrap();
        assert_eq!(s.source, Some(Source::CgroupV2));
        assert_eq!(s.cpu_seconds, Some(1.5));
        assert_eq!(s.memory_usage_bytes, Some(4_096_000));
        assert_eq!(s.memory_limit_bytes, Some(33_554_432));
        assert_eq!(
            (s.network_receive_bytes, s.network_transmit_bytes),
            (Some(1500), Some(2070))
        );
        // In the agent's network namespace (host networking): the node's counters, not
        // the task's, so none.
        let link = |rel: &str, target: &str| {
            let p = root.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(target, p).unwrap();
        };
        link("proc/self/ns/net", "net:[4026531992]");
        link("proc/100/ns/net", "net:[4026531992]");
        let s = task_stats(&paths(root), 100).unwrap();
        assert_eq!(s.network_receive_bytes, None);
        assert_eq!(s.cpu_seconds, Some(1.5));
        fs::remove_file(root.join("proc/100/ns/net")).unwrap();
        link("proc/100/ns/net", "net:[4026532871]");
        let s = task_stats(&paths(root), 100).unwrap();
        assert_eq!(s.network_receive_bytes, Some(1500));
        // Unlimited memory; a systemd-managed Docker container.
        write(
            root,
            "proc/200/cgroup",
            "0::/system.slice/docker-abc.scope\n",
        );
        write(
            root,
            "cgroup/system.slice/docker-abc.scope/cpu.stat",
            "usage_usec 10\n",
        );
        write(
            root,
            "cgroup/system.slice/docker-abc.scope/memory.current",
            "1\n",
        );
        write(
            root,
            "cgroup/system.slice/docker-abc.scope/memory.max",
            "max\n",
        );
        let s = task_stats(&paths(root), 200).unwrap();
        assert_eq!(s.memory_limit_bytes, None);
        assert_eq!(s.cpu_seconds, Some(0.00001));
        assert_eq!(s.network_receive_bytes, None);
        assert!(task_stats(&paths(root), 999).is_none(), "gone process");
    }

    #[test]
    fn cgroup_v1_docker_container_with_combined_cpu_mount() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(
            root,
            "proc/300/cgroup",
            "11:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n0::/\n",
        );
        write(
            root,
            "proc/self/cgroup",
            "11:memory:/\n3:cpu,cpuacct:/\n0::/\n",
        );
        write(
            root,
            "cgroup/cpu,cpuacct/docker/abc/cpuacct.usage",
            "3000000000\n",
        );
        write(
            root,
            "cgroup/memory/docker/abc/memory.usage_in_bytes",
            "52428800\n",
        );
        write(
            root,
            "cgroup/memory/docker/abc/memory.limit_in_bytes",
            "134217728\n",
        );
        // Hybrid host: an (empty) unified hierarchy too; v1 controllers win.
        write(root, "cgroup/unified/cgroup.controllers", "\n");
        let s = task_stats(&paths(root), 300).unwrap();
        assert_eq!(s.source, Some(Source::CgroupV1));
        assert_eq!(s.cpu_seconds, Some(3.0));
        assert_eq!(s.memory_usage_bytes, Some(52_428_800));
        assert_eq!(s.memory_limit_bytes, Some(134_217_728));
    }

    #[test]
    fn shared_cgroup_falls_back_to_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // The task sits in the agent's own memory cgroup and in the cpuacct root.
        write(
            root,
            "proc/400/cgroup",
            "4:memory:/sandbox/x\n2:cpuacct:/\n0::/\n",
        );
        write(
            root,
            "proc/self/cgroup",
            "4:memory:/sandbox/x\n2:cpuacct:/\n0::/\n",
        );
        write(
            root,
            "proc/400/stat",
            "400 (sh) S 1 400 400 0 -1 0 0 0 0 0 300 100 50 50 20 0 1 0 1 1 1",
        );
        write(root, "proc/400/status", "Name:\tsh\nVmRSS:\t2048 kB\n");
        write(root, "cgroup/cpuacct/cpuacct.usage", "999999999999\n");
        write(
            root,
            "cgroup/memory/sandbox/x/memory.usage_in_bytes",
            "999999999\n",
        );
        let s = task_stats(&paths(root), 400).unwrap();
        assert_eq!(s.source, Some(Source::Process));
        assert_eq!(s.cpu_seconds, Some(5.0));
        assert_eq!(s.memory_usage_bytes, Some(2048 * 1024));
        assert_eq!(s.memory_limit_bytes, None);
    }

    #[test]
    fn reads_this_process() {
        let pid = std::process::id() as i32;
        let s = task_stats(&HostPaths::default(), pid).unwrap();
        assert!(s.cpu_seconds.is_some(), "{s:?}");
        assert!(s.memory_usage_bytes.is_some(), "{s:?}");
    }
}
