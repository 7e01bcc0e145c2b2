//! The exec driver: runs apps with only `cmd`/`args` as plain processes, each under its own
//! [shim](crate::shim) so tasks survive the agent's death (even `kill -9`) and a restarted
//! agent can re-attach to them and still learn their exit codes.
//!
//! On-disk layout, `<data_dir>/tasks/<task_id>/`:
//! - `spec.json`  what to run (written by the driver before the shim starts)
//! - `shim.pid`   the shim's pid and start time (written by the driver after spawning it)
//! - `pid`        the task's pid/start time (written by the shim once the task runs)
//! - `exit.json`  how the task ended (written atomically by the shim)
//! - `stdout`, `stderr`, `shim.log`
//! - `killed`     marker: the task was killed on request (reported as TASK_KILLED)
//! - `forgotten`  marker: the agent is done with the task; `recover` skips it
//!
//! The driver itself never holds a task alive: one watcher (a single tokio task polling every
//! `poll_interval`) turns those files into status updates, and dropping the driver stops it
//! without touching any task.

use super::{
    DEFAULT_LOG_MAX_BYTES, DEFAULT_LOG_MAX_FILES, Driver, DriverError, LogChunks, LogStream,
    StatusSink, TaskSpec, TaskStatus,
};
use crate::cgroup::{CgroupManager, Limits, parse_cpu_list};
use crate::shim::{
    self, EXIT_FILE, ExitRecord, FORGOTTEN_MARKER, KILLED_MARKER, PID_FILE, PidRecord,
    SHIM_DIR_ENV, SHIM_LOG_FILE, SHIM_PID_FILE, SPEC_FILE, STDERR_FILE, STDOUT_FILE, ShimSpec,
    TaskUser,
};
use berth_core::app::DriverKind;
use berth_core::app::PidsLimit;
use berth_core::task::TaskState;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};

/// `PATH` given to tasks (the app's `env` may override it).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long `kill` keeps waiting for the task to be gone after SIGKILL before giving up.
const KILL_SETTLE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct ExecConfig {
    /// Agent data directory; tasks live in `<data_dir>/tasks/<task_id>/`.
    pub data_dir: PathBuf,
    /// Program started as the per-task shim, run as `shim_program shim_args... <task_dir>`
    /// with `BERTH_SHIM_TASK_DIR=<task_dir>` and `shim_env` in its environment. In production:
    /// the `berth` binary with `shim_args = ["__shim"]`.
    pub shim_program: PathBuf,
    pub shim_args: Vec<String>,
    pub shim_env: Vec<(String, String)>,
    /// cgroup mount to create `berth/<task_id>` cgroups under: a cgroup v2 mount, or the
    /// directory holding the v1 hierarchies (`<root>/memory`, `<root>/cpu`, ...); `None`
    /// disables limits.
    pub cgroup_root: Option<PathBuf>,
    /// Default `pids.max` of each task cgroup (`None`: unlimited); app label
    /// `BERTH_PIDS_LIMIT` overrides it per app, as for the Docker driver.
    pub pids_max: Option<u64>,
    /// How often the watcher looks at running tasks.
    pub poll_interval: Duration,
    /// Each task's stdout and stderr are rotated at this size (0: never), keeping this many
    /// files of each; app labels `BERTH_LOG_MAX_SIZE` / `BERTH_LOG_MAX_FILES` override them.
    pub log_max_bytes: u64,
    pub log_max_files: u32,
    /// How long the directory of a finished (and forgotten) task is kept, logs included,
    /// and how often the watcher looks for such directories.
    pub sandbox_gc_delay: Duration,
    pub sandbox_sweep_interval: Duration,
}

impl ExecConfig {
    /// Production defaults: shim `<shim_program> __shim <task_dir>`, cgroups under
    /// `/sys/fs/cgroup`, `pids.max` 4096, polling every 250 ms, logs rotated at 10 MiB
    /// keeping 3 files (as the Docker driver's json-file logs), finished tasks' directories
    /// kept a day.
    pub fn new(data_dir: impl Into<PathBuf>, shim_program: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            shim_program: shim_program.into(),
            shim_args: vec!["__shim".into()],
            shim_env: Vec::new(),
            cgroup_root: Some(PathBuf::from("/sys/fs/cgroup")),
            pids_max: Some(4096),
            poll_interval: Duration::from_millis(250),
            log_max_bytes: DEFAULT_LOG_MAX_BYTES,
            log_max_files: DEFAULT_LOG_MAX_FILES,
            sandbox_gc_delay: Duration::from_secs(24 * 3600),
            sandbox_sweep_interval: Duration::from_secs(60),
        }
    }

    fn tasks_dir(&self) -> PathBuf {
        self.data_dir.join("tasks")
    }
}

/// Runs tasks as processes under per-task shims. Cheap to clone (shared state).
#[derive(Clone)]
pub struct ExecDriver {
    inner: Arc<Inner>,
}

