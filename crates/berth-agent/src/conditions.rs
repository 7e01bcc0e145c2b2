//! Node conditions: health signals of the host itself, computed every few seconds and sent
//! with every status report. The scheduler places nothing on a node with a failing condition
//! (`Node::schedulable`), and `berth node show` lists them with their numbers.
//!
//! - `DockerReachable`: dockerd answers (only when the docker driver is enabled).
//! - `DiskPressure`: free space of the agent's data dir (and Docker's root dir) below a share
//!   of the filesystem or an absolute floor.
//! - `PidPressure`: threads in use (each takes a pid) against `kernel.pid_max` and
//!   `kernel.threads-max`.
//! - `KeysPressure`: root's kernel keys (`/proc/key-users`) against
//!   `kernel.keys.root_maxkeys` / `root_maxbytes`: every container takes a session keyring, and
//!   running out silently blocks new containers.
//! - `MemoryPressure`: `MemAvailable` below a share of `MemTotal`, or memory PSI
//!   (`/proc/pressure/memory`, `full avg10`) above a threshold.
//!
//! A signal that cannot be read is reported as ok, with a message saying so: an unusual kernel
//! must not take a node out of service.

use berth_core::node::NodeCondition;
use futures::future::BoxFuture;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub const DOCKER_REACHABLE: &str = "DockerReachable";
pub const DISK_PRESSURE: &str = "DiskPressure";
pub const PID_PRESSURE: &str = "PidPressure";
pub const KEYS_PRESSURE: &str = "KeysPressure";
pub const MEMORY_PRESSURE: &str = "MemoryPressure";

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// When a condition fails. A threshold of 0 disables that check.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// DiskPressure below this share (percent) of the filesystem free...
    pub disk_free_percent: f64,
    /// ...or below this many bytes free.
    pub disk_free_bytes: u64,
    /// PidPressure above this share (percent) of `pid_max`/`threads-max` in use.
    pub pids_percent: f64,
    /// KeysPressure above this share (percent) of root's key quota in use.
    pub keys_percent: f64,
    /// MemoryPressure below this share (percent) of memory available...
    pub mem_available_percent: f64,
    /// ...or when memory PSI `full avg10` exceeds this (percent of time stalled).
    pub mem_psi_full_avg10: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            disk_free_percent: 10.0,
            disk_free_bytes: 1024 * 1024 * 1024,
            pids_percent: 90.0,
            keys_percent: 90.0,
            mem_available_percent: 5.0,
            mem_psi_full_avg10: 25.0,
        }
    }
}

/// Asks dockerd whether it is alive: `Ok(version)` or why not.
pub type DockerPing = Arc<dyn Fn() -> BoxFuture<'static, Result<String, String>> + Send + Sync>;

/// Size and free space (for unprivileged users) of a filesystem, in bytes.
pub type DiskUsageFn = fn(&Path) -> std::io::Result<(u64, u64)>;

#[derive(Clone)]
pub struct ConditionsConfig {
    /// Usually `/proc`.
    pub proc_dir: PathBuf,
    /// Filesystems to watch (those that do not exist are skipped).
    pub disk_paths: Vec<PathBuf>,
    pub thresholds: Thresholds,
    /// Set when the docker driver is enabled.
    pub docker_ping: Option<DockerPing>,
    pub disk_usage: DiskUsageFn,
}

impl ConditionsConfig {
    /// Watches `/proc`, the agent's data dir and `/var/lib/docker`.
    pub fn new(data_dir: &Path, thresholds: Thresholds) -> Self {
        Self {
            proc_dir: PathBuf::from("/proc"),
            disk_paths: vec![data_dir.to_path_buf(), PathBuf::from("/var/lib/docker")],
            thresholds,
            docker_ping: None,
            disk_usage: statvfs,
        }
    }
}

fn cond(kind: &str, ok: bool, message: String) -> NodeCondition {
    NodeCondition {
        kind: kind.to_string(),
        ok,
        message,
    }
}

fn read(proc_dir: &Path, rel: &str) -> Result<String, String> {
    let p = proc_dir.join(rel);
    fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))
}

fn read_num(proc_dir: &Path, rel: &str) -> Result<u64, String> {
    let text = read(proc_dir, rel)?;
    text.trim()
        .parse()
        .map_err(|_| format!("{rel}: not a number: {:?}", text.trim()))
}

fn pct(used: f64, total: f64) -> f64 {
    if total <= 0.0 {
        0.0
    } else {
        used * 100.0 / total
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / GIB)
}

