//! The per-task shim of the exec driver (like `containerd-shim`).
//!
//! The `berth` binary runs it as `berth __shim <task_dir>`, which must call [`main`] before any
//! tokio runtime is built (if one is running, [`main`] moves to a fresh thread). The shim:
//!
//! 1. becomes a session leader (`setsid`) so it outlives the agent, keeps the default
//!    disposition for nothing that could kill it (SIGHUP is caught and ignored, SIGPIPE is
//!    ignored by the Rust runtime), and makes itself a child subreaper so orphans of the task
//!    are reaped by it;
//! 2. reads `<task_dir>/spec.json` ([`ShimSpec`]), starts the task in its own process group
//!    (and in its cgroups, when the spec names them: the child joins them between fork and
//!    exec, so no code of the app runs outside its limits) with stdout/stderr appended to files;
//! 3. writes `<task_dir>/pid` ([`PidRecord`]: task pid and its start time, plus its own);
//! 4. forwards SIGTERM/SIGINT to the task's process group, and kills the whole task once the
//!    kernel OOM-killed any process of it (cgroup v1 has no `memory.oom.group`);
//! 5. when the task exits, SIGKILLs what is left of its process group (and cgroups), reaps it,
//!    removes the cgroups, writes `<task_dir>/exit.json` ([`ExitRecord`]) atomically and exits.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tokio::signal::unix::{SignalKind, signal};

/// File names inside a task directory.
pub const SPEC_FILE: &str = "spec.json";
pub const PID_FILE: &str = "pid";
pub const EXIT_FILE: &str = "exit.json";
pub const SHIM_PID_FILE: &str = "shim.pid";
pub const SHIM_LOG_FILE: &str = "shim.log";
pub const STDOUT_FILE: &str = "stdout";
pub const STDERR_FILE: &str = "stderr";
/// Marker written by the driver when the task is killed on request (it reports TASK_KILLED).
pub const KILLED_MARKER: &str = "killed";
/// Marker written by `forget`: the task is no longer reported by `recover`.
pub const FORGOTTEN_MARKER: &str = "forgotten";

/// Environment variable carrying the task directory to the shim process (in addition to the
/// last argument), so test harnesses can re-execute themselves as the shim.
pub const SHIM_DIR_ENV: &str = "BERTH_SHIM_TASK_DIR";

/// What the driver asks the shim to run (`<task_dir>/spec.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShimSpec {
    pub task_id: String,
    /// Program and arguments; `argv[0]` is looked up in the task's `PATH`.
    pub argv: Vec<String>,
    /// The task's complete environment (nothing is inherited from the shim).
    pub env: BTreeMap<String, String>,
    pub cwd: PathBuf,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    /// The task's cgroup v2 directory (already created with its limits), if any.
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
    /// The task's cgroup v1 directories, one per hierarchy (already created with their limits).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cgroups: Vec<PathBuf>,
    /// The user the task runs as (the app's `user`), resolved on this node; `None`: the
    /// shim's own (the agent's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<TaskUser>,
    /// Rotate stdout and stderr once they are over this size; 0: never.
    #[serde(default)]
    pub log_max_bytes: u64,
    /// Files kept of each log, the one being written included.
    #[serde(default)]
    pub log_max_files: u32,
    /// Environment variables whose values (secrets) the shim reads from its stdin, a JSON
    /// object, instead of from this file: no file of the task directory holds them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stdin_env: Vec<String>,
}

impl ShimSpec {
    /// Every cgroup directory of the task (v2 and v1).
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        self.cgroup.iter().chain(&self.cgroups).cloned().collect()
    }
}

/// A user as the task runs: ids looked up on the node by the driver (`getpwnam`,
/// `getgrouplist`), so the forked child only makes system calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the primary one included).
    #[serde(default)]
    pub groups: Vec<u32>,
}

