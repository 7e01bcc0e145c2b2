//! The Docker driver: runs apps with a `container.docker` section as Docker containers through
//! the Engine API (bollard; the API version is negotiated with dockerd at connect time).
//!
//! - Containers are named `berth-<task_id>` and labelled `berth.task_id`, `berth.app_id`,
//!   `berth.version`, `berth.node_id`; those labels are the only state the driver needs to
//!   re-attach after an agent restart (`recover`): nothing is restarted or duplicated.
//! - Exits are observed through the Docker events stream (`start`/`die`/`oom`/`destroy`), with a
//!   periodic re-list as a fallback; when dockerd restarts the stream ends, and the watcher
//!   resubscribes (replaying events since the last one seen) and reconciles every task.
//! - The platform sets the limits: memory = `mem` with swap equal to it, CPU shares from `cpus`
//!   (plus a hard quota with label `BERTH_CPU_QUOTA=true`), a pids limit (agent default, label
//!   `BERTH_PIDS_LIMIT`), json-file log rotation. The container sees them in its environment
//!   (`BERTH_CPUS`, `BERTH_MEM_MB`, `BERTH_CPUSET`) and in `/etc/berth/container_info`.
//!
//! On-disk layout, `<data_dir>/`:
//! - `tasks/<task_id>/container_info`  JSON bind-mounted read-only into the container
//! - `tasks/<task_id>/killed`          marker: the task was killed on request (TASK_KILLED)
//! - `tasks/<task_id>/warm.json`       a warm job run: its container and exec (see [`warm`])
//! - `warm/<container>/<task_id>/`     a warm run's `stdout`, `stderr`, `exit_code`
//! - `uids.json`                       task id (or warm container) -> UID for `BERTH_UID=auto`
//!
//! Shared containers (no pinned cores, no `cpuset-cpus` parameter) run on the online cores
//! minus the node's pinned ones ([`Driver::set_pinned_cores`] plus this driver's own pinned
//! tasks); when that set changes they are moved with `docker update --cpuset-cpus`.

use super::{Driver, DriverError, LogChunks, LogStream, StatusSink, TaskSpec, TaskStatus};
use crate::cgroup::{format_cpu_list, parse_cpu_list as parse_kernel_cpu_list};
use berth_core::app::{
    AppDefinition, DockerParameter, DriverKind, LABEL_CPU_QUOTA, LABEL_PIDS_LIMIT, PidsLimit,
    PortMapping,
};
use berth_core::task::TaskState;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, ContainerUpdateBody,
    DeviceMapping, EventMessage, HostConfig, HostConfigLogConfig, PortBinding, PortMap,
    ResourcesUlimits,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, EventsOptions, InspectContainerOptions,
    KillContainerOptions, ListContainersOptions, LogsOptions, RemoveContainerOptions,
};
use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

mod kept_logs;
mod warm;
pub use warm::{LABEL_WARM_FINGERPRINT, LABEL_WARM_JOB, RUNS_MOUNT, warm_container_name};

/// Container label holding the task id (every Berth container has it).
pub const LABEL_TASK_ID: &str = "berth.task_id";
pub const LABEL_APP_ID: &str = "berth.app_id";
pub const LABEL_VERSION: &str = "berth.version";
pub const LABEL_NODE_ID: &str = "berth.node_id";
/// Set on every container with its own cpuset: the cores the scheduler pinned to the task
/// (`0,1`; empty when only a `cpuset-cpus` parameter fixed them). Containers without it are
/// shared: the driver moves them off pinned cores.
pub const LABEL_CPUSET: &str = "berth.cpuset";
/// Where the container finds its limits.
pub const CONTAINER_INFO_PATH: &str = "/etc/berth/container_info";
/// Name of the per-task file bind-mounted at [`CONTAINER_INFO_PATH`].
pub const CONTAINER_INFO_FILE: &str = "container_info";
const KILLED_MARKER: &str = "killed";
const UIDS_FILE: &str = "uids.json";
/// Files of lxcfs's `proc` directory bind-mounted over the container's `/proc` entries.
const LXCFS_PROC_FILES: [&str; 7] = [
    "meminfo",
    "cpuinfo",
    "stat",
    "uptime",
    "loadavg",
    "diskstats",
    "swaps",
];
/// How long `kill` keeps waiting for the container to stop after SIGKILL.
const KILL_SETTLE: Duration = Duration::from_secs(30);
/// Request timeout of the Engine API client (response headers; streams are not cut).
const API_TIMEOUT_SECS: u64 = 120;
const DEFAULT_SOCKET: &str = "unix:///var/run/docker.sock";
/// How long an image seen present is trusted without inspecting it again (a create that
/// finds it gone after all pulls it and retries).
const IMAGE_PRESENT_TTL: Duration = Duration::from_secs(30);
/// The host's online cores (shared containers run on these minus the pinned ones).
const ONLINE_CPUS: &str = "/sys/devices/system/cpu/online";

/// `docker.parameters` keys the driver passes through (docker run flag names).
pub const SUPPORTED_PARAMETERS: &[&str] = &[
    "add-host",
    "cap-add",
    "cap-drop",
    "cpuset-cpus",
    "device",
    "dns",
    "dns-option",
    "dns-search",
    "entrypoint",
    "env",
    "group-add",
    "hostname",
    "init",
    "ipc",
    "label",
    "log-driver",
    "log-opt",
    "memory-swappiness",
    "oom-score-adj",
    "pid",
    "privileged",
    "read-only",
    "security-opt",
    "shm-size",
    "stop-signal",
    "sysctl",
    "tmpfs",
    "ulimit",
    "user",
    "uts",
    "volume",
    "workdir",
];

#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// Engine address: a socket path, `unix://...`, `tcp://...` or `http://...`.
    /// `None`: `$DOCKER_HOST`, else `unix:///var/run/docker.sock`.
    pub host: Option<String>,
    /// Driver data directory (made absolute at connect: files are bind-mounted from it).
    pub data_dir: PathBuf,
    /// When set, `recover` and the event watcher only consider containers labelled with this
    /// node id (several agents may share one dockerd, e.g. in `berth dev`).
    pub node_id: Option<String>,
    /// Default pids limit per container (`None`: unlimited). App label `BERTH_PIDS_LIMIT`
    /// overrides it.
    pub pids_limit: Option<i64>,
    /// UIDs handed out for `BERTH_UID=auto` (inclusive).
    pub uid_range: (u32, u32),
    /// json-file rotation defaults: size in bytes (0: never rotate) and files kept.
    /// App labels `BERTH_LOG_MAX_SIZE` / `BERTH_LOG_MAX_FILES` override them, and `log-opt`
    /// parameters override everything.
    pub log_max_bytes: u64,
    pub log_max_files: u32,
    /// lxcfs mount point; its `proc/` files are bind-mounted when `<lxcfs_dir>/proc` exists.
    pub lxcfs_dir: PathBuf,
    /// Fallback re-list of all containers (the events stream is the main source).
    pub resync_interval: Duration,
    /// How long `connect` waits for dockerd to answer.
    pub connect_timeout: Duration,
    /// A warm container (job runs in warm mode) without a run for this long is removed.
    pub warm_idle_timeout: Duration,
}

impl DockerConfig {
    /// Defaults: `$DOCKER_HOST` or the local socket, pids limit 4096, UIDs 100000-165535,
    /// json-file rotation 10m x 3, lxcfs at `/var/lib/lxcfs`, re-list every 10 s.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            host: None,
            data_dir: data_dir.into(),
            node_id: None,
            pids_limit: Some(4096),
            uid_range: (100_000, 165_535),
            log_max_bytes: super::DEFAULT_LOG_MAX_BYTES,
            log_max_files: super::DEFAULT_LOG_MAX_FILES,
            lxcfs_dir: PathBuf::from("/var/lib/lxcfs"),
            resync_interval: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            warm_idle_timeout: Duration::from_secs(600),
        }
    }

    fn tasks_dir(&self) -> PathBuf {
        self.data_dir.join("tasks")
    }
}

/// The Docker container name of a task.
pub fn container_name(task_id: &str) -> String {
    format!("berth-{task_id}")
}

/// Runs tasks as Docker containers. Cheap to clone (shared state).
#[derive(Clone)]
pub struct DockerDriver {
    inner: Arc<Inner>,
}

struct Inner {
    docker: Docker,
    config: DockerConfig,
    sink: StatusSink,
    tasks: Mutex<HashMap<String, Entry>>,
    uids: Mutex<Option<BTreeMap<String, u32>>>,
    /// Images seen present recently (image -> when): a burst of tasks of one app inspects
    /// the image once, not once per task.
    images: Mutex<HashMap<String, Instant>>,
    server_version: String,
    /// Cores pinned to tasks of any driver on this node, as the agent last told us
    /// ([`Driver::set_pinned_cores`]); shared containers run on the other cores.
    node_pinned: Mutex<BTreeSet<u32>>,
    /// Serializes moves of the shared containers: each move computes the shared cores when
    /// it holds the lock, so the last one applies the latest set.
    cpuset_moves: tokio::sync::Mutex<()>,
    /// Set when `recover` adopted shared containers: the next `set_pinned_cores` moves them
    /// even if the pinned cores did not change (an earlier agent set their cpuset).
    recovered_shared: AtomicBool,
    watcher_started: AtomicBool,
    /// Warm mode's containers and per-job locks.
    warm: warm::WarmState,
    /// Dropped with the driver: stops the watcher.
    _stop: watch::Sender<()>,
    stop_rx: watch::Receiver<()>,
}

struct Entry {
    status: TaskStatus,
    /// Host pid of the container's init while it runs (from the last inspect).
    pid: Option<i32>,
    /// Set while `start` is still pulling/creating: the watcher leaves the task alone.
    launching: bool,
    kill_requested: bool,
    /// Cores the scheduler pinned to the task (empty: not pinned).
    cpuset: Vec<u32>,
    /// No own cpuset (not pinned, no `cpuset-cpus` parameter): runs on the shared cores.
    shared: bool,
    /// A job run in warm mode: an exec in its job's container, not a container.
    warm: Option<warm::WarmRun>,
}

/// What `container_info` says (also handy for tests).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub task_id: String,
    pub app_id: String,
    pub version: String,
    pub cpus: f64,
    pub mem_mb: f64,
    pub cpuset: Vec<u32>,
    /// Host ports (as in `PORTS`).
    pub ports: Vec<u16>,
    /// Bridge/user networking: container port -> host port.
    pub port_mappings: Vec<InfoPortMapping>,
    pub pids_limit: Option<i64>,
    pub uid: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InfoPortMapping {
    pub container_port: u16,
    pub host_port: Option<u16>,
    pub protocol: String,
}