/// DiskPressure from `(path, size, available)` readings.
pub fn disk_condition(readings: &[(PathBuf, u64, u64)], t: &Thresholds) -> NodeCondition {
    if readings.is_empty() {
        return cond(DISK_PRESSURE, true, "no filesystem to watch".into());
    }
    let mut ok = true;
    let mut parts = Vec::new();
    for (path, size, avail) in readings {
        let free_pct = pct(*avail as f64, *size as f64);
        let low_pct = t.disk_free_percent > 0.0 && free_pct < t.disk_free_percent;
        let low_bytes = t.disk_free_bytes > 0 && *avail < t.disk_free_bytes;
        let low = low_pct || low_bytes;
        ok &= !low;
        parts.push(format!(
            "{}: {} free of {} ({free_pct:.1}%){}",
            path.display(),
            gib(*avail),
            gib(*size),
            if low { " LOW" } else { "" }
        ));
    }
    let limit = format!(
        "pressure below {}% or {} free",
        t.disk_free_percent,
        gib(t.disk_free_bytes)
    );
    cond(DISK_PRESSURE, ok, format!("{}; {limit}", parts.join("; ")))
}

/// PidPressure: threads in use (4th field of `/proc/loadavg`, `running/total`) against
/// `kernel.pid_max` and `kernel.threads-max`.
pub fn pid_condition(proc_dir: &Path, t: &Thresholds) -> NodeCondition {
    let result = (|| -> Result<NodeCondition, String> {
        let loadavg = read(proc_dir, "loadavg")?;
        let used: u64 = loadavg
            .split_whitespace()
            .nth(3)
            .and_then(|f| f.split_once('/'))
            .and_then(|(_, total)| total.parse().ok())
            .ok_or_else(|| format!("cannot parse /proc/loadavg: {:?}", loadavg.trim()))?;
        let pid_max = read_num(proc_dir, "sys/kernel/pid_max")?;
        let threads_max = read_num(proc_dir, "sys/kernel/threads-max")?;
        let p_pid = pct(used as f64, pid_max as f64);
        let p_thr = pct(used as f64, threads_max as f64);
        let worst = p_pid.max(p_thr);
        let ok = t.pids_percent <= 0.0 || worst <= t.pids_percent;
        Ok(cond(
            PID_PRESSURE,
            ok,
            format!(
                "{used} processes+threads in use: {p_pid:.1}% of pid_max {pid_max}, \
                 {p_thr:.1}% of threads-max {threads_max}; pressure above {}%",
                t.pids_percent
            ),
        ))
    })();
    result.unwrap_or_else(|e| cond(PID_PRESSURE, true, format!("unknown ({e})")))
}

/// KeysPressure: root's line of `/proc/key-users`
/// (`uid: usage nkeys/nikeys qnkeys/maxkeys qnbytes/maxbytes`) against
/// `kernel.keys.root_maxkeys` and `root_maxbytes`.
pub fn keys_condition(proc_dir: &Path, t: &Thresholds) -> NodeCondition {
    let result = (|| -> Result<NodeCondition, String> {
        let text = read(proc_dir, "key-users")?;
        let pair = |f: &str| -> Option<(u64, u64)> {
            let (a, b) = f.split_once('/')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        };
        let root = text
            .lines()
            .find(|l| l.trim_start().starts_with("0:"))
            .map(|l| l.split_whitespace().collect::<Vec<_>>());
        // Root may have no keys at all yet.
        let (keys, line_maxkeys, bytes, line_maxbytes) = match root {
            Some(f) if f.len() >= 5 => {
                let (k, mk) = pair(f[3]).ok_or("cannot parse root's keys")?;
                let (b, mb) = pair(f[4]).ok_or("cannot parse root's key bytes")?;
                (k, mk, b, mb)
            }
            Some(_) => return Err("cannot parse root's line of /proc/key-users".into()),
            None => (0, 0, 0, 0),
        };
        let maxkeys = read_num(proc_dir, "sys/kernel/keys/root_maxkeys").unwrap_or(line_maxkeys);
        let maxbytes = read_num(proc_dir, "sys/kernel/keys/root_maxbytes").unwrap_or(line_maxbytes);
        let p_keys = pct(keys as f64, maxkeys as f64);
        let p_bytes = pct(bytes as f64, maxbytes as f64);
        let ok = t.keys_percent <= 0.0 || p_keys.max(p_bytes) <= t.keys_percent;
        Ok(cond(
            KEYS_PRESSURE,
            ok,
            format!(
                "root has {keys} of {maxkeys} keys ({p_keys:.1}%), {bytes} of {maxbytes} bytes \
                 ({p_bytes:.1}%); pressure above {}% (raise kernel.keys.root_maxkeys)",
                t.keys_percent
            ),
        ))
    })();
    result.unwrap_or_else(|e| cond(KEYS_PRESSURE, true, format!("unknown ({e})")))
}

