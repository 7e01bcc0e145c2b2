//! Exec driver tests with real processes. The test binary doubles as the shim: the driver
//! re-executes it with `--exact shim_entry_point`, and `BERTH_SHIM_TASK_DIR` set.

use berth_agent::cgroup::CgroupManager;
use berth_agent::driver::exec::{ExecConfig, ExecDriver};
use berth_agent::driver::{Driver, TaskSpec, TaskStatus};
use berth_agent::shim::{self, PidRecord};
use berth_agent::stats::{self, HostPaths};
use berth_core::app::AppDefinition;
use berth_core::node::NodeResources;
use berth_core::task::TaskState;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

/// Not a test: the shim, when this binary is re-executed by the driver.
#[test]
fn shim_entry_point() {
    if let Some(dir) = std::env::var_os(shim::SHIM_DIR_ENV) {
        std::process::exit(shim::main(Path::new(&dir)));
    }
}

/// A temporary data dir that SIGKILLs the process groups of its tasks when dropped, so a
/// failing test leaves no `sleep 3600` behind.
struct DataDir(tempfile::TempDir);

impl DataDir {
    fn new() -> Self {
        Self(tempfile::tempdir().unwrap())
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let Ok(dirs) = fs::read_dir(self.path().join("tasks")) else {
            return;
        };
        for dir in dirs.flatten() {
            if let Ok(Some(rec)) = shim::read_json::<PidRecord>(&dir.path().join("pid"))
                && shim::proc_alive(rec.pid, rec.start_time)
            {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", "--", &format!("-{}", rec.pid)])
                    .status();
            }
        }
    }
}

fn config(data_dir: &Path) -> ExecConfig {
    let mut c = ExecConfig::new(data_dir, std::env::current_exe().unwrap());
    c.shim_args = [
        "--exact",
        "shim_entry_point",
        "--nocapture",
        "--test-threads=1",
    ]
    .map(String::from)
    .to_vec();
    c.cgroup_root = None;
    c.poll_interval = Duration::from_millis(50);
    c
}

fn driver(data_dir: &Path) -> (ExecDriver, Statuses) {
    driver_with(config(data_dir))
}

fn driver_with(config: ExecConfig) -> (ExecDriver, Statuses) {
    let (tx, rx) = unbounded_channel();
    (
        ExecDriver::new(config, tx),
        Statuses {
            rx,
            seen: Vec::new(),
        },
    )
}

fn spec(task_id: &str, cmd: &str) -> TaskSpec {
    let app = AppDefinition {
        id: "/test/app".into(),
        cmd: Some(cmd.into()),
        ..Default::default()
    };
    TaskSpec {
        task_id: task_id.into(),
        app_id: "/test/app".into(),
        version: "2024-01-01T00:00:00.000Z".into(),
        app,
        ports: vec![31000, 31001],
        host: "localhost".into(),
        node_id: "node-1".into(),
        resources: NodeResources::new(0.5, 64.0, 0.0),
        cpuset: vec![],
        secret_env: Default::default(),
    }
}

/// The statuses a driver sent, in order, kept across `wait_for` calls.
struct Statuses {
    rx: UnboundedReceiver<TaskStatus>,
    seen: Vec<TaskStatus>,
}

/// Waits until `task_id` reaches `want` (statuses of other tasks are kept for later calls);
/// panics on timeout or when the task reaches another terminal state.
async fn wait_for(st: &mut Statuses, task_id: &str, want: TaskState) -> TaskStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut checked = 0;
    loop {
        for s in &st.seen[checked..] {
            if s.task_id == task_id {
                if s.state == want {
                    return s.clone();
                }
                assert!(
                    !s.state.is_terminal(),
                    "{task_id}: wanted {want:?}, got {s:?}"
                );
            }
        }
        checked = st.seen.len();
        let left = deadline.saturating_duration_since(Instant::now());
        let s = tokio::time::timeout(left, st.rx.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {task_id} to reach {want:?}"))
            .expect("sink closed");
        st.seen.push(s);
    }
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Gone, or a zombie nobody has reaped yet (it cannot run any more either way).
fn process_gone(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            let rest = &stat[stat.rfind(')').unwrap() + 1..];
            matches!(rest.split_whitespace().next(), Some("Z" | "X"))
        }
    }
}

