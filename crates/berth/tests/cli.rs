//! The `berth` client subcommands against a real server and agent: deploy (PUT create and
//! update), list, scale, tasks, deployments, delete, `-o json`, and errors on stderr with a
//! non-zero exit.

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn berth(c: &Cluster, args: &[&str]) -> Out {
    let run = tokio::process::Command::new(BERTH)
        .args(args)
        .env("BERTH_ADDR", c.url())
        .env("BERTH_TOKEN", c.admin_token())
        // Never the config file of whoever runs the tests.
        .env("BERTH_CONFIG", c.path().join("cli-config.json"))
        .env_remove("BERTH_LOG")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap_or_else(|_| panic!("berth {args:?} did not exit within 60 s"))
        .expect("running berth");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs and requires success.
async fn ok(c: &Cluster, args: &[&str]) -> String {
    let o = berth(c, args).await;
    assert_eq!(
        o.code, 0,
        "berth {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        o.code, o.stdout, o.stderr
    );
    o.stdout
}

async fn json_out(c: &Cluster, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend_from_slice(&["-o", "json"]);
    let text = ok(c, &all).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("berth {all:?}: not JSON ({e}): {text}"))
}

fn write(c: &Cluster, name: &str, text: &str) -> String {
    let p = c.path().join(name);
    std::fs::write(&p, text).expect("writing a file");
    p.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_manages_apps_tasks_and_deployments() {
    const APP: &str = "/cli/app";
    let c = Cluster::start("cli").await;
    let api = &c.api;

    // deploy -f: PUT creates (and waits for the deployment by default).
    let file = write(&c, "app.json", &cmd_app(APP, "sleep 3600", 1).to_string());
    let out = ok(&c, &["app", "deploy", "-f", &file]).await;
    assert!(out.contains(&format!("Created app {APP}")), "{out}");
    assert!(out.contains("Deployment"), "{out}");
    api.wait_running(APP, 1, T).await;

    // list (table and JSON).
    let out = ok(&c, &["app", "list"]).await;
    let line = out
        .lines()
        .find(|l| l.starts_with(APP))
        .unwrap_or_else(|| panic!("{APP} not listed:\n{out}"));
    assert!(line.contains("1/1"), "{line}");
    assert!(out.lines().next().unwrap_or("").starts_with("ID"), "{out}");
    let apps = json_out(&c, &["app", "list"]).await;
    assert_eq!(apps["apps"][0]["id"], APP, "{apps}");

    // scale.
    let out = ok(&c, &["app", "scale", APP, "2"]).await;
    assert!(out.contains("Scaling app /cli/app to 2"), "{out}");
    let tasks = api.wait_running(APP, 2, T).await;
    assert_eq!(c.app_pids(APP, "sleep").len(), 2);

    // task list: both tasks, table and JSON, all and per app.
    let out = ok(&c, &["task", "list"]).await;
    for t in &tasks {
        let id = t["id"].as_str().unwrap();
        let line = out
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("task {id} not listed:\n{out}"));
        assert!(line.contains(APP) && line.contains("RUNNING"), "{line}");
    }
    let listed = json_out(&c, &["task", "list", "--app", "cli/app"]).await;
    assert_eq!(
        listed["tasks"].as_array().map(Vec::len),
        Some(2),
        "{listed}"
    );

    // deployment list: a deployment that cannot finish shows up, in both formats.
    api.wait_no_deployments(T).await;
    let stuck = write(
        &c,
        "stuck.json",
        &json!({"id": "/cli/stuck", "cmd": "sleep 3600", "cpus": 0.1, "mem": 16,
                "constraints": [["hostname", "LIKE", "nomatch"]]})
        .to_string(),
    );
    let created = json_out(&c, &["app", "deploy", "-f", &stuck, "--detach"]).await;
    let dep = created["deploymentId"]
        .as_str()
        .expect("deploymentId")
        .to_string();
    let out = ok(&c, &["deployment", "list"]).await;
    assert!(out.contains(&dep), "deployment {dep} not listed:\n{out}");
    let deps = json_out(&c, &["deployment", "list"]).await;
    let list = deps
        .as_array()
        .or_else(|| deps["deployments"].as_array())
        .unwrap_or_else(|| panic!("no deployment list in {deps}"));
    assert!(list.iter().any(|d| d["id"] == dep.as_str()), "{deps}");

    // deploy -f of an existing app updates it.
    let file = write(&c, "app.json", &cmd_app(APP, "sleep 3600", 3).to_string());
    let out = ok(
        &c,
        &["app", "deploy", "-f", &file, "--wait", "--timeout", "30"],
    )
    .await;
    assert!(out.contains(&format!("Updating app {APP}")), "{out}");
    assert!(
        out.contains("has 3/3 running"),
        "--wait reports the result: {out}"
    );
    assert_eq!(api.running_ids(APP).await.len(), 3);

    // Errors: non-zero exit, the reason on stderr.
    let bad = write(&c, "bad.json", "{\"id\": \"/cli/bad\", ");
    let o = berth(&c, &["app", "deploy", "-f", &bad]).await;
    assert_ne!(o.code, 0, "malformed file accepted: {}", o.stdout);
    assert!(o.stderr.contains("not valid JSON"), "stderr: {}", o.stderr);
    let invalid = write(
        &c,
        "invalid.json",
        &json!({"id": "/cli/invalid", "cmd": "sleep 1", "cpus": -1}).to_string(),
    );
    let o = berth(&c, &["app", "deploy", "-f", &invalid]).await;
    assert_ne!(o.code, 0, "invalid app accepted: {}", o.stdout);
    assert!(
        o.stderr.contains("Object is not valid") && o.stderr.contains("/cpus"),
        "the server's message on stderr: {}",
        o.stderr
    );
    let o = berth(&c, &["app", "delete", "/cli/nope"]).await;
    assert_ne!(o.code, 0);
    assert!(
        o.stderr.contains("App '/cli/nope' does not exist"),
        "stderr: {}",
        o.stderr
    );
    let o = berth(&c, &["app", "scale", "/cli/stuck", "2"]).await;
    assert_ne!(o.code, 0, "scaling a locked app without --force");
    assert!(
        o.stderr.contains(&dep),
        "names the locking deployment: {}",
        o.stderr
    );
    let o = berth(&c, &["app", "list", "--server", "http://127.0.0.1:1"]).await;
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("cannot reach"), "stderr: {}", o.stderr);
    assert_eq!(api.get("/v2/apps/cli/invalid").await.status, 404);

    // delete.
    let pids = c.app_pids(APP, "sleep");
    let out = ok(&c, &["app", "delete", APP, "--wait", "--timeout", "30"]).await;
    assert!(out.contains(&format!("Deleting app {APP}")), "{out}");
    assert_eq!(api.get(&format!("/v2/apps{APP}")).await.status, 404);
    wait_until(T, "the deleted app's processes to exit", || async {
        pids.values().all(|p| !pid_alive(*p))
    })
    .await;
    let o = ok(&c, &["app", "delete", "/cli/stuck", "--force"]).await;
    assert!(o.contains("Deleting app /cli/stuck"), "{o}");
    let apps = json_out(&c, &["app", "list"]).await;
    assert_eq!(apps["apps"], json!([]), "{apps}");
}

