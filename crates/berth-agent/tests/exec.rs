//! Exec driver tests with real processes. The test binary doubles as the shim: the driver
//! re-executes it with `--exact shim_entry_point`, and `BERTH_SHIM_TASK_DIR` set.

use berth_agent::cgroup::CgroupManager;
use berth_agent::driver::exec::{ExecConfig, ExecDriver};
use berth_agent::driver::{Driver, TaskSpec, TaskStatus};
use berth_agent::shim::{self, PidRecord};
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
    candidates
        .into_iter()
        .find_map(|root| CgroupManager::detect(&root).ok().map(|m| (root, m)))
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