fn pid_record(data_dir: &Path, task_id: &str) -> PidRecord {
    shim::read_json(&data_dir.join("tasks").join(task_id).join("pid"))
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn runs_with_marathon_env_and_kill_takes_the_whole_group() {
    let tmp = DataDir::new();
    let (d, mut rx) = driver(tmp.path());
    let cmd = r#"echo hi; echo "PORT0=$PORT0 PORTS=$PORTS APP=$MARATHON_APP_ID TASK=$MESOS_TASK_ID HOME=$HOME PWD=$(pwd)"; sleep 3600 & echo $! > sleep.pid; wait"#;
    d.start(spec("t1", cmd)).await.unwrap();
    wait_for(&mut rx, "t1", TaskState::Starting).await;
    wait_for(&mut rx, "t1", TaskState::Running).await;

    let task_dir = tmp.path().join("tasks/t1");
    let (stdout, stderr) = d.task_log_paths("t1");
    assert_eq!(stdout, task_dir.join("stdout"));
    assert_eq!(stderr, task_dir.join("stderr"));
    wait_until("sleep.pid", || task_dir.join("sleep.pid").exists()).await;
    wait_until("stdout", || {
        fs::read_to_string(&stdout)
            .unwrap_or_default()
            .contains("PORT0")
    })
    .await;
    let out = fs::read_to_string(&stdout).unwrap();
    assert!(out.starts_with("hi\n"), "{out}");
    let dir = task_dir.display();
    assert!(
        out.contains(&format!(
            "PORT0=31000 PORTS=31000,31001 APP=/test/app TASK=t1 HOME={dir} PWD={dir}"
        )),
        "{out}"
    );
    let sleep_pid: i32 = fs::read_to_string(task_dir.join("sleep.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let task_pid = d.task_pid("t1").expect("pid known once running");
    assert!(!process_gone(sleep_pid) && !process_gone(task_pid));

    let listed = d.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, TaskState::Running);

    let started = Instant::now();
    d.kill("t1", Duration::from_secs(10)).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "SIGTERM should have been enough"
    );
    let s = wait_for(&mut rx, "t1", TaskState::Killed).await;
    assert!(s.message.unwrap().contains("killed"));
    assert!(process_gone(task_pid), "sh survived");
    assert!(process_gone(sleep_pid), "the sleep child of sh survived");
    // Killing again (or an unknown task) is fine.
    d.kill("t1", Duration::from_secs(1)).await.unwrap();
    d.kill("nope", Duration::from_secs(1)).await.unwrap();
    assert_eq!(d.list().await.unwrap()[0].state, TaskState::Killed);
}

#[tokio::test]
async fn kill_escalates_to_sigkill_after_grace() {
    let tmp = DataDir::new();
    let (d, mut rx) = driver(tmp.path());
    d.start(spec(
        "stubborn",
        "trap 'echo ignoring TERM' TERM; while true; do sleep 0.1; done",
    ))
    .await
    .unwrap();
    wait_for(&mut rx, "stubborn", TaskState::Running).await;
    let pid = d.task_pid("stubborn").unwrap();
    let started = Instant::now();
    d.kill("stubborn", Duration::from_millis(700))
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(8),
        "{took:?}"
    );
    let s = wait_for(&mut rx, "stubborn", TaskState::Killed).await;
    assert!(s.message.unwrap().contains("signal 9"));
    assert!(process_gone(pid));
    let out = fs::read_to_string(d.task_log_paths("stubborn").0).unwrap();
    assert!(out.contains("ignoring TERM"), "{out}");
}

#[tokio::test]
async fn exit_codes_and_signals() {
    let tmp = DataDir::new();
    let (d, mut rx) = driver(tmp.path());
    d.start(spec("fail3", "echo oops >&2; exit 3"))
        .await
        .unwrap();
    d.start(spec("ok", "true")).await.unwrap();
    d.start(spec("sig", "kill -9 $$")).await.unwrap();
    let s = wait_for(&mut rx, "fail3", TaskState::Failed).await;
    assert_eq!(s.exit_code, Some(3));
    assert_eq!(s.message.as_deref(), Some("exited with code 3"));
    assert_eq!(
        fs::read_to_string(d.task_log_paths("fail3").1).unwrap(),
        "oops\n"
    );
    let exit: serde_json::Value =
        serde_json::from_slice(&fs::read(tmp.path().join("tasks/fail3/exit.json")).unwrap())
            .unwrap();
    assert_eq!(
        exit,
        serde_json::json!({"code": 3, "signal": null, "oom": false})
    );

    let s = wait_for(&mut rx, "ok", TaskState::Finished).await;
    assert_eq!(s.exit_code, Some(0));
    let s = wait_for(&mut rx, "sig", TaskState::Failed).await;
    assert_eq!(s.exit_code, None);
    assert_eq!(s.message.as_deref(), Some("killed by signal 9 (SIGKILL)"));
}

#[tokio::test]
async fn args_run_without_a_shell() {
    let tmp = DataDir::new();
    let (d, mut rx) = driver(tmp.path());
    let mut s = spec("args", "");
    s.app.cmd = None;
    s.app.args = Some(vec!["echo".into(), "$HOME".into(), "two words".into()]);
    s.app.env.insert("PATH".into(), "/bin:/usr/bin".into());
    d.start(s).await.unwrap();
    wait_for(&mut rx, "args", TaskState::Finished).await;
    assert_eq!(
        fs::read_to_string(d.task_log_paths("args").0).unwrap(),
        "$HOME two words\n"
    );

    let mut s = spec("missing", "");
    s.app.cmd = None;
    s.app.args = Some(vec!["/no/such/program".into()]);
    d.start(s).await.unwrap();
    let st = wait_for(&mut rx, "missing", TaskState::Failed).await;
    assert!(st.message.unwrap().starts_with("failed to launch"));

    let mut s = spec("neither", "");
    s.app.cmd = None;
    assert!(d.start(s).await.is_err());
    assert!(d.start(spec("../escape", "true")).await.is_err());
}

