//! Warm-container mode for job runs (app labels `BERTH_JOB=<job>`, `BERTH_RUN_MODE=warm`):
//! the runs of a job on this node execute inside ONE long-lived container (`docker exec`)
//! instead of a container each, because container churn (cgroups, namespaces, veths made
//! and torn down per run) drove kernels into soft lockups at Ctrip's scale.
//!
//! - The container is named `berth-warm-<job>-<h8>` and labelled `berth.warm_job`,
//!   `berth.warm_fingerprint`, `berth.node_id`, never `berth.task_id`: `recover`, `list` and
//!   the event watcher never take it for a task. The fingerprint hashes what the container
//!   is made of (image, resources, parameters, volumes, network, user); a run with another
//!   fingerprint gets a new container and the old one is removed once no run uses it.
//! - A run is an exec of a small `/bin/sh` wrapper around the command: it writes the run's
//!   stdout, stderr and, at the end, its exit code into `<data_dir>/warm/<container>/<task>/`
//!   (bind-mounted at `/etc/berth/runs`). The run thus never depends on the agent's
//!   connection, and an agent restarted later still learns the exit code, even once
//!   dockerd has forgotten the exec. `tasks/<task>/warm.json` (container, exec id) is what
//!   `recover` re-attaches with.
//! - The Engine API cannot kill an exec: `kill` signals the exec's process group on the
//!   host (runc makes every exec a session leader).
//! - A container without runs for [`DockerConfig::warm_idle_timeout`] is removed.

use super::*;
use berth_core::node::NodeResources;
use bollard::exec::StartExecOptions;
use bollard::models::ExecConfig;
use std::os::unix::fs::PermissionsExt;

/// Label of a warm container: the job it runs.
pub const LABEL_WARM_JOB: &str = "berth.warm_job";
/// Label of a warm container: the fingerprint of what it is made of.
pub const LABEL_WARM_FINGERPRINT: &str = "berth.warm_fingerprint";
/// Per-task file naming the run's container and exec.
const RUN_FILE: &str = "warm.json";
/// Under the data dir: one directory per warm container, one per run in it.
const WARM_DIR: &str = "warm";
/// Where a warm container sees its runs' directories.
pub const RUNS_MOUNT: &str = "/etc/berth/runs";
/// The warm container's main process: stays alive doing nothing, ends at once on SIGTERM.
const KEEPALIVE: &str = r#"trap "exit 0" TERM; while :; do sleep 3600 & wait; done"#;
/// Runs `$2...` with its output in the files of directory `$1`, then writes its exit code
/// there. `trap : TERM` keeps the wrapper alive through the SIGTERM `kill` sends to the
/// whole group, so the command's own exit code is recorded (the command still gets the
/// default SIGTERM action: caught signals are reset on exec).
const WRAPPER: &str = r#"trap : TERM; d=$1; shift; exec >>"$d/stdout" 2>>"$d/stderr" </dev/null; "$@"; c=$?; echo "$c" >"$d/exit_code"; exit "$c""#;
const EXIT_CODE_FILE: &str = "exit_code";

/// One run's bookkeeping; persisted in `tasks/<task_id>/warm.json` once its exec exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct WarmRun {
    pub job: String,
    /// The warm container's name and id.
    pub container: String,
    pub container_id: String,
    pub exec_id: String,
    /// Host directory holding the run's `stdout`, `stderr` and `exit_code`.
    pub run_dir: PathBuf,
    /// Host pid of the exec (the wrapper), once started.
    #[serde(default)]
    pub pid: Option<i32>,
}

/// A warm container this driver knows.
struct WarmContainer {
    job: String,
    /// Runs executing in it (it is never removed while this is not 0).
    runs: usize,
    idle_since: Instant,
    /// A newer container of the job exists: this one goes once its last run ends.
    stale: bool,
    /// No own cpuset: moved off pinned cores like shared per-run containers.
    shared: bool,
}