struct Inner {
    config: ExecConfig,
    sink: StatusSink,
    tasks: Mutex<HashMap<String, Entry>>,
    cgroups: OnceLock<Option<CgroupManager>>,
    watcher_started: AtomicBool,
    /// Cores pinned to tasks of any driver on this node, as the agent last told us
    /// ([`Driver::set_pinned_cores`]); shared tasks run on the other cores.
    node_pinned: Mutex<BTreeSet<u32>>,
}

struct Entry {
    dir: PathBuf,
    status: TaskStatus,
    /// Set while `start` is still setting the task up: the watcher leaves it alone.
    launching: bool,
    pid: Option<PidRecord>,
    /// The shim, when this driver instance spawned it (kept only to reap it).
    shim: Option<Child>,
    shim_pid: Option<ShimPid>,
    kill_requested: bool,
    /// The task's cgroup directories (empty: none).
    cgroup: Vec<PathBuf>,
    /// Pinned cores of the task (empty: shared CPU).
    cpuset: Vec<u32>,
}

/// `<task_dir>/shim.pid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct ShimPid {
    pid: i32,
    start_time: u64,
}

/// What the task directory says about a task right now.
enum Observation {
    Exited(ExitRecord),
    Running(PidRecord),
    Starting,
    Lost(String),
}