impl DockerDriver {
    /// Connects to dockerd, negotiates the API version and checks it answers; fails with
    /// [`DriverError::Unavailable`] when it does not.
    pub async fn connect(config: DockerConfig, sink: StatusSink) -> Result<Self, DriverError> {
        let mut config = config;
        config.data_dir = std::path::absolute(&config.data_dir)?;
        fs::create_dir_all(config.tasks_dir())?;
        let (docker, server_version) =
            connect_engine(config.host.as_deref(), config.connect_timeout).await?;
        tracing::info!(
            host = %engine_address(config.host.as_deref()),
            server_version,
            api_version = %docker.client_version(),
            "docker driver connected"
        );
        let (stop, stop_rx) = watch::channel(());
        Ok(Self {
            inner: Arc::new(Inner {
                docker,
                config,
                sink,
                tasks: Mutex::new(HashMap::new()),
                uids: Mutex::new(None),
                images: Mutex::new(HashMap::new()),
                server_version,
                node_pinned: Mutex::new(BTreeSet::new()),
                cpuset_moves: tokio::sync::Mutex::new(()),
                recovered_shared: AtomicBool::new(false),
                watcher_started: AtomicBool::new(false),
                warm: Default::default(),
                _stop: stop,
                stop_rx,
            }),
        })
    }

    /// Whether dockerd answers at `host` (see [`DockerConfig::host`]) within `timeout`;
    /// returns its version.
    pub async fn probe(host: Option<&str>, timeout: Duration) -> Result<String, DriverError> {
        connect_engine(host, timeout).await.map(|(_, v)| v)
    }

    /// The Engine API client (API version already negotiated).
    pub fn docker(&self) -> &Docker {
        &self.inner.docker
    }

    /// Where the engine is and what it speaks, for people: `unix:///var/run/docker.sock,
    /// API 1.41, Engine 20.10.24`.
    pub fn describe(&self) -> String {
        format!(
            "{}, API {}, Engine {}",
            engine_address(self.inner.config.host.as_deref()),
            self.inner.docker.client_version(),
            self.inner.server_version
        )
    }

    /// dockerd's version string.
    pub fn server_version(&self) -> &str {
        &self.inner.server_version
    }

    pub fn config(&self) -> &DockerConfig {
        &self.inner.config
    }

    /// The task's directory (holds `container_info`).
    pub fn task_dir(&self, task_id: &str) -> PathBuf {
        self.inner.config.tasks_dir().join(task_id)
    }

    /// The UID allocated to a task with `BERTH_UID=auto`, if any.
    pub fn task_uid(&self, task_id: &str) -> Option<u32> {
        let mut uids = self.inner.uids.lock();
        self.inner.load_uids(&mut uids).get(task_id).copied()
    }

    async fn start_task(&self, spec: TaskSpec) -> Result<(), DriverError> {
        let inner = &self.inner;
        validate_task_id(&spec.task_id)?;
        let id = spec.task_id.clone();
        // Validate everything before anything is reported or created.
        let plan = build_plan(&spec, &inner.config).map_err(DriverError::InvalidSpec)?;
        if let Some(job) = spec.app.warm_job() {
            let job = job.to_string();
            return self.start_warm(spec, plan, job).await;
        }
        if !inner.claim_staging(&id, spec.cpuset.clone(), plan.shared) {
            return Ok(());
        }
        inner.ensure_watcher();
        if !spec.cpuset.is_empty() {
            // Move shared containers off the cores before the pinned task starts on them.
            inner.move_shared_containers().await;
        }
        match inner.launch(&spec, plan).await {
            Ok(()) => {
                if let Some(e) = inner.tasks.lock().get_mut(&id) {
                    e.launching = false;
                }
                inner.refresh(&id).await;
                Ok(())
            }
            Err(LaunchError::Killed) => {
                let st = status(
                    &id,
                    TaskState::Killed,
                    Some("killed before it started".into()),
                    None,
                );
                inner.set_status(&id, st, false);
                Ok(())
            }
            Err(LaunchError::Failed(e)) => {
                inner.tasks.lock().remove(&id);
                inner.release_uid(&id);
                Err(e)
            }
        }
    }

    async fn kill_task(&self, task_id: &str, grace: Duration) -> Result<(), DriverError> {
        let inner = &self.inner;
        {
            let mut tasks = inner.tasks.lock();
            match tasks.get_mut(task_id) {
                None => return Ok(()),
                Some(e) if e.status.state.is_terminal() => return Ok(()),
                Some(e) => e.kill_requested = true,
            }
        }
        let dir = inner.config.tasks_dir().join(task_id);
        if let Err(e) =
            fs::create_dir_all(&dir).and_then(|()| fs::write(dir.join(KILLED_MARKER), b""))
        {
            tracing::warn!(task_id, error = %e, "cannot write killed marker");
        }
        let started = Instant::now();
        // A task still pulling or being created: its launch sees `kill_requested` and stops.
        loop {
            let launching = match inner.tasks.lock().get(task_id) {
                None => return Ok(()),
                Some(e) if e.status.state.is_terminal() => return Ok(()),
                Some(e) => e.launching,
            };
            if !launching {
                break;
            }
            if started.elapsed() > grace + KILL_SETTLE {
                return Err(DriverError::Other(format!(
                    "task {task_id} is still launching {:?} after the kill request",
                    started.elapsed()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let run = inner.tasks.lock().get(task_id).and_then(|e| e.warm.clone());
        if let Some(run) = run {
            return inner.kill_run(task_id, &run, grace, started).await;
        }
        let name = container_name(task_id);
        let stop_signal = match inner
            .docker
            .inspect_container(&name, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => c
                .config
                .and_then(|c| c.stop_signal)
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "SIGTERM".into()),
            Err(e) if is_not_found(&e) => {
                inner.refresh(task_id).await;
                return Ok(());
            }
            Err(e) => return Err(api_error("inspecting the container", e)),
        };
        inner.signal(&name, &stop_signal).await?;
        let mut kill_sent = false;
        loop {
            match inner.container_running(&name).await {
                Ok(false) => break,
                Ok(true) => {}
                Err(e) => {
                    tracing::warn!(task_id, error = %e, "cannot inspect container while killing it")
                }
            }
            let elapsed = started.elapsed();
            if elapsed >= grace && !kill_sent {
                inner.signal(&name, "SIGKILL").await?;
                kill_sent = true;
            }
            if elapsed >= grace + KILL_SETTLE {
                return Err(DriverError::Other(format!(
                    "container {name} still running {KILL_SETTLE:?} after SIGKILL"
                )));
            }
            tokio::time::sleep(Duration::from_millis(if kill_sent { 20 } else { 50 })).await;
        }
        inner.refresh(task_id).await;
        Ok(())
    }

    async fn task_logs(
        &self,
        task_id: &str,
        stream: LogStream,
        tail: Option<usize>,
        follow: bool,
    ) -> Result<LogChunks, DriverError> {
        let unknown = || DriverError::UnknownTask(task_id.to_string());
        validate_task_id(task_id).map_err(|_| unknown())?;
        if let Some(run) = self.inner.warm_run(task_id) {
            return Ok(self.inner.run_logs(task_id, &run, stream, tail, follow));
        }
        // A finished job run whose container is gone: its kept output.
        let kept = kept_logs::dir(&self.inner.config.data_dir, task_id);
        if !self.inner.tasks.lock().contains_key(task_id) && kept.is_dir() {
            return Ok(crate::logfile::stream_file(
                kept.join(stream.as_str()),
                tail,
                follow,
                Box::new(|| true),
                Duration::from_millis(200),
            ));
        }
        let name = container_name(task_id);
        // Only Berth's container of this task (a forgotten task's container may still exist).
        let c = match self
            .inner
            .docker
            .inspect_container(&name, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => c,
            Err(e) if is_not_found(&e) => return Err(unknown()),
            Err(e) => return Err(api_error("inspecting the container", e)),
        };
        let owner = c
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(LABEL_TASK_ID));
        if owner.map(String::as_str) != Some(task_id) {
            return Err(unknown());
        }
        let docker = self.inner.docker.clone();
        let Some(n) = tail else {
            let opts = LogsOptions {
                follow,
                stdout: stream == LogStream::Stdout,
                stderr: stream == LogStream::Stderr,
                tail: "all".to_string(),
                ..Default::default()
            };
            let chunks = docker.logs(&name, Some(opts)).filter_map(move |item| {
                futures::future::ready(match item {
                    Ok(o) => of_stream(o, stream).map(Ok),
                    Err(e) => Some(Err(api_error("reading the container's logs", e))),
                })
            });
            return Ok(chunks.boxed());
        };
        // dockerd's `tail` counts the lines of both streams together: ask for more until `n`
        // lines of this stream are in, then follow from the last one's timestamp.
        let (lines, last) = last_lines(&docker, &name, stream, n).await?;
        let head = futures::stream::iter(lines.into_iter().map(Ok));
        if !follow {
            return Ok(head.boxed());
        }
        let opts = LogsOptions {
            follow: true,
            stdout: stream == LogStream::Stdout,
            stderr: stream == LogStream::Stderr,
            timestamps: true,
            since: last
                .as_deref()
                .and_then(rfc3339_unix_secs)
                .and_then(|s| i32::try_from(s).ok())
                .unwrap_or(0),
            tail: "all".to_string(),
            ..Default::default()
        };
        let rest = docker.logs(&name, Some(opts)).filter_map(move |item| {
            futures::future::ready(match item {
                Ok(o) => of_stream(o, stream).and_then(|line| {
                    let (ts, text) = split_timestamp(line);
                    // Already sent (the follow request starts at the last line's second).
                    let old = matches!((&ts, &last), (Some(ts), Some(last)) if ts <= last);
                    (!old).then_some(Ok(text))
                }),
                Err(e) => Some(Err(api_error("reading the container's logs", e))),
            })
        });
        Ok(head.chain(rest).boxed())
    }

    async fn recover_tasks(&self) -> Result<Vec<TaskStatus>, DriverError> {
        let inner = &self.inner;
        inner.ensure_watcher();
        let containers = inner.list_berth_containers().await?;
        let mut out = Vec::new();
        let mut seen = Vec::new();
        for (task_id, container_id) in containers {
            seen.push(task_id.clone());
            if let Some(e) = inner.tasks.lock().get(&task_id) {
                out.push(e.status.clone());
                continue;
            }
            let c = match inner
                .docker
                .inspect_container(&container_id, None::<InspectContainerOptions>)
                .await
            {
                Ok(c) => c,
                Err(e) if is_not_found(&e) => continue,
                Err(e) => return Err(api_error("inspecting a container", e)),
            };
            let killed = inner.killed_marker(&task_id);
            let mut st = status_from_inspect(&task_id, &c, killed);
            if st.state == TaskState::Starting {
                // Created by an agent that died before starting it: never ran, so not
                // running it now cannot lose work; the scheduler replaces it.
                if let Err(e) = inner.remove_container(&container_id).await {
                    tracing::warn!(task_id, error = %e, "cannot remove a never-started container");
                }
                st = status(
                    &task_id,
                    TaskState::Failed,
                    Some("the agent restarted before the container was started".into()),
                    None,
                );
            }
            let info = fs::read(
                inner
                    .config
                    .tasks_dir()
                    .join(&task_id)
                    .join(CONTAINER_INFO_FILE),
            )
            .ok()
            .and_then(|b| serde_json::from_slice::<ContainerInfo>(&b).ok());
            let (cpuset, shared) = recovered_cpuset(&c, info.as_ref());
            if shared {
                inner.recovered_shared.store(true, Ordering::SeqCst);
            }
            inner.tasks.lock().entry(task_id.clone()).or_insert(Entry {
                status: st.clone(),
                pid: running_pid(&c),
                launching: false,
                kill_requested: killed,
                cpuset,
                shared,
                warm: None,
            });
            out.push(st);
        }
        inner.recover_warm(&mut out, &mut seen).await?;
        // UIDs of tasks (and warm containers) whose containers are gone are free again.
        {
            let mut uids = inner.uids.lock();
            let map = inner.load_uids(&mut uids);
            let before = map.len();
            map.retain(|task, _| seen.contains(task));
            if map.len() != before {
                let map = map.clone();
                inner.store_uids(&map);
            }
        }
        out.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        Ok(out)
    }

    /// Drops the bookkeeping of a terminal task; the name of its container, which is left
    /// to remove, unless the task is still running (or its id is not one of ours).
    fn forget_bookkeeping(&self, task_id: &str) -> Option<String> {
        let inner = &self.inner;
        let warm = {
            let mut tasks = inner.tasks.lock();
            if let Some(e) = tasks.get(task_id)
                && !e.status.state.is_terminal()
            {
                tracing::warn!(task_id, "not forgetting a task that is still running");
                return None;
            }
            tasks.remove(task_id).and_then(|e| e.warm)
        };
        if validate_task_id(task_id).is_err() {
            return None;
        }
        // A warm run leaves files only: its container is the job's.
        if let Some(run) = warm.or_else(|| inner.load_run(task_id)) {
            inner.forget_run(task_id, &run);
            return None;
        }
        inner.release_uid(task_id);
        let _ = fs::remove_dir_all(inner.config.tasks_dir().join(task_id));
        Some(container_name(task_id))
    }

    fn forget_task(&self, task_id: &str) {
        let Some(name) = self.forget_bookkeeping(task_id) else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        handle.spawn(remove_exited_container(
            self.inner.docker.clone(),
            self.inner.config.data_dir.clone(),
            name,
            task_id.to_string(),
        ));
    }
}

/// A size as Docker's options write it (powers of 1024): `10m`, `64k`, or plain bytes.
fn docker_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{}g", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}m", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{}k", b >> 10),
        b => b.to_string(),
    }
}

/// Removes a forgotten task's container, unless it runs (then it is left, and said). A job
/// run's output is kept first (see [`kept_logs`]).
async fn remove_exited_container(docker: Docker, data_dir: PathBuf, name: String, task_id: String) {
    match docker
        .inspect_container(&name, None::<InspectContainerOptions>)
        .await
    {
        Ok(c) if c.state.as_ref().and_then(|s| s.running) == Some(true) => {
            tracing::warn!(task_id, "forgotten task's container is running; leaving it");
        }
        Ok(c) => {
            let job_run = c
                .config
                .as_ref()
                .and_then(|c| c.labels.as_ref())
                .and_then(|l| l.get(LABEL_APP_ID))
                .is_some_and(|a| kept_logs::is_job_run(a));
            let id = c.id.unwrap_or(name);
            if job_run {
                kept_logs::keep_container_logs(&docker, &data_dir, &id, &task_id).await;
            }
            let opts = RemoveContainerOptions {
                force: true,
                ..Default::default()
            };
            if let Err(e) = docker.remove_container(&id, Some(opts)).await
                && !is_not_found(&e)
            {
                tracing::warn!(task_id, error = %e, "cannot remove container");
            }
        }
        Err(e) if is_not_found(&e) => {}
        Err(e) => {
            tracing::warn!(task_id, error = %e, "cannot inspect forgotten task's container")
        }
    }
}

enum LaunchError {
    /// A kill arrived while the task was being set up.
    Killed,
    Failed(DriverError),
}

impl From<DriverError> for LaunchError {
    fn from(e: DriverError) -> Self {
        Self::Failed(e)
    }
}

impl From<std::io::Error> for LaunchError {
    fn from(e: std::io::Error) -> Self {
        Self::Failed(e.into())
    }
}

impl Inner {
    /// Records task `id` as staging, unless the driver already has it (a start retried):
    /// then `false`, and the caller leaves it as it is.
    fn claim_staging(&self, id: &str, cpuset: Vec<u32>, shared: bool) -> bool {
        let mut tasks = self.tasks.lock();
        if tasks.contains_key(id) {
            return false;
        }
        tasks.insert(
            id.to_string(),
            Entry {
                status: status(id, TaskState::Staging, None, None),
                pid: None,
                launching: true,
                kill_requested: false,
                cpuset,
                shared,
                warm: None,
            },
        );
        true
    }