/// The warm containers of this driver (by name) and a lock per job.
#[derive(Default)]
pub(super) struct WarmState {
    containers: Mutex<HashMap<String, WarmContainer>>,
    /// Serializes the container decisions of a job: two runs starting together must not
    /// create two containers, nor a removal race a run about to use the container.
    jobs: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl WarmState {
    fn job_lock(&self, job: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.jobs.lock().entry(job.to_string()).or_default().clone()
    }

    /// Names of the shared warm containers (for cpuset moves).
    pub(super) fn shared_containers(&self) -> Vec<String> {
        self.containers
            .lock()
            .iter()
            .filter(|(_, c)| c.shared)
            .map(|(n, _)| n.clone())
            .collect()
    }
}

/// Everything decided from a warm spec before talking to dockerd.
pub(super) struct WarmPlan {
    job: String,
    name: String,
    fingerprint: String,
    image: String,
    force_pull: bool,
    auto_uid: bool,
    shared: bool,
    /// The container (its runs' bind mount, lxcfs and a shared cpuset are added at create).
    body: ContainerCreateBody,
    /// The run's command as the per-run container would have it (`None`: the image's).
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    /// The run's environment (`KEY=VALUE`), as the per-run container's.
    env: Vec<String>,
}

/// FNV-1a, 64 bits: stable across Rust versions and platforms (std's hashers are not
/// promised to be), which a fingerprint kept in container labels needs.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The fingerprint of a warm container: a hash of its create body (image, limits, binds,
/// network, user, parameters...) and the run's resources. 16 hex digits.
fn fingerprint(
    body: &ContainerCreateBody,
    resources: &NodeResources,
    auto_uid: bool,
) -> Result<String, String> {
    // Through `Value`: its maps are sorted, the body's HashMaps are not.
    let body = serde_json::to_value(body).map_err(|e| format!("fingerprinting: {e}"))?;
    let key = serde_json::Value::Array(vec![
        body,
        resources.cpus.into(),
        resources.mem.into(),
        resources.disk.into(),
        auto_uid.into(),
    ]);
    Ok(format!("{:016x}", fnv1a(key.to_string().as_bytes())))
}

/// The name of the warm container of `job` on `node_id` for `fingerprint`: `berth-warm-`,
/// the job name (characters Docker refuses replaced by `-`, at most 64), and 8 hex digits
/// hashing node, job and fingerprint (several agents may share one dockerd, and two job
/// names may read the same once cleaned).
pub fn warm_container_name(node_id: &str, job: &str, fingerprint: &str) -> String {
    let clean: String = job
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    let h = fnv1a(format!("{node_id}\n{job}\n{fingerprint}").as_bytes());
    format!("berth-warm-{clean}-{:08x}", h >> 32)
}

/// The warm container and the run from the per-run plan of a warm spec.
pub(super) fn warm_plan(spec: &TaskSpec, plan: Plan, job: &str) -> Result<WarmPlan, String> {
    let mut body = plan.body;
    let hc = body.host_config.get_or_insert_with(Default::default);
    if hc.port_bindings.as_ref().is_some_and(|b| !b.is_empty()) {
        return Err(
            "warm run mode cannot publish ports: the container outlives the run the ports were assigned to"
                .into(),
        );
    }
    let entrypoint = body.entrypoint.take();
    let cmd = body.cmd.take();
    // Per run (exec), so the container holds nothing of the run that created it.
    let env = body.env.take().unwrap_or_default();
    body.entrypoint = Some(vec!["/bin/sh".into(), "-c".into()]);
    body.cmd = Some(vec![KEEPALIVE.into()]);
    body.exposed_ports = None;
    // The keepalive ends on SIGTERM; a run's stop signal is the run's business.
    body.stop_signal = None;
    let labels = body.labels.get_or_insert_with(HashMap::new);
    for l in [LABEL_TASK_ID, LABEL_APP_ID, LABEL_VERSION] {
        labels.remove(l);
    }
    labels.insert(LABEL_WARM_JOB.into(), job.to_string());
    let fp = fingerprint(&body, &spec.resources, plan.auto_uid)?;
    if let Some(labels) = body.labels.as_mut() {
        labels.insert(LABEL_WARM_FINGERPRINT.into(), fp.clone());
    }
    Ok(WarmPlan {
        job: job.to_string(),
        name: warm_container_name(&spec.node_id, job, &fp),
        fingerprint: fp,
        image: plan.image,
        force_pull: plan.force_pull,
        auto_uid: plan.auto_uid,
        shared: plan.shared,
        body,
        entrypoint,
        cmd,
        env,
    })
}

/// What a per-run container would execute, as dockerd merges it with the image: the
/// entrypoint (the image's unless set) and the command (the image's only when neither
/// was set).
fn run_argv(
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    image_entrypoint: Option<Vec<String>>,
    image_cmd: Option<Vec<String>>,
) -> Result<Vec<String>, String> {
    let (mut argv, rest) = match entrypoint.filter(|e| !e.is_empty()) {
        Some(ep) => (ep, cmd.unwrap_or_default()),
        None => (
            image_entrypoint.unwrap_or_default(),
            cmd.filter(|c| !c.is_empty())
                .or(image_cmd)
                .unwrap_or_default(),
        ),
    };
    argv.extend(rest);
    if argv.is_empty() {
        return Err("the run has no command: no cmd or args, and the image has none".into());
    }
    Ok(argv)
}

/// Where a run is, as seen by the driver.
enum Outcome {
    Running(Option<i32>),
    Ended {
        code: Option<i32>,
        message: Option<String>,
    },
}

fn read_exit_code(run_dir: &Path) -> Option<i32> {
    fs::read_to_string(run_dir.join(EXIT_CODE_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether host process `pid` lives in the container (its cgroup names the container).
fn pid_in_container(pid: i32, container_id: &str) -> bool {
    !container_id.is_empty()
        && fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .is_ok_and(|cg| cg.contains(container_id))
}

/// Sends `sig` to the run's process group (the exec is its leader), else to the exec alone.
fn signal_run(pid: i32, sig: i32) {
    if crate::shim::sys::kill(-pid, sig).is_err()
        && let Err(e) = crate::shim::sys::kill(pid, sig)
        && e.raw_os_error() != Some(libc::ESRCH)
    {
        tracing::warn!(pid, sig, error = %e, "cannot signal a warm run");
    }
}

/// Whether any process of the run's group is left.
fn group_alive(pid: i32) -> bool {
    match crate::shim::sys::kill(-pid, 0) {
        Ok(()) => true,
        Err(e) => e.raw_os_error() == Some(libc::EPERM),
    }
}

/// A fresh directory for a run's files, writable by whichever user the container runs
/// runs as (a `user` parameter, `BERTH_UID=auto`, a remapped root).
fn prepare_run_dir(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    for f in ["stdout", "stderr", EXIT_CODE_FILE] {
        let p = dir.join(f);
        fs::write(&p, b"")?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o666))?;
    }
    Ok(())
}

/// Why a warm container may go.
#[derive(Clone, Copy)]
enum Removal {
    /// A newer container of its job exists.
    Stale,
    /// No run for this long.
    Idle(Duration),
    /// The agent is going away for good.
    Unused,
}

impl DockerDriver {
    /// `start` of a warm spec: the job's container (made when needed), then the run in it.
    pub(super) async fn start_warm(
        &self,
        spec: TaskSpec,
        plan: Plan,
        job: String,
    ) -> Result<(), DriverError> {
        let inner = &self.inner;
        let id = spec.task_id.clone();
        let wp = warm_plan(&spec, plan, &job).map_err(DriverError::InvalidSpec)?;
        if !inner.claim_staging(&id, spec.cpuset.clone(), false) {
            return Ok(());
        }
        inner.ensure_watcher();
        // Started by an earlier agent (a start retried without recover): re-attach, never
        // run it twice.
        if let Some(run) = inner.load_run(&id) {
            return match inner.attach_run(&id, run).await {
                Ok(st) => {
                    inner.emit(st);
                    Ok(())
                }
                Err(e) => {
                    inner.tasks.lock().remove(&id);
                    Err(e)
                }
            };
        }
        if !spec.cpuset.is_empty() {
            inner.move_shared_containers().await;
        }
        match inner.launch_warm(&spec, wp).await {
            Ok(()) => Ok(()),
            Err(LaunchError::Killed) => {
                let _ = fs::remove_file(inner.run_file(&id));
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
                let _ = fs::remove_dir_all(inner.config.tasks_dir().join(&id));
                Err(e)
            }
        }
    }
}

impl Inner {
    fn run_file(&self, id: &str) -> PathBuf {
        self.config.tasks_dir().join(id).join(RUN_FILE)
    }

    fn warm_dir(&self, container: &str) -> PathBuf {
        self.config.data_dir.join(WARM_DIR).join(container)
    }

    /// The run persisted for task `id` (a valid task id), if it is a warm run.
    pub(super) fn load_run(&self, id: &str) -> Option<WarmRun> {
        let bytes = fs::read(self.run_file(id)).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(run) => Some(run),
            Err(e) => {
                tracing::warn!(task_id = id, error = %e, "ignoring an unreadable {RUN_FILE}");
                None
            }
        }
    }

    fn store_run(&self, id: &str, run: &WarmRun) -> Result<(), DriverError> {
        let json = serde_json::to_vec_pretty(run).map_err(|e| DriverError::Other(e.to_string()))?;
        let path = self.run_file(id);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        write_atomic(&path, &json)?;
        Ok(())
    }

    /// Task `id`'s warm run: the live one, else the one on disk.
    pub(super) fn warm_run(&self, id: &str) -> Option<WarmRun> {
        let live = self.tasks.lock().get(id).and_then(|e| e.warm.clone());
        live.or_else(|| self.load_run(id))
    }

    /// Drops what a forgotten warm run left: its files (its output is kept), never the container.
    pub(super) fn forget_run(&self, id: &str, run: &WarmRun) {
        // `berth job logs` still shows the run's output (the files move out first).
        super::kept_logs::keep_files(&self.config.data_dir, id, &run.run_dir);
        let _ = fs::remove_dir_all(&run.run_dir);
        let _ = fs::remove_dir_all(self.config.tasks_dir().join(id));
        // The container's directory goes with the container, or now if that went first.
        if !self.warm.containers.lock().contains_key(&run.container)
            && let Some(parent) = run.run_dir.parent()
        {
            let _ = fs::remove_dir(parent);
        }
    }

    /// A warm run's output, from its files.
    pub(super) fn run_logs(
        self: &Arc<Self>,
        id: &str,
        run: &WarmRun,
        stream: LogStream,
        tail: Option<usize>,
        follow: bool,
    ) -> LogChunks {
        let weak = Arc::downgrade(self);
        let task = id.to_string();
        let done = move || {
            weak.upgrade().is_none_or(|inner| {
                inner
                    .tasks
                    .lock()
                    .get(&task)
                    .is_none_or(|e| e.status.state.is_terminal())
            })
        };
        crate::logfile::stream_file(
            run.run_dir.join(stream.as_str()),
            tail,
            follow,
            Box::new(done),
            Duration::from_millis(200),
        )
    }

    async fn launch_warm(
        self: &Arc<Self>,
        spec: &TaskSpec,
        wp: WarmPlan,
    ) -> Result<(), LaunchError> {
        let id = &spec.task_id;
        let lock = self.warm.job_lock(&wp.job);
        let container_id = {
            let _job = lock.lock().await;
            self.ensure_image(id, &wp.image, wp.force_pull).await?;
            if self.kill_requested(id) {
                return Err(LaunchError::Killed);
            }
            self.ensure_warm_container(&wp).await?
        };
        // The container counts this run from here on: give it back on every failure.
        let res = self.exec_run(spec, &wp, &container_id).await;
        if res.is_err() {
            self.release_container(&wp.name);
        }
        res
    }

    /// The running container of the plan, made when missing or dead; counts one more run on
    /// it. Containers of the job for other fingerprints become stale (removed now when no
    /// run uses them). The caller holds the job's lock.
    async fn ensure_warm_container(&self, wp: &WarmPlan) -> Result<String, LaunchError> {
        let name = &wp.name;
        let stale: Vec<String> = {
            let mut map = self.warm.containers.lock();
            map.iter_mut()
                .filter(|(n, c)| c.job == wp.job && *n != name)
                .filter_map(|(n, c)| {
                    c.stale = true;
                    (c.runs == 0).then(|| n.clone())
                })
                .collect()
        };
        for n in stale {
            self.drop_warm_container(&n).await;
        }
        match self
            .docker
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => {
                let labels = c.config.as_ref().and_then(|c| c.labels.as_ref());
                let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
                if label(LABEL_WARM_JOB) != Some(wp.job.as_str())
                    || label(LABEL_WARM_FINGERPRINT) != Some(wp.fingerprint.as_str())
                {
                    return Err(DriverError::Other(format!(
                        "a container named {name} exists and is not this job's warm container"
                    ))
                    .into());
                }
                let running = c.state.as_ref().and_then(|s| s.running) == Some(true);
                if let (true, Some(cid)) = (running, c.id) {
                    self.hold_container(name, &wp.job, wp.shared);
                    return Ok(cid);
                }
                // Dead (e.g. `docker kill`ed): its runs died with it; a new one takes over.
                tracing::info!(container = %name, job = %wp.job, "warm container is not running; replacing it");
                self.drop_warm_container(name).await;
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(api_error("inspecting the warm container", e).into()),
        }
        let mut body = wp.body.clone();
        if wp.auto_uid {
            let uid = self.allocate_uid(name)?;
            body.user = Some(format!("{uid}:{uid}"));
        }
        let runs_dir = self.warm_dir(name);
        fs::create_dir_all(&runs_dir)?;
        fs::set_permissions(&runs_dir, fs::Permissions::from_mode(0o755))?;
        let mut binds = vec![format!("{}:{RUNS_MOUNT}", runs_dir.display())];
        let lxcfs_proc = self.config.lxcfs_dir.join("proc");
        if lxcfs_proc.is_dir() {
            for f in LXCFS_PROC_FILES {
                let p = lxcfs_proc.join(f);
                if p.exists() {
                    binds.push(format!("{}:/proc/{f}:ro", p.display()));
                }
            }
        }
        let shared_cpus = if wp.shared { self.shared_cpus() } else { None };
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
        let created = self
            .docker
            .create_container(Some(opts), body)
            .await
            .map_err(|e| api_error(&format!("creating warm container {name}"), e))?;
        // Counted before it starts: a failed start gives it back through the caller.
        self.hold_container(name, &wp.job, wp.shared);
        if let Err(e) = self.start_container(name, name).await {
            self.release_container_sync(name);
            return Err(e);
        }
        if wp.shared && self.shared_cpus() != shared_cpus {
            self.move_shared_container(name, name).await;
        }
        tracing::info!(container = %name, job = %wp.job, fingerprint = %wp.fingerprint, "warm container started");
        Ok(created.id)
    }

    /// Counts one more run on container `name`.
    fn hold_container(&self, name: &str, job: &str, shared: bool) {
        let mut map = self.warm.containers.lock();
        let c = map
            .entry(name.to_string())
            .or_insert_with(|| WarmContainer {
                job: job.to_string(),
                runs: 0,
                idle_since: Instant::now(),
                stale: false,
                shared,
            });
        c.runs += 1;
        c.stale = false;
    }

    /// Counts one run less on container `name`; whether it is now stale and unused.
    fn release_container_sync(&self, name: &str) -> bool {
        let mut map = self.warm.containers.lock();
        match map.get_mut(name) {
            Some(c) => {
                c.runs = c.runs.saturating_sub(1);
                c.idle_since = Instant::now();
                c.stale && c.runs == 0
            }
            None => false,
        }
    }

    /// [`Self::release_container_sync`], removing the container when that made it unused
    /// and stale.
    fn release_container(self: &Arc<Self>, name: &str) {
        if !self.release_container_sync(name) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inner = self.clone();
        let name = name.to_string();
        handle.spawn(async move { inner.remove_warm_if_unused(&name, Removal::Stale).await });
    }

    /// Removes warm container `name` if no run uses it and `why` still holds, under its
    /// job's lock (a run may be about to use it).
    async fn remove_warm_if_unused(&self, name: &str, why: Removal) {
        let Some(job) = self.warm.containers.lock().get(name).map(|c| c.job.clone()) else {
            return;
        };
        let lock = self.warm.job_lock(&job);
        let _job = lock.lock().await;
        let go = self.warm.containers.lock().get(name).is_some_and(|c| {
            c.runs == 0
                && match why {
                    Removal::Stale => c.stale,
                    Removal::Idle(d) => c.idle_since.elapsed() >= d,
                    Removal::Unused => true,
                }
        });
        if go {
            self.drop_warm_container(name).await;
        }
    }

    /// Removes warm container `name` and forgets it (the caller holds the job's lock).
    async fn drop_warm_container(&self, name: &str) {
        match self.remove_container(name).await {
            Ok(()) => {
                tracing::info!(container = %name, "removed warm container");
                self.warm.containers.lock().remove(name);
                self.release_uid(name);
                // Empty unless runs not yet forgotten keep their output there.
                let _ = fs::remove_dir(self.warm_dir(name));
            }
            Err(e) => tracing::warn!(container = %name, error = %e, "cannot remove warm container"),
        }
    }

    /// Creates and starts the run's exec in the container; reports it running.
    async fn exec_run(
        self: &Arc<Self>,
        spec: &TaskSpec,
        wp: &WarmPlan,
        container_id: &str,
    ) -> Result<(), LaunchError> {
        let id = &spec.task_id;
        let argv = if wp.entrypoint.is_none() {
            // The image's entrypoint (and command) apply, as in a per-run container.
            let image = self
                .docker
                .inspect_image(&wp.image)
                .await
                .map_err(|e| api_error(&format!("inspecting image {}", wp.image), e))?;
            let config = image.config.unwrap_or_default();
            run_argv(None, wp.cmd.clone(), config.entrypoint, config.cmd)
        } else {
            run_argv(wp.entrypoint.clone(), wp.cmd.clone(), None, None)
        }
        .map_err(DriverError::InvalidSpec)?;
        let run_dir = self.warm_dir(&wp.name).join(id);
        prepare_run_dir(&run_dir)?;
        let mut cmd: Vec<String> = vec![
            "/bin/sh".into(),
            "-c".into(),
            WRAPPER.into(),
            "berth-run".into(),
            format!("{RUNS_MOUNT}/{id}"),
        ];
        cmd.extend(argv);
        let undo = |inner: &Self| {
            let _ = fs::remove_file(inner.run_file(id));
            let _ = fs::remove_dir_all(&run_dir);
        };
        let exec = match self
            .docker
            .create_exec(
                container_id,
                ExecConfig {
                    cmd: Some(cmd),
                    env: Some(wp.env.clone()),
                    attach_stdin: Some(false),
                    attach_stdout: Some(false),
                    attach_stderr: Some(false),
                    ..Default::default()
                },
            )
            .await
        {
            Ok(x) => x,
            Err(e) => {
                undo(self);
                return Err(api_error(&format!("exec in warm container {}", wp.name), e).into());
            }
        };
        let mut run = WarmRun {
            job: wp.job.clone(),
            container: wp.name.clone(),
            container_id: container_id.to_string(),
            exec_id: exec.id,
            run_dir: run_dir.clone(),
            pid: None,
        };
        // Before it starts: an agent restarted from here on finds the run, never runs it twice.
        if let Err(e) = self.store_run(id, &run) {
            undo(self);
            return Err(e.into());
        }
        if self.kill_requested(id) {
            undo(self);
            return Err(LaunchError::Killed);
        }
        let opts = StartExecOptions {
            detach: true,
            ..Default::default()
        };
        if let Err(e) = self.docker.start_exec(&run.exec_id, Some(opts)).await {
            undo(self);
            return Err(api_error(&format!("starting the run in {}", wp.name), e).into());
        }
        run.pid = match self.docker.inspect_exec(&run.exec_id).await {
            Ok(x) => x.pid.and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 0),
            Err(_) => None,
        };
        if let Err(e) = self.store_run(id, &run) {
            tracing::warn!(task_id = %id, error = %e, "cannot record the warm run's pid");
        }
        if let Some(e) = self.tasks.lock().get_mut(id.as_str()) {
            e.pid = run.pid;
            e.warm = Some(run);
        }
        self.set_status(id, status(id, TaskState::Running, None, None), false);
        self.spawn_monitor(id);
        Ok(())
    }