/// The client library documents exit code 2 for bad input (an unusable file) and 1 for
/// everything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_exit_codes() {
    let c = Cluster::start_server_only("cli-exit").await;
    let bad = write(&c, "bad.json", "not json at all");
    let o = berth(&c, &["app", "deploy", "-f", &bad]).await;
    assert!(o.stderr.starts_with("error: "), "stderr: {}", o.stderr);
    assert_eq!(o.code, 2, "bad input exits 2: {}", o.stderr);
    let o = berth(&c, &["app", "show", "/nope"]).await;
    assert_eq!(o.code, 1, "a 404 exits 1: {}", o.stderr);
}

/// `berth-cli` documents its options as global ("global options go anywhere", and the binary
/// is said to flatten them into its top-level parser): `berth -o json app list` and
/// `berth --server URL app list` must work like the trailing forms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_global_options_before_the_subcommand() {
    let c = Cluster::start_server_only("cli-global").await;
    let trailing = json_out(&c, &["app", "list"]).await;
    assert_eq!(trailing, json!({"apps": []}));
    let url = c.url();
    for args in [
        vec!["-o", "json", "app", "list"],
        vec!["--server", url.as_str(), "-o", "json", "app", "list"],
    ] {
        let o = berth(&c, &args).await;
        assert_eq!(o.code, 0, "berth {args:?}: {}", o.stderr);
        let v: Value = serde_json::from_str(&o.stdout).expect("JSON output");
        assert_eq!(v, trailing, "berth {args:?}");
    }
}