impl ExecDriver {
    pub fn new(config: ExecConfig, sink: StatusSink) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                sink,
                tasks: Mutex::new(HashMap::new()),
                cgroups: OnceLock::new(),
                watcher_started: AtomicBool::new(false),
                node_pinned: Mutex::new(BTreeSet::new()),
            }),
        }
    }

    pub fn config(&self) -> &ExecConfig {
        &self.inner.config
    }

    /// The task's `stdout` and `stderr` files (they exist once the task has started).
    pub fn task_log_paths(&self, task_id: &str) -> (PathBuf, PathBuf) {
        let dir = self.inner.config.tasks_dir().join(task_id);
        (dir.join(STDOUT_FILE), dir.join(STDERR_FILE))
    }

    /// The task's sandbox directory.
    pub fn task_dir(&self, task_id: &str) -> PathBuf {
        self.inner.config.tasks_dir().join(task_id)
    }

    /// The task's pid (= process group id), once known.
    pub fn task_pid(&self, task_id: &str) -> Option<i32> {
        let tasks = self.inner.tasks.lock();
        tasks.get(task_id).and_then(|e| e.pid).map(|p| p.pid)
    }

    /// Whether tasks get cgroup limits (v2 or v1) on this host (detected on first use).
    pub fn cgroups_available(&self) -> bool {
        self.inner.cgroups().is_some()
    }

    /// Controllers enabled for task cgroups (empty without cgroups).
    pub fn cgroup_controllers(&self) -> Vec<String> {
        self.inner
            .cgroups()
            .map(|m| m.controllers().to_vec())
            .unwrap_or_default()
    }

    async fn start_task(&self, spec: TaskSpec) -> Result<(), DriverError> {
        let inner = &self.inner;
        validate_task_id(&spec.task_id)?;
        let id = spec.task_id.clone();
        let dir = inner.config.tasks_dir().join(&id);
        {
            let mut tasks = inner.tasks.lock();
            if tasks.contains_key(&id) {
                return Ok(());
            }
            tasks.insert(
                id.clone(),
                Entry {
                    dir: dir.clone(),
                    status: status(&id, TaskState::Starting, None, None),
                    launching: true,
                    pid: None,
                    shim: None,
                    shim_pid: None,
                    kill_requested: false,
                    cgroup: Vec::new(),
                    cpuset: spec.cpuset.clone(),
                },
            );
        }
        inner.ensure_watcher();
        if !spec.cpuset.is_empty() {
            // Move shared tasks off the cores before the pinned task starts on them.
            inner.refresh_shared_cpusets();
        }
        if dir.join(SPEC_FILE).exists() {
            inner.tasks.lock().remove(&id);
            if dir.join(FORGOTTEN_MARKER).exists() {
                return Err(DriverError::InvalidSpec(format!(
                    "task id {id} was already used"
                )));
            }
            // A task directory from an earlier agent: re-attach instead of starting it twice.
            inner.attach(&id, &dir);
            return Ok(());
        }
        match inner.launch(&spec, &dir) {
            Ok((child, shim_pid, cgroup)) => {
                let starting = {
                    let mut tasks = inner.tasks.lock();
                    let Some(entry) = tasks.get_mut(&id) else {
                        return Ok(());
                    };
                    entry.launching = false;
                    entry.shim = Some(child);
                    entry.shim_pid = Some(shim_pid);
                    entry.cgroup = cgroup;
                    entry.status.clone()
                };
                inner.emit(starting);
                Ok(())
            }
            Err(e) => {
                inner.tasks.lock().remove(&id);
                if !spec.cpuset.is_empty() {
                    inner.refresh_shared_cpusets();
                }
                Err(e)
            }
        }
    }

    async fn kill_task(&self, task_id: &str, grace: Duration) -> Result<(), DriverError> {
        let inner = &self.inner;
        let dir = {
            let mut tasks = inner.tasks.lock();
            match tasks.get_mut(task_id) {
                None => return Ok(()),
                Some(e) if e.status.state.is_terminal() => return Ok(()),
                Some(e) => {
                    e.kill_requested = true;
                    e.dir.clone()
                }
            }
        };
        if let Err(e) = fs::write(dir.join(KILLED_MARKER), b"") {
            tracing::warn!(task_id, error = %e, "cannot write killed marker");
        }
        let started = Instant::now();
        let mut term_sent = false;
        let mut kill_sent = false;
        loop {
            if inner.poll_task(task_id).is_none_or(|s| s.is_terminal()) {
                return Ok(());
            }
            let (pid, shim) = {
                let tasks = inner.tasks.lock();
                match tasks.get(task_id) {
                    Some(e) => (e.pid, e.shim_pid),
                    None => return Ok(()),
                }
            };
            let task_alive = pid.filter(|p| shim::proc_alive(p.pid, p.start_time));
            let shim_alive = shim.filter(|s| shim::proc_alive(s.pid, s.start_time));
            let elapsed = started.elapsed();
            if !term_sent {
                // Before the task has a pid the shim forwards our SIGTERM once it has one.
                if let Some(p) = task_alive {
                    signal(task_id, -p.pid, libc::SIGTERM);
                } else if let Some(s) = shim_alive {
                    signal(task_id, s.pid, libc::SIGTERM);
                }
                term_sent = true;
            }
            if elapsed >= grace && !kill_sent {
                if let Some(p) = task_alive {
                    signal(task_id, -p.pid, libc::SIGKILL);
                    kill_sent = true;
                } else if pid.is_none()
                    && let Some(s) = shim_alive
                {
                    // No task process yet and the shim ignores us: stop the launch itself.
                    signal(task_id, s.pid, libc::SIGKILL);
                    kill_sent = true;
                }
            }
            if elapsed >= grace + KILL_SETTLE {
                return Err(DriverError::Other(format!(
                    "task {task_id} still running {:?} after SIGKILL",
                    KILL_SETTLE
                )));
            }
            tokio::time::sleep(Duration::from_millis(if kill_sent { 20 } else { 50 })).await;
        }
    }

    async fn recover_tasks(&self) -> Result<Vec<TaskStatus>, DriverError> {
        let inner = &self.inner;
        inner.ensure_watcher();
        let tasks_dir = inner.config.tasks_dir();
        let read = match fs::read_dir(&tasks_dir) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut ids = Vec::new();
        for dirent in read {
            let dirent = dirent?;
            if !dirent.file_type()?.is_dir() {
                continue;
            }
            let Some(id) = dirent.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if dirent.path().join(FORGOTTEN_MARKER).exists() {
                continue;
            }
            ids.push(id);
        }
        ids.sort();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let dir = tasks_dir.join(&id);
            out.push(inner.attach(&id, &dir));
        }
        Ok(out)
    }

    fn forget_task(&self, task_id: &str) {
        let inner = &self.inner;
        let (dir, cgroup) = {
            let mut tasks = inner.tasks.lock();
            match tasks.get(task_id) {
                Some(e) if !e.status.state.is_terminal() => {
                    tracing::warn!(task_id, "not forgetting a task that is still running");
                    return;
                }
                Some(_) => {
                    let Some(mut e) = tasks.remove(task_id) else {
                        return;
                    };
                    if let Some(child) = e.shim.as_mut() {
                        let _ = child.try_wait();
                    }
                    (e.dir, e.cgroup)
                }
                None => {
                    if validate_task_id(task_id).is_err() {
                        return;
                    }
                    let cgroup = inner
                        .cgroups()
                        .map(|m| m.task_paths(task_id))
                        .unwrap_or_default();
                    (inner.config.tasks_dir().join(task_id), cgroup)
                }
            }
        };
        if dir.is_dir()
            && let Err(e) = fs::write(dir.join(FORGOTTEN_MARKER), b"")
        {
            tracing::warn!(task_id, error = %e, "cannot write forgotten marker");
        }
        // The shim normally removed them already.
        remove_dirs(&cgroup);
    }
}

impl Inner {
    /// Cores pinned on this node: what the agent said plus this driver's own live pinned tasks.
    fn pinned_cores(&self) -> BTreeSet<u32> {
        let mut pinned = self.node_pinned.lock().clone();
        let tasks = self.tasks.lock();
        for e in tasks.values().filter(|e| !e.status.state.is_terminal()) {
            pinned.extend(e.cpuset.iter().copied());
        }
        pinned
    }