#[tokio::test]
async fn start_is_idempotent() {
    let tmp = DataDir::new();
    let (d, mut rx) = driver(tmp.path());
    d.start(spec("once", "echo started; exec sleep 3600"))
        .await
        .unwrap();
    d.start(spec("once", "echo started; exec sleep 3600"))
        .await
        .unwrap();
    wait_for(&mut rx, "once", TaskState::Running).await;
    d.start(spec("once", "echo started; exec sleep 3600"))
        .await
        .unwrap();
    let stdout = d.task_log_paths("once").0;
    wait_until("stdout", || {
        fs::read_to_string(&stdout)
            .unwrap_or_default()
            .contains("started")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fs::read_to_string(&stdout).unwrap(), "started\n");
    d.kill("once", Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn tasks_survive_agent_restart_and_are_recovered() {
    let tmp = DataDir::new();
    let (a, mut rx_a) = driver(tmp.path());
    a.start(spec("long", "echo started; exec sleep 3600"))
        .await
        .unwrap();
    a.start(spec("short", "sleep 1; exit 7")).await.unwrap();
    a.start(spec("done", "exit 0")).await.unwrap();
    wait_for(&mut rx_a, "long", TaskState::Running).await;
    wait_for(&mut rx_a, "short", TaskState::Running).await;
    wait_for(&mut rx_a, "done", TaskState::Finished).await;
    a.forget("done");
    let before = pid_record(tmp.path(), "long");
    // The agent dies: no kill, no cleanup.
    drop(a);
    drop(rx_a);
    // "short" exits while no driver is alive.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(tmp.path().join("tasks/short/exit.json").exists());

    let (b, mut rx_b) = driver(tmp.path());
    let recovered = b.recover().await.unwrap();
    assert_eq!(recovered.len(), 2, "{recovered:?}");
    let long = recovered.iter().find(|s| s.task_id == "long").unwrap();
    assert_eq!(long.state, TaskState::Running);
    let short = recovered.iter().find(|s| s.task_id == "short").unwrap();
    assert_eq!(short.state, TaskState::Failed);
    assert_eq!(short.exit_code, Some(7));
    assert_eq!(short.message.as_deref(), Some("exited with code 7"));

    // Same process, never restarted.
    let after = pid_record(tmp.path(), "long");
    assert_eq!(before, after);
    assert!(shim::proc_alive(after.pid, after.start_time));
    assert_eq!(b.task_pid("long"), Some(before.pid));
    assert_eq!(
        fs::read_to_string(b.task_log_paths("long").0).unwrap(),
        "started\n"
    );
    assert_eq!(b.list().await.unwrap().len(), 2);

    // The re-attached task is watched and killable as before.
    b.kill("long", Duration::from_secs(5)).await.unwrap();
    wait_for(&mut rx_b, "long", TaskState::Killed).await;
    assert!(process_gone(before.pid));
    b.forget("long");
    b.forget("short");
    assert!(b.list().await.unwrap().is_empty());
    // Forgotten tasks keep their logs but are not recovered again.
    assert!(b.task_log_paths("long").0.exists());
    let (c, _rx_c) = driver(tmp.path());
    assert!(c.recover().await.unwrap().is_empty());
}

#[tokio::test]
async fn recovered_task_that_exits_later_is_reported() {
    let tmp = DataDir::new();
    let (a, mut rx_a) = driver(tmp.path());
    a.start(spec("later", "sleep 1.5; exit 4")).await.unwrap();
    wait_for(&mut rx_a, "later", TaskState::Running).await;
    drop(a);
    let (b, mut rx_b) = driver(tmp.path());
    let recovered = b.recover().await.unwrap();
    assert_eq!(recovered[0].state, TaskState::Running);
    let s = wait_for(&mut rx_b, "later", TaskState::Failed).await;
    assert_eq!(s.exit_code, Some(4));
}

#[tokio::test]
async fn task_without_shim_or_process_is_lost() {
    let tmp = DataDir::new();
    let (a, mut rx_a) = driver(tmp.path());
    a.start(spec("victim", "exec sleep 3600")).await.unwrap();
    wait_for(&mut rx_a, "victim", TaskState::Running).await;
    drop(a);
    let rec = pid_record(tmp.path(), "victim");
    // Someone SIGKILLs the shim and the task while the agent is down.
    for pid in [rec.shim_pid, rec.pid] {
        let st = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }
    wait_until("processes gone", || {
        process_gone(rec.pid) && process_gone(rec.shim_pid)
    })
    .await;
    let (b, _rx_b) = driver(tmp.path());
    let recovered = b.recover().await.unwrap();
    assert_eq!(recovered[0].state, TaskState::Failed);
    assert!(
        recovered[0].message.as_deref().unwrap().starts_with("lost"),
        "{recovered:?}"
    );
}

/// A writable cgroup v2 hierarchy, if this host has one: `/sys/fs/cgroup` itself, or a
/// cgroup2 mount listed in /proc/mounts (e.g. the hybrid `/sys/fs/cgroup/unified`).
fn cgroup2_root() -> Option<(PathBuf, CgroupManager)> {
    let mut candidates = vec![PathBuf::from("/sys/fs/cgroup")];
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 2 && f[2] == "cgroup2" {
            candidates.push(PathBuf::from(f[1]));
        }
    }
    candidates.into_iter().find_map(|root| {
        CgroupManager::detect(&root)
            .ok()
            .filter(|m| !m.is_v1())
            .map(|m| (root, m))
    })
}

#[tokio::test]
async fn tasks_run_in_their_own_cgroup() {
    let Some((root, _)) = cgroup2_root() else {
        eprintln!("SKIPPED tasks_run_in_their_own_cgroup: no writable cgroup v2 hierarchy here");
        return;
    };
    let tmp = DataDir::new();
    let mut c = config(tmp.path());
    c.cgroup_root = Some(root.clone());
    let (d, mut rx) = driver_with(c);
    assert!(d.cgroups_available());
    let id = format!("cg-{}", std::process::id());
    d.start(spec(&id, "cat /proc/self/cgroup; exec sleep 3600"))
        .await
        .unwrap();
    wait_for(&mut rx, &id, TaskState::Running).await;
    let pid = d.task_pid(&id).unwrap();
    let cg = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        cg.lines()
            .any(|l| l.starts_with("0::") && l.ends_with(&format!("/berth/{id}"))),
        "{cg}"
    );
    let procs = fs::read_to_string(root.join("berth").join(&id).join("cgroup.procs")).unwrap();
    assert_eq!(
        procs.trim(),
        pid.to_string(),
        "only the task is in its cgroup, not the shim"
    );
    d.kill(&id, Duration::from_secs(5)).await.unwrap();
    wait_for(&mut rx, &id, TaskState::Killed).await;
    wait_until("cgroup removed", || !root.join("berth").join(&id).exists()).await;
}

#[tokio::test]
async fn memory_limit_oom_kills_the_task() {
    let Some((root, m)) = cgroup2_root().filter(|(_, m)| m.has_controller("memory")) else {
        eprintln!(
            "SKIPPED memory_limit_oom_kills_the_task: no writable cgroup v2 hierarchy with the memory controller here"
        );
        return;
    };
    assert!(m.has_controller("memory"));
    let tmp = DataDir::new();
    let mut c = config(tmp.path());
    c.cgroup_root = Some(root);
    let (d, mut rx) = driver_with(c);
    let id = format!("oom-{}", std::process::id());
    let mut s = spec(&id, "head -c 200m /dev/zero | tail");
    s.resources.mem = 32.0;
    d.start(s).await.unwrap();
    let st = wait_for(&mut rx, &id, TaskState::Failed).await;
    assert_eq!(
        st.message.as_deref(),
        Some("OOM killed: memory limit exceeded"),
        "{st:?}"
    );
}

// ---- Resource limits on the host's real cgroups (v1 or v2, whichever /sys/fs/cgroup is) ----

/// The host's cgroups with the given controllers, or `None` (the test prints why and skips).
/// With `BERTH_REQUIRE_DOCKER=1` (CI: root with cgroups) a missing controller fails the test.
fn host_cgroups(test: &str, controllers: &[&str]) -> Option<CgroupManager> {
    let root = Path::new("/sys/fs/cgroup");
    let why = match CgroupManager::detect(root) {
        Err(e) => format!("no usable cgroup hierarchy: {e}"),
        Ok(m) => {
            let missing: Vec<&str> = controllers
                .iter()
                .copied()
                .filter(|c| !m.has_controller(c))
                .collect();
            if missing.is_empty() {
                return Some(m);
            }
            format!(
                "cgroup controller(s) {missing:?} not mounted/usable (have {:?})",
                m.controllers()
            )
        }
    };
    if std::env::var("BERTH_REQUIRE_DOCKER").as_deref() == Ok("1") {
        panic!("{test}: {why} (BERTH_REQUIRE_DOCKER=1: cgroups are required)");
    }
    eprintln!("SKIPPED {test}: {why}");
    None
}

fn limits_driver(tmp: &DataDir) -> (ExecDriver, Statuses) {
    let mut c = config(tmp.path());
    c.cgroup_root = Some(PathBuf::from("/sys/fs/cgroup"));
    c.pids_max = Some(4096);
    driver_with(c)
}

fn read_trim(path: &Path) -> String {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

fn cg_file(m: &CgroupManager, id: &str, controller: &str, file: &str) -> PathBuf {
    m.task_path(id, controller)
        .unwrap_or_else(|| panic!("no {controller} hierarchy"))
        .join(file)
}

fn label(s: &mut TaskSpec, k: &str, v: &str) {
    s.app.labels.insert(k.into(), v.into());
}

async fn cgroups_gone(m: &CgroupManager, id: &str) {
    let dirs = m.task_paths(id);
    wait_until(&format!("cgroups of {id} removed: {dirs:?}"), || {
        dirs.iter().all(|d| !d.exists())
    })
    .await;
}

#[tokio::test]
async fn task_cgroups_carry_the_limits_and_are_removed_at_the_end() {
    let test = "task_cgroups_carry_the_limits_and_are_removed_at_the_end";
    let Some(m) = host_cgroups(test, &["memory", "cpu", "pids", "cpuset"]) else {
        return;
    };
    let tmp = DataDir::new();
    let (d, mut rx) = limits_driver(&tmp);
    assert!(d.cgroups_available());
    let id = format!("lim-{}", std::process::id());
    let mut s = spec(&id, "exec sleep 3600");
    s.resources.cpus = 0.5;
    s.resources.mem = 64.0;
    label(&mut s, "BERTH_CPU_QUOTA", "true");
    d.start(s).await.unwrap();
    wait_for(&mut rx, &id, TaskState::Running).await;
    let pid = d.task_pid(&id).unwrap();
    let mib64 = (64u64 << 20).to_string();
    if m.is_v1() {
        // The task is in berth/<id> of every hierarchy, from its first instruction on.
        let own = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        for c in ["memory", "cpu", "cpuacct", "pids", "cpuset"] {
            assert!(
                own.lines().any(|l| {
                    let f: Vec<&str> = l.splitn(3, ':').collect();
                    f.len() == 3
                        && f[1].split(',').any(|x| x == c)
                        && f[2] == format!("/berth/{id}")
                }),
                "{c} not /berth/{id}: {own}"
            );
        }
        assert_eq!(
            read_trim(&cg_file(&m, &id, "memory", "memory.limit_in_bytes")),
            mib64
        );
        let memsw = cg_file(&m, &id, "memory", "memory.memsw.limit_in_bytes");
        if memsw.exists() {
            assert_eq!(read_trim(&memsw), mib64, "no swap beyond the limit");
        }
        assert_eq!(read_trim(&cg_file(&m, &id, "cpu", "cpu.shares")), "512");
        assert_eq!(
            read_trim(&cg_file(&m, &id, "cpu", "cpu.cfs_quota_us")),
            "50000"
        );
        assert_eq!(
            read_trim(&cg_file(&m, &id, "cpu", "cpu.cfs_period_us")),
            "100000"
        );
        let cpuset_dir = m.task_path(&id, "cpuset").unwrap();
        assert_eq!(
            read_trim(&cpuset_dir.join("cpuset.mems")),
            read_trim(&cpuset_dir.parent().unwrap().join("cpuset.mems")),
            "cpuset.mems copied from the parent"
        );
        // Metrics read the task's own v1 cgroups.
        let st = stats::task_stats(&HostPaths::default(), pid).unwrap();
        assert_eq!(st.source, Some(stats::Source::CgroupV1), "{st:?}");
        assert_eq!(st.memory_limit_bytes, Some(64 << 20), "{st:?}");
        assert!(st.cpu_seconds.is_some() && st.memory_usage_bytes.is_some());
    } else {
        assert_eq!(read_trim(&cg_file(&m, &id, "memory", "memory.max")), mib64);
        assert_eq!(
            read_trim(&cg_file(&m, &id, "cpu", "cpu.max")),
            "50000 100000"
        );
    }
    assert_eq!(read_trim(&cg_file(&m, &id, "pids", "pids.max")), "4096");

    // Without the quota label: shares only; BERTH_PIDS_LIMIT overrides the agent default.
    let id2 = format!("lim2-{}", std::process::id());
    let mut s2 = spec(&id2, "exec sleep 3600");
    s2.resources.cpus = 2.0;
    label(&mut s2, "BERTH_PIDS_LIMIT", "unlimited");
    d.start(s2).await.unwrap();
    wait_for(&mut rx, &id2, TaskState::Running).await;
    assert_eq!(read_trim(&cg_file(&m, &id2, "pids", "pids.max")), "max");
    if m.is_v1() {
        assert_eq!(read_trim(&cg_file(&m, &id2, "cpu", "cpu.shares")), "2048");
        assert_eq!(
            read_trim(&cg_file(&m, &id2, "cpu", "cpu.cfs_quota_us")),
            "-1"
        );
    } else {
        assert!(read_trim(&cg_file(&m, &id2, "cpu", "cpu.max")).starts_with("max"));
    }
    // A bad label fails the start, as with the Docker driver.
    let mut bad = spec(&format!("lim3-{}", std::process::id()), "true");
    label(&mut bad, "BERTH_PIDS_LIMIT", "lots");
    assert!(d.start(bad).await.is_err());

    for id in [&id, &id2] {
        d.kill(id, Duration::from_secs(5)).await.unwrap();
        wait_for(&mut rx, id, TaskState::Killed).await;
        cgroups_gone(&m, id).await;
    }
}

#[tokio::test]
async fn memory_hog_is_oom_killed_and_reported_failed() {
    let test = "memory_hog_is_oom_killed_and_reported_failed";
    let Some(m) = host_cgroups(test, &["memory"]) else {
        return;
    };
    let tmp = DataDir::new();
    let (d, mut rx) = limits_driver(&tmp);
    let id = format!("hog-{}", std::process::id());
    // ~100 MB held in a shell variable, with mem=32.
    let mut s = spec(
        &id,
        r#"x=$(head -c 100000000 /dev/zero | tr "\0" a); echo survived; sleep 100"#,
    );
    s.resources.mem = 32.0;
    d.start(s).await.unwrap();
    let st = wait_for(&mut rx, &id, TaskState::Failed).await;
    assert_eq!(
        st.message.as_deref(),
        Some("OOM killed: memory limit exceeded"),
        "{st:?}"
    );
    let out = fs::read_to_string(d.task_log_paths(&id).0).unwrap_or_default();
    assert!(
        !out.contains("survived"),
        "the task went on after the OOM kill"
    );
    cgroups_gone(&m, &id).await;
}

#[tokio::test]
async fn fork_bomb_is_held_by_pids_max() {
    let test = "fork_bomb_is_held_by_pids_max";
    let Some(m) = host_cgroups(test, &["pids"]) else {
        return;
    };
    let tmp = DataDir::new();
    let (d, mut rx) = limits_driver(&tmp);
    let id = format!("bomb-{}", std::process::id());
    // The bomb waits for `go` (in its sandbox dir), so the test checks the limit is in place
    // before anything forks.
    let mut s = spec(
        &id,
        "while [ ! -e go ]; do sleep 0.05; done; b() { b | b & }; b; sleep 3600",
    );
    label(&mut s, "BERTH_PIDS_LIMIT", "64");
    s.resources.mem = 256.0;
    d.start(s).await.unwrap();
    wait_for(&mut rx, &id, TaskState::Running).await;
    let pids_dir = m.task_path(&id, "pids").unwrap();
    assert_eq!(read_trim(&pids_dir.join("pids.max")), "64");
    let pid = d.task_pid(&id).unwrap();
    let own = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(own.contains(&format!("/berth/{id}")), "{own}");
    fs::write(d.task_dir(&id).join("go"), b"").unwrap();

    // The bomb hits the limit (failed forks are counted) and never exceeds it.
    let events = pids_dir.join("pids.events");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut max_seen = 0u64;
    loop {
        let current: u64 = read_trim(&pids_dir.join("pids.current")).parse().unwrap();
        max_seen = max_seen.max(current);
        assert!(current <= 64, "pids.current {current} > pids.max 64");
        let hits = berth_agent::cgroup::parse_events(&read_trim(&events), "max");
        if hits > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the bomb never reached pids.max");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The host is fine: this process can still start programs.
    let ok = std::process::Command::new("true").status().unwrap();
    assert!(ok.success());
    // The kernel's own high-water mark (Linux 6.1+), which sampling could miss.
    let peak = pids_dir.join("pids.peak");
    let peak = peak
        .exists()
        .then(|| read_trim(&peak).parse::<u64>().unwrap());
    if let Some(peak) = peak {
        assert!(peak <= 64, "pids.peak {peak} > pids.max 64");
    }
    eprintln!("{test}: pids.current seen up to {max_seen}, pids.peak {peak:?} (pids.max 64)");

    d.kill(&id, Duration::from_secs(1)).await.unwrap();
    wait_for(&mut rx, &id, TaskState::Killed).await;
    cgroups_gone(&m, &id).await;
    assert!(process_gone(pid));
}

fn cpus_allowed(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_string()
}

#[tokio::test]
async fn pinned_task_runs_on_its_cores_and_shared_tasks_on_the_others() {
    let test = "pinned_task_runs_on_its_cores_and_shared_tasks_on_the_others";
    let Some(m) = host_cgroups(test, &["cpuset"]) else {
        return;
    };
    let Some(all) = m.available_cpus() else {
        panic!("{test}: cpuset controller without cpuset.cpus");
    };
    let all_list = cpus_allowed(std::process::id() as i32);
    let last = *all.last().unwrap();
    let tmp = DataDir::new();
    let (d, mut rx) = limits_driver(&tmp);
    let pinned = format!("pin-{}", std::process::id());
    let mut s = spec(
        &pinned,
        "grep Cpus_allowed_list /proc/self/status; exec sleep 3600",
    );
    s.cpuset = vec![last];
    d.start(s).await.unwrap();
    wait_for(&mut rx, &pinned, TaskState::Running).await;
    let (stdout, _) = d.task_log_paths(&pinned);
    wait_until("pinned task output", || {
        fs::read_to_string(&stdout).is_ok_and(|o| o.ends_with('\n'))
    })
    .await;
    // What the app itself sees, from its first instruction on.
    assert_eq!(
        fs::read_to_string(&stdout).unwrap().trim(),
        format!("Cpus_allowed_list:\t{last}")
    );
    assert_eq!(cpus_allowed(d.task_pid(&pinned).unwrap()), last.to_string());

    // A shared task started now stays off the pinned core (when there is another one).
    let shared = format!("shared-{}", std::process::id());
    d.start(spec(&shared, "exec sleep 3600")).await.unwrap();
    wait_for(&mut rx, &shared, TaskState::Running).await;
    let shared_pid = d.task_pid(&shared).unwrap();
    let rest: Vec<u32> = all.iter().copied().filter(|c| *c != last).collect();
    if rest.is_empty() {
        eprintln!("{test}: one core only; shared tasks keep it");
    } else {
        let allowed = cpus_allowed(shared_pid);
        let allowed = berth_agent::cgroup::parse_cpu_list(&allowed).unwrap();
        assert_eq!(
            allowed, rest,
            "shared task must not run on pinned core {last}"
        );
    }
    // Once the pinned task is gone its core is shared again.
    d.kill(&pinned, Duration::from_secs(5)).await.unwrap();
    wait_for(&mut rx, &pinned, TaskState::Killed).await;
    wait_until("shared task back on every core", || {
        cpus_allowed(shared_pid) == all_list
    })
    .await;
    // The agent may also announce cores pinned by other drivers' tasks.
    if !rest.is_empty() {
        d.set_pinned_cores(&[rest[0]]);
        let allowed = berth_agent::cgroup::parse_cpu_list(&cpus_allowed(shared_pid)).unwrap();
        assert!(!allowed.contains(&rest[0]), "{allowed:?}");
        d.set_pinned_cores(&[]);
    }
    d.kill(&shared, Duration::from_secs(5)).await.unwrap();
    wait_for(&mut rx, &shared, TaskState::Killed).await;
    cgroups_gone(&m, &pinned).await;
    cgroups_gone(&m, &shared).await;
}

#[tokio::test]
async fn limited_task_survives_agent_restart_and_its_cgroups_go_with_it() {
    let test = "limited_task_survives_agent_restart_and_its_cgroups_go_with_it";
    let Some(m) = host_cgroups(test, &["memory", "pids"]) else {
        return;
    };
    let tmp = DataDir::new();
    let (a, mut rx_a) = limits_driver(&tmp);
    let long = format!("rlong-{}", std::process::id());
    let short = format!("rshort-{}", std::process::id());
    a.start(spec(&long, "exec sleep 3600")).await.unwrap();
    a.start(spec(&short, "sleep 1; exit 3")).await.unwrap();
    wait_for(&mut rx_a, &long, TaskState::Running).await;
    wait_for(&mut rx_a, &short, TaskState::Running).await;
    let pid = a.task_pid(&long).unwrap();
    // The agent dies; the shim of `short` removes its cgroups on its own when it exits.
    drop(a);
    drop(rx_a);
    cgroups_gone(&m, &short).await;
    assert!(m.task_paths(&long).iter().all(|d| d.exists()));

    let (b, mut rx_b) = limits_driver(&tmp);
    let recovered = b.recover().await.unwrap();
    let st = |id: &str| recovered.iter().find(|s| s.task_id == id).cloned().unwrap();
    assert_eq!(st(&long).state, TaskState::Running);
    assert_eq!(st(&short).exit_code, Some(3));
    assert_eq!(b.task_pid(&long), Some(pid));
    let procs = berth_agent::cgroup::procs(&m.task_path(&long, "memory").unwrap());
    assert_eq!(procs, vec![pid], "still in its memory cgroup, alone");
    b.kill(&long, Duration::from_secs(5)).await.unwrap();
    wait_for(&mut rx_b, &long, TaskState::Killed).await;
    cgroups_gone(&m, &long).await;
}

/// A chatty task's stdout is rotated by its shim (seed 001: logs filled the disk): the
/// app's labels ask for 64 KiB and 2 files; the task writes about 100 KiB a second.
#[tokio::test]
async fn task_logs_are_rotated() {
    let tmp = DataDir::new();
    let (d, mut rx) = driver(tmp.path());
    let mut s = spec(
        "chatty",
        "while true; do head -c 10000 /dev/zero | tr '\\0' x; echo; sleep 0.1; done",
    );
    label(&mut s, "BERTH_LOG_MAX_SIZE", "64k");
    label(&mut s, "BERTH_LOG_MAX_FILES", "2");
    d.start(s).await.unwrap();
    wait_for(&mut rx, "chatty", TaskState::Running).await;
    let dir = tmp.path().join("tasks/chatty");
    let size = |name: &str| fs::metadata(dir.join(name)).map(|m| m.len()).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while size("stdout.1") == 0 {
        assert!(
            Instant::now() < deadline,
            "no rotation: stdout is {} bytes",
            size("stdout")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Several more seconds of output (far over the limit in total): the files stay bounded.
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The limit plus what ~1.5 s of output adds between two looks of the shim.
        assert!(
            size("stdout") < 64 * 1024 + 160_000,
            "stdout: {}",
            size("stdout")
        );
        assert!(
            !dir.join("stdout.2").exists(),
            "2 files: stdout and stdout.1"
        );
    }
    assert!(
        size("stdout.1") > 64 * 1024,
        "stdout.1: {}",
        size("stdout.1")
    );
    let line = fs::read_to_string(dir.join("stdout.1")).unwrap();
    assert!(
        line.lines()
            .all(|l| l.is_empty() || l.bytes().all(|b| b == b'x'))
    );
    d.kill("chatty", Duration::from_secs(1)).await.unwrap();
    wait_for(&mut rx, "chatty", TaskState::Killed).await;
}

/// Marathon's `user`: the task runs as that user of the node (with its groups) and owns its
/// sandbox; a user the node does not know fails the task, saying so. Needs root.
#[tokio::test]
async fn tasks_run_as_the_apps_user() {
    if !running_as_root() {
        eprintln!("SKIPPED tasks_run_as_the_apps_user: not root (cannot switch users)");
        return;
    }
    let tmp = DataDir::new();
    // The task's user must be able to reach its sandbox under the (0700) temporary dir.
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o711)).unwrap();
    let (d, mut rx) = driver(tmp.path());
    let mut s = spec(
        "as-nobody",
        "echo \"$(id -u) $(id -g)\" > ids; echo out; touch mine; touch ../escape; \
         exec sleep 3600",
    );
    s.app.user = Some("nobody".into());
    d.start(s.clone()).await.unwrap();
    wait_for(&mut rx, "as-nobody", TaskState::Running).await;
    // It works in `sandbox/`, its own; the task directory (the shim's files, the logs that
    // root rotates) stays root's, so the task cannot swap them for links.
    let task_dir = tmp.path().join("tasks/as-nobody");
    let dir = task_dir.join("sandbox");
    wait_until("the task to write its ids", || {
        fs::read_to_string(dir.join("ids")).is_ok_and(|s| s.ends_with('\n'))
    })
    .await;
    let nobody = std::process::Command::new("id")
        .args(["-u", "nobody"])
        .output()
        .unwrap();
    let uid: u32 = String::from_utf8_lossy(&nobody.stdout)
        .trim()
        .parse()
        .unwrap();
    let ids = fs::read_to_string(dir.join("ids")).unwrap();
    assert_eq!(
        ids.split_whitespace().next(),
        Some(uid.to_string().as_str()),
        "{ids}"
    );
    assert_eq!(fs::metadata(dir.join("mine")).unwrap().uid(), uid);
    assert_eq!(fs::metadata(&dir).unwrap().uid(), uid);
    assert_eq!(fs::metadata(&task_dir).unwrap().uid(), 0);
    assert_eq!(fs::metadata(task_dir.join("stdout")).unwrap().uid(), 0);
    assert_eq!(
        fs::read_to_string(task_dir.join("stdout")).unwrap(),
        "out\n"
    );
    assert!(
        !task_dir.join("escape").exists(),
        "wrote into the task directory"
    );
    let pid = pid_record(tmp.path(), "as-nobody").pid;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uids.split_whitespace()
            .skip(1)
            .all(|u| u == uid.to_string()),
        "real, effective, saved and fs uid: {uids}"
    );
    // COMMAND health checks run as the task's user too, in its directory.
    let check = format!("test \"$(id -u)\" = {uid} && test -f mine");
    assert_eq!(
        d.check_command(&s, &check, Duration::from_secs(10)).await,
        Ok(())
    );
    assert!(
        d.check_command(&s, "test \"$(id -u)\" = 0", Duration::from_secs(10))
            .await
            .is_err()
    );
    d.kill("as-nobody", Duration::from_secs(1)).await.unwrap();
    wait_for(&mut rx, "as-nobody", TaskState::Killed).await;

    // The agent's own user: nothing to switch.
    let mut s = spec("as-root", "id -u > ids");
    s.app.user = Some("root".into());
    d.start(s).await.unwrap();
    wait_for(&mut rx, "as-root", TaskState::Finished).await;
    let ids = fs::read_to_string(tmp.path().join("tasks/as-root/ids")).unwrap();
    assert_eq!(ids.trim(), "0");

    let mut s = spec("as-ghost", "sleep 1");
    s.app.user = Some("no-such-user-berth".into());
    let err = d.start(s).await.unwrap_err().to_string();
    assert!(
        err.contains("user \"no-such-user-berth\" does not exist on this node"),
        "{err}"
    );
}

fn running_as_root() -> bool {
    fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    })
}