/// Two agents on one host: the second one's `--listen` port is taken. It must not start, and
/// must say to pass `--listen` (no server is needed to get there).
#[test]
fn agent_with_a_taken_listen_port_says_to_pass_listen() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a port");
    let addr = taken.local_addr().expect("local addr");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = std::process::Command::new(BERTH)
        .args(["agent", "--server", "http://127.0.0.1:9", "--data-dir"])
        .arg(dir.path())
        .args(["--listen", &addr.to_string(), "--drivers", "exec"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawning berth agent");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("waiting").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("berth agent kept running although {addr} is taken");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("{addr} is already in use")) && stderr.contains("pass --listen"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_commands_add_run_history_logs_kill_delete() {
    let c = Cluster::start("cli-jobs").await;
    let later = berth_core::time::format_millis(berth_core::time::now_millis() + 3_600_000);
    let file = write(
        &c,
        "hello.json",
        &json!({"name": "hello", "command": "echo hello from $MESOS_TASK_ID",
                "schedule": format!("R/{later}/PT1H")})
        .to_string(),
    );
    assert!(
        ok(&c, &["job", "add", "-f", &file])
            .await
            .contains("Saved job hello")
    );
    let list = ok(&c, &["job", "list"]).await;
    assert!(list.contains("hello") && list.contains("fresh"), "{list}");
    let shown = ok(&c, &["job", "show", "hello"]).await;
    assert!(shown.contains("echo hello from"), "{shown}");
    assert!(
        ok(&c, &["job", "run", "hello"])
            .await
            .contains("Started a run")
    );
    let runs = wait_for(T, "the run succeeds", || async {
        let v = json_out(&c, &["job", "history", "hello"]).await;
        let runs = v["runs"].as_array().cloned().unwrap_or_default();
        (runs.len() == 1 && runs[0]["status"] == "success").then_some(runs)
    })
    .await;
    let table = ok(&c, &["job", "history", "hello"]).await;
    assert!(
        table.contains("success") && table.contains("RUN"),
        "{table}"
    );
    let logs = ok(&c, &["job", "logs", "hello"]).await;
    assert_eq!(
        logs.trim(),
        format!("hello from {}", runs[0]["taskId"].as_str().unwrap())
    );
    // A long run, killed.
    let file = write(
        &c,
        "nap.json",
        &json!({"name": "nap", "command": "sleep 60", "schedule": format!("R/{later}/PT1H")})
            .to_string(),
    );
    ok(&c, &["job", "add", "-f", &file]).await;
    ok(&c, &["job", "run", "nap"]).await;
    wait_for(T, "the nap runs", || async {
        let v = json_out(&c, &["job", "history", "nap"]).await;
        (v["runs"][0]["status"] == "running").then_some(())
    })
    .await;
    ok(&c, &["job", "kill", "nap"]).await;
    let v = json_out(&c, &["job", "history", "nap"]).await;
    assert_eq!(v["runs"][0]["status"], "killed", "{v}");
    ok(&c, &["job", "delete", "nap"]).await;
    let gone = berth(&c, &["job", "show", "nap"]).await;
    assert_ne!(gone.code, 0);
    assert!(gone.stderr.contains("nap"), "{}", gone.stderr);
    let bad = berth(&c, &["job", "show", "no/such"]).await;
    assert_eq!(bad.code, 2, "{}", bad.stderr);
}
