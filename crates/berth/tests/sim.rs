//! `berth sim` against a real `berth server`: 200 simulated nodes, 20 apps x 100 instances
//! (half labelled for the fake driver, half plain exec apps with a hostname MAX_PER
//! constraint, simulated all the same) all reach TASK_RUNNING, and deleting the apps removes
//! every task. A
//! correctness test: the timeouts are generous and nothing is timed.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NODES: usize = 200;
const APPS: usize = 20;
const INSTANCES: usize = 100;
const T: Duration = Duration::from_secs(120);

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .env("BERTH_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawning berth")
}

async fn metrics(http: &reqwest::Client, base: &str) -> serde_json::Value {
    match http.get(format!("{base}/metrics")).send().await {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(_) => serde_json::Value::Null,
    }
}

fn gauge(m: &serde_json::Value, name: &str) -> u64 {
    m["gauges"][name]["value"].as_u64().unwrap_or(0)
}

/// Polls `/metrics` until `done` holds; panics with the last metrics after `T`.
async fn wait_metrics(
    http: &reqwest::Client,
    base: &str,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) {
    let t = Instant::now();
    loop {
        let m = metrics(http, base).await;
        if done(&m) {
            return;
        }
        assert!(t.elapsed() < T, "timed out waiting for {what}: {m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_nodes_run_and_remove_2000_tasks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let data = dir.path().join("server");
    let mut procs = Procs(vec![spawn(&[
        "server",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
        data.to_str().expect("utf-8 path"),
    ])]);
    let t = Instant::now();
    while reqwest::Client::new()
        .get(format!("{base}/ping"))
        .send()
        .await
        .is_err()
    {
        assert!(t.elapsed() < T, "the server did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Authentication is on: the test reads as the admin, the simulated nodes join with the
    // join token (each gets its own node credential).
    let admin = std::fs::read_to_string(data.join("admin.token")).expect("admin.token");
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", admin.trim()).parse().expect("header"),
    );
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("client");
    let join_file = data.join("join.token");
    procs.0.push(spawn(&[
        "sim",
        "--server",
        &base,
        "--join-token-file",
        join_file.to_str().expect("utf-8 path"),
        "--nodes",
        &NODES.to_string(),
        "--attributes",
        "rack=r1..r40",
    ]));
    wait_metrics(&http, &base, "every node to register", |m| {
        gauge(m, "berth.nodes.ready") == NODES as u64
    })
    .await;

    // Node attributes cycle as asked.
    let nodes: serde_json::Value = http
        .get(format!("{base}/api/v1/nodes"))
        .send()
        .await
        .expect("GET nodes")
        .json()
        .await
        .expect("nodes json");
    let text = nodes.to_string();
    assert!(
        text.contains("\"r40\""),
        "rack r40 is assigned: {text:.300}"
    );

    for i in 0..APPS {
        let mut body = serde_json::json!({
            "id": format!("/sim/app-{i:02}"),
            "cmd": "sleep 1",
            "cpus": 0.01,
            "mem": 1,
            "instances": INSTANCES,
            "labels": {"BERTH_DRIVER": "fake"},
        });
        if i % 2 == 1 {
            // As a new user posts it (issue #11): no BERTH_DRIVER label, so the app asks for
            // `exec`, which simulated nodes offer (simulated too); at most 5 per host.
            body = serde_json::json!({
                "id": format!("/sim/app-{i:02}"),
                "cmd": "sleep 3600",
                "cpus": 0.01,
                "mem": 8,
                "instances": INSTANCES,
                "constraints": [["hostname", "MAX_PER", "5"]],
            });
        }
        let r = http
            .post(format!("{base}/v2/apps"))
            .json(&body)
            .send()
            .await
            .expect("POST app");
        assert_eq!(
            r.status().as_u16(),
            201,
            "{}",
            r.text().await.unwrap_or_default()
        );
    }
    let total = (APPS * INSTANCES) as u64;
    wait_metrics(&http, &base, "every task to run", |m| {
        gauge(m, "berth.tasks.TASK_RUNNING") == total
    })
    .await;
    // Each app reports its instances as running.
    let apps: serde_json::Value = http
        .get(format!("{base}/v2/apps"))
        .send()
        .await
        .expect("GET apps")
        .json()
        .await
        .expect("apps json");
    let list = apps["apps"].as_array().expect("apps array");
    assert_eq!(list.len(), APPS);
    for a in list {
        assert_eq!(a["tasksRunning"], INSTANCES, "{}", a["id"]);
    }

    for i in 0..APPS {
        let r = http
            .delete(format!("{base}/v2/apps/sim/app-{i:02}"))
            .send()
            .await
            .expect("DELETE app");
        assert!(r.status().is_success(), "delete app {i}: {}", r.status());
    }
    wait_metrics(&http, &base, "every task to be gone", |m| {
        m["gauges"].is_object()
            && gauge(m, "berth.apps") == 0
            && m["gauges"]
                .as_object()
                .is_some_and(|g| !g.keys().any(|k| k.starts_with("berth.tasks.")))
    })
    .await;
}