    fn emit(&self, status: TaskStatus) {
        // The agent runtime may be shutting down; nothing to do then.
        let _ = self.sink.send(status);
    }

    fn kill_requested(&self, id: &str) -> bool {
        self.tasks.lock().get(id).is_none_or(|e| e.kill_requested)
    }

    fn killed_marker(&self, id: &str) -> bool {
        self.config
            .tasks_dir()
            .join(id)
            .join(KILLED_MARKER)
            .exists()
    }

    /// Records a status and emits it when the state changed.
    fn set_status(&self, id: &str, st: TaskStatus, launching: bool) {
        let changed = {
            let mut tasks = self.tasks.lock();
            let Some(e) = tasks.get_mut(id) else { return };
            e.launching = launching;
            if e.status.state.is_terminal() || e.status.state == st.state {
                false
            } else {
                if st.state.is_terminal() {
                    e.pid = None;
                }
                e.status = st.clone();
                true
            }
        };
        if changed {
            self.emit(st);
        }
    }

    /// Pulls the image when needed, creates and starts the container. A container of this
    /// task that already exists (an earlier agent or attempt) is adopted, never run twice.
    async fn launch(&self, spec: &TaskSpec, plan: Plan) -> Result<(), LaunchError> {
        let id = &spec.task_id;
        let name = container_name(id);
        self.ensure_image(id, &plan.image, plan.force_pull).await?;
        if self.kill_requested(id) {
            return Err(LaunchError::Killed);
        }
        let mut body = plan.body;
        let mut info = plan.info;
        if plan.auto_uid {
            let uid = self.allocate_uid(id)?;
            body.user = Some(format!("{uid}:{uid}"));
            info.uid = Some(uid);
        }
        let dir = self.config.tasks_dir().join(id);
        fs::create_dir_all(&dir)?;
        let info_path = dir.join(CONTAINER_INFO_FILE);
        let json =
            serde_json::to_vec_pretty(&info).map_err(|e| DriverError::Other(e.to_string()))?;
        write_atomic(&info_path, &json)?;
        let mut binds = vec![format!("{}:{CONTAINER_INFO_PATH}:ro", info_path.display())];
        let lxcfs_proc = self.config.lxcfs_dir.join("proc");
        if lxcfs_proc.is_dir() {
            for f in LXCFS_PROC_FILES {
                let p = lxcfs_proc.join(f);
                if p.exists() {
                    binds.push(format!("{}:/proc/{f}:ro", p.display()));
                }
            }
        }
        // A shared container starts off the pinned cores.
        let shared_cpus = if plan.shared {
            self.shared_cpus()
        } else {
            None
        };
        if let Some(hc) = body.host_config.as_mut() {
            hc.binds.get_or_insert_with(Vec::new).extend(binds);
            if let Some(cpus) = &shared_cpus {
                hc.cpuset_cpus = Some(format_cpu_list(cpus));
            }
        }
        let opts = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        let mut retried = false;
        loop {
            match self
                .docker
                .create_container(Some(opts.clone()), body.clone())
                .await
            {
                Ok(_) => break,
                // The name is taken: this task's container from an earlier agent or attempt.
                Err(e) if status_code(&e) == Some(409) => return self.adopt(id, &name).await,
                // The image went away since it was last seen: pull it and try once more.
                Err(e) if status_code(&e) == Some(404) && !retried && is_no_such_image(&e) => {
                    retried = true;
                    self.images.lock().remove(&plan.image);
                    self.ensure_image(id, &plan.image, false).await?;
                }
                Err(e) => return Err(api_error(&format!("creating container {name}"), e).into()),
            }
        }
        if plan.shared && self.shared_cpus() != shared_cpus {
            // The pinned cores changed while the container was being created (a move then
            // may not have found it yet).
            self.move_shared_container(id, &name).await;
        }
        self.set_status(id, status(id, TaskState::Starting, None, None), true);
        if self.kill_requested(id) {
            // Leave the created container for `kill`'s refresh to report; it never ran.
            return Err(LaunchError::Killed);
        }
        self.start_container(id, &name).await
    }

    /// Cores pinned on this node: what the agent said plus this driver's own live pinned
    /// tasks.
    fn pinned_cores(&self) -> BTreeSet<u32> {
        let mut pinned = self.node_pinned.lock().clone();
        let tasks = self.tasks.lock();
        for e in tasks.values().filter(|e| !e.status.state.is_terminal()) {
            pinned.extend(e.cpuset.iter().copied());
        }
        pinned
    }

    /// The cores a shared container runs on: the online cores minus the pinned ones.
    /// `None` when nothing is pinned (no restriction) or the online cores are unknown; all
    /// online cores when every one is pinned (a shared task must run somewhere).
    fn shared_cpus(&self) -> Option<Vec<u32>> {
        let pinned = self.pinned_cores();
        if pinned.is_empty() {
            return None;
        }
        let online = online_cpus()?;
        let shared: Vec<u32> = online
            .iter()
            .copied()
            .filter(|c| !pinned.contains(c))
            .collect();
        Some(if shared.is_empty() { online } else { shared })
    }

    /// Sets the cpuset of every live shared container to the current shared cores (all
    /// online cores when nothing is pinned).
    async fn move_shared_containers(&self) {
        let _moving = self.cpuset_moves.lock().await;
        let ids: Vec<String> = self
            .tasks
            .lock()
            .iter()
            .filter(|(_, e)| e.shared && !e.status.state.is_terminal())
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.update_cpuset(&id, &container_name(&id)).await;
        }
        for name in self.warm.shared_containers() {
            self.update_cpuset(&name, &name).await;
        }
    }

    /// [`Self::move_shared_containers`] for one container.
    async fn move_shared_container(&self, id: &str, name: &str) {
        let _moving = self.cpuset_moves.lock().await;
        self.update_cpuset(id, name).await;
    }

    async fn update_cpuset(&self, id: &str, name: &str) {
        let Some(cpus) = self.shared_cpus().or_else(online_cpus) else {
            tracing::warn!(
                task_id = id,
                "cannot read {ONLINE_CPUS}; shared container left on its cores"
            );
            return;
        };
        let body = ContainerUpdateBody {
            cpuset_cpus: Some(format_cpu_list(&cpus)),
            ..Default::default()
        };
        match self.docker.update_container(name, body).await {
            Ok(()) => tracing::debug!(task_id = id, cpus = ?cpus, "moved shared container"),
            // 404: gone; 409: not running (or being removed).
            Err(e) if matches!(status_code(&e), Some(404 | 409)) => {}
            Err(e) => {
                tracing::warn!(task_id = id, error = %e, "cannot move shared container off pinned cores")
            }
        }
    }