    /// The cores a shared (unpinned) task may use: the task cgroups' cores minus the pinned
    /// ones. Empty means "all of the parent's" (also when every core is pinned: a shared task
    /// must run somewhere).
    fn shared_cores(&self, m: &CgroupManager) -> Vec<u32> {
        let pinned = self.pinned_cores();
        if pinned.is_empty() {
            return Vec::new();
        }
        let Some(available) = m.available_cpus() else {
            return Vec::new();
        };
        let shared: Vec<u32> = available
            .iter()
            .copied()
            .filter(|c| !pinned.contains(c))
            .collect();
        if shared.is_empty() { available } else { shared }
    }

    /// Rewrites `cpuset.cpus` of every running shared task after the pinned cores changed.
    fn refresh_shared_cpusets(&self) {
        let Some(m) = self.cgroups() else { return };
        if !m.has_controller("cpuset") {
            return;
        }
        let shared = self.shared_cores(m);
        let cpus = if shared.is_empty() {
            m.available_cpus().unwrap_or_default()
        } else {
            shared
        };
        let ids: Vec<String> = self
            .tasks
            .lock()
            .iter()
            .filter(|(_, e)| {
                !e.status.state.is_terminal() && e.cpuset.is_empty() && !e.cgroup.is_empty()
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            if let Err(e) = m.set_cpuset(&id, &cpus) {
                tracing::warn!(task_id = %id, error = %e, "cannot move shared task off pinned cores");
            }
        }
    }

    fn cgroups(&self) -> Option<&CgroupManager> {
        self.cgroups
            .get_or_init(|| {
                let root = self.config.cgroup_root.as_ref()?;
                match CgroupManager::detect(root) {
                    Ok(m) => {
                        tracing::info!(
                            root = %root.display(),
                            controllers = ?m.controllers(),
                            version = if m.is_v1() { "v1" } else { "v2" },
                            "exec driver: using cgroups for task limits"
                        );
                        Some(m)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "exec driver: running tasks without resource limits");
                        None
                    }
                }
            })
            .as_ref()
    }

    fn emit(&self, status: TaskStatus) {
        // The agent runtime may be shutting down; nothing to do then.
        let _ = self.sink.send(status);
    }

