//! The Docker driver against a real Docker Engine and the `berth-test/busybox:latest` image
//! (built by `scripts/test-image.sh` when missing). Without a reachable engine every test
//! prints a SKIP notice and passes, unless `BERTH_REQUIRE_DOCKER=1`, which makes it fail.

use berth_agent::driver::docker::{
    ContainerInfo, DockerConfig, DockerDriver, LABEL_APP_ID, LABEL_CPUSET, LABEL_NODE_ID,
    LABEL_TASK_ID, LABEL_VERSION, LABEL_WARM_FINGERPRINT, LABEL_WARM_JOB, check_parameters,
    container_name,
};
use berth_agent::driver::{Driver, DriverError, LogStream, TaskSpec, TaskStatus};
use berth_core::app::{AppDefinition, DockerParameter};
use berth_core::node::NodeResources;
use berth_core::task::TaskState;
use bollard::query_parameters::InspectContainerOptions;
use futures::StreamExt;
use serde_json::json;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

const IMAGE: &str = "berth-test/busybox:latest";

/// A shared hold on the lock that `crates/berth/tests/docker_e2e.rs` takes exclusively while it
/// restarts dockerd (which kills every container, so a test running meanwhile loses its
/// containers, cgroups and events): every Docker test of either file holds it shared.
struct DockerLock(#[allow(dead_code)] std::fs::File);

async fn docker_lock() -> DockerLock {
    let path = std::env::temp_dir().join("berth-docker-e2e.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let file = tokio::task::spawn_blocking(move || file.lock_shared().map(|()| file))
        .await
        .expect("lock task")
        .unwrap_or_else(|e| panic!("locking {}: {e}", path.display()));
    DockerLock(file)
}

/// Whether the engine and the test image are there (then the test holds the returned lock
/// until it ends); panics instead of skipping when `BERTH_REQUIRE_DOCKER=1`.
async fn docker_ready(test: &str) -> Option<DockerLock> {
    let required = std::env::var("BERTH_REQUIRE_DOCKER").is_ok_and(|v| v == "1");
    let fail = |why: String| {
        if required {
            panic!("{test}: Docker required (BERTH_REQUIRE_DOCKER=1) but {why}");
        }
        eprintln!("SKIP {test}: {why}");
        None
    };
    let lock = docker_lock().await;
    if let Err(e) = DockerDriver::probe(None, Duration::from_secs(5)).await {
        return fail(format!("Docker is unavailable: {e}"));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/test-image.sh");
    match Command::new(&script).output() {
        Ok(o) if o.status.success() => Some(lock),
        Ok(o) => fail(format!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => fail(format!("cannot run {}: {e}", script.display())),
    }
}

/// Removes the test's containers however the test ends.
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for id in &self.0 {
            let _ = Command::new("docker")
                .args(["rm", "-f", &container_name(id)])
                .output();
        }
    }
}

struct Harness {
    driver: DockerDriver,
    rx: UnboundedReceiver<TaskStatus>,
    dir: tempfile::TempDir,
    node: String,
}

fn unique(prefix: &str) -> String {
    format!("{prefix}.{}", uuid::Uuid::new_v4().simple())
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let node = unique("node");
    let (driver, rx) = driver_for(dir.path(), &node).await;
    Harness {
        driver,
        rx,
        dir,
        node,
    }
}

async fn driver_for(dir: &Path, node: &str) -> (DockerDriver, UnboundedReceiver<TaskStatus>) {
    let (tx, rx) = unbounded_channel();
    let mut cfg = DockerConfig::new(dir.join("docker"));
    cfg.node_id = Some(node.to_string());
    cfg.resync_interval = Duration::from_secs(2);
    let driver = DockerDriver::connect(cfg, tx).await.unwrap();
    (driver, rx)
}

fn spec(task_id: &str, node: &str, app: serde_json::Value, ports: Vec<u16>) -> TaskSpec {
    let mut app = app;
    app["container"]["type"] = json!("DOCKER");
    app["container"]["docker"]["image"] = json!(IMAGE);
    let app: AppDefinition = serde_json::from_value(app).unwrap();
    TaskSpec {
        task_id: task_id.into(),
        app_id: app.id.clone(),
        version: "2024-01-01T00:00:00.000Z".into(),
        resources: NodeResources::new(app.cpus, app.mem, app.disk),
        app,
        ports,
        host: "127.0.0.1".into(),
        node_id: node.into(),
        cpuset: vec![],
        secret_env: Default::default(),
    }
}

/// Waits for `state` of `task`; panics on another terminal state or after `timeout`.
async fn wait_for(
    rx: &mut UnboundedReceiver<TaskStatus>,
    task: &str,
    state: TaskState,
    timeout: Duration,
) -> TaskStatus {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let s = tokio::time::timeout(left, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{task}: no {state:?} within {timeout:?}"))
            .expect("status channel closed");
        if s.task_id != task {
            continue;
        }
        if s.state == state {
            return s;
        }
        assert!(
            !s.state.is_terminal(),
            "{task}: expected {state:?}, got {s:?}"
        );
    }
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn inspect(d: &DockerDriver, task: &str) -> bollard::models::ContainerInspectResponse {
    d.docker()
        .inspect_container(&container_name(task), None::<InspectContainerOptions>)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_with_labels_env_container_info_and_limits_then_kill() {
    let Some(_lock) =
        docker_ready("runs_with_labels_env_container_info_and_limits_then_kill").await
    else {
        return;
    };
    let mut h = harness().await;
    let id = unique("limits");
    let _cleanup = Cleanup(vec![id.clone()]);
    let mut s = spec(
        &id,
        &h.node,
        json!({"id": "/test/limits", "cmd": "sleep 1000", "cpus": 0.5, "mem": 64,
               "env": {"GREETING": "hello"}, "container": {"docker": {}}}),
        vec![31555],
    );
    s.cpuset = vec![0];
    h.driver.start(s.clone()).await.unwrap();
    wait_for(&mut h.rx, &id, TaskState::Running, Duration::from_secs(60)).await;
    // A second start of the same task is a no-op.
    h.driver.start(s).await.unwrap();

    let c = inspect(&h.driver, &id).await;
    let labels = c.config.as_ref().unwrap().labels.clone().unwrap();
    assert_eq!(labels[LABEL_TASK_ID], id);
    assert_eq!(labels[LABEL_APP_ID], "/test/limits");
    assert_eq!(labels[LABEL_VERSION], "2024-01-01T00:00:00.000Z");
    assert_eq!(labels[LABEL_NODE_ID], h.node);
    let hc = c.host_config.unwrap();
    assert_eq!(hc.memory, Some(64 * 1024 * 1024));
    assert_eq!(hc.memory_swap, hc.memory, "no silent 2x swap");
    assert_eq!(hc.cpu_shares, Some(512));
    assert_eq!(hc.pids_limit, Some(4096));
    assert_eq!(hc.cpuset_cpus.as_deref(), Some("0"));
    assert_eq!(hc.network_mode.as_deref(), Some("host"));
    let log = hc.log_config.unwrap();
    assert_eq!(log.typ.as_deref(), Some("json-file"));
    let opts = log.config.unwrap();
    assert_eq!(opts["max-size"], "10m");
    assert_eq!(opts["max-file"], "3");

    let name = container_name(&id);
    let env = docker(&["exec", &name, "env"]);
    for want in [
        "BERTH_CPUS=0.5",
        "BERTH_MEM_MB=64",
        "BERTH_CPUSET=0",
        "GREETING=hello",
        "PORT0=31555",
        "MARATHON_APP_ID=/test/limits",
    ] {
        assert!(env.lines().any(|l| l == want), "{want} missing in:\n{env}");
    }
    let info: ContainerInfo = serde_json::from_str(&docker(&[
        "exec",
        &name,
        "cat",
        "/etc/berth/container_info",
    ]))
    .unwrap();
    assert_eq!(info.task_id, id);
    assert_eq!(info.app_id, "/test/limits");
    assert_eq!((info.cpus, info.mem_mb), (0.5, 64.0));
    assert_eq!(info.cpuset, vec![0]);
    assert_eq!(info.ports, vec![31555]);
    assert_eq!(info.pids_limit, Some(4096));
    // Read-only inside the container.
    let out = Command::new("docker")
        .args([
            "exec",
            &name,
            "sh",
            "-c",
            "echo x > /etc/berth/container_info",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());

    // `sleep` as PID 1 ignores SIGTERM: SIGKILL after the grace period.
    let t = Instant::now();
    h.driver
        .kill(&id, Duration::from_millis(1500))
        .await
        .unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        t.elapsed()
    );
    let st = wait_for(&mut h.rx, &id, TaskState::Killed, Duration::from_secs(10)).await;
    assert!(st.message.unwrap().starts_with("killed"));
    let listed = h.driver.list().await.unwrap();
    assert_eq!(listed[0].state, TaskState::Killed);
    // Killing again is fine; forgetting removes the container.
    h.driver.kill(&id, Duration::ZERO).await.unwrap();
    h.driver.forget(&id);
    let deadline = Instant::now() + Duration::from_secs(10);
    while h
        .driver
        .docker()
        .inspect_container(&name, None::<InspectContainerOptions>)
        .await
        .is_ok()
    {
        assert!(Instant::now() < deadline, "container not removed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(h.driver.list().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_a_task_that_handles_it() {
    let Some(_lock) = docker_ready("sigterm_ends_a_task_that_handles_it").await else {
        return;
    };
    let mut h = harness().await;
    let id = unique("term");
    let _cleanup = Cleanup(vec![id.clone()]);
    let s = spec(
        &id,
        &h.node,
        json!({"id": "/test/term", "cmd": "trap 'exit 0' TERM; while true; do sleep 0.1; done",
               "container": {"docker": {}}}),
        vec![],
    );
    h.driver.start(s).await.unwrap();
    wait_for(&mut h.rx, &id, TaskState::Running, Duration::from_secs(60)).await;
    let t = Instant::now();
    h.driver.kill(&id, Duration::from_secs(20)).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let st = wait_for(&mut h.rx, &id, TaskState::Killed, Duration::from_secs(10)).await;
    assert_eq!(st.exit_code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pids_limit_contains_a_fork_bomb() {
    let Some(_lock) = docker_ready("pids_limit_contains_a_fork_bomb").await else {
        return;
    };
    let mut h = harness().await;
    let id = unique("bomb");
    let _cleanup = Cleanup(vec![id.clone()]);
    // PID 1 forks only while it is alone in the container (the sleeper, then the bomb's
    // subshell) and then just waits: busybox sh exits when one of its own forks is refused, and
    // with `bomb; sleep 1000` the container died whenever the bomb filled the limit before PID 1
    // forked `sleep` (its cgroup gone with it).
    let s = spec(
        &id,
        &h.node,
        json!({"id": "/test/bomb", "labels": {"BERTH_PIDS_LIMIT": "64"},
               "cmd": "sleep 1000 & (bomb() { bomb | bomb & }; bomb) & wait",
               "container": {"docker": {}}}),
        vec![],
    );
    h.driver.start(s).await.unwrap();
    wait_for(&mut h.rx, &id, TaskState::Running, Duration::from_secs(60)).await;
    let c = inspect(&h.driver, &id).await;
    assert_eq!(c.host_config.unwrap().pids_limit, Some(64));
    let cid = c.id.unwrap();
    let pid = c.state.as_ref().and_then(|s| s.pid).unwrap_or(0);
    let cg = pids_cgroup(&cid, pid).unwrap_or_else(|| {
        panic!(
            "no pids cgroup for container {cid} (init pid {pid}): {:?}",
            c.state
        )
    });
    // Strict reads: a vanished cgroup (the container ended) must not read as 0 pids.
    let read = |f: &str| {
        std::fs::read_to_string(cg.join(f))
            .unwrap_or_else(|e| panic!("{}: {e} (did the container exit?)", cg.join(f).display()))
    };
    let refused = || -> u64 {
        let events = read("pids.events");
        events
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("pids.events: {events:?}"))
    };
    assert_eq!(read("pids.max").trim(), "64");
    // Sample for at least 3 s and until forks were refused (the limit was hit), however slow
    // the machine is.
    let mut peak = 0;
    let t = Instant::now();
    loop {
        let cur: u64 = read("pids.current").trim().parse().unwrap();
        peak = peak.max(cur);
        assert!(peak <= 64, "pids.current reached {peak}");
        if t.elapsed() >= Duration::from_secs(3) && refused() > 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no fork refused in {:?}: pids.events {:?}, peak {peak}",
            t.elapsed(),
            read("pids.events")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(peak > 1, "the bomb never ran (peak {peak})");
    // The bomb was contained: its container is still up, and the host can still fork.
    let c = inspect(&h.driver, &id).await;
    assert_eq!(
        c.state.as_ref().and_then(|s| s.running),
        Some(true),
        "{:?}",
        c.state
    );
    assert!(Command::new("true").status().unwrap().success());
    h.driver.kill(&id, Duration::ZERO).await.unwrap();
    wait_for(&mut h.rx, &id, TaskState::Killed, Duration::from_secs(30)).await;
}

/// The container's pids cgroup directory: from its init process's `/proc/<pid>/cgroup` (any
/// driver or cgroup parent), else the usual places (v1 cgroupfs or systemd, or v2).
fn pids_cgroup(id: &str, pid: i64) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let from_proc: Vec<String> = text
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            if controllers.split(',').any(|c| c == "pids") {
                Some(format!("/sys/fs/cgroup/pids{path}"))
            } else if controllers.is_empty() {
                Some(format!("/sys/fs/cgroup{path}"))
            } else {
                None
            }
        })
        .collect();
    from_proc
        .into_iter()
        .chain([
            format!("/sys/fs/cgroup/pids/docker/{id}"),
            format!("/sys/fs/cgroup/pids/system.slice/docker-{id}.scope"),
            format!("/sys/fs/cgroup/system.slice/docker-{id}.scope"),
            format!("/sys/fs/cgroup/docker/{id}"),
        ])
        .map(PathBuf::from)
        .find(|p| p.join("pids.max").exists())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_port_mapping_serves_http() {
    let Some(_lock) = docker_ready("bridge_port_mapping_serves_http").await else {
        return;
    };
    let mut h = harness().await;
    let id = unique("httpd");
    let _cleanup = Cleanup(vec![id.clone()]);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let s = spec(
        &id,
        &h.node,
        json!({"id": "/test/httpd", "args": ["httpd", "-f", "-p", "8080", "-h", "/var/www"],
               "networks": [{"mode": "container/bridge"}],
               "container": {"docker": {}, "portMappings": [{"containerPort": 8080, "hostPort": 0}]}}),
        vec![port],
    );
    h.driver.start(s).await.unwrap();
    let st = wait_for(&mut h.rx, &id, TaskState::Running, Duration::from_secs(60)).await;
    assert!(!st.ip_addresses.is_empty(), "bridge tasks report their IP");
    let deadline = Instant::now() + Duration::from_secs(15);
    let body = loop {
        match http_get(port) {
            Ok(b) if b.contains("berth test") => break b,
            r => {
                assert!(Instant::now() < deadline, "no HTTP answer on {port}: {r:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert!(body.starts_with("HTTP/1."), "{body}");
    let c = inspect(&h.driver, &id).await;
    let bindings = c.host_config.unwrap().port_bindings.unwrap();
    assert_eq!(
        bindings["8080/tcp"].as_ref().unwrap()[0]
            .host_port
            .as_deref(),
        Some(port.to_string().as_str())
    );
    h.driver.kill(&id, Duration::from_secs(1)).await.unwrap();
    wait_for(&mut h.rx, &id, TaskState::Killed, Duration::from_secs(10)).await;
}

fn http_get(port: u16) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_and_oom_are_reported() {
    let Some(_lock) = docker_ready("exit_codes_and_oom_are_reported").await else {
        return;
    };
    let mut h = harness().await;
    let (fail, ok, oom) = (unique("exit3"), unique("exit0"), unique("oom"));
    let _cleanup = Cleanup(vec![fail.clone(), ok.clone(), oom.clone()]);
    let app = |cmd: &str, mem: f64| json!({"id": "/test/exit", "cmd": cmd, "mem": mem, "container": {"docker": {}}});
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 1;
    h.driver
        .start(spec(&fail, &h.node, app("sleep 0.5; exit 3", 32.0), vec![]))
        .await
        .unwrap();
    h.driver
        .start(spec(&ok, &h.node, app("true", 32.0), vec![]))
        .await
        .unwrap();
    // dd fills a 256 MiB buffer: far over the 32 MiB limit (and no swap to spill into).
    // Docker learns of an OOM kill from containerd's OOM monitor, which (cgroup v1) watches the
    // container's memory cgroup only once the container has started and drops a notification
    // it handles after the cgroup is gone: an OOM in the first milliseconds, or one that ends
    // the container at once, is then reported as a plain exit 137. So dd runs only once the
    // task is running, as a child of PID 1, and PID 1 exits (with dd's status) only after
    // dockerd has announced the OOM.
    h.driver
        .start(spec(
            &oom,
            &h.node,
            app(
                "until [ -e /tmp/go ]; do sleep 0.05; done; \
                 dd if=/dev/zero of=/dev/null bs=256M count=1; r=$?; \
                 until [ -e /tmp/done ]; do sleep 0.05; done; exit $r",
                32.0,
            ),
            vec![],
        ))
        .await
        .unwrap();
    let state_of = async |id: &str| {
        let list = h.driver.list().await.unwrap();
        list.into_iter().find(|s| s.task_id == id)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match state_of(&oom).await {
            Some(s) if s.state == TaskState::Running => break,
            s => {
                assert!(Instant::now() < deadline, "oom task not running: {s:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let name = container_name(&oom);
    docker(&["exec", &name, "touch", "/tmp/go"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let until = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let events = docker(&[
            "events",
            "--since",
            &since.to_string(),
            "--until",
            &until.to_string(),
            "--filter",
            &format!("container={name}"),
            "--filter",
            "event=oom",
            "--format",
            "{{.Action}}",
        ]);
        if events.lines().any(|l| l.trim() == "oom") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dockerd announced no OOM for {name}: {:?}",
            state_of(&oom).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    docker(&["exec", &name, "touch", "/tmp/done"]);

    let st = wait_for(&mut h.rx, &fail, TaskState::Failed, Duration::from_secs(60)).await;
    assert_eq!(st.exit_code, Some(3));
    assert_eq!(st.message.as_deref(), Some("exited with code 3"));
    // The others may have ended already; `list` has the final word.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = h.driver.list().await.unwrap();
        let get = |id: &str| list.iter().find(|s| s.task_id == id).cloned();
        if let (Some(a), Some(b)) = (get(&ok), get(&oom))
            && a.state.is_terminal()
            && b.state.is_terminal()
        {
            assert_eq!(a.state, TaskState::Finished, "{a:?}");
            assert_eq!(a.exit_code, Some(0));
            assert_eq!(b.state, TaskState::Failed, "{b:?}");
            assert!(
                b.message.as_deref().unwrap_or("").contains("OOM killed"),
                "{b:?}"
            );
            assert_eq!(b.exit_code, Some(137), "dd was SIGKILLed: {b:?}");
            break;
        }
        assert!(Instant::now() < deadline, "tasks did not end: {list:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_driver_recovers_containers_without_restarting_them() {
    let Some(_lock) =
        docker_ready("a_new_driver_recovers_containers_without_restarting_them").await
    else {
        return;
    };
    let mut h = harness().await;
    let (long, short) = (unique("recover"), unique("recover-exit"));
    let _cleanup = Cleanup(vec![long.clone(), short.clone()]);
    h.driver
        .start(spec(
            &long,
            &h.node,
            json!({"id": "/test/recover", "cmd": "sleep 1000", "labels": {"BERTH_UID": "auto"},
                   "container": {"docker": {}}}),
            vec![],
        ))
        .await
        .unwrap();
    h.driver
        .start(spec(
            &short,
            &h.node,
            json!({"id": "/test/recover", "cmd": "sleep 4; exit 5", "container": {"docker": {}}}),
            vec![],
        ))
        .await
        .unwrap();
    wait_for(
        &mut h.rx,
        &long,
        TaskState::Running,
        Duration::from_secs(60),
    )
    .await;
    wait_for(
        &mut h.rx,
        &short,
        TaskState::Running,
        Duration::from_secs(60),
    )
    .await;
    let before = inspect(&h.driver, &long).await;
    let uid = h.driver.task_uid(&long).expect("a UID was allocated");
    assert!((100_000..=165_535).contains(&uid));
    let name = container_name(&long);
    assert_eq!(docker(&["exec", &name, "id", "-u"]).trim(), uid.to_string());

    // Agent A goes away (as with kill -9: nothing is stopped).
    let Harness {
        driver,
        rx,
        dir,
        node,
    } = h;
    drop(driver);
    drop(rx);

    let (b, mut rx) = driver_for(dir.path(), &node).await;
    let recovered = b.recover().await.unwrap();
    let find = |id: &str| recovered.iter().find(|s| s.task_id == id).cloned();
    assert_eq!(find(&long).map(|s| s.state), Some(TaskState::Running));
    assert!(find(&short).is_some(), "{recovered:?}");
    assert_eq!(recovered.len(), 2, "{recovered:?}");
    let after = inspect(&b, &long).await;
    assert_eq!(after.id, before.id, "same container");
    assert_eq!(
        after.state.as_ref().unwrap().started_at,
        before.state.as_ref().unwrap().started_at,
        "not restarted"
    );
    assert_eq!(b.task_uid(&long), Some(uid), "UID allocation persisted");
    let count = docker(&[
        "ps",
        "-a",
        "-q",
        "--filter",
        &format!("label={LABEL_TASK_ID}={long}"),
    ]);
    assert_eq!(count.lines().count(), 1, "not duplicated");
    // A start retried by the agent is a no-op too.
    b.start(spec(
        &long,
        &node,
        json!({"id": "/test/recover", "cmd": "sleep 1000", "container": {"docker": {}}}),
        vec![],
    ))
    .await
    .unwrap();

    // B watches the recovered tasks: the short one's exit arrives through B's events.
    let st = wait_for(&mut rx, &short, TaskState::Failed, Duration::from_secs(30)).await;
    assert_eq!(st.exit_code, Some(5));
    b.kill(&long, Duration::ZERO).await.unwrap();
    wait_for(&mut rx, &long, TaskState::Killed, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_parameters_are_errors() {
    let bad = [DockerParameter {
        key: "volume-driver".into(),
        value: "flocker".into(),
    }];
    let e = check_parameters(&bad).unwrap_err();
    assert!(
        e.contains("volume-driver") && e.contains("not supported"),
        "{e}"
    );
    let Some(_lock) = docker_ready("unsupported_parameters_are_errors").await else {
        return;
    };
    let mut h = harness().await;
    let id = unique("badparam");
    let _cleanup = Cleanup(vec![id.clone()]);
    let s = spec(
        &id,
        &h.node,
        json!({"id": "/test/bad", "cmd": "sleep 1",
               "container": {"docker": {"parameters": [{"key": "volume-driver", "value": "flocker"}]}}}),
        vec![],
    );
    match h.driver.start(s).await {
        Err(DriverError::InvalidSpec(msg)) => assert!(msg.contains("volume-driver"), "{msg}"),
        other => panic!("expected InvalidSpec, got {other:?}"),
    }
    assert!(h.driver.list().await.unwrap().is_empty());
    assert!(h.rx.try_recv().is_err(), "nothing reported");
    let out = Command::new("docker")
        .args(["inspect", &container_name(&id)])
        .output()
        .unwrap();
    assert!(!out.status.success(), "no container was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_health_checks_run_inside_the_container() {
    let Some(_lock) = docker_ready("command_health_checks_run_inside_the_container").await else {
        return;
    };
    let mut h = harness().await;
    let id = unique("cmdcheck");
    let _cleanup = Cleanup(vec![id.clone()]);
    let s = spec(
        &id,
        &h.node,
        json!({"id": "/test/cmdcheck", "cmd": "echo inside > /tmp/marker; sleep 3600",
               "container": {"docker": {}}}),
        vec![],
    );
    h.driver.start(s.clone()).await.unwrap();
    wait_for(&mut h.rx, &id, TaskState::Running, Duration::from_secs(60)).await;
    // The marker exists only inside the container, so a pass proves where the check ran; the
    // task's environment is there too.
    assert!(
        !std::fs::read_to_string("/tmp/marker")
            .unwrap_or_default()
            .contains("inside")
    );
    let check = format!("grep -q inside /tmp/marker && test \"$MESOS_TASK_ID\" = '{id}'");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match h
            .driver
            .check_command(&s, &check, Duration::from_secs(5))
            .await
        {
            Ok(()) => break,
            Err(e) if Instant::now() > deadline => panic!("check never passed: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let err = h
        .driver
        .check_command(&s, "test -f /no/such/file", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(err.contains("code 1"), "{err}");
    let err = h
        .driver
        .check_command(&s, "exit 4", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(err.contains("code 4"), "{err}");
    h.driver.kill(&id, Duration::from_secs(1)).await.unwrap();
}

/// The host's online cores.
fn online_cpus() -> Vec<u32> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    berth_agent::cgroup::parse_cpu_list(&text).unwrap()
}

fn cpu_list(cpus: &[u32]) -> String {
    berth_agent::cgroup::format_cpu_list(cpus)
}

/// `Cpus_allowed_list` of `pid` (`self`: a process `docker exec` starts) inside the container.
fn cpus_allowed(task: &str, pid: &str) -> Vec<u32> {
    let status = docker(&[
        "exec",
        &container_name(task),
        "cat",
        &format!("/proc/{pid}/status"),
    ]);
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap_or_else(|| panic!("no Cpus_allowed_list in:\n{status}"));
    berth_agent::cgroup::parse_cpu_list(line).unwrap()
}

/// `HostConfig.CpusetCpus` of the task's container (`""` when unset).
async fn cpuset_of(d: &DockerDriver, task: &str) -> String {
    let c = inspect(d, task).await;
    c.host_config.unwrap().cpuset_cpus.unwrap_or_default()
}

/// Waits until the task's container has `HostConfig.CpusetCpus == want` (moves are async).
async fn wait_cpuset(d: &DockerDriver, task: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = cpuset_of(d, task).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{task}: CpusetCpus {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_containers_move_off_pinned_cores() {
    let Some(_lock) = docker_ready("shared_containers_move_off_pinned_cores").await else {
        return;
    };
    let online = online_cpus();
    assert!(online.contains(&0), "core 0 is offline: {online:?}");
    // Core 0 pinned: shared containers get the rest (all cores on a 1-core host).
    let rest: Vec<u32> = online.iter().copied().filter(|c| *c != 0).collect();
    let without_0 = if rest.is_empty() {
        online.clone()
    } else {
        rest.clone()
    };
    let mut h = harness().await;
    let (a, b, c) = (unique("shared-a"), unique("shared-b"), unique("shared-c"));
    let _cleanup = Cleanup(vec![a.clone(), b.clone(), c.clone()]);
    let shared = |id: &str, node: &str| {
        spec(
            id,
            node,
            json!({"id": "/test/shared", "cmd": "sleep 1000", "cpus": 0.1, "mem": 32,
                   "container": {"docker": {}}}),
            vec![],
        )
    };

    // Nothing pinned: no cpuset.
    h.driver.start(shared(&a, &h.node)).await.unwrap();
    wait_for(&mut h.rx, &a, TaskState::Running, Duration::from_secs(60)).await;
    assert_eq!(cpuset_of(&h.driver, &a).await, "");

    // Core 0 pinned elsewhere on the node: the running shared container moves off it, its
    // init and new processes alike.
    h.driver.set_pinned_cores(&[0]);
    wait_cpuset(&h.driver, &a, &cpu_list(&without_0)).await;
    if !rest.is_empty() {
        assert_eq!(cpus_allowed(&a, "self"), rest);
        assert_eq!(cpus_allowed(&a, "1"), rest);
    }
    // Still a shared task inside: no BERTH_CPUSET, empty cpuset in container_info, no label.
    let name = container_name(&a);
    let env = docker(&["exec", &name, "env"]);
    assert!(!env.contains("BERTH_CPUSET="), "{env}");
    let info: ContainerInfo = serde_json::from_str(&docker(&[
        "exec",
        &name,
        "cat",
        "/etc/berth/container_info",
    ]))
    .unwrap();
    assert!(info.cpuset.is_empty(), "{info:?}");
    let labels = inspect(&h.driver, &a).await.config.unwrap().labels.unwrap();
    assert!(!labels.contains_key(LABEL_CPUSET), "{labels:?}");

    // A shared container started now is created off core 0.
    h.driver.start(shared(&b, &h.node)).await.unwrap();
    wait_for(&mut h.rx, &b, TaskState::Running, Duration::from_secs(60)).await;
    assert_eq!(cpuset_of(&h.driver, &b).await, cpu_list(&without_0));
    if !rest.is_empty() {
        assert_eq!(cpus_allowed(&b, "1"), rest);
    }

    // Nothing pinned any more: both back on every core.
    h.driver.set_pinned_cores(&[]);
    wait_cpuset(&h.driver, &a, &cpu_list(&online)).await;
    wait_cpuset(&h.driver, &b, &cpu_list(&online)).await;
    assert_eq!(cpus_allowed(&a, "1"), online);
    assert_eq!(cpus_allowed(&b, "self"), online);

    // Pinned again, then the agent restarts: the new driver recovers the shared containers
    // as shared (their cpuset is not a pinning) and moves them on its first set_pinned_cores.
    h.driver.set_pinned_cores(&[0]);
    wait_cpuset(&h.driver, &a, &cpu_list(&without_0)).await;
    wait_cpuset(&h.driver, &b, &cpu_list(&without_0)).await;
    let Harness {
        driver,
        rx,
        dir,
        node,
    } = h;
    drop(driver);
    drop(rx);
    let (d, mut rx) = driver_for(dir.path(), &node).await;
    let recovered = d.recover().await.unwrap();
    assert_eq!(recovered.len(), 2, "{recovered:?}");
    d.set_pinned_cores(&[]);
    wait_cpuset(&d, &a, &cpu_list(&online)).await;
    wait_cpuset(&d, &b, &cpu_list(&online)).await;
    // Nothing is pinned on the new driver: a new shared container gets no cpuset.
    d.start(shared(&c, &node)).await.unwrap();
    wait_for(&mut rx, &c, TaskState::Running, Duration::from_secs(60)).await;
    assert_eq!(cpuset_of(&d, &c).await, "");
    for id in [&a, &b, &c] {
        d.kill(id, Duration::ZERO).await.unwrap();
    }
}

// ---- Warm mode: the runs of a job execute in one long-lived container of the job. ----

/// A run of job `job` in warm mode.
fn warm_spec(task_id: &str, node: &str, job: &str, app: serde_json::Value) -> TaskSpec {
    let mut app = app;
    app["id"] = json!("/test/warm");
    app["labels"]["BERTH_JOB"] = json!(job);
    app["labels"]["BERTH_RUN_MODE"] = json!("warm");
    if app.get("container").is_none() {
        app["container"] = json!({"docker": {}});
    }
    spec(task_id, node, app, vec![])
}

/// `docker ps -a` of the job's warm containers on `node`: `(name, id, state)`.
fn warm_containers(job: &str, node: &str) -> Vec<(String, String, String)> {
    docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label={LABEL_WARM_JOB}={job}"),
        "--filter",
        &format!("label={LABEL_NODE_ID}={node}"),
        "--format",
        "{{.Names}} {{.ID}} {{.State}}",
    ])
    .lines()
    .filter_map(|l| {
        let mut p = l.split_whitespace();
        Some((p.next()?.into(), p.next()?.into(), p.next()?.into()))
    })
    .collect()
}

/// Removes the warm containers of a test's node however the test ends.
struct WarmCleanup(String);

impl Drop for WarmCleanup {
    fn drop(&mut self) {
        let out = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label={LABEL_NODE_ID}={}", self.0),
            ])
            .output();
        if let Ok(out) = out {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("docker").args(["rm", "-f", id]).output();
            }
        }
    }
}

async fn read_log(d: &DockerDriver, task: &str, stream: LogStream) -> String {
    let mut chunks = d.logs(task, stream, None, false).await.unwrap();
    let mut out = Vec::new();
    while let Some(c) = chunks.next().await {
        out.extend_from_slice(&c.unwrap());
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn driver_with(
    dir: &Path,
    node: &str,
    tune: impl FnOnce(&mut DockerConfig),
) -> (DockerDriver, UnboundedReceiver<TaskStatus>) {
    let (tx, rx) = unbounded_channel();
    let mut cfg = DockerConfig::new(dir.join("docker"));
    cfg.node_id = Some(node.to_string());
    cfg.resync_interval = Duration::from_secs(2);
    tune(&mut cfg);
    let driver = DockerDriver::connect(cfg, tx).await.unwrap();
    (driver, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_runs_share_one_container_and_report_exit_codes_and_logs() {
    let Some(_lock) =
        docker_ready("warm_runs_share_one_container_and_report_exit_codes_and_logs").await
    else {
        return;
    };
    let mut h = harness().await;
    let _cleanup = WarmCleanup(h.node.clone());
    let job = unique("job");
    let app = |cmd: &str| json!({"cmd": cmd, "cpus": 0.25, "mem": 48});
    let mut first = None;
    for i in 0..20 {
        let id = unique("run");
        h.driver
            .start(warm_spec(
                &id,
                &h.node,
                &job,
                app(&format!(
                    "echo \"run-{i} $MESOS_TASK_ID\"; echo oops-{i} >&2"
                )),
            ))
            .await
            .unwrap();
        let st = wait_for(&mut h.rx, &id, TaskState::Finished, Duration::from_secs(60)).await;
        assert_eq!(st.exit_code, Some(0), "{st:?}");
        assert_eq!(
            read_log(&h.driver, &id, LogStream::Stdout).await,
            format!("run-{i} {id}\n")
        );
        assert_eq!(
            read_log(&h.driver, &id, LogStream::Stderr).await,
            format!("oops-{i}\n")
        );
        let containers = warm_containers(&job, &h.node);
        assert_eq!(containers.len(), 1, "run {i}: {containers:?}");
        let c = &containers[0];
        assert_eq!(c.2, "running");
        match &first {
            None => first = Some(c.1.clone()),
            Some(f) => assert_eq!(f, &c.1, "run {i} got another container"),
        }
        // A terminal run is forgotten as usual; the container is the job's and stays, and
        // the run's output is kept (`berth job logs` of a finished run).
        if i % 2 == 0 {
            h.driver.forget(&id);
            assert_eq!(
                read_log(&h.driver, &id, LogStream::Stdout).await,
                format!("run-{i} {id}\n")
            );
        }
    }
    let (name, cid, _) = warm_containers(&job, &h.node).remove(0);
    // The container has the per-run limits, and nothing that makes it a task.
    let c = h
        .driver
        .docker()
        .inspect_container(&cid, None::<InspectContainerOptions>)
        .await
        .unwrap();
    let labels = c.config.as_ref().unwrap().labels.clone().unwrap();
    assert!(!labels.contains_key(LABEL_TASK_ID), "{labels:?}");
    assert!(labels[LABEL_WARM_FINGERPRINT].len() == 16, "{labels:?}");
    assert!(name.starts_with("berth-warm-"), "{name}");
    let hc = c.host_config.unwrap();
    assert_eq!(hc.memory, Some(48 * 1024 * 1024));
    assert_eq!(hc.memory_swap, hc.memory);
    assert_eq!(hc.cpu_shares, Some(256));
    assert_eq!(hc.pids_limit, Some(4096));
    assert_eq!(hc.log_config.unwrap().typ.as_deref(), Some("json-file"));
    // Neither recover-style listing nor `list` takes the container for a task.
    assert!(
        h.driver
            .list()
            .await
            .unwrap()
            .iter()
            .all(|s| s.task_id.starts_with("run."))
    );

    let id = unique("run");
    h.driver
        .start(warm_spec(&id, &h.node, &job, app("echo failing; exit 3")))
        .await
        .unwrap();
    let st = wait_for(&mut h.rx, &id, TaskState::Failed, Duration::from_secs(60)).await;
    assert_eq!(st.exit_code, Some(3));
    assert_eq!(st.message.as_deref(), Some("exited with code 3"));
    assert_eq!(warm_containers(&job, &h.node).len(), 1);

    // The shutdown path removes the warm containers no run uses.
    h.driver.remove_leftovers().await;
    assert!(warm_containers(&job, &h.node).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_warm_run_leaves_the_container_for_the_next_run() {
    let Some(_lock) =
        docker_ready("killing_a_warm_run_leaves_the_container_for_the_next_run").await
    else {
        return;
    };
    let mut h = harness().await;
    let _cleanup = WarmCleanup(h.node.clone());
    let job = unique("job");
    let marker = format!("/tmp/{}", unique("term"));
    // SIGTERM ends `sleep` at once.
    let a = unique("run");
    h.driver
        .start(warm_spec(
            &a,
            &h.node,
            &job,
            json!({"cmd": format!("touch {marker}; sleep 1000")}),
        ))
        .await
        .unwrap();
    wait_for(&mut h.rx, &a, TaskState::Running, Duration::from_secs(60)).await;
    let (name, cid, _) = warm_containers(&job, &h.node).remove(0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !Command::new("docker")
        .args(["exec", &name, "test", "-e", &marker])
        .status()
        .unwrap()
        .success()
    {
        assert!(Instant::now() < deadline, "the run never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(h.driver.pid(&a).is_some());
    let t = Instant::now();
    h.driver.kill(&a, Duration::from_secs(10)).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let st = wait_for(&mut h.rx, &a, TaskState::Killed, Duration::from_secs(10)).await;
    assert_eq!(st.exit_code, Some(143), "{st:?}");
    let ps = docker(&["exec", &name, "ps"]);
    assert!(!ps.contains("sleep 1000"), "{ps}");

    // A run that ignores SIGTERM is SIGKILLed after the grace period.
    let b = unique("run");
    h.driver
        .start(warm_spec(
            &b,
            &h.node,
            &job,
            json!({"cmd": "trap '' TERM; sleep 1000; echo survived"}),
        ))
        .await
        .unwrap();
    wait_for(&mut h.rx, &b, TaskState::Running, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    h.driver
        .kill(&b, Duration::from_millis(1500))
        .await
        .unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        t.elapsed()
    );
    let st = wait_for(&mut h.rx, &b, TaskState::Killed, Duration::from_secs(10)).await;
    assert_eq!(st.exit_code, Some(137), "{st:?}");
    assert_eq!(h.driver.pid(&b), None);
    // Killing again is fine.
    h.driver.kill(&b, Duration::ZERO).await.unwrap();

    // The container survived both, and the next run uses it.
    let c = h.driver.start(warm_spec(
        &unique("run"),
        &h.node,
        &job,
        json!({"cmd": "true"}),
    ));
    c.await.unwrap();
    let containers = warm_containers(&job, &h.node);
    assert_eq!(containers.len(), 1, "{containers:?}");
    assert_eq!(containers[0].1, cid);
    assert_eq!(containers[0].2, "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_or_dead_warm_container_is_replaced() {
    let Some(_lock) = docker_ready("a_changed_or_dead_warm_container_is_replaced").await else {
        return;
    };
    let (dir, node) = (tempfile::tempdir().unwrap(), unique("node"));
    let (d, mut rx) = driver_with(dir.path(), &node, |c| {
        c.warm_idle_timeout = Duration::from_secs(3)
    })
    .await;
    let _cleanup = WarmCleanup(node.clone());
    let job = unique("job");
    let alt = "berth-test/busybox:warm-alt";
    docker(&["tag", IMAGE, alt]);
    let run = async |rx: &mut UnboundedReceiver<TaskStatus>, app: serde_json::Value| {
        let id = unique("run");
        d.start(warm_spec(&id, &node, &job, app)).await.unwrap();
        let st = wait_for(rx, &id, TaskState::Finished, Duration::from_secs(60)).await;
        assert_eq!(st.exit_code, Some(0));
        let c = warm_containers(&job, &node);
        c.into_iter().find(|c| c.2 == "running").unwrap().1
    };
    let a = run(&mut rx, json!({"cmd": "true", "mem": 32})).await;
    let b = run(&mut rx, json!({"cmd": "true", "mem": 64})).await;
    assert_ne!(a, b, "a mem change makes a new container");
    let c = run(
        &mut rx,
        json!({"cmd": "true", "mem": 64,
               "container": {"docker": {}}}),
    )
    .await;
    assert_eq!(b, c, "same again: same container");
    let id = unique("run");
    let mut s = warm_spec(&id, &node, &job, json!({"cmd": "true", "mem": 64}));
    s.app
        .container
        .as_mut()
        .unwrap()
        .docker
        .as_mut()
        .unwrap()
        .image = alt.into();
    d.start(s.clone()).await.unwrap();
    wait_for(&mut rx, &id, TaskState::Finished, Duration::from_secs(60)).await;
    let containers = warm_containers(&job, &node);
    // The stale ones went when their last run ended.
    assert_eq!(containers.len(), 1, "{containers:?}");
    let e = containers[0].1.clone();
    assert_ne!(e, b, "an image change makes a new container");

    // Killed behind the driver's back: the next run gets a new one.
    docker(&["kill", &e]);
    let id = unique("run");
    s.task_id = id.clone();
    d.start(s).await.unwrap();
    wait_for(&mut rx, &id, TaskState::Finished, Duration::from_secs(60)).await;
    let containers = warm_containers(&job, &node);
    assert_eq!(containers.len(), 1, "{containers:?}");
    assert_ne!(containers[0].1, e);
    assert_eq!(containers[0].2, "running");

    // Idle for longer than warm_idle_timeout: removed.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !warm_containers(&job, &node).is_empty() {
        assert!(Instant::now() < deadline, "the idle container stayed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = Command::new("docker").args(["rmi", alt]).output();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_driver_recovers_warm_runs_without_restarting_them() {
    let Some(_lock) = docker_ready("a_new_driver_recovers_warm_runs_without_restarting_them").await
    else {
        return;
    };
    let mut h = harness().await;
    let _cleanup = WarmCleanup(h.node.clone());
    let job = unique("job");
    let (long, short) = (unique("run"), unique("run"));
    let count = format!("/tmp/{}", unique("count"));
    let long_spec = warm_spec(
        &long,
        &h.node,
        &job,
        json!({"cmd": format!("echo started >> {count}; sleep 5; echo done; exit 5")}),
    );
    h.driver.start(long_spec.clone()).await.unwrap();
    h.driver
        .start(warm_spec(
            &short,
            &h.node,
            &job,
            json!({"cmd": "sleep 1; exit 4"}),
        ))
        .await
        .unwrap();
    wait_for(
        &mut h.rx,
        &long,
        TaskState::Running,
        Duration::from_secs(60),
    )
    .await;
    wait_for(
        &mut h.rx,
        &short,
        TaskState::Running,
        Duration::from_secs(60),
    )
    .await;
    let (name, cid, _) = warm_containers(&job, &h.node).remove(0);

    // Agent A goes away (as with kill -9: nothing is stopped); the short run ends meanwhile.
    let Harness {
        driver,
        rx,
        dir,
        node,
    } = h;
    drop(driver);
    drop(rx);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (b, mut rx) = driver_for(dir.path(), &node).await;
    let recovered = b.recover().await.unwrap();
    let find = |id: &str| recovered.iter().find(|s| s.task_id == id).cloned();
    assert_eq!(
        find(&long).map(|s| s.state),
        Some(TaskState::Running),
        "{recovered:?}"
    );
    let s = find(&short).unwrap();
    assert_eq!(
        (s.state, s.exit_code),
        (TaskState::Failed, Some(4)),
        "{s:?}"
    );
    assert_eq!(recovered.len(), 2, "{recovered:?}");
    assert!(b.pid(&long).is_some());
    // A start retried by the agent is a no-op.
    b.start(long_spec).await.unwrap();

    let st = wait_for(&mut rx, &long, TaskState::Failed, Duration::from_secs(30)).await;
    assert_eq!(st.exit_code, Some(5));
    assert_eq!(read_log(&b, &long, LogStream::Stdout).await, "done\n");
    let runs = docker(&["exec", &name, "cat", &count]);
    assert_eq!(runs.lines().count(), 1, "ran once: {runs:?}");
    let containers = warm_containers(&job, &node);
    assert_eq!(containers.len(), 1, "{containers:?}");
    assert_eq!(containers[0].1, cid, "same container");
    // The recovered driver keeps using it.
    let next = unique("run");
    b.start(warm_spec(&next, &node, &job, json!({"cmd": "true"})))
        .await
        .unwrap();
    wait_for(&mut rx, &next, TaskState::Finished, Duration::from_secs(30)).await;
    assert_eq!(warm_containers(&job, &node)[0].1, cid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_warm_runs_of_a_job_make_one_container() {
    let Some(_lock) = docker_ready("concurrent_warm_runs_of_a_job_make_one_container").await else {
        return;
    };
    let mut h = harness().await;
    let _cleanup = WarmCleanup(h.node.clone());
    let job = unique("job");
    let ids: Vec<String> = (0..6).map(|_| unique("run")).collect();
    let starts = ids.iter().map(|id| {
        h.driver.start(warm_spec(
            id,
            &h.node,
            &job,
            json!({"cmd": "sleep 1; echo $MESOS_TASK_ID"}),
        ))
    });
    for r in futures::future::join_all(starts).await {
        r.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = h.driver.list().await.unwrap();
        if list.len() == ids.len() && list.iter().all(|s| s.state.is_terminal()) {
            assert!(
                list.iter()
                    .all(|s| s.state == TaskState::Finished && s.exit_code == Some(0)),
                "{list:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "runs did not end: {list:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in &ids {
        assert_eq!(
            read_log(&h.driver, id, LogStream::Stdout).await,
            format!("{id}\n")
        );
    }
    let containers = warm_containers(&job, &h.node);
    assert_eq!(containers.len(), 1, "{containers:?}");
    while h.rx.try_recv().is_ok() {}
}
