//! The service catalog end to end: Berth's `/api/v1/services`, the Consul read API and
//! `berth service`, with blocking queries that wait for a real health change of exec tasks.

mod common;

use common::{Api, Cluster, cmd_app, wait_until};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

/// `/prod/web`: 3 exec tasks with one named port, healthy while `ready` exists in their
/// sandbox (never killed for failing: `maxConsecutiveFailures` 0), and an `edge` tag.
fn web_app() -> Value {
    let mut app = cmd_app("/prod/web", "touch ready; exec sleep 3600", 3);
    app["portDefinitions"] = json!([{"port": 0, "name": "http", "protocol": "tcp"}]);
    app["labels"] = json!({"edge": "tag", "team": "web"});
    app["healthChecks"] = json!([{"protocol": "COMMAND", "command": {"value": "test -f ready"},
        "gracePeriodSeconds": 30, "intervalSeconds": 1, "maxConsecutiveFailures": 0}]);
    app
}

fn sandbox(c: &Cluster, task_id: &str) -> PathBuf {
    c.path()
        .join("agent/exec/tasks")
        .join(task_id)
        .join("sandbox")
}

fn consul_index(r: &common::Reply) -> u64 {
    r.header("x-consul-index")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no X-Consul-Index on {}: {:?}", r.text, r.headers))
}