    /// Takes over the existing container named for task `id`: starts it if it was only
    /// created; fails if the container belongs to something else.
    async fn adopt(&self, id: &str, name: &str) -> Result<(), LaunchError> {
        let c = self
            .docker
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
            .map_err(|e| api_error("inspecting the container", e))?;
        let owner = c
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(LABEL_TASK_ID))
            .cloned();
        if owner.as_deref() != Some(id) {
            return Err(DriverError::Other(format!(
                "a container named {name} exists and is not this task's"
            ))
            .into());
        }
        if c.state.as_ref().and_then(|s| s.status) == Some(ContainerStateStatusEnum::CREATED) {
            self.start_container(id, name).await?;
        }
        Ok(())
    }

    async fn start_container(&self, id: &str, name: &str) -> Result<(), LaunchError> {
        if let Err(e) = self.docker.start_container(name, None).await {
            let err = api_error(&format!("starting container {name}"), e);
            if let Err(e) = self.remove_container(name).await {
                tracing::warn!(task_id = id, error = %e, "cannot remove a container that failed to start");
            }
            return Err(err.into());
        }
        Ok(())
    }

    async fn remove_container(&self, name: &str) -> Result<(), DriverError> {
        let opts = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        match self.docker.remove_container(name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(api_error("removing the container", e)),
        }
    }

    /// Pulls `image` unless present (or always with `forcePullImage`). A slow pull keeps the
    /// task in TASK_STAGING; only an error fails it.
    async fn ensure_image(&self, id: &str, image: &str, force: bool) -> Result<(), LaunchError> {
        if !force {
            let fresh = self
                .images
                .lock()
                .get(image)
                .is_some_and(|seen| seen.elapsed() < IMAGE_PRESENT_TTL);
            if fresh {
                return Ok(());
            }
            match self.docker.inspect_image(image).await {
                Ok(_) => {
                    self.images.lock().insert(image.to_string(), Instant::now());
                    return Ok(());
                }
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(api_error(&format!("inspecting image {image}"), e).into()),
            }
        }
        tracing::info!(task_id = id, image, "pulling image");
        self.set_status(
            id,
            status(
                id,
                TaskState::Staging,
                Some(format!("pulling image {image}")),
                None,
            ),
            true,
        );
        let opts = CreateImageOptions {
            from_image: Some(image_with_tag(image)),
            ..Default::default()
        };
        let mut stream = self.docker.create_image(Some(opts), None, None);
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(err) = info.error_detail.and_then(|d| d.message) {
                        return Err(
                            DriverError::Other(format!("pulling image {image}: {err}")).into()
                        );
                    }
                }
                Err(e) => return Err(api_error(&format!("pulling image {image}"), e).into()),
            }
            if self.kill_requested(id) {
                return Err(LaunchError::Killed);
            }
        }
        match self.docker.inspect_image(image).await {
            Ok(_) => {
                self.images.lock().insert(image.to_string(), Instant::now());
                Ok(())
            }
            Err(e) => {
                Err(api_error(&format!("image {image} is still missing after the pull"), e).into())
            }
        }
    }

    async fn signal(&self, name: &str, signal: &str) -> Result<(), DriverError> {
        let opts = KillContainerOptions {
            signal: signal.to_string(),
        };
        match self.docker.kill_container(name, Some(opts)).await {
            Ok(()) => Ok(()),
            // 404: gone; 409: not running.
            Err(e) if matches!(status_code(&e), Some(404 | 409)) => Ok(()),
            Err(e) => Err(api_error(&format!("sending {signal} to {name}"), e)),
        }
    }

    async fn container_running(&self, name: &str) -> Result<bool, DriverError> {
        match self
            .docker
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => Ok(c.state.and_then(|s| s.running).unwrap_or(false)),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(api_error("inspecting the container", e)),
        }
    }

    /// Looks at one task's container, records and emits any state change.
    async fn refresh(&self, id: &str) {
        let killed = {
            let tasks = self.tasks.lock();
            match tasks.get(id) {
                None => return,
                // Warm runs are watched by their own monitor (no container of their own).
                Some(e) if e.launching || e.status.state.is_terminal() || e.warm.is_some() => {
                    return;
                }
                Some(e) => e.kill_requested,
            }
        };
        let name = container_name(id);
        let mut pid = None;
        let st = match self
            .docker
            .inspect_container(&name, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => {
                pid = running_pid(&c);
                status_from_inspect(id, &c, killed || self.killed_marker(id))
            }
            Err(e) if is_not_found(&e) => {
                if killed {
                    status(
                        id,
                        TaskState::Killed,
                        Some("killed (container removed)".into()),
                        None,
                    )
                } else {
                    status(
                        id,
                        TaskState::Lost,
                        Some(format!("container {name} disappeared")),
                        None,
                    )
                }
            }
            Err(e) => {
                // dockerd down or restarting: keep the last known state; the watcher retries.
                tracing::debug!(task_id = id, error = %e, "cannot inspect container");
                return;
            }
        };
        let changed = {
            let mut tasks = self.tasks.lock();
            let Some(e) = tasks.get_mut(id) else { return };
            if !e.launching {
                e.pid = pid;
            }
            if e.launching || e.status.state.is_terminal() || e.status.state == st.state {
                false
            } else {
                e.status = st.clone();
                true
            }
        };
        if changed {
            self.emit(st);
        }
    }

    /// Refreshes every task that is neither launching nor terminal.
    async fn refresh_all(&self) {
        let ids: Vec<String> = self
            .tasks
            .lock()
            .iter()
            .filter(|(_, e)| !e.launching && !e.status.state.is_terminal())
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.refresh(&id).await;
        }
    }

    fn label_filters(&self) -> HashMap<String, Vec<String>> {
        let mut labels = vec![LABEL_TASK_ID.to_string()];
        if let Some(node) = &self.config.node_id {
            labels.push(format!("{LABEL_NODE_ID}={node}"));
        }
        HashMap::from([("label".to_string(), labels)])
    }

    /// `(task_id, container_id)` of every Berth container of this node.
    async fn list_berth_containers(&self) -> Result<Vec<(String, String)>, DriverError> {
        let opts = ListContainersOptions {
            all: true,
            filters: Some(self.label_filters()),
            ..Default::default()
        };
        let list = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(|e| api_error("listing containers", e))?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let task = c.labels.as_ref()?.get(LABEL_TASK_ID)?.clone();
                Some((task, c.id?))
            })
            .collect())
    }

    fn ensure_watcher(self: &Arc<Self>) {
        if self.watcher_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.watcher_started.store(false, Ordering::SeqCst);
            return;
        };
        let weak = Arc::downgrade(self);
        let docker = self.docker.clone();
        let filters = self.label_filters();
        let resync = self.config.resync_interval;
        let stop = self.stop_rx.clone();
        handle.spawn(warm::sweep_warm(
            weak.clone(),
            stop.clone(),
            self.config.warm_idle_timeout,
        ));
        handle.spawn(watch_events(weak, docker, filters, resync, stop));
    }

    fn load_uids<'a>(
        &self,
        slot: &'a mut Option<BTreeMap<String, u32>>,
    ) -> &'a mut BTreeMap<String, u32> {
        slot.get_or_insert_with(|| {
            let path = self.config.data_dir.join(UIDS_FILE);
            match fs::read(&path) {
                Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable UID allocations");
                    BTreeMap::new()
                }),
                Err(_) => BTreeMap::new(),
            }
        })
    }

    fn store_uids(&self, map: &BTreeMap<String, u32>) {
        let path = self.config.data_dir.join(UIDS_FILE);
        let res = serde_json::to_vec_pretty(map)
            .map_err(std::io::Error::other)
            .and_then(|bytes| write_atomic(&path, &bytes));
        if let Err(e) = res {
            tracing::warn!(path = %path.display(), error = %e, "cannot persist UID allocations");
        }
    }

    /// A UID from the configured range no other task of this node holds (persisted).
    fn allocate_uid(&self, task_id: &str) -> Result<u32, DriverError> {
        let mut slot = self.uids.lock();
        let map = self.load_uids(&mut slot);
        if let Some(uid) = map.get(task_id) {
            return Ok(*uid);
        }
        let used: std::collections::BTreeSet<u32> = map.values().copied().collect();
        let (lo, hi) = self.config.uid_range;
        let uid = (lo..=hi)
            .find(|u| !used.contains(u))
            .ok_or_else(|| DriverError::Unavailable(format!("no free UID left in {lo}-{hi}")))?;
        map.insert(task_id.to_string(), uid);
        let path = self.config.data_dir.join(UIDS_FILE);
        let bytes =
            serde_json::to_vec_pretty(&*map).map_err(|e| DriverError::Other(e.to_string()))?;
        write_atomic(&path, &bytes)?;
        Ok(uid)
    }

    fn release_uid(&self, task_id: &str) {
        let mut slot = self.uids.lock();
        let map = self.load_uids(&mut slot);
        if map.remove(task_id).is_some() {
            let map = map.clone();
            self.store_uids(&map);
        }
    }
}