    /// Where the run is: dockerd's exec record, else (forgotten: container removed, dockerd
    /// restarted) the exit code file, else whether its process still lives.
    async fn run_outcome(&self, run: &WarmRun) -> Result<Outcome, DriverError> {
        match self.docker.inspect_exec(&run.exec_id).await {
            Ok(x) if x.running == Some(true) => {
                let pid = x.pid.and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 0);
                Ok(Outcome::Running(pid.or(run.pid)))
            }
            Ok(x) => {
                let code = read_exit_code(&run.run_dir)
                    .or_else(|| x.exit_code.and_then(|c| i32::try_from(c).ok()));
                let started = x.pid.is_some_and(|p| p > 0);
                let message = match code {
                    Some(_) => None,
                    None if !started => {
                        Some("the agent stopped before the run was started".to_string())
                    }
                    None => Some("exit status unknown".to_string()),
                };
                Ok(Outcome::Ended { code, message })
            }
            Err(e) if is_not_found(&e) => {
                if let Some(code) = read_exit_code(&run.run_dir) {
                    return Ok(Outcome::Ended {
                        code: Some(code),
                        message: None,
                    });
                }
                if let Some(pid) = run.pid.filter(|p| pid_in_container(*p, &run.container_id)) {
                    return Ok(Outcome::Running(Some(pid)));
                }
                Ok(Outcome::Ended {
                    code: None,
                    message: Some(format!(
                        "warm container {} went away with the run; exit status unknown",
                        run.container
                    )),
                })
            }
            Err(e) => Err(api_error("inspecting the run's exec", e)),
        }
    }

    /// The terminal status of a run that ended with `code`.
    fn end_status(
        &self,
        id: &str,
        killed: bool,
        code: Option<i32>,
        message: Option<String>,
    ) -> TaskStatus {
        let describe = code.map_or_else(
            || "exit status unknown".to_string(),
            |c| format!("exited with code {c}"),
        );
        let (state, msg) = if killed {
            (TaskState::Killed, format!("killed: {describe}"))
        } else if code == Some(0) {
            (TaskState::Finished, describe)
        } else {
            (TaskState::Failed, message.unwrap_or(describe))
        };
        status(id, state, Some(msg), code)
    }

    /// Records and reports the end of a run (once), and gives its container back.
    fn finish_run(self: &Arc<Self>, id: &str, code: Option<i32>, message: Option<String>) {
        let marker = self.killed_marker(id);
        let (st, container) = {
            let mut tasks = self.tasks.lock();
            let Some(e) = tasks.get_mut(id) else { return };
            if e.status.state.is_terminal() {
                return;
            }
            let st = self.end_status(id, e.kill_requested || marker, code, message);
            e.status = st.clone();
            e.pid = None;
            e.launching = false;
            (st, e.warm.as_ref().map(|r| r.container.clone()))
        };
        self.emit(st);
        if let Some(c) = container {
            self.release_container(&c);
        }
    }

    fn spawn_monitor(self: &Arc<Self>, id: &str) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                task_id = id,
                "no tokio runtime: the warm run is not watched"
            );
            return;
        };
        handle.spawn(monitor_run(Arc::downgrade(self), id.to_string()));
    }

    /// Takes a persisted run over (recover, or a start retried after a restart): its
    /// current status; a live one is watched from now on.
    pub(super) async fn attach_run(
        self: &Arc<Self>,
        id: &str,
        run: WarmRun,
    ) -> Result<TaskStatus, DriverError> {
        let outcome = self.run_outcome(&run).await?;
        let killed = self.killed_marker(id);
        let (st, pid) = match outcome {
            Outcome::Running(pid) => (status(id, TaskState::Running, None, None), pid),
            Outcome::Ended { code, message } => (self.end_status(id, killed, code, message), None),
        };
        let running = !st.state.is_terminal();
        let container = run.container.clone();
        let job = run.job.clone();
        {
            let mut tasks = self.tasks.lock();
            let e = tasks.entry(id.to_string()).or_insert_with(|| Entry {
                status: st.clone(),
                pid: None,
                launching: false,
                kill_requested: killed,
                cpuset: Vec::new(),
                shared: false,
                warm: None,
            });
            e.status = st.clone();
            e.pid = pid;
            e.launching = false;
            e.kill_requested |= killed;
            e.warm = Some(run);
        }
        if running {
            let shared = self
                .warm
                .containers
                .lock()
                .get(&container)
                .is_none_or(|c| c.shared);
            self.hold_container(&container, &job, shared);
            self.spawn_monitor(id);
        }
        Ok(st)
    }

    /// `recover` for warm mode: the node's warm containers (their names join `seen`, as
    /// they hold UIDs), then every persisted run not known yet.
    pub(super) async fn recover_warm(
        self: &Arc<Self>,
        out: &mut Vec<TaskStatus>,
        seen: &mut Vec<String>,
    ) -> Result<(), DriverError> {
        let mut labels = vec![LABEL_WARM_JOB.to_string()];
        if let Some(node) = &self.config.node_id {
            labels.push(format!("{LABEL_NODE_ID}={node}"));
        }
        let opts = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("label".to_string(), labels)])),
            ..Default::default()
        };
        let list = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(|e| api_error("listing warm containers", e))?;
        for c in list {
            let Some(name) = c
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_string())
            else {
                continue;
            };
            let labels = c.labels.unwrap_or_default();
            let Some(job) = labels.get(LABEL_WARM_JOB).cloned() else {
                continue;
            };
            let shared = !labels.contains_key(LABEL_CPUSET);
            if shared {
                self.recovered_shared.store(true, Ordering::SeqCst);
            }
            seen.push(name.clone());
            self.warm
                .containers
                .lock()
                .entry(name)
                .or_insert_with(|| WarmContainer {
                    job,
                    runs: 0,
                    idle_since: Instant::now(),
                    stale: false,
                    shared,
                });
        }
        let Ok(dir) = fs::read_dir(self.config.tasks_dir()) else {
            return Ok(());
        };
        for entry in dir.flatten() {
            let Some(id) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if validate_task_id(&id).is_err() {
                continue;
            }
            if let Some(e) = self.tasks.lock().get(&id) {
                if e.warm.is_some() {
                    out.push(e.status.clone());
                }
                continue;
            }
            let Some(run) = self.load_run(&id) else {
                continue;
            };
            out.push(self.attach_run(&id, run).await?);
        }
        Ok(())
    }

    /// `kill` of a warm run: SIGTERM to its process group, SIGKILL after `grace`; returns
    /// once every process of the run is gone. The container stays.
    pub(super) async fn kill_run(
        self: &Arc<Self>,
        id: &str,
        run: &WarmRun,
        grace: Duration,
        started: Instant,
    ) -> Result<(), DriverError> {
        let pid = match self.run_outcome(run).await? {
            Outcome::Ended { code, message } => {
                self.finish_run(id, code, message);
                return Ok(());
            }
            Outcome::Running(pid) => pid.or(run.pid),
        };
        let Some(pid) = pid else {
            return Err(DriverError::Other(format!(
                "the warm run {id} has no known pid to signal"
            )));
        };
        signal_run(pid, libc::SIGTERM);
        let mut kill_sent = false;
        loop {
            // The exec ends with the wrapper; what it started may still be stopping.
            if !group_alive(pid) {
                match self.run_outcome(run).await {
                    Ok(Outcome::Ended { code, message }) => {
                        self.finish_run(id, code, message);
                        return Ok(());
                    }
                    Ok(Outcome::Running(_)) => {}
                    Err(e) => {
                        tracing::warn!(task_id = id, error = %e, "cannot inspect a warm run while killing it")
                    }
                }
            }
            let elapsed = started.elapsed();
            if elapsed >= grace && !kill_sent {
                signal_run(pid, libc::SIGKILL);
                kill_sent = true;
            }
            if elapsed >= grace + KILL_SETTLE {
                return Err(DriverError::Other(format!(
                    "warm run {id} still running {KILL_SETTLE:?} after SIGKILL"
                )));
            }
            tokio::time::sleep(Duration::from_millis(if kill_sent { 20 } else { 50 })).await;
        }
    }

    /// Removes every warm container no run uses (the agent is going away for good).
    pub(super) async fn remove_unused_warm(&self) {
        let names: Vec<String> = self.warm.containers.lock().keys().cloned().collect();
        for n in names {
            self.remove_warm_if_unused(&n, Removal::Unused).await;
        }
    }
}