    fn ensure_watcher(self: &Arc<Self>) {
        if self.watcher_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.watcher_started.store(false, Ordering::SeqCst);
            return;
        };
        let weak: Weak<Self> = Arc::downgrade(self);
        let interval = self.config.poll_interval;
        handle.spawn(async move {
            let mut swept = Instant::now();
            loop {
                tokio::time::sleep(interval).await;
                let Some(inner) = weak.upgrade() else { break };
                inner.poll_all();
                if swept.elapsed() >= inner.config.sandbox_sweep_interval {
                    swept = Instant::now();
                    let (tasks_dir, delay) =
                        (inner.config.tasks_dir(), inner.config.sandbox_gc_delay);
                    drop(inner);
                    let _ = tokio::task::spawn_blocking(move || {
                        remove_old_sandboxes(&tasks_dir, delay, SystemTime::now())
                    })
                    .await;
                }
            }
        });
    }

    fn poll_all(&self) {
        let ids: Vec<String> = {
            let mut tasks = self.tasks.lock();
            // Reap shims that outlive their task's terminal status by a moment (cgroup removal).
            for e in tasks.values_mut().filter(|e| e.status.state.is_terminal()) {
                if let Some(child) = e.shim.as_mut()
                    && !matches!(child.try_wait(), Ok(None))
                {
                    e.shim = None;
                }
            }
            tasks
                .iter()
                .filter(|(_, e)| !e.status.state.is_terminal() && !e.launching)
                .map(|(id, _)| id.clone())
                .collect()
        };
        for id in ids {
            self.poll_task(&id);
        }
    }

    /// Looks at one task's directory, records and emits any state change; returns the
    /// current state (`None` if the task is unknown).
    fn poll_task(&self, id: &str) -> Option<TaskState> {
        let changed = {
            let mut tasks = self.tasks.lock();
            let entry = tasks.get_mut(id)?;
            if entry.launching || entry.status.state.is_terminal() {
                return Some(entry.status.state);
            }
            if let Some(child) = entry.shim.as_mut() {
                // Reap our shim child once it exits (it is only ours to reap).
                let _ = child.try_wait();
            }
            let obs = observe(&entry.dir, entry.pid, entry.shim_pid);
            let new = match obs {
                Observation::Exited(record) => {
                    let killed = entry.kill_requested || entry.dir.join(KILLED_MARKER).exists();
                    remove_dirs(&entry.cgroup);
                    exit_status(id, &record, killed)
                }
                Observation::Running(pid) => {
                    entry.pid = Some(pid);
                    status(id, TaskState::Running, None, None)
                }
                Observation::Starting => return Some(entry.status.state),
                Observation::Lost(why) => {
                    // The shim died without cleaning up: what is left of the task may still
                    // be in the cgroups; kill it so they can go.
                    if !entry.cgroup.is_empty() {
                        crate::cgroup::kill_all(&entry.cgroup);
                        remove_dirs(&entry.cgroup);
                    }
                    let killed = entry.kill_requested || entry.dir.join(KILLED_MARKER).exists();
                    if killed {
                        status(id, TaskState::Killed, Some(format!("killed ({why})")), None)
                    } else {
                        status(id, TaskState::Failed, Some(format!("lost: {why}")), None)
                    }
                }
            };
            if new.state == entry.status.state {
                return Some(new.state);
            }
            entry.status = new.clone();
            new
        };
        let state = changed.state;
        if state.is_terminal()
            && self
                .tasks
                .lock()
                .get(id)
                .is_some_and(|e| !e.cpuset.is_empty())
        {
            // Its cores are free for shared tasks again.
            self.refresh_shared_cpusets();
        }
        self.emit(changed);
        Some(state)
    }

    /// Adopts a task directory left by this or an earlier agent; returns its status.
    fn attach(self: &Arc<Self>, id: &str, dir: &Path) -> TaskStatus {
        if let Some(e) = self.tasks.lock().get(id) {
            return e.status.clone();
        }
        let pid: Option<PidRecord> = shim::read_json(&dir.join(PID_FILE)).ok().flatten();
        let shim_pid: Option<ShimPid> = shim::read_json(&dir.join(SHIM_PID_FILE))
            .ok()
            .flatten()
            .or_else(|| {
                pid.map(|p| ShimPid {
                    pid: p.shim_pid,
                    start_time: p.shim_start_time,
                })
            });
        let shim_spec = shim::read_json::<ShimSpec>(&dir.join(SPEC_FILE))
            .ok()
            .flatten();
        let cgroup = shim_spec
            .as_ref()
            .map(ShimSpec::cgroup_dirs)
            .unwrap_or_default();
        let cpuset = shim_spec
            .and_then(|s| s.env.get("BERTH_CPUSET").cloned())
            .and_then(|c| parse_cpu_list(&c))
            .unwrap_or_default();
        let killed = dir.join(KILLED_MARKER).exists();
        let st = match observe(dir, pid, shim_pid) {
            Observation::Exited(record) => exit_status(id, &record, killed),
            Observation::Running(_) => status(id, TaskState::Running, None, None),
            Observation::Starting => status(id, TaskState::Starting, None, None),
            Observation::Lost(why) if killed => {
                status(id, TaskState::Killed, Some(format!("killed ({why})")), None)
            }
            Observation::Lost(why) => {
                status(id, TaskState::Failed, Some(format!("lost: {why}")), None)
            }
        };
        if st.state.is_terminal() {
            remove_dirs(&cgroup);
        }
        let mut tasks = self.tasks.lock();
        let entry = tasks.entry(id.to_string()).or_insert(Entry {
            dir: dir.to_path_buf(),
            status: st,
            launching: false,
            pid,
            shim: None,
            shim_pid,
            kill_requested: killed,
            cgroup,
            cpuset,
        });
        entry.status.clone()
    }

    /// Writes the task directory and spawns the shim.
    fn launch(
        &self,
        spec: &TaskSpec,
        dir: &Path,
    ) -> Result<(Child, ShimPid, Vec<PathBuf>), DriverError> {
        let argv = argv(spec)?;
        let pids_max = pids_limit(spec, self.config.pids_max)?;
        let hard_quota = spec.app.cpu_quota().map_err(DriverError::InvalidSpec)?;
        let rotation = spec.app.log_rotation().map_err(DriverError::InvalidSpec)?;
        fs::create_dir_all(dir)?;
        let user = task_user(spec)?;
        let sandbox = sandbox_dir(dir, user.is_some());
        if let Some(u) = &user {
            fs::create_dir_all(&sandbox)?;
            std::os::unix::fs::chown(&sandbox, Some(u.uid), Some(u.gid))?;
        }
        let mut env = BTreeMap::new();
        env.insert("PATH".to_string(), DEFAULT_PATH.to_string());
        env.insert("HOME".to_string(), sandbox.display().to_string());
        env.extend(spec.environment());
        if env.get("MESOS_SANDBOX").is_none_or(String::is_empty) {
            env.insert("MESOS_SANDBOX".into(), sandbox.display().to_string());
        }
        // Secret values go to the shim over a pipe, never into spec.json.
        let secrets: BTreeMap<String, String> = spec
            .secret_env
            .names()
            .filter_map(|k| env.remove_entry(k))
            .collect();
        let cgroup = match self.cgroups() {
            None => Vec::new(),
            Some(m) => {
                let cpuset = if spec.cpuset.is_empty() {
                    self.shared_cores(m)
                } else {
                    spec.cpuset.clone()
                };
                let limits = Limits::from_resources(
                    spec.resources.cpus,
                    spec.resources.mem,
                    hard_quota,
                    pids_max,
                    &cpuset,
                );
                match m.create(&spec.task_id, &limits) {
                    Ok(paths) => paths,
                    Err(e) if !spec.cpuset.is_empty() => {
                        // Pinned cores are a promise to the app: never run it unpinned.
                        return Err(DriverError::Unavailable(format!(
                            "cannot create the cgroup pinning the task to cores {:?}: {e}",
                            spec.cpuset
                        )));
                    }
                    Err(e) => {
                        tracing::warn!(task_id = %spec.task_id, error = %e, "cannot create task cgroup; running without limits");
                        Vec::new()
                    }
                }
            }
        };
        let (v2_cgroup, v1_cgroups) = match self.cgroups() {
            Some(m) if m.is_v1() => (None, cgroup.clone()),
            _ => (cgroup.first().cloned(), Vec::new()),
        };
        let shim_spec = ShimSpec {
            task_id: spec.task_id.clone(),
            argv,
            env,
            cwd: sandbox,
            stdout: dir.join(STDOUT_FILE),
            stderr: dir.join(STDERR_FILE),
            cgroup: v2_cgroup,
            cgroups: v1_cgroups,
            user,
            log_max_bytes: rotation.max_bytes.unwrap_or(self.config.log_max_bytes),
            log_max_files: rotation.max_files.unwrap_or(self.config.log_max_files),
            stdin_env: secrets.keys().cloned().collect(),
        };
        shim::write_json_atomic(&dir.join(SPEC_FILE), &shim_spec)?;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(SHIM_LOG_FILE))?;
        let log_err = log.try_clone()?;
        let mut child = Command::new(&self.config.shim_program)
            .args(&self.config.shim_args)
            .arg(dir)
            .env(SHIM_DIR_ENV, dir)
            .envs(self.config.shim_env.iter().map(|(k, v)| (k, v)))
            .current_dir(dir)
            .stdin(if secrets.is_empty() {
                Stdio::null()
            } else {
                Stdio::piped()
            })
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| {
                remove_dirs(&cgroup);
                DriverError::Unavailable(format!(
                    "cannot start shim {}: {e}",
                    self.config.shim_program.display()
                ))
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            // The shim reads it all at once before it starts the task; a thread of its own,
            // so a value larger than the pipe's buffer never blocks the agent. A shim that
            // dies first fails the write (EPIPE) and reports its own failure in exit.json.
            let body = serde_json::to_vec(&secrets).unwrap_or_default();
            std::thread::spawn(move || {
                use std::io::Write;
                let _ = stdin.write_all(&body);
            });
        }
        let pid =
            i32::try_from(child.id()).map_err(|_| DriverError::Other("pid overflow".into()))?;
        let shim_pid = ShimPid {
            pid,
            start_time: shim::proc_start_time(pid).unwrap_or(0),
        };
        shim::write_json_atomic(&dir.join(SHIM_PID_FILE), &shim_pid)?;
        Ok((child, shim_pid, cgroup))
    }
}