/// Runs `berth <args>` against the cluster; its stdout (the command must succeed).
fn cli(c: &Cluster, args: &[&str]) -> String {
    let out = c
        .client_command()
        .args(args)
        .output()
        .expect("running berth");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "berth {args:?}: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

async fn healthy_count(api: &Api) -> usize {
    let r = api.get("/api/v1/services/web-prod").await;
    r.json["service"]["instances"]
        .as_array()
        .map(|a| a.iter().filter(|i| i["healthy"] == json!(true)).count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn catalog_and_consul_api_follow_instance_health_with_blocking_queries() {
    let c = Cluster::start("catalog").await;
    let api = &c.api;
    let r = api.post("/v2/apps", &web_app()).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let service_port = r.json["portDefinitions"][0]["port"]
        .as_u64()
        .expect("a service port was allocated");
    assert!(service_port >= 10000, "{}", r.text);
    let tasks = api.wait_running("/prod/web", 3, T).await;
    wait_until(T, "3 healthy instances", || async {
        healthy_count(api).await == 3
    })
    .await;

    // The task JSON carries the app's service ports, as Marathon's does.
    for t in &tasks {
        assert_eq!(t["servicePorts"], json!([service_port]), "{t}");
    }

    // Berth's catalog.
    let r = api.get("/api/v1/services").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let index: u64 = r
        .header("x-berth-index")
        .expect("X-Berth-Index")
        .parse()
        .expect("index");
    assert!(index >= 1);
    assert_eq!(r.json["index"], json!(index));
    let summary = &r.json["services"][0];
    assert_eq!(summary["name"], "web-prod", "{}", r.text);
    assert_eq!(summary["apps"], json!(["/prod/web"]));
    assert_eq!(summary["servicePorts"], json!([service_port]));
    assert_eq!(summary["tags"], json!(["edge"]));
    assert_eq!(
        (summary["instances"].clone(), summary["healthy"].clone()),
        (json!(3), json!(3))
    );

    let r = api.get("/api/v1/services/web-prod").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let instances = r.json["service"]["instances"]
        .as_array()
        .expect("instances")
        .clone();
    let task_ports: BTreeSet<(String, u64)> = tasks
        .iter()
        .map(|t| {
            (
                t["id"].as_str().unwrap_or("").to_string(),
                t["ports"][0].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let instance_ports: BTreeSet<(String, u64)> = instances
        .iter()
        .map(|i| {
            assert_eq!(i["ports"][0]["name"], "http", "{i}");
            assert_eq!(i["ports"][0]["servicePort"], json!(service_port), "{i}");
            assert_eq!(i["appId"], "/prod/web");
            assert_eq!(i["labels"]["team"], "web");
            assert!(!i["address"].as_str().unwrap_or("").is_empty(), "{i}");
            (
                i["id"].as_str().unwrap_or("").to_string(),
                i["ports"][0]["port"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(instance_ports, task_ports);
    let r = api.get("/api/v1/services/nope-prod").await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert!(
        r.message().contains("no service named 'nope-prod'"),
        "{}",
        r.text
    );
    for bad in ["index=abc", "index=1&wait=forever"] {
        let r = api.get(&format!("/api/v1/services?{bad}")).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
        assert!(r.message().contains("query parameter"), "{}", r.text);
    }

    // Consul's read API.
    let r = api.get("/v1/catalog/services").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json, json!({"web-prod": ["edge"]}));
    assert!(consul_index(&r) >= 1);
    assert_eq!(r.header("x-consul-knownleader").as_deref(), Some("true"));
    let r = api.get("/v1/catalog/service/web-prod").await;
    assert_eq!(r.json.as_array().map(Vec::len), Some(3), "{}", r.text);
    let e = &r.json[0];
    assert_eq!(e["ServiceName"], "web-prod");
    assert_eq!(e["ServiceTags"], json!(["edge"]));
    assert_eq!(
        e["ServiceMeta"]["port_http"],
        json!(e["ServicePort"].to_string())
    );
    assert!(
        task_ports.iter().any(|(_, p)| json!(p) == e["ServicePort"]),
        "{e}"
    );
    assert_eq!(
        api.get("/v1/catalog/service/web-prod?tag=edge")
            .await
            .json
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    assert_eq!(
        api.get("/v1/catalog/service/web-prod?tag=other").await.json,
        json!([])
    );
    let r = api.get("/v1/health/service/nope-prod").await;
    assert_eq!((r.status, r.json.clone()), (200, json!([])), "{}", r.text);
    assert!(
        consul_index(&r) >= 1,
        "an unknown service's index is >= 1 too"
    );

    let r = api.get("/v1/health/service/web-prod?passing").await;
    assert_eq!(r.json.as_array().map(Vec::len), Some(3), "{}", r.text);
    assert_eq!(r.json[0]["Checks"][0]["Status"], "passing");
    assert_eq!(r.json[0]["Service"]["Service"], "web-prod");
    let passing_index = consul_index(&r);

    // Nothing changes: the same query with the same index waits out `wait` and answers
    // the same index.
    let started = Instant::now();
    let r = api
        .get(&format!(
            "/v1/health/service/web-prod?passing&index={passing_index}&wait=1s"
        ))
        .await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(consul_index(&r), passing_index);
    assert_eq!(r.json.as_array().map(Vec::len), Some(3));

    // A blocked query returns once an instance turns unhealthy, with a new index.
    let blocked = {
        let api = api.clone();
        tokio::spawn(async move {
            api.get(&format!(
                "/v1/health/service/web-prod?passing=1&index={passing_index}&wait=10s"
            ))
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !blocked.is_finished(),
        "the blocking query answered before anything changed"
    );
    let sick = tasks[0]["id"].as_str().expect("task id").to_string();
    std::fs::remove_file(sandbox(&c, &sick).join("ready")).expect("removing ready");
    let r = blocked.await.expect("blocking query");
    let new_index = consul_index(&r);
    assert!(
        new_index > passing_index,
        "{new_index} after {passing_index}"
    );
    let ids: BTreeSet<&str> = r
        .json
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["Service"]["ID"].as_str())
        .collect();
    assert_eq!(ids.len(), 2, "{}", r.text);
    assert!(!ids.contains(sick.as_str()), "{}", r.text);

    // Without `passing` the sick instance is there, critical, with its reason; Berth's
    // catalog marks it too.
    let r = api.get("/v1/health/service/web-prod").await;
    let statuses: Vec<(String, String)> = r
        .json
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["Service"]["ID"].as_str().unwrap_or("").to_string(),
                e["Checks"][0]["Status"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(statuses.len(), 3);
    assert!(
        statuses.contains(&(sick.clone(), "critical".to_string())),
        "{statuses:?}"
    );
    let r = api.get("/api/v1/services/web-prod").await;
    let i = r.json["service"]["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .find(|i| i["id"] == json!(sick))
        .expect("the sick instance")
        .clone();
    assert_eq!(i["healthy"], json!(false), "{i}");
    assert!(!i["reason"].as_str().unwrap_or("").is_empty(), "{i}");

    // An unrelated change (another app) does not move this query's index.
    let r = api
        .post("/v2/apps", &cmd_app("/other/batch", "exec sleep 3600", 1))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    api.wait_running("/other/batch", 1, T).await;
    let r = api.get("/v1/health/service/web-prod?passing").await;
    assert_eq!(consul_index(&r), new_index, "{}", r.text);
    let r = api.get("/v1/catalog/services").await;
    assert_eq!(r.json, json!({"web-prod": ["edge"], "batch-other": []}));

    // Healthy again: back in the passing set.
    std::fs::write(sandbox(&c, &sick).join("ready"), b"").expect("touching ready");
    wait_until(T, "the instance passes again", || async {
        healthy_count(api).await == 3
    })
    .await;

    // `berth service list|show`.
    let out = cli(&c, &["service", "list"]);
    assert!(out.contains("web-prod") && out.contains("3/3"), "{out}");
    assert!(out.contains(&service_port.to_string()), "{out}");
    let out = cli(&c, &["service", "show", "/prod/web"]);
    assert!(out.contains("Instances:      3 (3 healthy)"), "{out}");
    assert!(out.contains(&format!("(http -> {service_port})")), "{out}");
    let out = cli(
        &c,
        &["-o", "json", "service", "show", "web-prod", "--healthy"],
    );
    let v: Value = serde_json::from_str(&out).expect("JSON output");
    assert_eq!(
        v["service"]["instances"].as_array().map(Vec::len),
        Some(3),
        "{out}"
    );
}

/// The Python with py-consul: `BERTH_PYTHON` or the repo's `.venv-compat` (made by
/// `scripts/test.sh`); `None` (the test skips) unless CI or `BERTH_REQUIRE_COMPAT` asks for it.
fn consul_python() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = std::env::var_os("BERTH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".venv-compat/bin/python"));
    let has_consul = std::process::Command::new(&python)
        .args(["-c", "import consul"])
        .output()
        .is_ok_and(|o| o.status.success());
    let required = std::env::var("BERTH_REQUIRE_COMPAT").is_ok_and(|v| !v.is_empty() && v != "0")
        || std::env::var_os("CI").is_some();
    match (has_consul, required) {
        (true, _) => Some(python),
        (false, true) => panic!(
            "{} cannot import consul: run scripts/test.sh (it installs py-consul 1.8.0)",
            python.display()
        ),
        (false, false) => {
            eprintln!(
                "skipped: no py-consul at {} (scripts/test.sh installs it)",
                python.display()
            );
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn py_consul_reads_services_and_blocks_until_a_change() {
    let Some(python) = consul_python() else {
        return;
    };
    let c = Cluster::start("catalog-pyconsul").await;
    let mut app = web_app();
    app["instances"] = json!(2);
    let r = c.api.post("/v2/apps", &app).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let tasks = c.api.wait_running("/prod/web", 2, T).await;
    wait_until(T, "2 healthy instances", || async {
        healthy_count(&c.api).await == 2
    })
    .await;
    let sick = sandbox(&c, tasks[0]["id"].as_str().expect("task id")).join("ready");
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/compat/consul_python_test.py");
    // py-consul sends the token as X-Consul-Token, which Berth accepts like a bearer token.
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .args(["127.0.0.1", &c.port.to_string(), &c.admin_token()])
        .arg(&sick)
        .output()
        .await
        .expect("running the py-consul script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "py-consul script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all passed"), "{stdout}");
}