/// `<task_dir>/pid`: the task's pid (= its process group id) and `/proc/<pid>/stat` start time
/// (field 22), which guards against pid reuse; plus the same for the shim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidRecord {
    pub pid: i32,
    pub start_time: u64,
    #[serde(default)]
    pub shim_pid: i32,
    #[serde(default)]
    pub shim_start_time: u64,
}

/// `<task_dir>/exit.json`: how the task ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ExitRecord {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    #[serde(default)]
    pub oom: bool,
    /// Set when the task could not be started at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("invalid spec: {0}")]
    Spec(String),
}

fn ctx(context: impl Into<String>) -> impl FnOnce(io::Error) -> ShimError {
    let context = context.into();
    move |source| ShimError::Io { context, source }
}

/// Runs the shim for `task_dir` to completion; returns the process exit code (0 when the task
/// ran, whatever its own exit status, and `exit.json` was written).
pub fn main(task_dir: &Path) -> i32 {
    if tokio::runtime::Handle::try_current().is_ok() {
        // Called from inside a runtime: a nested `block_on` would panic.
        let dir = task_dir.to_path_buf();
        return std::thread::spawn(move || run_logged(&dir))
            .join()
            .unwrap_or(1);
    }
    run_logged(task_dir)
}

fn run_logged(task_dir: &Path) -> i32 {
    match run(task_dir) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("berth shim {}: {e}", task_dir.display());
            // Leave a record so the driver does not wait forever.
            if !task_dir.join(EXIT_FILE).exists() {
                let record = ExitRecord {
                    error: Some(format!("shim: {e}")),
                    ..Default::default()
                };
                let _ = write_json_atomic(&task_dir.join(EXIT_FILE), &record);
            }
            1
        }
    }
}

fn run(task_dir: &Path) -> Result<(), ShimError> {
    // Fails only if we already lead a process group, in which case we keep that one.
    if let Err(e) = sys::setsid() {
        eprintln!("berth shim: setsid: {e}");
    }
    if let Err(e) = sys::set_child_subreaper() {
        eprintln!("berth shim: PR_SET_CHILD_SUBREAPER: {e}");
    }
    let spec_path = task_dir.join(SPEC_FILE);
    let text = fs::read_to_string(&spec_path).map_err(ctx(spec_path.display().to_string()))?;
    let mut spec: ShimSpec =
        serde_json::from_str(&text).map_err(|e| ShimError::Spec(e.to_string()))?;
    if spec.argv.is_empty() {
        return Err(ShimError::Spec("empty argv".into()));
    }
    if !spec.stdin_env.is_empty() {
        let values = read_stdin_env(io::stdin().lock(), &spec.stdin_env)?;
        spec.env.extend(values);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ctx("tokio runtime"))?;
    rt.block_on(supervise(task_dir, &spec))
}

/// Most bytes the shim reads from its stdin (secret values: at most 1,000 of 64 KiB each).
const MAX_STDIN_ENV_BYTES: u64 = 80 << 20;

/// The values of the `names` variables from `input`: one JSON object of strings, read to its
/// end. Every name must be there; errors name variables, never values.
pub fn read_stdin_env(
    input: impl io::Read,
    names: &[String],
) -> Result<BTreeMap<String, String>, ShimError> {
    use std::io::Read;
    let mut text = Vec::new();
    input
        .take(MAX_STDIN_ENV_BYTES)
        .read_to_end(&mut text)
        .map_err(ctx("reading the task's secret environment from stdin"))?;
    let mut all: BTreeMap<String, String> = serde_json::from_slice(&text).map_err(|_| {
        ShimError::Spec("the secret environment on stdin is not a JSON object of strings".into())
    })?;
    names
        .iter()
        .map(|n| {
            all.remove(n).map(|v| (n.clone(), v)).ok_or_else(|| {
                ShimError::Spec(format!("secret environment variable {n} missing on stdin"))
            })
        })
        .collect()
}