/// Removes task cgroup directories (empty ones only: the kernel refuses the rest).
fn remove_dirs(dirs: &[PathBuf]) {
    for d in dirs {
        let _ = fs::remove_dir(d);
    }
}

/// Removes the directories (sandbox, logs) of tasks forgotten more than `delay` before `now`
/// (by the time of their forgotten marker); returns how many. Keeping them a while lets
/// people read a dead task's logs; removing them keeps a crash-looping app from filling the
/// disk with one directory per attempt.
pub fn remove_old_sandboxes(tasks_dir: &Path, delay: Duration, now: SystemTime) -> usize {
    let Ok(entries) = fs::read_dir(tasks_dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let dir = entry.path();
        let forgotten_at = fs::metadata(dir.join(FORGOTTEN_MARKER)).and_then(|m| m.modified());
        let Ok(at) = forgotten_at else { continue };
        if now.duration_since(at).is_ok_and(|age| age >= delay) {
            match fs::remove_dir_all(&dir) {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot remove an old task sandbox")
                }
            }
        }
    }
    removed
}

/// Where a task works (its cwd, `HOME`, `MESOS_SANDBOX`): its directory, or for a task run as
/// another user, `sandbox/` inside it, owned by that user. The directory itself (the shim's
/// files, the logs the root shim rotates) stays the agent's, so the task cannot swap a file
/// there for a link that root would then write through.
fn sandbox_dir(task_dir: &Path, other_user: bool) -> PathBuf {
    if other_user {
        task_dir.join("sandbox")
    } else {
        task_dir.to_path_buf()
    }
}

/// The user the task runs as: the app's `user` looked up on this node; `None` for the
/// agent's own user (no `user`, or it is the agent's: nothing to switch, and setgroups(2)
/// would need privileges an agent not run as root lacks).
fn task_user(spec: &TaskSpec) -> Result<Option<TaskUser>, DriverError> {
    let Some(name) = spec
        .app
        .user
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
    else {
        return Ok(None);
    };
    let user = shim::sys::lookup_user(name)
        .map_err(|e| DriverError::Other(format!("looking up user {name:?}: {e}")))?
        .ok_or_else(|| {
            DriverError::InvalidSpec(format!("user {name:?} does not exist on this node"))
        })?;
    Ok(Some(user).filter(|u| Some(u.uid) != own_uid()))
}

