//! Agent-side observability end to end on `berth dev`: task logs through the server (tail,
//! follow, stderr, the CLI), the agent's Prometheus `/metrics` read from cgroups and `/proc`,
//! and node conditions on `/api/v1/nodes`.

use futures::StreamExt;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port")
}

/// `berth dev` as a child process with its temporary data dir inside `dir`. Dropping it stops
/// it with SIGINT (which stops its tasks), then kills whatever is left of it.
struct Dev {
    child: Option<Child>,
    dir: tempfile::TempDir,
    base: String,
    http: reqwest::Client,
}

impl Dev {
    async fn start() -> Dev {
        let dir = tempfile::Builder::new()
            .prefix("berth-it-obs-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let base_port = 20000 + (std::process::id() % 400) as u16 * 50 + 25;
        let log = std::fs::File::create(dir.path().join("dev.log")).unwrap();
        let child = Command::new(BERTH)
            .args(["dev", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--drivers", "exec", "--conditions-interval-secs", "1"])
            .args(["--ports", &format!("{base_port}-{}", base_port + 20)])
            .env("TMPDIR", dir.path())
            .env("BERTH_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawning berth dev");
        let dev = Dev {
            child: Some(child),
            dir,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        };
        wait_for(
            Duration::from_secs(30),
            "berth dev answers /ping",
            || async {
                let r = dev.http.get(dev.url("/ping")).send().await.ok()?;
                r.status().is_success().then_some(())
            },
        )
        .await;
        dev
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, path: &str) -> (u16, String) {
        self.get_url(&self.url(path)).await
    }

    async fn get_url(&self, url: &str) -> (u16, String) {
        let r = self.http.get(url).send().await.expect("GET");
        let status = r.status().as_u16();
        (status, r.text().await.unwrap_or_default())
    }

    async fn get_json(&self, path: &str) -> Value {
        let (status, text) = self.get(path).await;
        assert_eq!(status, 200, "GET {path}: {text}");
        serde_json::from_str(&text).unwrap()
    }

    fn dump_log(&self) {
        let text = std::fs::read_to_string(self.dir.path().join("dev.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        eprintln!("----- berth dev log (last 60 lines) -----");
        for l in &lines[lines.len().saturating_sub(60)..] {
            eprintln!("{l}");
        }
    }
}

/// Pids of processes whose command line mentions `dir` (shims and tasks of this test).
fn processes_in(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cwd = std::fs::read_link(e.path().join("cwd")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle)
            || cwd.to_string_lossy().starts_with(&needle)
        {
            out.push(name);
        }
    }
    out
}

impl Drop for Dev {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_log();
        }
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let me = std::process::id().to_string();
        let left: Vec<String> = processes_in(self.dir.path())
            .into_iter()
            .filter(|p| *p != me)
            .collect();
        if !left.is_empty() {
            let _ = Command::new("kill").arg("-9").args(&left).status();
        }
    }
}

async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The numbers of `lineN` lines, panicking on anything else.
fn line_numbers(text: &str, prefix: &str) -> Vec<u64> {
    text.lines()
        .map(|l| {
            l.strip_prefix(prefix)
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected log line {l:?} in {text:?}"))
        })
        .collect()
}

fn consecutive(nums: &[u64]) -> bool {
    nums.windows(2).all(|w| w[1] == w[0] + 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_logs_metrics_and_node_conditions() {
    let dev = Dev::start().await;
    let app = json!({
        "id": "/obs/printer",
        "cmd": "i=0; while true; do echo line$i; echo err$i >&2; i=$((i+1)); sleep 0.2; done",
        "cpus": 0.1,
        "mem": 32,
        "instances": 1
    });
    let r = dev
        .http
        .post(dev.url("/v2/apps"))
        .json(&app)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
    let task_id: String = wait_for(Duration::from_secs(30), "a running task", || async {
        let v = dev.get_json("/v2/apps/obs/printer/tasks").await;
        let t = v["tasks"].as_array()?.first()?.clone();
        (t["state"] == "TASK_RUNNING").then(|| t["id"].as_str().unwrap().to_string())
    })
    .await;
    let logs = format!("/api/v1/tasks/{task_id}/logs");

    // tail=3: exactly the last three lines.
    let tail3 = wait_for(Duration::from_secs(20), "3 lines of output", || async {
        let (status, text) = dev.get(&format!("{logs}?tail=3")).await;
        assert_eq!(status, 200, "{text}");
        (text.lines().count() == 3).then_some(text)
    })
    .await;
    let nums = line_numbers(&tail3, "line");
    assert!(consecutive(&nums), "{tail3:?}");
    let (_, err) = dev.get(&format!("{logs}?tail=2&stream=stderr")).await;
    assert_eq!(line_numbers(&err, "err").len(), 2, "{err:?}");
    let (_, all) = dev.get(&logs).await;
    assert_eq!(line_numbers(&all, "line")[0], 0, "no tail: from the start");

    // follow=true: new lines keep coming on the open response.
    let resp = dev
        .http
        .get(dev.url(&format!("{logs}?tail=1&follow=true")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut body = resp.bytes_stream();
    let mut followed = String::new();
    tokio::time::timeout(Duration::from_secs(15), async {
        while line_numbers_lenient(&followed).len() < 5 {
            let chunk = body.next().await.expect("stream ended early").unwrap();
            followed.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    })
    .await
    .unwrap_or_else(|_| panic!("follow produced only {followed:?}"));
    let nums = line_numbers_lenient(&followed);
    assert!(consecutive(&nums), "{followed:?}");
    assert!(nums[0] >= *line_numbers(&tail3, "line").last().unwrap());
    drop(body);

    // The CLI prints the same lines.
    let out = Command::new(BERTH)
        .args(["task", "logs", &task_id, "--tail", "2"])
        .env("BERTH_ADDR", &dev.base)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(line_numbers(&text, "line").len(), 2, "{text:?}");
    let out = Command::new(BERTH)
        .args(["task", "logs", &task_id, "--tail", "1", "--stderr"])
        .env("BERTH_ADDR", &dev.base)
        .output()
        .unwrap();
    assert_eq!(
        line_numbers(&String::from_utf8_lossy(&out.stdout), "err").len(),
        1
    );
    // `-f` keeps printing.
    let mut follow = Command::new(BERTH)
        .args(["task", "logs", &task_id, "--tail", "1", "-f"])
        .env("BERTH_ADDR", &dev.base)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .take(4)
            .map(|l| l.unwrap())
            .collect::<Vec<_>>()
    });
    let lines = tokio::time::timeout(Duration::from_secs(15), lines)
        .await
        .expect("berth task logs -f printed 4 lines")
        .unwrap();
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(
        consecutive(&line_numbers(&lines.join("\n"), "line")),
        "{lines:?}"
    );
    let out = Command::new(BERTH)
        .args(["task", "logs", "nope.1"])
        .env("BERTH_ADDR", &dev.base)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not exist"),
        "{out:?}"
    );

    // Unknown task: 404 JSON.
    let (status, text) = dev.get("/api/v1/tasks/nope.1/logs?tail=3").await;
    assert_eq!(status, 404);
    assert!(serde_json::from_str::<Value>(&text).unwrap()["message"].is_string());

    // The node advertises its agent URL and reports its conditions.
    let (agent_url, conditions) = wait_for(Duration::from_secs(20), "node conditions", || async {
        let v = dev.get_json("/api/v1/nodes").await;
        let n = v["nodes"].as_array()?.first()?.clone();
        let conditions = n["conditions"].as_array()?.clone();
        (conditions.len() >= 4).then(|| (n["agentUrl"].as_str().unwrap().to_string(), conditions))
    })
    .await;
    for kind in [
        "DiskPressure",
        "PidPressure",
        "KeysPressure",
        "MemoryPressure",
    ] {
        let c = conditions
            .iter()
            .find(|c| c["type"] == kind)
            .unwrap_or_else(|| panic!("no {kind} in {conditions:?}"));
        assert!(
            c["ok"].is_boolean() && !c["message"].as_str().unwrap().is_empty(),
            "{c}"
        );
    }
    assert!(
        !conditions.iter().any(|c| c["type"] == "DockerReachable"),
        "docker is not enabled: {conditions:?}"
    );

    // Prometheus metrics of the task, straight from the agent.
    let (status, metrics) = dev.get_url(&format!("{agent_url}/metrics")).await;
    assert_eq!(status, 200);
    let prefix = format!(
        "berth_task_cpu_seconds_total{{app_id=\"/obs/printer\",task_id=\"{task_id}\",node=\""
    );
    let line = metrics
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no cpu metric for {task_id} in\n{metrics}"));
    let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(value >= 0.0, "{line}");
    for name in ["berth_task_memory_usage_bytes", "berth_task_restarts_total"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with(name) && l.contains(&task_id)),
            "no {name} for {task_id} in\n{metrics}"
        );
    }
    // An exec task shares the node's network namespace: its counters would be the node's.
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("berth_task_network_") && l.contains(&task_id)),
        "network counters for a task on the host's network:\n{metrics}"
    );
    assert!(metrics.contains("berth_node_condition_ok{"), "{metrics}");

    // A followed stream ends once the task is gone.
    let resp = dev
        .http
        .get(dev.url(&format!("{logs}?tail=1&follow=true")))
        .send()
        .await
        .unwrap();
    let r = dev
        .http
        .delete(dev.url("/v2/apps/obs/printer"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let rest = tokio::time::timeout(Duration::from_secs(20), resp.text())
        .await
        .expect("the followed log stream ends when the task ends")
        .unwrap();
    assert!(!rest.is_empty());
}

/// Like [`line_numbers`] but ignores a partial last line.
fn line_numbers_lenient(text: &str) -> Vec<u64> {
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    line_numbers(complete, "line")
}