/// MemoryPressure: `MemAvailable` vs `MemTotal`, and memory PSI when the kernel has it.
pub fn memory_condition(proc_dir: &Path, t: &Thresholds) -> NodeCondition {
    let result = (|| -> Result<NodeCondition, String> {
        let meminfo = read(proc_dir, "meminfo")?;
        let kb = |key: &str| -> Option<u64> {
            meminfo
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
                .and_then(|v| v.parse().ok())
        };
        let total = kb("MemTotal").ok_or("no MemTotal in /proc/meminfo")?;
        let avail = kb("MemAvailable").ok_or("no MemAvailable in /proc/meminfo")?;
        let avail_pct = pct(avail as f64, total as f64);
        let low = t.mem_available_percent > 0.0 && avail_pct < t.mem_available_percent;
        let mut msg = format!(
            "{} available of {} ({avail_pct:.1}%){}",
            gib(avail * 1024),
            gib(total * 1024),
            if low { " LOW" } else { "" }
        );
        let mut stalled = false;
        if let Ok(psi) = read(proc_dir, "pressure/memory") {
            let full = psi.lines().find(|l| l.starts_with("full ")).and_then(|l| {
                l.split_whitespace()
                    .find_map(|f| f.strip_prefix("avg10="))
                    .and_then(|v| v.parse::<f64>().ok())
            });
            if let Some(avg10) = full {
                stalled = t.mem_psi_full_avg10 > 0.0 && avg10 > t.mem_psi_full_avg10;
                msg.push_str(&format!(
                    "; PSI full avg10 {avg10:.2}%{}",
                    if stalled { " HIGH" } else { "" }
                ));
            }
        }
        msg.push_str(&format!(
            "; pressure below {}% available or PSI full avg10 above {}%",
            t.mem_available_percent, t.mem_psi_full_avg10
        ));
        Ok(cond(MEMORY_PRESSURE, !low && !stalled, msg))
    })();
    result.unwrap_or_else(|e| cond(MEMORY_PRESSURE, true, format!("unknown ({e})")))
}

/// Computes every condition once.
pub async fn compute(cfg: &ConditionsConfig) -> Vec<NodeCondition> {
    let mut out = Vec::new();
    if let Some(ping) = &cfg.docker_ping {
        let c = match tokio::time::timeout(Duration::from_secs(5), ping()).await {
            Ok(Ok(version)) => cond(DOCKER_REACHABLE, true, format!("dockerd {version} answers")),
            Ok(Err(e)) => cond(DOCKER_REACHABLE, false, format!("dockerd unreachable: {e}")),
            Err(_) => cond(
                DOCKER_REACHABLE,
                false,
                "dockerd did not answer within 5s".into(),
            ),
        };
        out.push(c);
    }
    let c = cfg.clone();
    let host = tokio::task::spawn_blocking(move || {
        let mut readings = Vec::new();
        for p in &c.disk_paths {
            if p.exists()
                && let Ok((size, avail)) = (c.disk_usage)(p)
            {
                readings.push((p.clone(), size, avail));
            }
        }
        vec![
            disk_condition(&readings, &c.thresholds),
            pid_condition(&c.proc_dir, &c.thresholds),
            keys_condition(&c.proc_dir, &c.thresholds),
            memory_condition(&c.proc_dir, &c.thresholds),
        ]
    })
    .await
    .unwrap_or_default();
    out.extend(host);
    out
}

/// Recomputes the conditions every `interval` and hands them to `publish`; logs every change
/// of a condition's state. Runs until dropped.
pub async fn run_loop(
    cfg: ConditionsConfig,
    interval: Duration,
    publish: impl Fn(Vec<NodeCondition>) + Send,
) {
    let mut last: Vec<NodeCondition> = Vec::new();
    loop {
        let now = compute(&cfg).await;
        for c in &now {
            let before = last.iter().find(|l| l.kind == c.kind).map(|l| l.ok);
            if before != Some(c.ok) {
                if c.ok {
                    tracing::info!(condition = %c.kind, message = %c.message, "node condition ok");
                } else {
                    tracing::warn!(condition = %c.kind, message = %c.message, "node condition failing: no new tasks will be placed here");
                }
            }
        }
        publish(now.clone());
        last = now;
        tokio::time::sleep(interval).await;
    }
}