/// This process's effective uid (the owner of its `/proc` directory).
fn own_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// The task's pids limit: app label `BERTH_PIDS_LIMIT` (a positive number, or `unlimited`),
/// else the agent's default (the same rule as the Docker driver's).
fn pids_limit(spec: &TaskSpec, default: Option<u64>) -> Result<Option<u64>, DriverError> {
    match spec.app.pids_limit().map_err(DriverError::InvalidSpec)? {
        PidsLimit::AgentDefault => Ok(default),
        PidsLimit::Unlimited => Ok(None),
        PidsLimit::Max(n) => Ok(Some(n)),
    }
}

fn observe(dir: &Path, pid: Option<PidRecord>, shim_pid: Option<ShimPid>) -> Observation {
    let read_exit = || {
        shim::read_json::<ExitRecord>(&dir.join(EXIT_FILE))
            .ok()
            .flatten()
    };
    if let Some(record) = read_exit() {
        return Observation::Exited(record);
    }
    let pid = pid.or_else(|| {
        shim::read_json::<PidRecord>(&dir.join(PID_FILE))
            .ok()
            .flatten()
    });
    let shim_pid = shim_pid.or_else(|| {
        pid.map(|p| ShimPid {
            pid: p.shim_pid,
            start_time: p.shim_start_time,
        })
    });
    let shim_alive = shim_pid.is_some_and(|s| shim::proc_alive(s.pid, s.start_time));
    match pid {
        Some(p) if shim_alive || shim::proc_alive(p.pid, p.start_time) => Observation::Running(p),
        _ if pid.is_none() && shim_alive => Observation::Starting,
        _ => {
            // The shim may have finished between the two looks.
            if let Some(record) = read_exit() {
                return Observation::Exited(record);
            }
            match pid {
                Some(_) => {
                    Observation::Lost("task and shim are gone without an exit status".into())
                }
                None => {
                    let log = fs::read_to_string(dir.join(SHIM_LOG_FILE)).unwrap_or_default();
                    let tail: String = log.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
                    Observation::Lost(format!("shim exited before starting the task ({tail})"))
                }
            }
        }
    }
}

fn exit_status(id: &str, record: &ExitRecord, killed: bool) -> TaskStatus {
    let describe = || match (record.code, record.signal) {
        (Some(c), _) => format!("exited with code {c}"),
        (None, Some(s)) => format!(
            "killed by signal {s}{}",
            signal_name(s)
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        ),
        (None, None) => record
            .error
            .clone()
            .unwrap_or_else(|| "exit status unknown".into()),
    };
    let (state, message) = if killed {
        (TaskState::Killed, format!("killed: {}", describe()))
    } else if let Some(err) = &record.error {
        (TaskState::Failed, format!("failed to launch: {err}"))
    } else if record.oom {
        (
            TaskState::Failed,
            "OOM killed: memory limit exceeded".to_string(),
        )
    } else if record.code == Some(0) {
        (TaskState::Finished, describe())
    } else {
        (TaskState::Failed, describe())
    };
    status(id, state, Some(message), record.code)
}

fn signal_name(sig: i32) -> Option<&'static str> {
    Some(match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGABRT => "SIGABRT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGBUS => "SIGBUS",
        _ => return None,
    })
}

fn status(
    id: &str,
    state: TaskState,
    message: Option<String>,
    exit_code: Option<i32>,
) -> TaskStatus {
    TaskStatus {
        task_id: id.to_string(),
        state,
        message,
        exit_code,
        ip_addresses: Vec::new(),
    }
}

fn signal(task_id: &str, pid: i32, sig: i32) {
    if let Err(e) = shim::sys::kill(pid, sig)
        && e.raw_os_error() != Some(libc::ESRCH)
    {
        tracing::warn!(task_id, pid, sig, error = %e, "cannot signal task");
    }
}

/// Task ids become directory (and cgroup) names.
fn validate_task_id(id: &str) -> Result<(), DriverError> {
    let ok = !id.is_empty()
        && id.len() <= 200
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(DriverError::InvalidSpec(format!(
            "task id {id:?} is not a safe file name"
        )))
    }
}

fn argv(spec: &TaskSpec) -> Result<Vec<String>, DriverError> {
    let cmd = spec.app.cmd.as_deref().filter(|c| !c.trim().is_empty());
    let args = spec.app.args.as_ref().filter(|a| !a.is_empty());
    match (cmd, args) {
        (Some(_), Some(_)) => Err(DriverError::InvalidSpec("app has both cmd and args".into())),
        (Some(cmd), None) => Ok(vec!["/bin/sh".into(), "-c".into(), cmd.to_string()]),
        (None, Some(args)) if !args[0].is_empty() => Ok(args.clone()),
        _ => Err(DriverError::InvalidSpec(
            "the exec driver needs cmd or args".into(),
        )),
    }
}