async fn supervise(task_dir: &Path, spec: &ShimSpec) -> Result<(), ShimError> {
    // Registering handlers replaces the default (terminating) dispositions.
    let mut term = signal(SignalKind::terminate()).map_err(ctx("SIGTERM handler"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(ctx("SIGINT handler"))?;
    let mut hup = signal(SignalKind::hangup()).map_err(ctx("SIGHUP handler"))?;
    let mut chld = signal(SignalKind::child()).map_err(ctx("SIGCHLD handler"))?;

    let exit_path = task_dir.join(EXIT_FILE);
    let cgroups = spec.cgroup_dirs();
    let (pid, start) = match spawn(spec) {
        Ok(child) => {
            let pid =
                i32::try_from(child.id()).map_err(|_| ShimError::Spec("pid overflow".into()))?;
            // The child is reaped through `sys::reap_any`, never through `child`.
            drop(child);
            (pid, proc_start_time(pid).unwrap_or(0))
        }
        Err(e) => {
            let record = ExitRecord {
                code: Some(127),
                error: Some(e.to_string()),
                ..Default::default()
            };
            write_json_atomic(&exit_path, &record).map_err(ctx("write exit.json"))?;
            crate::cgroup::remove(&cgroups);
            return Ok(());
        }
    };
    let me = std::process::id() as i32;
    let record = PidRecord {
        pid,
        start_time: start,
        shim_pid: me,
        shim_start_time: proc_start_time(me).unwrap_or(0),
    };
    write_json_atomic(&task_dir.join(PID_FILE), &record).map_err(ctx("write pid file"))?;

    let mut oom_handled = false;
    let mut logs_checked = Instant::now();
    let status = loop {
        match reap(pid) {
            Reaped::Exited(status) => break Some(status),
            Reaped::Gone => break None,
            Reaped::Running => {}
        }
        if logs_checked.elapsed() >= LOG_CHECK_INTERVAL {
            logs_checked = Instant::now();
            for path in [&spec.stdout, &spec.stderr] {
                if let Err(e) = rotate_log(path, spec.log_max_bytes, spec.log_max_files) {
                    eprintln!("berth shim: rotating {}: {e}", path.display());
                }
            }
        }
        if !oom_handled && !cgroups.is_empty() && crate::cgroup::oom_kills(&cgroups) > 0 {
            // The kernel killed one process of the task: end all of it, as v2's
            // `memory.oom.group` does, instead of leaving a half-dead task running.
            oom_handled = true;
            eprintln!("berth shim: OOM kill in the task's cgroup: killing the whole task");
            let _ = sys::kill(-pid, libc::SIGKILL);
            crate::cgroup::kill_all(&cgroups);
            continue;
        }
        tokio::select! {
            _ = term.recv() => forward(pid, libc::SIGTERM),
            _ = int.recv() => forward(pid, libc::SIGINT),
            _ = hup.recv() => {}
            _ = chld.recv() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    };

    // The task's main process is gone: nothing of it may outlive it.
    let _ = sys::kill(-pid, libc::SIGKILL);
    crate::cgroup::kill_all(&cgroups);
    // Reap the rest (orphans are re-parented to us as the subreaper), for a bounded time.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match sys::reap_any() {
            Ok(Some(_)) => continue,
            Ok(None) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(None) | Err(_) => break,
        }
    }
    let oom = crate::cgroup::oom_kills(&cgroups) > 0;
    let record = match status {
        Some(status) => ExitRecord {
            code: status.code(),
            signal: status.signal(),
            oom,
            error: None,
        },
        None => ExitRecord {
            oom,
            error: Some("task exit status lost".into()),
            ..Default::default()
        },
    };
    // Remove the cgroups before reporting the exit: once a task is terminal its cgroups are
    // gone (and a shim stopped right after writing exit.json leaves none behind).
    if !crate::cgroup::remove(&cgroups) {
        eprintln!("berth shim: cannot remove the task's cgroups {cgroups:?}");
    }
    write_json_atomic(&exit_path, &record).map_err(ctx("write exit.json"))?;
    Ok(())
}

enum Reaped {
    Exited(ExitStatus),
    Running,
    /// No children at all: the task was reaped by someone else (cannot normally happen).
    Gone,
}

/// Reaps every exited child; returns the task's status once it has exited.
fn reap(task_pid: i32) -> Reaped {
    let mut found = None;
    loop {
        match sys::reap_any() {
            Ok(Some((pid, status))) => {
                if pid == task_pid {
                    found = Some(status);
                }
            }
            Ok(None) => break,
            Err(_) if found.is_none() => return Reaped::Gone,
            Err(_) => break,
        }
    }
    found.map_or(Reaped::Running, Reaped::Exited)
}

fn forward(pgid: i32, sig: i32) {
    if let Err(e) = sys::kill(-pgid, sig) {
        eprintln!("berth shim: forwarding signal {sig} to group {pgid}: {e}");
    }
}

fn spawn(spec: &ShimSpec) -> io::Result<std::process::Child> {
    let stdout = append(&spec.stdout)?;
    let stderr = append(&spec.stderr)?;
    let mut cmd = Command::new(resolve(
        &spec.argv[0],
        spec.env.get("PATH").map(String::as_str),
    ));
    cmd.arg0(&spec.argv[0])
        .args(&spec.argv[1..])
        .env_clear()
        .envs(&spec.env)
        .current_dir(&spec.cwd)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    let procs = spec
        .cgroup_dirs()
        .iter()
        .map(|cg| OpenOptions::new().write(true).open(cg.join("cgroup.procs")))
        .collect::<io::Result<Vec<File>>>()?;
    // Joining the cgroups needs root: before the switch to the task's user.
    if !procs.is_empty() {
        sys::join_cgroups_before_exec(&mut cmd, procs);
    }
    if let Some(u) = &spec.user {
        sys::become_user_before_exec(&mut cmd, u);
    }
    cmd.spawn()
}

/// How often the shim looks at the size of the task's logs.
const LOG_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Rotates the log at `path` once it is over `max_bytes` (0: never): `path.1` up to
/// `path.<max_files - 1>` keep the older output, newest first, and `path` is emptied in
/// place. That is logrotate's copytruncate: the task keeps writing to its O_APPEND descriptor,
/// now at the start of the file; what it writes between the copy and the truncation is lost.
/// Returns whether it rotated.
pub fn rotate_log(path: &Path, max_bytes: u64, max_files: u32) -> io::Result<bool> {
    if max_bytes == 0 {
        return Ok(false);
    }
    let len = match fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= max_bytes {
        return Ok(false);
    }
    let rotated = |i: u32| {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{i}"));
        PathBuf::from(name)
    };
    let keep = max_files.saturating_sub(1);
    if keep > 0 {
        for i in (1..keep).rev() {
            match fs::rename(rotated(i), rotated(i + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        fs::copy(path, rotated(1))?;
    }
    OpenOptions::new().write(true).open(path)?.set_len(0)?;
    Ok(true)
}

fn append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// `Command` looks programs up in the *shim's* PATH; the task's PATH must win.
fn resolve(program: &str, path: Option<&str>) -> PathBuf {
    if program.contains('/') {
        return PathBuf::from(program);
    }
    for dir in path.unwrap_or("").split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(program);
        if candidate.is_file() {
            return candidate;
        }
    }
    PathBuf::from(program)
}

/// Writes `value` as JSON to a temporary file next to `path`, fsyncs it and renames it over
/// `path`, so readers see either nothing or the complete file.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let body = serde_json::to_vec(value).map_err(io::Error::other)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp.{}", std::process::id()));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

/// Reads a JSON file; `Ok(None)` when it does not exist.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> io::Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(io::Error::other),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The process's start time in clock ticks since boot (`/proc/<pid>/stat` field 22), `None` if
/// there is no such process.
pub fn proc_start_time(pid: i32) -> Option<u64> {
    proc_stat(pid).map(|(_, start)| start)
}

/// `(state, start_time)` from `/proc/<pid>/stat`.
fn proc_stat(pid: i32) -> Option<(char, u64)> {
    if pid <= 0 {
        return None;
    }
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

fn parse_stat(stat: &str) -> Option<(char, u64)> {
    // `pid (comm) state ...`; comm may contain spaces and parentheses, so split at the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // `rest` starts at field 3 (state); field 22 is 19 further on.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// True when `pid` is a live (not zombie) process started at `start_time` (0: any start time).
pub fn proc_alive(pid: i32, start_time: u64) -> bool {
    match proc_stat(pid) {
        Some((state, start)) => {
            !matches!(state, 'Z' | 'X' | 'x') && (start_time == 0 || start == start_time)
        }
        None => false,
    }
}

/// The few system calls std does not wrap. Each is a minimal `unsafe` wrapper.
/// The name of the user this process runs as (`berth dev` runs tasks as it by default).
pub fn current_user_name() -> Option<String> {
    sys::current_user_name()
}

pub(crate) mod sys {
    use std::fs::File;
    use std::io;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::process::{Command, ExitStatus};

    #[allow(unsafe_code)]
    pub fn setsid() -> io::Result<()> {
        // SAFETY: setsid(2) takes no arguments and only changes this process's session.
        let r = unsafe { libc::setsid() };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    #[allow(unsafe_code)]
    pub fn set_child_subreaper() -> io::Result<()> {
        // SAFETY: PR_SET_CHILD_SUBREAPER takes one integer argument; no memory is passed.
        let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Sends `sig` to `pid` (a process group when negative). Refuses the broadcast forms
    /// (0, -1, 1) that would hit more than the intended task.
    #[allow(unsafe_code)]
    pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
        if pid.unsigned_abs() <= 1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "refusing to signal pid 0/1/-1",
            ));
        }
        // SAFETY: kill(2) takes plain integers; the broadcast pids were rejected above.
        let r = unsafe { libc::kill(pid, sig) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Reaps one exited child without blocking: `Ok(Some)` for a reaped child, `Ok(None)` when
    /// children exist but none has exited, `Err` (ECHILD) when there are no children.
    #[allow(unsafe_code)]
    pub fn reap_any() -> io::Result<Option<(i32, ExitStatus)>> {
        let mut status: libc::c_int = 0;
        // SAFETY: `status` is a valid, writable c_int for the duration of the call.
        let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        match r {
            r if r < 0 => Err(io::Error::last_os_error()),
            0 => Ok(None),
            pid => Ok(Some((pid, ExitStatus::from_raw(status)))),
        }
    }

    /// Makes the spawned child take `user`'s groups, gid and uid (in that order: each
    /// step needs the privileges the next drops) between fork and exec.
    #[allow(unsafe_code)]
    pub fn become_user_before_exec(cmd: &mut Command, user: &super::TaskUser) {
        let (uid, gid) = (user.uid, user.gid);
        let mut groups: Vec<libc::gid_t> = user.groups.clone();
        if groups.is_empty() {
            groups.push(gid);
        }
        // SAFETY: the closure runs in the forked child and only calls setgroups(2),
        // setgid(2) and setuid(2) on data allocated before the fork; the child has one
        // thread, so glibc's set*id broadcast to other threads has nothing to do.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// The name of this process's effective user in the node's user database (NSS), if it
    /// has one.
    #[allow(unsafe_code)]
    pub fn current_user_name() -> Option<String> {
        // SAFETY: geteuid(2) cannot fail and takes no arguments.
        let uid = unsafe { libc::geteuid() };
        let mut buf: Vec<libc::c_char> = vec![0; 16 * 1024];
        // SAFETY: an all-zero passwd is a valid value; it is only read after getpwuid_r
        // filled it.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        loop {
            // SAFETY: every pointer is valid for the call; `buf.len()` is the buffer's size.
            let r =
                unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found) };
            match r {
                0 => break,
                libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
                _ => return None,
            }
        }
        if found.is_null() || pwd.pw_name.is_null() {
            return None;
        }
        // SAFETY: getpwuid_r succeeded, so pw_name points to a NUL-terminated string in `buf`.
        let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
        name.to_str().ok().map(str::to_string)
    }

    /// Looks a user up in the node's user database (NSS: files, LDAP, ...): `Ok(None)` when
    /// there is no such user.
    #[allow(unsafe_code)]
    pub fn lookup_user(name: &str) -> io::Result<Option<super::TaskUser>> {
        let Ok(cname) = std::ffi::CString::new(name) else {
            return Ok(None);
        };
        let mut buf: Vec<libc::c_char> = vec![0; 16 * 1024];
        // SAFETY: an all-zero passwd is a valid value (null pointers, zero ids); it is only
        // read after getpwnam_r filled it.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        loop {
            // SAFETY: every pointer is valid for the call; `buf.len()` is the buffer's size.
            let r = unsafe {
                libc::getpwnam_r(
                    cname.as_ptr(),
                    &mut pwd,
                    buf.as_mut_ptr(),
                    buf.len(),
                    &mut found,
                )
            };
            match r {
                0 => break,
                libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
                e => return Err(io::Error::from_raw_os_error(e)),
            }
        }
        if found.is_null() {
            return Ok(None);
        }
        let (uid, gid) = (pwd.pw_uid, pwd.pw_gid);
        let mut groups: Vec<libc::gid_t> = vec![0; 64];
        loop {
            let mut count = libc::c_int::try_from(groups.len()).unwrap_or(libc::c_int::MAX);
            // SAFETY: `groups` holds `count` writable entries; `count` is updated in place.
            let r =
                unsafe { libc::getgrouplist(cname.as_ptr(), gid, groups.as_mut_ptr(), &mut count) };
            let count = usize::try_from(count).unwrap_or(0);
            if r >= 0 {
                groups.truncate(count);
                break;
            }
            if groups.len() >= 65_536 {
                // Absurdly many groups: run with the primary one only.
                groups = vec![gid];
                break;
            }
            let more = count.max(groups.len() * 2);
            groups.resize(more, 0);
        }
        Ok(Some(super::TaskUser {
            name: name.to_string(),
            uid,
            gid,
            groups,
        }))
    }

    /// Makes the spawned child write its pid ("0" = itself) to each cgroup's `cgroup.procs`
    /// between fork and exec, so the task never runs outside its cgroups (v2: one file; v1:
    /// one per hierarchy). A failed write fails the spawn.
    #[allow(unsafe_code)]
    pub fn join_cgroups_before_exec(cmd: &mut Command, procs: Vec<File>) {
        // SAFETY: the closure runs in the forked child and only calls write(2), which is
        // async-signal-safe, on descriptors opened before the fork (closed at exec by
        // O_CLOEXEC); iterating the vector does not allocate, nor does `last_os_error`.
        unsafe {
            cmd.pre_exec(move || {
                for f in &procs {
                    let r = libc::write(f.as_raw_fd(), b"0".as_ptr().cast(), 1);
                    if r != 1 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_env_comes_from_stdin_and_errors_never_show_values() {
        let names = vec!["DB_PASSWORD".to_string()];
        let got = read_stdin_env(&br#"{"DB_PASSWORD":"hunter2","X":"y"}"#[..], &names).unwrap();
        assert_eq!(
            got,
            BTreeMap::from([("DB_PASSWORD".into(), "hunter2".into())])
        );
        let e = read_stdin_env(&br#"{"OTHER":"hunter2"}"#[..], &names).unwrap_err();
        assert!(e.to_string().contains("DB_PASSWORD") && !e.to_string().contains("hunter2"));
        let e = read_stdin_env(&br#"not json hunter2"#[..], &names).unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        // The spec file names the variables only.
        let spec = ShimSpec {
            task_id: "t".into(),
            argv: vec!["true".into()],
            env: BTreeMap::new(),
            cwd: "/".into(),
            stdout: "/dev/null".into(),
            stderr: "/dev/null".into(),
            cgroup: None,
            cgroups: vec![],
            user: None,
            log_max_bytes: 0,
            log_max_files: 1,
            stdin_env: names,
        };
        let text = serde_json::to_string(&spec).unwrap();
        assert!(text.contains(r#""stdin_env":["DB_PASSWORD"]"#), "{text}");
    }

    #[test]
    fn the_current_user_name_looks_up_back_to_this_uid() {
        let name = current_user_name().expect("this process's user has a name");
        let user = sys::lookup_user(&name).unwrap().unwrap();
        use std::os::unix::fs::MetadataExt;
        let uid = std::fs::metadata("/proc/self").unwrap().uid();
        assert_eq!(user.uid, uid);
    }

    #[test]
    fn parses_proc_stat() {
        let stat =
            "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(parse_stat(stat), Some(('S', 98765)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_process_is_alive() {
        let me = std::process::id() as i32;
        let start = proc_start_time(me).unwrap();
        assert!(start > 0);
        assert!(proc_alive(me, start));
        assert!(!proc_alive(me, start + 1));
        assert!(!proc_alive(-5, 0));
    }

    #[test]
    fn kill_refuses_broadcast() {
        assert!(sys::kill(0, 0).is_err());
        assert!(sys::kill(-1, 0).is_err());
        assert!(sys::kill(1, 0).is_err());
    }

    #[test]
    fn atomic_json_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(EXIT_FILE);
        assert_eq!(read_json::<ExitRecord>(&path).unwrap(), None);
        let rec = ExitRecord {
            code: Some(3),
            signal: None,
            oom: false,
            error: None,
        };
        write_json_atomic(&path, &rec).unwrap();
        assert_eq!(read_json::<ExitRecord>(&path).unwrap(), Some(rec));
        let json: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"code": 3, "signal": null, "oom": false})
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn resolves_in_task_path() {
        assert_eq!(resolve("/bin/sh", None), PathBuf::from("/bin/sh"));
        assert_eq!(
            resolve("sh", Some("/nonexistent:/bin")),
            PathBuf::from("/bin/sh")
        );
        assert_eq!(
            resolve("no-such-prog", Some("/bin")),
            PathBuf::from("no-such-prog")
        );
    }

    #[test]
    fn logs_rotate_by_copy_and_truncate() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("stdout");
        let read = |name: &str| fs::read(dir.path().join(name)).unwrap_or_default();
        // The task's descriptor: O_APPEND, kept open across rotations.
        let mut task = append(&out).unwrap();
        task.write_all(&[b'a'; 3000]).unwrap();
        assert!(!rotate_log(&out, 0, 3).unwrap(), "0: never rotate");
        assert!(!rotate_log(&out, 4000, 3).unwrap(), "under the limit");
        assert!(rotate_log(&out, 1024, 3).unwrap());
        assert_eq!(read("stdout"), b"");
        assert_eq!(read("stdout.1"), vec![b'a'; 3000]);
        // The task writes on at the start of the emptied file (no hole where it was).
        task.write_all(&[b'b'; 2000]).unwrap();
        assert_eq!(read("stdout"), vec![b'b'; 2000]);
        assert!(rotate_log(&out, 1024, 3).unwrap());
        task.write_all(&[b'c'; 1500]).unwrap();
        assert!(rotate_log(&out, 1024, 3).unwrap());
        // 3 files: the one written and two older; the oldest output is gone.
        assert_eq!(read("stdout"), b"");
        assert_eq!(read("stdout.1"), vec![b'c'; 1500]);
        assert_eq!(read("stdout.2"), vec![b'b'; 2000]);
        assert!(!dir.path().join("stdout.3").exists());
        // One file: truncated in place, nothing kept.
        let err = dir.path().join("stderr");
        fs::write(&err, [b'e'; 2000]).unwrap();
        assert!(rotate_log(&err, 1024, 1).unwrap());
        assert_eq!(read("stderr"), b"");
        assert!(!dir.path().join("stderr.1").exists());
        assert!(!rotate_log(&dir.path().join("missing"), 1024, 3).unwrap());
    }
}