/// `statvfs(2)`: (size, available to unprivileged users) in bytes.
#[allow(unsafe_code)]
pub fn statvfs(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a valid NUL-terminated string and `buf` a properly sized, writable
    // statvfs struct that the call fills in; nothing is retained after the call.
    let mut buf: libc::statvfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut buf) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let frsize = buf.f_frsize as u64;
    Ok((buf.f_blocks as u64 * frsize, buf.f_bavail as u64 * frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (rel, text) in files {
            let p = dir.path().join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        }
        dir
    }

    #[test]
    fn disk_pressure_by_share_or_floor() {
        let t = Thresholds::default();
        let g = 1024 * 1024 * 1024u64;
        let c = disk_condition(&[("/data".into(), 100 * g, 50 * g)], &t);
        assert!(c.ok, "{}", c.message);
        assert!(
            c.message
                .contains("/data: 50.0 GiB free of 100.0 GiB (50.0%)"),
            "{}",
            c.message
        );
        // 9% free.
        let c = disk_condition(&[("/data".into(), 100 * g, 9 * g)], &t);
        assert!(!c.ok && c.message.contains("LOW"), "{}", c.message);
        // 50% free but under 1 GiB.
        let c = disk_condition(&[("/small".into(), g, g / 2)], &t);
        assert!(!c.ok);
        // One bad filesystem of two is enough.
        let c = disk_condition(
            &[
                ("/data".into(), 100 * g, 50 * g),
                ("/var/lib/docker".into(), 100 * g, 2 * g),
            ],
            &t,
        );
        assert!(
            !c.ok && c.message.contains("/var/lib/docker: 2.0 GiB free"),
            "{}",
            c.message
        );
        let off = Thresholds {
            disk_free_percent: 0.0,
            disk_free_bytes: 0,
            ..t
        };
        assert!(disk_condition(&[("/d".into(), 100, 0)], &off).ok);
        assert!(disk_condition(&[], &Thresholds::default()).ok);
    }

    #[test]
    fn pid_pressure_counts_threads_against_both_limits() {
        let t = Thresholds::default();
        let dir = fixture(&[
            ("loadavg", "0.50 0.40 0.30 3/1000 4242\n"),
            ("sys/kernel/pid_max", "32768\n"),
            ("sys/kernel/threads-max", "100000\n"),
        ]);
        let c = pid_condition(dir.path(), &t);
        assert!(c.ok, "{}", c.message);
        assert!(
            c.message.contains("1000 processes+threads"),
            "{}",
            c.message
        );
        // 30000/32768 = 91.6% of pid_max.
        fs::write(dir.path().join("loadavg"), "1 1 1 5/30000 1\n").unwrap();
        let c = pid_condition(dir.path(), &t);
        assert!(!c.ok, "{}", c.message);
        assert!(
            c.message.contains("91.6% of pid_max 32768"),
            "{}",
            c.message
        );
        // threads-max is the smaller limit.
        fs::write(dir.path().join("sys/kernel/threads-max"), "1050\n").unwrap();
        fs::write(dir.path().join("loadavg"), "1 1 1 5/1000 1\n").unwrap();
        assert!(!pid_condition(dir.path(), &t).ok);
        // Unreadable: ok, and says so.
        let empty = tempfile::tempdir().unwrap();
        let c = pid_condition(empty.path(), &t);
        assert!(c.ok && c.message.starts_with("unknown"), "{}", c.message);
    }

    #[test]
    fn keys_pressure_from_key_users() {
        let t = Thresholds::default();
        let dir = fixture(&[
            (
                "key-users",
                "    0:     9 8/8 3/1000000 40/25000000\n 1000:     2 2/2 2/200 30/20000\n",
            ),
            ("sys/kernel/keys/root_maxkeys", "1000000\n"),
            ("sys/kernel/keys/root_maxbytes", "25000000\n"),
        ]);
        let c = keys_condition(dir.path(), &t);
        assert!(c.ok, "{}", c.message);
        assert!(
            c.message.contains("root has 3 of 1000000 keys"),
            "{}",
            c.message
        );
        // Ctrip: the old default root_maxkeys of 200, nearly used up by containers.
        fs::write(
            dir.path().join("key-users"),
            "    0:   190 190/190 190/200 4000/20000\n",
        )
        .unwrap();
        fs::write(dir.path().join("sys/kernel/keys/root_maxkeys"), "200\n").unwrap();
        fs::write(dir.path().join("sys/kernel/keys/root_maxbytes"), "20000\n").unwrap();
        let c = keys_condition(dir.path(), &t);
        assert!(!c.ok, "{}", c.message);
        assert!(
            c.message.contains("190 of 200 keys (95.0%)"),
            "{}",
            c.message
        );
        // Bytes can run out too.
        fs::write(
            dir.path().join("key-users"),
            "    0:   10 10/10 10/200 19000/20000\n",
        )
        .unwrap();
        assert!(!keys_condition(dir.path(), &t).ok);
        // No root line yet: no keys.
        fs::write(
            dir.path().join("key-users"),
            " 1000:     2 2/2 2/200 30/20000\n",
        )
        .unwrap();
        assert!(keys_condition(dir.path(), &t).ok);
    }

    #[test]
    fn memory_pressure_from_meminfo_and_psi() {
        let t = Thresholds::default();
        let dir = fixture(&[(
            "meminfo",
            "MemTotal:       16000000 kB\nMemFree:          100000 kB\nMemAvailable:    4000000 kB\n",
        )]);
        let c = memory_condition(dir.path(), &t);
        assert!(c.ok, "{}", c.message);
        assert!(c.message.contains("(25.0%)"), "{}", c.message);
        fs::write(
            dir.path().join("meminfo"),
            "MemTotal:       16000000 kB\nMemAvailable:     400000 kB\n",
        )
        .unwrap();
        let c = memory_condition(dir.path(), &t);
        assert!(!c.ok && c.message.contains("(2.5%) LOW"), "{}", c.message);
        // Plenty available but the kernel is stalling on memory.
        fs::write(
            dir.path().join("meminfo"),
            "MemTotal:       16000000 kB\nMemAvailable:    8000000 kB\n",
        )
        .unwrap();
        fs::create_dir_all(dir.path().join("pressure")).unwrap();
        fs::write(
            dir.path().join("pressure/memory"),
            "some avg10=60.00 avg60=40.00 avg300=10.00 total=1\nfull avg10=30.50 avg60=20.00 avg300=5.00 total=1\n",
        )
        .unwrap();
        let c = memory_condition(dir.path(), &t);
        assert!(
            !c.ok && c.message.contains("PSI full avg10 30.50% HIGH"),
            "{}",
            c.message
        );
        fs::write(
            dir.path().join("pressure/memory"),
            "some avg10=1.00 avg60=0 avg300=0 total=1\nfull avg10=0.00 avg60=0 avg300=0 total=1\n",
        )
        .unwrap();
        assert!(memory_condition(dir.path(), &t).ok);
    }

    #[tokio::test]
    async fn compute_all_with_docker_ping() {
        let dir = fixture(&[
            ("loadavg", "0 0 0 1/100 1\n"),
            ("sys/kernel/pid_max", "32768\n"),
            ("sys/kernel/threads-max", "100000\n"),
            ("key-users", "    0:     1 1/1 1/200 9/20000\n"),
            ("meminfo", "MemTotal: 1000 kB\nMemAvailable: 500 kB\n"),
        ]);
        fn fake_disk(_: &Path) -> std::io::Result<(u64, u64)> {
            Ok((100 << 30, 50 << 30))
        }
        let mut cfg = ConditionsConfig::new(dir.path(), Thresholds::default());
        cfg.proc_dir = dir.path().to_path_buf();
        cfg.disk_usage = fake_disk;
        cfg.docker_ping = Some(Arc::new(|| {
            Box::pin(async { Err("connection refused".to_string()) })
        }));
        let all = compute(&cfg).await;
        let kinds: Vec<&str> = all.iter().map(|c| c.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                DOCKER_REACHABLE,
                DISK_PRESSURE,
                PID_PRESSURE,
                KEYS_PRESSURE,
                MEMORY_PRESSURE
            ]
        );
        assert!(!all[0].ok && all[0].message.contains("connection refused"));
        assert!(all[1..].iter().all(|c| c.ok), "{all:?}");
        // Without docker, no DockerReachable; the real statvfs works on a real path.
        cfg.docker_ping = None;
        cfg.disk_usage = statvfs;
        let all = compute(&cfg).await;
        assert_eq!(all.len(), 4);
        let (size, avail) = statvfs(dir.path()).unwrap();
        assert!(size > 0 && avail <= size);
    }
}