impl Driver for ExecDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Exec
    }

    fn start(&self, spec: TaskSpec) -> BoxFuture<'_, Result<(), DriverError>> {
        Box::pin(self.start_task(spec))
    }

    fn kill(&self, task_id: &str, grace: Duration) -> BoxFuture<'_, Result<(), DriverError>> {
        let task_id = task_id.to_string();
        Box::pin(async move { self.kill_task(&task_id, grace).await })
    }

    fn recover(&self) -> BoxFuture<'_, Result<Vec<TaskStatus>, DriverError>> {
        Box::pin(self.recover_tasks())
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<TaskStatus>, DriverError>> {
        Box::pin(async move {
            let tasks = self.inner.tasks.lock();
            let mut out: Vec<TaskStatus> = tasks.values().map(|e| e.status.clone()).collect();
            out.sort_by(|a, b| a.task_id.cmp(&b.task_id));
            Ok(out)
        })
    }

    fn forget(&self, task_id: &str) {
        self.forget_task(task_id);
    }

    /// In the task's directory, as the task's user, with the task's environment.
    fn check_command(
        &self,
        spec: &TaskSpec,
        command: &str,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<(), String>> {
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(command)
            .env("PATH", DEFAULT_PATH)
            .envs(spec.environment());
        let user = task_user(spec);
        let task_dir = self.task_dir(&spec.task_id);
        Box::pin(async move {
            let user = user.map_err(|e| e.to_string())?;
            cmd.current_dir(sandbox_dir(&task_dir, user.is_some()));
            if let Some(u) = &user {
                shim::sys::become_user_before_exec(&mut cmd, u);
            }
            super::run_check_command(cmd, timeout).await
        })
    }

    fn logs(
        &self,
        task_id: &str,
        stream: LogStream,
        tail: Option<usize>,
        follow: bool,
    ) -> BoxFuture<'_, Result<LogChunks, DriverError>> {
        let task_id = task_id.to_string();
        Box::pin(async move {
            let unknown = || DriverError::UnknownTask(task_id.clone());
            validate_task_id(&task_id).map_err(|_| unknown())?;
            let known = self.inner.tasks.lock().contains_key(&task_id);
            // A forgotten task's logs stay readable as long as its directory exists.
            if !known && !self.task_dir(&task_id).join(SPEC_FILE).exists() {
                return Err(unknown());
            }
            let (stdout, stderr) = self.task_log_paths(&task_id);
            let path = match stream {
                LogStream::Stdout => stdout,
                LogStream::Stderr => stderr,
            };
            let weak = Arc::downgrade(&self.inner);
            let id = task_id.clone();
            let done = move || {
                weak.upgrade().is_none_or(|inner| {
                    inner
                        .tasks
                        .lock()
                        .get(&id)
                        .is_none_or(|e| e.status.state.is_terminal())
                })
            };
            Ok(crate::logfile::stream_file(
                path,
                tail,
                follow,
                Box::new(done),
                Duration::from_millis(200),
            ))
        })
    }

    fn pid(&self, task_id: &str) -> Option<i32> {
        self.task_pid(task_id)
    }

    fn set_pinned_cores(&self, cores: &[u32]) {
        let changed = {
            let mut pinned = self.inner.node_pinned.lock();
            let new: BTreeSet<u32> = cores.iter().copied().collect();
            let changed = *pinned != new;
            *pinned = new;
            changed
        };
        if changed {
            self.inner.refresh_shared_cpusets();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_are_safe_names() {
        assert!(validate_task_id("prod_web.4f0c6a1e-1b2c-4d5e-8f90-123456789abc").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "../x"] {
            assert!(validate_task_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn exit_records_map_to_states() {
        let rec = |code, signal, oom| ExitRecord {
            code,
            signal,
            oom,
            error: None,
        };
        let s = exit_status("t", &rec(Some(0), None, false), false);
        assert_eq!(s.state, TaskState::Finished);
        let s = exit_status("t", &rec(Some(3), None, false), false);
        assert_eq!(
            (s.state, s.message.as_deref(), s.exit_code),
            (TaskState::Failed, Some("exited with code 3"), Some(3))
        );
        let s = exit_status("t", &rec(None, Some(9), false), false);
        assert_eq!(s.message.as_deref(), Some("killed by signal 9 (SIGKILL)"));
        let s = exit_status("t", &rec(None, Some(9), true), false);
        assert_eq!(
            s.message.as_deref(),
            Some("OOM killed: memory limit exceeded")
        );
        let s = exit_status("t", &rec(None, Some(15), false), true);
        assert_eq!(s.state, TaskState::Killed);
        let s = exit_status(
            "t",
            &ExitRecord {
                code: Some(127),
                error: Some("nope".into()),
                ..Default::default()
            },
            false,
        );
        assert_eq!(
            (s.state, s.message.as_deref()),
            (TaskState::Failed, Some("failed to launch: nope"))
        );
    }
}