/// The driver's watcher removes a forgotten task's directory once the delay has passed.
#[tokio::test]
async fn forgotten_task_directories_are_swept() {
    let tmp = DataDir::new();
    let mut cfg = config(tmp.path());
    cfg.sandbox_gc_delay = Duration::from_millis(200);
    cfg.sandbox_sweep_interval = Duration::from_millis(100);
    let (d, mut rx) = driver_with(cfg);
    d.start(spec("done", "echo bye")).await.unwrap();
    wait_for(&mut rx, "done", TaskState::Finished).await;
    let dir = tmp.path().join("tasks/done");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(dir.join("stdout").exists(), "not forgotten yet: kept");
    d.forget("done");
    wait_until("the forgotten task's directory to go", || !dir.exists()).await;
}

/// Finished tasks' directories go once they have been forgotten for the configured delay;
/// live ones and recently forgotten ones stay.
#[test]
fn old_sandboxes_are_removed() {
    use berth_agent::driver::exec::remove_old_sandboxes;
    let tmp = tempfile::tempdir().unwrap();
    let tasks = tmp.path();
    for id in ["running", "forgotten"] {
        fs::create_dir_all(tasks.join(id)).unwrap();
        fs::write(tasks.join(id).join("stdout"), "log\n").unwrap();
    }
    fs::write(tasks.join("forgotten").join("forgotten"), "").unwrap();
    let marked = fs::metadata(tasks.join("forgotten").join("forgotten"))
        .unwrap()
        .modified()
        .unwrap();
    let day = Duration::from_secs(86_400);
    assert_eq!(
        remove_old_sandboxes(tasks, day, marked + Duration::from_secs(3600)),
        0
    );
    assert!(tasks.join("forgotten").exists());
    assert_eq!(remove_old_sandboxes(tasks, day, marked + day), 1);
    assert!(!tasks.join("forgotten").exists());
    assert!(
        tasks.join("running/stdout").exists(),
        "a live task keeps its directory"
    );
    assert_eq!(
        remove_old_sandboxes(&tasks.join("missing"), day, marked + day),
        0
    );
}