/// Follows dockerd's events for Berth containers; re-lists every `resync` and after every
/// reconnection. Ends when the driver is dropped.
async fn watch_events(
    weak: Weak<Inner>,
    docker: Docker,
    filters: HashMap<String, Vec<String>>,
    resync: Duration,
    mut stop: watch::Receiver<()>,
) {
    let mut filters = filters;
    filters.insert("type".into(), vec!["container".into()]);
    filters.insert(
        "event".into(),
        ["start", "die", "oom", "destroy", "kill"]
            .map(String::from)
            .to_vec(),
    );
    let mut since = unix_now();
    let mut backoff = Duration::from_millis(200);
    loop {
        let opts = EventsOptions {
            // Replays what happened while we were not subscribed.
            since: Some(since.saturating_sub(1).to_string()),
            until: None,
            filters: Some(filters.clone()),
        };
        let mut events = docker.events(Some(opts));
        let mut tick = tokio::time::interval(resync);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut healthy = false;
        loop {
            tokio::select! {
                r = stop.changed() => if r.is_err() { return },
                ev = events.next() => match ev {
                    Some(Ok(ev)) => {
                        if !healthy {
                            healthy = true;
                            backoff = Duration::from_millis(200);
                        }
                        if let Some(t) = ev.time {
                            since = since.max(u64::try_from(t).unwrap_or(0));
                        }
                        let Some(inner) = weak.upgrade() else { return };
                        if let Some(task_id) = event_task_id(&ev) {
                            inner.refresh(&task_id).await;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "docker events stream failed; resubscribing");
                        break;
                    }
                    None => {
                        tracing::warn!("docker events stream ended (dockerd restarted?); resubscribing");
                        break;
                    }
                },
                _ = tick.tick() => {
                    let Some(inner) = weak.upgrade() else { return };
                    inner.refresh_all().await;
                }
            }
        }
        tokio::select! {
            r = stop.changed() => if r.is_err() { return },
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
        // Reconcile now: exits during the gap are also replayed by `since`, but dockerd may
        // have lost them (a restart kills containers without live-restore).
        let Some(inner) = weak.upgrade() else { return };
        inner.refresh_all().await;
    }
}

fn event_task_id(ev: &EventMessage) -> Option<String> {
    ev.actor
        .as_ref()?
        .attributes
        .as_ref()?
        .get(LABEL_TASK_ID)
        .cloned()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The engine address the driver uses for `host` (see [`DockerConfig::host`]).
pub fn engine_address(host: Option<&str>) -> String {
    host.map(str::to_string)
        .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| DEFAULT_SOCKET.to_string())
}

/// A client for `host`, with the API version negotiated; and dockerd's version.
async fn connect_engine(
    host: Option<&str>,
    timeout: Duration,
) -> Result<(Docker, String), DriverError> {
    let addr = engine_address(host);
    let unavailable =
        |what: String| DriverError::Unavailable(format!("Docker Engine at {addr}: {what}"));
    let client = if addr.starts_with('/') || addr.starts_with("unix://") {
        Docker::connect_with_unix(&addr, API_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
    } else if addr.starts_with("tcp://") || addr.starts_with("http://") {
        Docker::connect_with_http(&addr, API_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
    } else {
        return Err(unavailable(
            "unsupported address (use a socket path, unix://, tcp:// or http://)".into(),
        ));
    }
    .map_err(|e| unavailable(e.to_string()))?;
    let docker = tokio::time::timeout(timeout, client.negotiate_version())
        .await
        .map_err(|_| unavailable(format!("no answer within {timeout:?}")))?
        .map_err(|e| unavailable(format!("not reachable: {e}")))?;
    let version = tokio::time::timeout(timeout, docker.version())
        .await
        .map_err(|_| unavailable(format!("no answer within {timeout:?}")))?
        .map_err(|e| unavailable(format!("not reachable: {e}")))?;
    Ok((docker, version.version.unwrap_or_default()))
}

fn status_code(e: &BollardError) -> Option<u16> {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn is_not_found(e: &BollardError) -> bool {
    status_code(e) == Some(404)
}

/// dockerd's answer to a create whose image is missing: `No such image: NAME`.
fn is_no_such_image(e: &BollardError) -> bool {
    matches!(e, BollardError::DockerResponseServerError { message, .. }
        if message.to_ascii_lowercase().contains("no such image"))
}

fn api_error(what: &str, e: BollardError) -> DriverError {
    match e {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => DriverError::Other(format!("{what}: {message} (HTTP {status_code})")),
        e @ (BollardError::IOError { .. }
        | BollardError::HyperResponseError { .. }
        | BollardError::SocketNotFoundError(_)
        | BollardError::RequestTimeoutError) => {
            DriverError::Unavailable(format!("{what}: Docker Engine not reachable: {e}"))
        }
        e => DriverError::Other(format!("{what}: {e}")),
    }
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

/// The task status a container's inspect data describes.
pub fn status_from_inspect(id: &str, c: &ContainerInspectResponse, killed: bool) -> TaskStatus {
    use ContainerStateStatusEnum as S;
    let state = c.state.as_ref();
    match state.and_then(|s| s.status) {
        Some(S::RUNNING | S::PAUSED | S::RESTARTING | S::STOPPING) => {
            let mut st = status(id, TaskState::Running, None, None);
            st.ip_addresses = c
                .network_settings
                .as_ref()
                .and_then(|n| n.networks.as_ref())
                .map(|nets| {
                    let mut ips: Vec<String> = nets
                        .values()
                        .filter_map(|n| n.ip_address.clone())
                        .filter(|ip| !ip.is_empty())
                        .collect();
                    ips.sort();
                    ips
                })
                .unwrap_or_default();
            st
        }
        Some(S::EXITED | S::DEAD | S::REMOVING) => {
            let code = state
                .and_then(|s| s.exit_code)
                .and_then(|c| i32::try_from(c).ok());
            let oom = state.and_then(|s| s.oom_killed).unwrap_or(false);
            let error = state
                .and_then(|s| s.error.clone())
                .filter(|e| !e.is_empty());
            let describe = code.map_or_else(
                || "exit status unknown".to_string(),
                |c| format!("exited with code {c}"),
            );
            let (st, msg) = if killed {
                (TaskState::Killed, format!("killed: {describe}"))
            } else if oom {
                (
                    TaskState::Failed,
                    "OOM killed: memory limit exceeded".to_string(),
                )
            } else if let Some(err) = error {
                (TaskState::Failed, format!("failed to start: {err}"))
            } else if code == Some(0) {
                (TaskState::Finished, describe)
            } else {
                (TaskState::Failed, describe)
            };
            status(id, st, Some(msg), code)
        }
        _ => status(id, TaskState::Starting, None, None),
    }
}

/// The bytes of a log item when it belongs to `stream` (a TTY's console is its stdout).
fn of_stream(o: LogOutput, stream: LogStream) -> Option<Bytes> {
    match (o, stream) {
        (LogOutput::StdOut { message }, LogStream::Stdout)
        | (LogOutput::Console { message }, LogStream::Stdout)
        | (LogOutput::StdErr { message }, LogStream::Stderr) => Some(message),
        _ => None,
    }
}

/// `2026-12-02T15:32:08.628295613Z text` (a line of `docker logs --timestamps`) -> the
/// timestamp and the text.
fn split_timestamp(line: Bytes) -> (Option<String>, Bytes) {
    match line.iter().position(|b| *b == b' ') {
        Some(i) if i >= 20 && line.first().is_some_and(u8::is_ascii_digit) => {
            let ts = String::from_utf8_lossy(&line[..i]).to_string();
            (Some(ts), line.slice(i + 1..))
        }
        _ => (None, line),
    }
}

/// Unix seconds of an RFC 3339 UTC timestamp (`YYYY-MM-DDTHH:MM:SS...Z`).
fn rfc3339_unix_secs(ts: &str) -> Option<i64> {
    let num = |r: std::ops::Range<usize>| ts.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days from 1970-01-01 to y-m-d (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// The last `n` lines `stream` wrote, each with its timestamp stripped, and the timestamp of
/// the last one. dockerd's `tail` counts both streams' lines, so the window grows until it
/// holds `n` lines of `stream` or the whole log.
async fn last_lines(
    docker: &Docker,
    name: &str,
    stream: LogStream,
    n: usize,
) -> Result<(Vec<Bytes>, Option<String>), DriverError> {
    if n == 0 {
        // Nothing to show; following starts now.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        return Ok((Vec::new(), Some(unix_secs_rfc3339_floor(now))));
    }
    let mut window = n.saturating_mul(2).max(100);
    loop {
        let opts = LogsOptions {
            follow: false,
            stdout: true,
            stderr: true,
            timestamps: true,
            tail: window.to_string(),
            ..Default::default()
        };
        let mut items = docker.logs(name, Some(opts));
        let mut total = 0usize;
        let mut mine: std::collections::VecDeque<(Option<String>, Bytes)> = Default::default();
        while let Some(item) = items.next().await {
            let item = item.map_err(|e| api_error("reading the container's logs", e))?;
            total += 1;
            if let Some(line) = of_stream(item, stream) {
                mine.push_back(split_timestamp(line));
                if mine.len() > n {
                    mine.pop_front();
                }
            }
        }
        if mine.len() >= n || total < window || window >= 1 << 24 {
            let last = mine.back().and_then(|(ts, _)| ts.clone());
            return Ok((mine.into_iter().map(|(_, l)| l).collect(), last));
        }
        window = window.saturating_mul(8);
    }
}

/// A timestamp (as `docker logs --timestamps` writes them) that sorts before every line
/// written at or after second `secs` and after every line written before it.
fn unix_secs_rfc3339_floor(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // civil_from_days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The host pid of a running container's init.
fn running_pid(c: &ContainerInspectResponse) -> Option<i32> {
    let state = c.state.as_ref()?;
    if state.running != Some(true) {
        return None;
    }
    state
        .pid
        .and_then(|p| i32::try_from(p).ok())
        .filter(|p| *p > 0)
}

/// The host's online cores (`None` when unreadable).
fn online_cpus() -> Option<Vec<u32>> {
    let text = fs::read_to_string(ONLINE_CPUS).ok()?;
    parse_kernel_cpu_list(&text).filter(|c| !c.is_empty())
}

/// The pinned cores of a recovered container and whether it is shared: the
/// [`LABEL_CPUSET`] label when present (it has its own cpuset), else (containers created
/// before the label) the task's `container_info`, else its `BERTH_CPUSET`. The cpuset the
/// driver gave a shared container never makes it pinned.
fn recovered_cpuset(
    c: &ContainerInspectResponse,
    info: Option<&ContainerInfo>,
) -> (Vec<u32>, bool) {
    let config = c.config.as_ref();
    if let Some(v) = config
        .and_then(|c| c.labels.as_ref())
        .and_then(|l| l.get(LABEL_CPUSET))
    {
        return (parse_kernel_cpu_list(v).unwrap_or_default(), false);
    }
    if let Some(info) = info {
        return (info.cpuset.clone(), info.cpuset.is_empty());
    }
    let env_cpuset = config
        .and_then(|c| c.env.as_ref())
        .and_then(|env| env.iter().find_map(|kv| kv.strip_prefix("BERTH_CPUSET=")));
    match env_cpuset {
        Some(v) => (parse_kernel_cpu_list(v).unwrap_or_default(), false),
        None => (Vec::new(), true),
    }
}

/// Container names (and task directories) come from task ids.
fn validate_task_id(id: &str) -> Result<(), DriverError> {
    let ok = !id.is_empty()
        && id.len() <= 200
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(DriverError::InvalidSpec(format!(
            "task id {id:?} cannot name a container"
        )))
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)
}

/// `busybox` -> `busybox:latest` (pulling without a tag would pull every tag).
fn image_with_tag(image: &str) -> String {
    if image.contains('@') {
        return image.to_string();
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    if last.contains(':') {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

/// Everything decided from the spec before talking to dockerd.
#[derive(Debug)]
struct Plan {
    image: String,
    force_pull: bool,
    auto_uid: bool,
    /// No own cpuset: the container runs on the node's shared cores.
    shared: bool,
    body: ContainerCreateBody,
    info: ContainerInfo,
}

enum NetMode {
    Host,
    Bridge,
    User(String),
}

fn network_mode(app: &AppDefinition) -> Result<NetMode, String> {
    let legacy = app
        .container
        .as_ref()
        .and_then(|c| c.docker.as_ref())
        .and_then(|d| d.network.as_deref());
    let user_name = || {
        app.networks
            .iter()
            .find_map(|n| n.name.clone())
            .ok_or_else(|| "USER networking needs a network name".to_string())
    };
    match legacy {
        Some("HOST") => return Ok(NetMode::Host),
        Some("BRIDGE") => return Ok(NetMode::Bridge),
        Some("USER") => return user_name().map(NetMode::User),
        Some("NONE") | None => {}
        Some(other) => return Err(format!("unknown docker network {other:?}")),
    }
    if app.networks.len() > 1 {
        return Err("the docker driver supports one network per container".into());
    }
    match app.networks.first() {
        None => Ok(NetMode::Host),
        Some(n) => match n.mode.as_str() {
            "host" => Ok(NetMode::Host),
            "container/bridge" => Ok(NetMode::Bridge),
            "container" => match &n.name {
                Some(name) if !name.is_empty() => Ok(NetMode::User(name.clone())),
                _ => Err("network mode `container` needs a network name".into()),
            },
            other => Err(format!("unknown network mode {other:?}")),
        },
    }
}

/// Builds the container from the spec; errors are user errors (invalid spec).
fn build_plan(spec: &TaskSpec, config: &DockerConfig) -> Result<Plan, String> {
    let app = &spec.app;
    let container = app
        .container
        .as_ref()
        .ok_or("the docker driver needs a `container` section")?;
    if container.kind != "DOCKER" {
        return Err(format!(
            "container type {:?} is not supported by the docker driver",
            container.kind
        ));
    }
    let docker = container
        .docker
        .as_ref()
        .ok_or("the docker driver needs `container.docker`")?;
    let image = docker.image.trim().to_string();
    if image.is_empty() {
        return Err("container.docker.image is required".into());
    }
    let mut params = ParamEffects::default();
    for p in &docker.parameters {
        params.apply(p)?;
    }

    // Command: `cmd` runs under /bin/sh -c (as Mesos does); `args` replace the image's CMD.
    let cmd = app.cmd.as_deref().filter(|c| !c.trim().is_empty());
    let args = app.args.as_ref().filter(|a| !a.is_empty());
    let (entrypoint, command) = match (cmd, args) {
        (Some(_), Some(_)) => return Err("app has both cmd and args".into()),
        (Some(cmd), None) => (
            Some(vec!["/bin/sh".to_string(), "-c".to_string()]),
            Some(vec![cmd.to_string()]),
        ),
        (None, Some(args)) => (None, Some(args.clone())),
        (None, None) => (None, None),
    };
    let entrypoint = params.entrypoint.clone().or(entrypoint);

    // Networking and ports.
    let net = network_mode(app)?;
    let mappings: Vec<PortMapping> = container
        .port_mappings
        .clone()
        .or_else(|| docker.port_mappings.clone())
        .unwrap_or_default();
    let mut exposed = Vec::new();
    let mut bindings: PortMap = HashMap::new();
    let mut info_mappings = Vec::new();
    let network_mode = match &net {
        NetMode::Host => "host".to_string(),
        NetMode::Bridge => "bridge".to_string(),
        NetMode::User(name) => name.clone(),
    };
    if !matches!(net, NetMode::Host) {
        let mut host_ports = spec.ports.iter().copied();
        for m in &mappings {
            let host = match m.host_port {
                Some(_) => Some(host_ports.next().ok_or_else(|| {
                    "fewer host ports were assigned than the port mappings need".to_string()
                })?),
                None => None,
            };
            let cport = if m.container_port == 0 {
                host.ok_or("containerPort 0 needs a host port")?
            } else {
                u16::try_from(m.container_port)
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("bad containerPort {}", m.container_port))?
            };
            for proto in m.protocol.split(',').map(str::trim) {
                if !matches!(proto, "tcp" | "udp" | "sctp") {
                    return Err(format!("bad port protocol {proto:?}"));
                }
                let key = format!("{cport}/{proto}");
                exposed.push(key.clone());
                if let Some(h) = host {
                    bindings
                        .entry(key)
                        .or_insert_with(|| Some(Vec::new()))
                        .get_or_insert_with(Vec::new)
                        .push(PortBinding {
                            host_ip: None,
                            host_port: Some(h.to_string()),
                        });
                }
                info_mappings.push(InfoPortMapping {
                    container_port: cport,
                    host_port: host,
                    protocol: proto.to_string(),
                });
            }
        }
    }

    // Volumes.
    let mut binds = Vec::new();
    for v in &container.volumes {
        let Some(host) = v.host_path.as_deref().filter(|h| !h.is_empty()) else {
            return Err(format!(
                "volume {:?}: only hostPath volumes are supported by the docker driver",
                v.container_path
            ));
        };
        if !v.container_path.starts_with('/') {
            return Err(format!(
                "volume containerPath {:?} must be absolute",
                v.container_path
            ));
        }
        let mode = match v.mode.as_str() {
            "RO" | "ro" => "ro",
            "RW" | "rw" => "rw",
            other => return Err(format!("volume mode {other:?} (use RO or RW)")),
        };
        binds.push(format!("{host}:{}:{mode}", v.container_path));
    }
    binds.extend(params.volumes.iter().cloned());

    // Resources.
    let cpus = spec.resources.cpus;
    let mem = spec.resources.mem;
    let cpu_shares = (1024.0 * cpus).round().max(2.0) as i64;
    let quota = app.cpu_quota()?;
    let (cpu_period, cpu_quota) = if quota && cpus > 0.0 {
        (
            Some(100_000),
            Some(((cpus * 100_000.0).round() as i64).max(1000)),
        )
    } else {
        (None, None)
    };
    let memory = (mem > 0.0).then(|| (mem * 1024.0 * 1024.0).round() as i64);
    let pids_limit = match app.pids_limit()? {
        PidsLimit::AgentDefault => config.pids_limit,
        PidsLimit::Unlimited => None,
        PidsLimit::Max(n) => Some(i64::try_from(n).unwrap_or(i64::MAX)),
    };
    let cpuset_cpus = params.cpuset_cpus.clone().or_else(|| {
        (!spec.cpuset.is_empty()).then(|| {
            spec.cpuset
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        })
    });
    let cpuset_list: Vec<u32> = match &params.cpuset_cpus {
        Some(s) => parse_cpu_list(s)?,
        None => spec.cpuset.clone(),
    };

    // User: an explicit `user` parameter, else BERTH_UID=auto, else the image's USER. The
    // app's `user` is not passed on, as Mesos's Docker containerizer never did: it names a
    // user of the host (Marathon's `--mesos_user` default fills it in), which the image
    // usually lacks, so `docker create` would fail ("no matching entries in passwd file")
    // for a marathon.json that ran fine under Marathon.
    let auto_uid = app.auto_uid()? && params.user.is_none();
    let user = params.user.clone();

    // Logs: json-file with rotation unless the operator picks another driver.
    let log_driver = params
        .log_driver
        .clone()
        .unwrap_or_else(|| "json-file".into());
    let mut log_opts = HashMap::new();
    if matches!(log_driver.as_str(), "json-file" | "local") {
        let rotation = app.log_rotation()?;
        let max_bytes = rotation.max_bytes.unwrap_or(config.log_max_bytes);
        if max_bytes > 0 {
            log_opts.insert("max-size".to_string(), docker_size(max_bytes));
            let files = rotation.max_files.unwrap_or(config.log_max_files).max(1);
            log_opts.insert("max-file".to_string(), files.to_string());
        }
    }
    log_opts.extend(params.log_opts.clone());

    // Environment: Marathon's, then `env` parameters.
    let mut env = spec.environment();
    if let Some(c) = &params.cpuset_cpus {
        env.insert("BERTH_CPUSET".into(), c.clone());
    }
    for (k, v) in &params.env {
        env.insert(k.clone(), v.clone());
    }

    let mut labels: HashMap<String, String> = params.labels.clone().into_iter().collect();
    labels.insert(LABEL_TASK_ID.into(), spec.task_id.clone());
    labels.insert(LABEL_APP_ID.into(), spec.app_id.clone());
    labels.insert(LABEL_VERSION.into(), spec.version.clone());
    labels.insert(LABEL_NODE_ID.into(), spec.node_id.clone());
    let shared = cpuset_cpus.is_none();
    if !shared {
        labels.insert(LABEL_CPUSET.into(), format_cpu_list(&spec.cpuset));
    }

    let host_config = HostConfig {
        network_mode: Some(network_mode),
        port_bindings: (!bindings.is_empty()).then_some(bindings),
        binds: Some(binds),
        memory,
        memory_swap: memory,
        cpu_shares: Some(cpu_shares),
        cpu_period,
        cpu_quota,
        cpuset_cpus,
        pids_limit: Some(pids_limit.unwrap_or(-1)),
        log_config: Some(HostConfigLogConfig {
            typ: Some(log_driver),
            config: Some(log_opts),
        }),
        privileged: Some(docker.privileged || params.privileged.unwrap_or(false)),
        extra_hosts: non_empty(params.extra_hosts.clone()),
        ulimits: non_empty(params.ulimits.clone()),
        cap_add: non_empty(params.cap_add.clone()),
        cap_drop: non_empty(params.cap_drop.clone()),
        dns: non_empty(params.dns.clone()),
        dns_search: non_empty(params.dns_search.clone()),
        dns_options: non_empty(params.dns_options.clone()),
        security_opt: non_empty(params.security_opt.clone()),
        group_add: non_empty(params.group_add.clone()),
        devices: non_empty(params.devices.clone()),
        sysctls: (!params.sysctls.is_empty()).then(|| params.sysctls.clone().into_iter().collect()),
        tmpfs: (!params.tmpfs.is_empty()).then(|| params.tmpfs.clone().into_iter().collect()),
        shm_size: params.shm_size,
        oom_score_adj: params.oom_score_adj,
        memory_swappiness: params.memory_swappiness,
        init: params.init,
        readonly_rootfs: params.read_only,
        ipc_mode: params.ipc.clone(),
        pid_mode: params.pid.clone(),
        uts_mode: params.uts.clone(),
        ..Default::default()
    };
    let body = ContainerCreateBody {
        image: Some(image.clone()),
        cmd: command,
        entrypoint,
        env: Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(labels),
        user,
        hostname: params.hostname.clone(),
        working_dir: params.workdir.clone(),
        stop_signal: params.stop_signal.clone(),
        exposed_ports: non_empty(exposed),
        host_config: Some(host_config),
        ..Default::default()
    };
    let info = ContainerInfo {
        task_id: spec.task_id.clone(),
        app_id: spec.app_id.clone(),
        version: spec.version.clone(),
        cpus,
        mem_mb: mem,
        cpuset: cpuset_list,
        ports: spec.ports.clone(),
        port_mappings: info_mappings,
        pids_limit,
        uid: None,
    };
    Ok(Plan {
        image,
        force_pull: docker.force_pull_image,
        auto_uid,
        shared,
        body,
        info,
    })
}

fn non_empty<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

/// Checks `docker.parameters` the way the driver will apply them: unsupported keys and
/// malformed values are errors (the server turns them into a 422 at validation).
pub fn check_parameters(params: &[DockerParameter]) -> Result<(), String> {
    let mut effects = ParamEffects::default();
    for p in params {
        effects.apply(p)?;
    }
    Ok(())
}

/// What `docker.parameters` ask for.
#[derive(Default)]
struct ParamEffects {
    extra_hosts: Vec<String>,
    ulimits: Vec<ResourcesUlimits>,
    cpuset_cpus: Option<String>,
    log_driver: Option<String>,
    log_opts: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    user: Option<String>,
    env: Vec<(String, String)>,
    hostname: Option<String>,
    workdir: Option<String>,
    entrypoint: Option<Vec<String>>,
    cap_add: Vec<String>,
    cap_drop: Vec<String>,
    dns: Vec<String>,
    dns_search: Vec<String>,
    dns_options: Vec<String>,
    security_opt: Vec<String>,
    group_add: Vec<String>,
    devices: Vec<DeviceMapping>,
    sysctls: BTreeMap<String, String>,
    tmpfs: BTreeMap<String, String>,
    volumes: Vec<String>,
    shm_size: Option<i64>,
    oom_score_adj: Option<i64>,
    memory_swappiness: Option<i64>,
    init: Option<bool>,
    read_only: Option<bool>,
    privileged: Option<bool>,
    stop_signal: Option<String>,
    ipc: Option<String>,
    pid: Option<String>,
    uts: Option<String>,
}

impl ParamEffects {
    fn apply(&mut self, p: &DockerParameter) -> Result<(), String> {
        let key = p.key.trim().trim_start_matches('-');
        let value = p.value.trim();
        let err = |why: &str| Err(format!("docker parameter {key:?}={value:?}: {why}"));
        let kv = || -> Result<(String, String), String> {
            match value.split_once('=') {
                Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
                _ => Err(format!(
                    "docker parameter {key:?}={value:?}: expected KEY=VALUE"
                )),
            }
        };
        let non_empty = || -> Result<String, String> {
            if value.is_empty() {
                Err(format!("docker parameter {key:?}: value is empty"))
            } else {
                Ok(value.to_string())
            }
        };
        match key {
            "add-host" => match value.split_once(':') {
                Some((h, ip)) if !h.is_empty() && !ip.is_empty() => {
                    self.extra_hosts.push(value.to_string())
                }
                _ => return err("expected HOST:IP"),
            },
            "ulimit" => self.ulimits.push(
                parse_ulimit(value)
                    .map_err(|e| format!("docker parameter \"ulimit\"={value:?}: {e}"))?,
            ),
            "cpuset-cpus" => {
                parse_cpu_list(value)?;
                self.cpuset_cpus = Some(value.to_string());
            }
            "log-driver" => self.log_driver = Some(non_empty()?),
            "log-opt" => {
                let (k, v) = kv()?;
                self.log_opts.insert(k, v);
            }
            "label" => {
                let (k, v) = match value.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (value.to_string(), String::new()),
                };
                if k.is_empty() {
                    return err("empty label name");
                }
                if k.starts_with("berth.") {
                    return err("labels starting with `berth.` are set by Berth");
                }
                self.labels.insert(k, v);
            }
            "user" => self.user = Some(non_empty()?),
            "env" | "e" => {
                let (k, v) = kv()?;
                self.env.push((k, v));
            }
            "hostname" | "h" => self.hostname = Some(non_empty()?),
            "workdir" | "w" => {
                if !value.starts_with('/') {
                    return err("must be an absolute path");
                }
                self.workdir = Some(value.to_string());
            }
            "entrypoint" => self.entrypoint = Some(vec![value.to_string()]),
            "cap-add" => self.cap_add.push(non_empty()?),
            "cap-drop" => self.cap_drop.push(non_empty()?),
            "dns" => self.dns.push(non_empty()?),
            "dns-search" => self.dns_search.push(non_empty()?),
            "dns-option" | "dns-opt" => self.dns_options.push(non_empty()?),
            "security-opt" => self.security_opt.push(non_empty()?),
            "group-add" => self.group_add.push(non_empty()?),
            "device" => {
                let parts: Vec<&str> = value.split(':').collect();
                if parts.is_empty() || parts.len() > 3 || !parts[0].starts_with('/') {
                    return err("expected /dev/HOST[:/dev/CONTAINER[:PERMISSIONS]]");
                }
                self.devices.push(DeviceMapping {
                    path_on_host: Some(parts[0].to_string()),
                    path_in_container: Some(parts.get(1).copied().unwrap_or(parts[0]).to_string()),
                    cgroup_permissions: Some(parts.get(2).copied().unwrap_or("rwm").to_string()),
                });
            }
            "sysctl" => {
                let (k, v) = kv()?;
                self.sysctls.insert(k, v);
            }
            "tmpfs" => {
                let (path, opts) = value.split_once(':').unwrap_or((value, ""));
                if !path.starts_with('/') {
                    return err("expected /PATH[:OPTIONS]");
                }
                self.tmpfs.insert(path.to_string(), opts.to_string());
            }
            "volume" | "v" => {
                let parts: Vec<&str> = value.split(':').collect();
                if !(2..=3).contains(&parts.len())
                    || parts[0].is_empty()
                    || !parts[1].starts_with('/')
                {
                    return err("expected SOURCE:/CONTAINER/PATH[:ro|rw]");
                }
                self.volumes.push(value.to_string());
            }
            "shm-size" => {
                self.shm_size = Some(parse_size(value).ok_or_else(|| {
                    format!("docker parameter \"shm-size\"={value:?}: expected a size like 64m")
                })?)
            }
            "oom-score-adj" => match value.parse::<i64>() {
                Ok(n) if (-1000..=1000).contains(&n) => self.oom_score_adj = Some(n),
                _ => return err("expected a number from -1000 to 1000"),
            },
            "memory-swappiness" => match value.parse::<i64>() {
                Ok(n) if (0..=100).contains(&n) => self.memory_swappiness = Some(n),
                _ => return err("expected a number from 0 to 100"),
            },
            "init" => {
                self.init = Some(parse_bool(value).ok_or_else(|| {
                    format!("docker parameter {key:?}={value:?}: expected true or false")
                })?)
            }
            "read-only" => {
                self.read_only = Some(parse_bool(value).ok_or_else(|| {
                    format!("docker parameter {key:?}={value:?}: expected true or false")
                })?)
            }
            "privileged" => {
                self.privileged = Some(parse_bool(value).ok_or_else(|| {
                    format!("docker parameter {key:?}={value:?}: expected true or false")
                })?)
            }
            "stop-signal" => self.stop_signal = Some(non_empty()?),
            "ipc" => self.ipc = Some(non_empty()?),
            "pid" => self.pid = Some(non_empty()?),
            "uts" => self.uts = Some(non_empty()?),
            "memory" | "m" | "memory-swap" | "memory-reservation" | "kernel-memory" => {
                return Err(format!(
                    "docker parameter {key:?} is not supported: Berth sets the memory limit from the app's `mem` (swap equal to it)"
                ));
            }
            "cpus" | "cpu-shares" | "c" | "cpu-quota" | "cpu-period" => {
                return Err(format!(
                    "docker parameter {key:?} is not supported: Berth sets CPU shares from the app's `cpus` (label {LABEL_CPU_QUOTA}=true adds a hard quota)"
                ));
            }
            "pids-limit" => {
                return Err(format!(
                    "docker parameter \"pids-limit\" is not supported: use the app label {LABEL_PIDS_LIMIT}"
                ));
            }
            "name" | "net" | "network" | "publish" | "p" | "publish-all" | "P" | "restart"
            | "rm" | "detach" | "d" => {
                return Err(format!(
                    "docker parameter {key:?} is not supported: Berth manages container names, networks, ports and restarts"
                ));
            }
            _ => {
                return Err(format!(
                    "docker parameter {key:?} is not supported (supported: {})",
                    SUPPORTED_PARAMETERS.join(", ")
                ));
            }
        }
        Ok(())
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "" | "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

/// `nofile=1024[:2048]`; `-1`/`unlimited` for no limit.
fn parse_ulimit(v: &str) -> Result<ResourcesUlimits, String> {
    let (name, limits) = v.split_once('=').ok_or("expected NAME=SOFT[:HARD]")?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase()) {
        return Err(format!("bad ulimit name {name:?}"));
    }
    let num = |s: &str| -> Result<i64, String> {
        match s {
            "unlimited" | "-1" => Ok(-1),
            s => s
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| format!("bad ulimit value {s:?}")),
        }
    };
    let (soft, hard) = match limits.split_once(':') {
        Some((s, h)) => (num(s)?, num(h)?),
        None => {
            let n = num(limits)?;
            (n, n)
        }
    };
    if hard != -1 && (soft == -1 || soft > hard) {
        return Err("soft limit exceeds hard limit".into());
    }
    Ok(ResourcesUlimits {
        name: Some(name.to_string()),
        soft: Some(soft),
        hard: Some(hard),
    })
}

/// `64m`, `1g`, `512k`, `1024` (bytes).
fn parse_size(v: &str) -> Option<i64> {
    let v = v.trim().to_ascii_lowercase();
    let v = v.strip_suffix('b').unwrap_or(&v);
    let (num, mult) = match v.chars().last()? {
        'k' => (&v[..v.len() - 1], 1024),
        'm' => (&v[..v.len() - 1], 1024 * 1024),
        'g' => (&v[..v.len() - 1], 1024 * 1024 * 1024),
        _ => (v, 1),
    };
    num.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)?
        .checked_mul(mult)
}

/// `0-3,8` -> `[0, 1, 2, 3, 8]`.
fn parse_cpu_list(v: &str) -> Result<Vec<u32>, String> {
    let bad = || format!("docker parameter \"cpuset-cpus\"={v:?}: expected a CPU list like 0-3,8");
    let mut out = Vec::new();
    for part in v.split(',').map(str::trim) {
        match part.split_once('-') {
            Some((a, b)) => {
                let a: u32 = a.parse().map_err(|_| bad())?;
                let b: u32 = b.parse().map_err(|_| bad())?;
                if a > b || b - a > 4096 {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().map_err(|_| bad())?),
        }
    }
    Ok(out)
}

impl Driver for DockerDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Docker
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

    fn remove(&self, task_id: &str) -> BoxFuture<'_, ()> {
        let name = self.forget_bookkeeping(task_id);
        let task_id = task_id.to_string();
        Box::pin(async move {
            if let Some(name) = name {
                let data_dir = self.inner.config.data_dir.clone();
                remove_exited_container(self.inner.docker.clone(), data_dir, name, task_id).await;
            }
        })
    }

    /// Removes the warm containers no run uses.
    fn remove_leftovers(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.inner.remove_unused_warm())
    }

    /// Remembers the node's pinned cores; when they changed (or containers were recovered
    /// since the last call), moves the running shared containers to the new shared cores.
    fn set_pinned_cores(&self, cores: &[u32]) {
        let new: BTreeSet<u32> = cores.iter().copied().collect();
        let changed = {
            let mut pinned = self.inner.node_pinned.lock();
            let changed = *pinned != new;
            *pinned = new;
            changed
        };
        let recovered = self.inner.recovered_shared.swap(false, Ordering::SeqCst);
        if !changed && !recovered {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no tokio runtime: shared containers not moved off pinned cores");
            return;
        };
        let inner = self.inner.clone();
        handle.spawn(async move { inner.move_shared_containers().await });
    }

    /// The container's output through the Engine API (`docker logs`): one stream of the
    /// multiplexed stdout/stderr, `tail` lines, and with `follow` until the container stops.
    fn logs(
        &self,
        task_id: &str,
        stream: LogStream,
        tail: Option<usize>,
        follow: bool,
    ) -> BoxFuture<'_, Result<LogChunks, DriverError>> {
        let task_id = task_id.to_string();
        Box::pin(async move { self.task_logs(&task_id, stream, tail, follow).await })
    }

    fn pid(&self, task_id: &str) -> Option<i32> {
        let tasks = self.inner.tasks.lock();
        let e = tasks.get(task_id)?;
        if e.status.state.is_terminal() {
            return None;
        }
        e.pid
    }

    /// COMMAND health checks run inside the container, with the task's environment.
    fn check_command(
        &self,
        spec: &TaskSpec,
        command: &str,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<(), String>> {
        // A warm run's commands run in its job's container.
        let name = self
            .inner
            .tasks
            .lock()
            .get(&spec.task_id)
            .and_then(|e| e.warm.as_ref().map(|r| r.container_id.clone()))
            .unwrap_or_else(|| container_name(&spec.task_id));
        let env: Vec<String> = spec
            .environment()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let command = command.to_string();
        Box::pin(async move {
            let docker = self.docker();
            let run = async {
                let exec = docker
                    .create_exec(
                        &name,
                        bollard::models::ExecConfig {
                            cmd: Some(vec!["/bin/sh".into(), "-c".into(), command.clone()]),
                            env: Some(env),
                            attach_stdout: Some(true),
                            attach_stderr: Some(true),
                            ..Default::default()
                        },
                    )
                    .await
                    .map_err(|e| format!("exec in container {name}: {e}"))?;
                if let bollard::exec::StartExecResults::Attached { mut output, .. } = docker
                    .start_exec(&exec.id, None)
                    .await
                    .map_err(|e| format!("exec in container {name}: {e}"))?
                {
                    // Drain the output so the exec runs to completion.
                    while output.next().await.is_some() {}
                }
                let inspect = docker
                    .inspect_exec(&exec.id)
                    .await
                    .map_err(|e| format!("exec in container {name}: {e}"))?;
                match inspect.exit_code {
                    Some(0) => Ok(()),
                    Some(code) => Err(format!("command exited with code {code}")),
                    None => Err("command did not finish".to_string()),
                }
            };
            match tokio::time::timeout(timeout, run).await {
                Err(_) => Err(format!(
                    "command timed out after {}s",
                    timeout.as_secs_f64()
                )),
                Ok(r) => r,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::node::NodeResources;

    fn param(k: &str, v: &str) -> DockerParameter {
        DockerParameter {
            key: k.into(),
            value: v.into(),
        }
    }

    fn spec(app_json: serde_json::Value, ports: Vec<u16>) -> TaskSpec {
        let app: AppDefinition = serde_json::from_value(app_json).unwrap();
        TaskSpec {
            task_id: "web.1".into(),
            app_id: "/web".into(),
            version: "v1".into(),
            resources: NodeResources::new(app.cpus, app.mem, app.disk),
            app,
            ports,
            host: "node1".into(),
            node_id: "n1".into(),
            cpuset: vec![],
            secret_env: Default::default(),
        }
    }

    #[test]
    fn supported_parameters_pass_and_others_fail_clearly() {
        let ok = [
            param("add-host", "db:10.0.0.1"),
            param("ulimit", "nofile=1024:2048"),
            param("cpuset-cpus", "0-1"),
            param("log-opt", "max-size=1m"),
            param("label", "team=a"),
            param("user", "nobody"),
            param("env", "A=b"),
            param("shm-size", "64m"),
            param("init", "true"),
        ];
        check_parameters(&ok).unwrap();
        for key in SUPPORTED_PARAMETERS {
            // Every advertised key is known (values may be invalid, the key never "unsupported").
            let e = check_parameters(&[param(key, "x")])
                .err()
                .unwrap_or_default();
            assert!(!e.contains("is not supported"), "{key}: {e}");
        }
        let e = check_parameters(&[param("volume-driver", "x")]).unwrap_err();
        assert!(
            e.contains("\"volume-driver\" is not supported (supported: add-host"),
            "{e}"
        );
        let e = check_parameters(&[param("memory", "1g")]).unwrap_err();
        assert!(e.contains("`mem`"), "{e}");
        assert!(check_parameters(&[param("ulimit", "nofile=2048:1024")]).is_err());
        assert!(check_parameters(&[param("add-host", "nocolon")]).is_err());
        assert!(check_parameters(&[param("label", "berth.task_id=x")]).is_err());
    }

    #[test]
    fn plan_sets_platform_limits_and_bridge_ports() {
        let s = spec(
            serde_json::json!({
                "id": "/web", "cpus": 0.5, "mem": 64, "cmd": "httpd -f",
                "labels": {"BERTH_CPU_QUOTA": "true", "BERTH_PIDS_LIMIT": "100"},
                "networks": [{"mode": "container/bridge"}],
                "container": {"type": "DOCKER", "docker": {"image": "busybox",
                  "parameters": [{"key": "log-opt", "value": "max-size=1m"}]},
                  "portMappings": [{"containerPort": 8080, "hostPort": 0},
                                   {"containerPort": 53, "protocol": "udp"}],
                  "volumes": [{"containerPath": "/data", "hostPath": "/tmp", "mode": "RO"}]}
            }),
            vec![31001],
        );
        let cfg = DockerConfig::new("/tmp/x");
        let plan = build_plan(&s, &cfg).unwrap();
        let hc = plan.body.host_config.as_ref().unwrap();
        assert_eq!(hc.memory, Some(64 * 1024 * 1024));
        assert_eq!(hc.memory_swap, hc.memory);
        assert_eq!(hc.cpu_shares, Some(512));
        assert_eq!((hc.cpu_period, hc.cpu_quota), (Some(100_000), Some(50_000)));
        assert_eq!(hc.pids_limit, Some(100));
        assert_eq!(hc.network_mode.as_deref(), Some("bridge"));
        let b = hc.port_bindings.as_ref().unwrap();
        assert_eq!(
            b["8080/tcp"].as_ref().unwrap()[0].host_port.as_deref(),
            Some("31001")
        );
        assert!(!b.contains_key("53/udp"));
        let log = hc.log_config.as_ref().unwrap();
        assert_eq!(log.typ.as_deref(), Some("json-file"));
        let opts = log.config.as_ref().unwrap();
        assert_eq!(
            (opts["max-size"].as_str(), opts["max-file"].as_str()),
            ("1m", "3")
        );
        assert_eq!(
            hc.binds.as_ref().unwrap(),
            &vec!["/tmp:/data:ro".to_string()]
        );
        // Rotation from the app's labels, in Docker's units.
        let mut app = s.app.clone();
        app.labels.insert("BERTH_LOG_MAX_SIZE".into(), "64k".into());
        app.labels.insert("BERTH_LOG_MAX_FILES".into(), "2".into());
        app.container
            .as_mut()
            .unwrap()
            .docker
            .as_mut()
            .unwrap()
            .parameters
            .clear();
        let mut s2 = s.clone();
        s2.app = app;
        let plan2 = build_plan(&s2, &cfg).unwrap();
        let hc2 = plan2.body.host_config.as_ref().unwrap();
        let opts2 = hc2.log_config.as_ref().unwrap().config.as_ref().unwrap();
        assert_eq!(
            (opts2["max-size"].as_str(), opts2["max-file"].as_str()),
            ("64k", "2")
        );
        assert_eq!(docker_size(10 << 20), "10m");
        assert_eq!(docker_size(1 << 30), "1g");
        assert_eq!(docker_size(1500), "1500");
        assert_eq!(
            plan.body.entrypoint,
            Some(vec!["/bin/sh".to_string(), "-c".to_string()])
        );
        assert_eq!(plan.body.cmd, Some(vec!["httpd -f".to_string()]));
        let labels = plan.body.labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_TASK_ID], "web.1");
        assert_eq!(labels[LABEL_NODE_ID], "n1");
        assert_eq!(plan.info.port_mappings.len(), 2);
        assert_eq!(plan.body.user, None, "the image's USER");
        // The app's `user` (a host user under Marathon) is not the container's...
        let mut s3 = s.clone();
        s3.app.user = Some("deploy".into());
        assert_eq!(build_plan(&s3, &cfg).unwrap().body.user, None);
        // ...a `user` docker parameter is.
        s3.app
            .container
            .as_mut()
            .unwrap()
            .docker
            .as_mut()
            .unwrap()
            .parameters = vec![param("user", "1000:1000")];
        assert_eq!(
            build_plan(&s3, &cfg).unwrap().body.user.as_deref(),
            Some("1000:1000")
        );
        assert_eq!(image_with_tag("busybox"), "busybox:latest");
        assert_eq!(image_with_tag("reg:5000/a/b"), "reg:5000/a/b:latest");
        assert_eq!(image_with_tag("reg:5000/a/b:1"), "reg:5000/a/b:1");
    }

    #[test]
    fn plan_rejects_bad_specs() {
        let cfg = DockerConfig::new("/tmp/x");
        let no_image = spec(
            serde_json::json!({"id": "/a", "container": {"type": "DOCKER", "docker": {"image": ""}}}),
            vec![],
        );
        assert!(build_plan(&no_image, &cfg).is_err());
        let persistent = spec(
            serde_json::json!({"id": "/a", "container": {"type": "DOCKER", "docker": {"image": "x"},
                "volumes": [{"containerPath": "data", "persistent": {"size": 10}}]}}),
            vec![],
        );
        assert!(build_plan(&persistent, &cfg).is_err());
        let bad_pids = spec(
            serde_json::json!({"id": "/a", "labels": {"BERTH_PIDS_LIMIT": "lots"},
                "container": {"type": "DOCKER", "docker": {"image": "x"}}}),
            vec![],
        );
        assert!(
            build_plan(&bad_pids, &cfg)
                .unwrap_err()
                .contains("BERTH_PIDS_LIMIT")
        );
        assert!(validate_task_id("../x").is_err());
        assert!(validate_task_id("web.1-a_b").is_ok());
    }

    #[test]
    fn log_timestamps() {
        assert_eq!(rfc3339_unix_secs("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339_unix_secs("2026-12-02T15:32:08.628295613Z"),
            Some(1_796_225_528)
        );
        assert_eq!(
            unix_secs_rfc3339_floor(1_796_225_528),
            "2026-12-02T15:32:08"
        );
        assert!(unix_secs_rfc3339_floor(1_796_225_528).as_str() < "2026-12-02T15:32:08.0Z");
        let (ts, text) = split_timestamp(Bytes::from_static(b"2026-12-02T15:32:08.6Z hi there\n"));
        assert_eq!(ts.as_deref(), Some("2026-12-02T15:32:08.6Z"));
        assert_eq!(&text[..], b"hi there\n");
    }

    #[test]
    fn recovered_containers_are_pinned_only_by_their_label_or_info() {
        use bollard::models::ContainerConfig;
        let container = |labels: &[(&str, &str)], env: &[&str]| ContainerInspectResponse {
            config: Some(ContainerConfig {
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                env: Some(env.iter().map(|e| e.to_string()).collect()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let info = |cpuset: Vec<u32>| ContainerInfo {
            task_id: "t".into(),
            app_id: "/a".into(),
            version: "v".into(),
            cpus: 1.0,
            mem_mb: 32.0,
            cpuset,
            ports: vec![],
            port_mappings: vec![],
            pids_limit: None,
            uid: None,
        };
        // Pinned (label), `cpuset-cpus` only (empty label), shared (no label, empty info).
        let pinned = container(&[(LABEL_CPUSET, "0,1")], &["BERTH_CPUSET=0,1"]);
        assert_eq!(
            recovered_cpuset(&pinned, Some(&info(vec![0, 1]))),
            (vec![0, 1], false)
        );
        let fixed = container(&[(LABEL_CPUSET, "")], &["BERTH_CPUSET=1"]);
        assert_eq!(
            recovered_cpuset(&fixed, Some(&info(vec![1]))),
            (vec![], false)
        );
        let shared = container(&[], &["BERTH_CPUS=1"]);
        assert_eq!(
            recovered_cpuset(&shared, Some(&info(vec![]))),
            (vec![], true)
        );
        assert_eq!(recovered_cpuset(&shared, None), (vec![], true));
        // Created before the label: container_info, else BERTH_CPUSET.
        let old = container(&[], &["BERTH_CPUSET=1"]);
        assert_eq!(
            recovered_cpuset(&old, Some(&info(vec![1]))),
            (vec![1], false)
        );
        assert_eq!(recovered_cpuset(&old, None), (vec![1], false));
    }

    #[test]
    fn sizes_and_cpu_lists() {
        assert_eq!(parse_size("64m"), Some(64 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("10"), Some(10));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_cpu_list("0-2,5").unwrap(), vec![0, 1, 2, 5]);
        assert!(parse_cpu_list("a").is_err());
    }
}