/// Watches one run until it ends, polling its exec (no attach stream to lose when the
/// agent restarts). Ends when the driver is dropped.
async fn monitor_run(weak: Weak<Inner>, id: String) {
    let mut delay = Duration::from_millis(50);
    loop {
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
        let Some(inner) = weak.upgrade() else { return };
        let run = {
            let tasks = inner.tasks.lock();
            match tasks.get(&id) {
                Some(e) if !e.status.state.is_terminal() => e.warm.clone(),
                _ => return,
            }
        };
        let Some(run) = run else { return };
        match inner.run_outcome(&run).await {
            Ok(Outcome::Running(pid)) => {
                if let (Some(pid), Some(e)) = (pid, inner.tasks.lock().get_mut(&id)) {
                    e.pid = Some(pid);
                }
            }
            Ok(Outcome::Ended { code, message }) => {
                inner.finish_run(&id, code, message);
                return;
            }
            Err(e) => tracing::debug!(task_id = %id, error = %e, "cannot inspect a warm run"),
        }
    }
}

/// Removes warm containers idle for `idle`. Ends when the driver is dropped.
pub(super) async fn sweep_warm(weak: Weak<Inner>, mut stop: watch::Receiver<()>, idle: Duration) {
    let every = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
    loop {
        tokio::select! {
            r = stop.changed() => if r.is_err() { return },
            () = tokio::time::sleep(every) => {}
        }
        let Some(inner) = weak.upgrade() else { return };
        let idle_ones: Vec<String> = inner
            .warm
            .containers
            .lock()
            .iter()
            .filter(|(_, c)| c.runs == 0 && c.idle_since.elapsed() >= idle)
            .map(|(n, _)| n.clone())
            .collect();
        for n in idle_ones {
            inner.remove_warm_if_unused(&n, Removal::Idle(idle)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warm_spec(extra: serde_json::Value) -> TaskSpec {
        let mut app = serde_json::json!({
            "id": "/jobs/nightly", "cmd": "echo hi", "cpus": 0.5, "mem": 64,
            "labels": {"BERTH_JOB": "nightly report", "BERTH_RUN_MODE": "warm"},
            "container": {"type": "DOCKER", "docker": {"image": "busybox"}}
        });
        if let (Some(a), Some(e)) = (app.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                a.insert(k.clone(), v.clone());
            }
        }
        let app: AppDefinition = serde_json::from_value(app).unwrap();
        TaskSpec {
            task_id: "nightly.run1".into(),
            app_id: app.id.clone(),
            version: "v1".into(),
            resources: NodeResources::new(app.cpus, app.mem, app.disk),
            app,
            ports: vec![],
            host: "node1".into(),
            node_id: "n1".into(),
            cpuset: vec![],
            secret_env: Default::default(),
        }
    }

    fn plan_of(spec: &TaskSpec) -> WarmPlan {
        let cfg = DockerConfig::new("/tmp/x");
        let job = spec.app.warm_job().unwrap().to_string();
        warm_plan(spec, build_plan(spec, &cfg).unwrap(), &job).unwrap()
    }

    #[test]
    fn fingerprint_is_stable_across_runs_and_changes_with_the_container() {
        let a = plan_of(&warm_spec(serde_json::json!({})));
        // Another run of the job: other task id, version, command, env, ports in env.
        let mut run2 = warm_spec(serde_json::json!({"cmd": "exit 3", "env": {"X": "1"}}));
        run2.task_id = "nightly.run2".into();
        run2.version = "v2".into();
        run2.ports = vec![31000];
        let b = plan_of(&run2);
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(a.name, b.name);
        assert_eq!(a.fingerprint.len(), 16);
        // Hash maps inside the body do not make it vary from one computation to the next.
        for _ in 0..20 {
            assert_eq!(plan_of(&run2).fingerprint, a.fingerprint);
        }
        for other in [
            serde_json::json!({"mem": 128}),
            serde_json::json!({"cpus": 1}),
            serde_json::json!({"disk": 10}),
            serde_json::json!({"container": {"type": "DOCKER", "docker": {"image": "alpine"}}}),
            serde_json::json!({"container": {"type": "DOCKER", "docker": {"image": "busybox",
                "parameters": [{"key": "user", "value": "1000"}]}}}),
            serde_json::json!({"container": {"type": "DOCKER", "docker": {"image": "busybox"},
                "volumes": [{"containerPath": "/d", "hostPath": "/tmp", "mode": "RO"}]}}),
            serde_json::json!({"networks": [{"mode": "container/bridge"}]}),
        ] {
            let p = plan_of(&warm_spec(other.clone()));
            assert_ne!(p.fingerprint, a.fingerprint, "{other}");
            assert_ne!(p.name, a.name, "{other}");
        }
        let mut pinned = warm_spec(serde_json::json!({}));
        pinned.cpuset = vec![1];
        assert_ne!(plan_of(&pinned).fingerprint, a.fingerprint);
        // The container is the job's, not the run's.
        let labels = a.body.labels.as_ref().unwrap();
        assert!(!labels.contains_key(LABEL_TASK_ID));
        assert_eq!(labels[LABEL_WARM_JOB], "nightly report");
        assert_eq!(labels[LABEL_WARM_FINGERPRINT], a.fingerprint);
        assert_eq!(labels[LABEL_NODE_ID], "n1");
        assert_eq!(a.body.env, None);
        assert!(a.env.iter().any(|e| e == "MESOS_TASK_ID=nightly.run1"));
        assert_eq!(a.cmd, Some(vec!["echo hi".to_string()]));
        let hc = a.body.host_config.as_ref().unwrap();
        assert_eq!(hc.memory, Some(64 << 20));
        assert_eq!(hc.pids_limit, Some(4096));
    }

    #[test]
    fn names_are_valid_and_per_node_and_job() {
        let n = warm_container_name("n1", "nightly report/ü", "0123456789abcdef");
        assert!(n.starts_with("berth-warm-nightly-report---"), "{n}");
        assert!(
            n.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')),
            "{n}"
        );
        assert_eq!(
            n,
            warm_container_name("n1", "nightly report/ü", "0123456789abcdef")
        );
        assert_ne!(
            n,
            warm_container_name("n2", "nightly report/ü", "0123456789abcdef")
        );
        assert_ne!(
            n,
            warm_container_name("n1", "nightly report/u", "0123456789abcdef")
        );
        assert_ne!(
            n,
            warm_container_name("n1", "nightly report/ü", "fedcba9876543210")
        );
        let long = warm_container_name("n1", &"j".repeat(300), "0");
        assert!(long.len() <= "berth-warm-".len() + 64 + 9, "{long}");
        // Pinned by value: a new hash would orphan every warm container on upgrade.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn ports_cannot_be_published_in_warm_mode() {
        let s = warm_spec(
            serde_json::json!({"networks": [{"mode": "container/bridge"}],
            "container": {"type": "DOCKER", "docker": {"image": "busybox"},
              "portMappings": [{"containerPort": 80, "hostPort": 0}]}}),
        );
        let mut s = s;
        s.ports = vec![31000];
        let cfg = DockerConfig::new("/tmp/x");
        let e = warm_plan(&s, build_plan(&s, &cfg).unwrap(), "nightly")
            .err()
            .unwrap_or_default();
        assert!(e.contains("cannot publish ports"), "{e}");
    }

    #[test]
    fn run_command_follows_dockers_merge_with_the_image() {
        let v = |s: &[&str]| Some(s.iter().map(|x| x.to_string()).collect::<Vec<_>>());
        // cmd: the plan's /bin/sh -c.
        assert_eq!(
            run_argv(
                v(&["/bin/sh", "-c"]),
                v(&["echo hi"]),
                v(&["/ep"]),
                v(&["x"])
            )
            .unwrap(),
            v(&["/bin/sh", "-c", "echo hi"]).unwrap()
        );
        // args: after the image's entrypoint.
        assert_eq!(
            run_argv(None, v(&["a", "b"]), v(&["/ep"]), v(&["x"])).unwrap(),
            v(&["/ep", "a", "b"]).unwrap()
        );
        // Neither: the image's entrypoint and command.
        assert_eq!(
            run_argv(None, None, v(&["/ep"]), v(&["x"])).unwrap(),
            v(&["/ep", "x"]).unwrap()
        );
        // An entrypoint parameter without a command drops the image's command.
        assert_eq!(
            run_argv(v(&["/mine"]), None, None, v(&["x"])).unwrap(),
            v(&["/mine"]).unwrap()
        );
        assert!(run_argv(None, None, None, None).is_err());
    }

    #[test]
    fn exit_code_file() {
        let dir = tempfile::tempdir().unwrap();
        prepare_run_dir(dir.path()).unwrap();
        assert_eq!(read_exit_code(dir.path()), None);
        fs::write(dir.path().join(EXIT_CODE_FILE), "3\n").unwrap();
        assert_eq!(read_exit_code(dir.path()), Some(3));
        let mode = fs::metadata(dir.path().join("stdout"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o666);
    }
}
