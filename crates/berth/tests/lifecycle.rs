//! An app's whole life on a real server and agent: deploy 5 real `sleep` processes, kill one
//! with and without scaling, delete the app; every step checked against `/proc`.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

const APP: &str = "/it/sleepy";
const T: Duration = Duration::from_secs(30);

fn ids(tasks: &[Value]) -> BTreeSet<String> {
    tasks
        .iter()
        .map(|t| t["id"].as_str().expect("task id").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_kill_scale_replace_delete() {
    let c = Cluster::start("lifecycle").await;
    let api = &c.api;

    // Deploy: 201 with Location, Marathon-Deployment-Id, and the deployment is listed at once.
    let r = api.post("/v2/apps", &cmd_app(APP, "sleep 3600", 5)).await;
    assert_eq!(r.status, 201, "POST /v2/apps: {}", r.text);
    assert_eq!(r.header("location").as_deref(), Some("/v2/apps/it/sleepy"));
    let dep = r
        .header("marathon-deployment-id")
        .expect("Marathon-Deployment-Id header");
    assert!(!dep.is_empty());
    assert_eq!(r.json["id"], APP);
    assert_eq!(r.json["instances"], 5);
    assert_eq!(r.json["deployments"][0]["id"], dep.as_str());
    let listed = api.deployments().await;
    assert!(
        listed.iter().any(|d| d["id"] == dep.as_str()),
        "deployment {dep} not listed right after the POST: {listed:?}"
    );

    // 5 TASK_RUNNING, each one real `sleep` process with Marathon's environment.
    let tasks = api.wait_running(APP, 5, T).await;
    let task_ids = ids(&tasks);
    assert_eq!(task_ids.len(), 5);
    for t in &tasks {
        let id = t["id"].as_str().unwrap();
        let procs = task_processes(id, "sleep");
        assert_eq!(procs.len(), 1, "task {id}: processes {procs:?}");
        let p = &procs[0];
        assert_eq!(p.cmdline, ["sleep", "3600"]);
        assert!(p.env_is("MARATHON_APP_ID", APP), "env {:?}", p.env);
        let port0 = t["ports"][0].as_u64().expect("task has a port");
        assert!(
            p.env_is("PORT0", &port0.to_string()),
            "PORT0 of {id}: {:?} vs task port {port0}",
            p.env.get("PORT0")
        );
        assert_eq!(t["host"], "127.0.0.1");
        assert_eq!(t["appId"], APP);
    }
    let pids = c.app_pids(APP, "sleep");
    assert_eq!(
        pids.keys().cloned().collect::<BTreeSet<_>>(),
        task_ids,
        "the real processes are exactly the running tasks"
    );
    api.wait_no_deployments(T).await;
    let app = api.get_ok(&format!("/v2/apps{APP}")).await;
    assert_eq!(app["app"]["tasksRunning"], 5);
    assert_eq!(app["app"]["tasks"].as_array().map(Vec::len), Some(5));

    // Kill one with scale=true: 4 tasks, instances 4, the process gone, no replacement.
    let victim = tasks[0]["id"].as_str().unwrap().to_string();
    let victim_pid = pids[&victim];
    let r = api
        .delete(&format!("/v2/apps{APP}/tasks/{victim}?scale=true"))
        .await;
    assert_eq!(r.status, 200, "kill with scale: {}", r.text);
    assert!(r.json["deploymentId"].is_string(), "{}", r.text);
    wait_until(T, "the scaled-down app to have 4 running tasks", || async {
        let now = api.running_ids(APP).await;
        now.len() == 4 && !now.contains(&victim) && api.tasks(APP).await.len() == 4
    })
    .await;
    wait_until(T, "the killed process to exit", || async {
        !pid_alive(victim_pid)
    })
    .await;
    let app = api.get_ok(&format!("/v2/apps{APP}")).await;
    assert_eq!(app["app"]["instances"], 4, "instances after scale=true");
    api.wait_no_deployments(T).await;
    // Nothing replaces it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after_scale = api.running_ids(APP).await;
    assert_eq!(after_scale.len(), 4);
    assert_eq!(api.tasks(APP).await.len(), 4);
    assert_eq!(c.app_pids(APP, "sleep").len(), 4);

    // Kill one without scale: it is replaced by a new task (new id, new process).
    let victim2 = after_scale.iter().next().unwrap().clone();
    let victim2_pid = c.app_pids(APP, "sleep")[&victim2];
    let r = api.delete(&format!("/v2/apps{APP}/tasks/{victim2}")).await;
    assert_eq!(r.status, 200, "kill without scale: {}", r.text);
    assert_eq!(r.json["task"]["id"], victim2.as_str(), "{}", r.text);
    let replaced = wait_for(T, "a replacement task", || async {
        let now = api.running_ids(APP).await;
        (now.len() == 4 && !now.contains(&victim2) && api.tasks(APP).await.len() == 4)
            .then_some(now)
    })
    .await;
    let fresh: Vec<&String> = replaced.difference(&after_scale).collect();
    assert_eq!(fresh.len(), 1, "exactly one new task: {replaced:?}");
    wait_until(T, "the killed process to exit", || async {
        !pid_alive(victim2_pid)
    })
    .await;
    let pids = c.app_pids(APP, "sleep");
    assert_eq!(pids.keys().cloned().collect::<BTreeSet<_>>(), replaced);
    let app = api.get_ok(&format!("/v2/apps{APP}")).await;
    assert_eq!(
        app["app"]["instances"], 4,
        "a kill without scale keeps instances"
    );

    // Delete: every process gone, no apps, no deployments.
    let r = api.delete(&format!("/v2/apps{APP}")).await;
    assert_eq!(r.status, 200, "DELETE app: {}", r.text);
    assert!(r.json["deploymentId"].is_string(), "{}", r.text);
    // A process in the middle of exiting has no environment left (so `app_processes` no
    // longer sees it) while its pid still exists: wait for the pids themselves too.
    wait_until(T, "all task processes gone", || async {
        c.app_processes(APP, "sleep").is_empty() && pids.values().all(|p| !pid_alive(*p))
    })
    .await;
    for pid in pids.values() {
        assert!(!pid_alive(*pid), "pid {pid} survived the app's deletion");
    }
    let apps = api.apps().await;
    assert_eq!(apps["apps"], serde_json::json!([]), "{apps}");
    api.wait_no_deployments(T).await;
    let r = api.get(&format!("/v2/apps{APP}")).await;
    assert_eq!(r.status, 404);
    wait_until(T, "no tasks listed", || async {
        api.get_ok("/v2/tasks").await["tasks"]
            .as_array()
            .is_some_and(Vec::is_empty)
    })
    .await;
}

/// Marathon's `text/plain` task list, which haproxy-marathon-bridge and similar scripts read
/// (`curl -H 'Accept: text/plain' $MARATHON/v2/tasks`): a line per app and service port with
/// the running tasks' `host:port`, and one line of hosts for an app without ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_task_list_for_load_balancer_scripts() {
    let c = Cluster::start("tasks-text").await;
    let api = &c.api;
    let mut web = cmd_app("/lb/web", "sleep 3600", 2);
    web["portDefinitions"] = serde_json::json!([{"port": 0}, {"port": 0}]);
    let mut worker = cmd_app("/lb/worker", "sleep 3600", 1);
    worker["portDefinitions"] = serde_json::json!([]);
    for app in [&web, &worker] {
        let r = api.post("/v2/apps", app).await;
        assert_eq!(r.status, 201, "POST {}: {}", app["id"], r.text);
    }
    api.wait_running("/lb/web", 2, T).await;
    api.wait_running("/lb/worker", 1, T).await;

    let service_ports: Vec<u64> = api.get_ok("/v2/apps/lb/web").await["app"]["portDefinitions"]
        .as_array()
        .expect("portDefinitions")
        .iter()
        .map(|d| d["port"].as_u64().expect("assigned service port"))
        .collect();
    assert_eq!(service_ports.len(), 2);
    let web_tasks = api.tasks("/lb/web").await;
    let mut web_text = String::new();
    for (i, service_port) in service_ports.iter().enumerate() {
        web_text.push_str(&format!("lb_web\t{service_port}\t"));
        for t in &web_tasks {
            let host = t["host"].as_str().expect("host");
            let port = t["ports"][i].as_u64().expect("host port");
            web_text.push_str(&format!("{host}:{port}\t"));
        }
        web_text.push('\n');
    }
    let worker_host = api.tasks("/lb/worker").await[0]["host"]
        .as_str()
        .expect("host")
        .to_string();
    let worker_text = format!("lb_worker\t \t{worker_host} \n");

    let plain = |path: &'static str| async move {
        let r = api
            .http
            .get(api.url(path))
            .header("Accept", "text/plain")
            .send()
            .await
            .expect("GET text/plain");
        assert_eq!(r.status(), 200, "{path}");
        let content_type = r.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .to_string();
        assert!(
            content_type.starts_with("text/plain"),
            "{path}: {content_type}"
        );
        r.text().await.expect("body")
    };
    assert_eq!(plain("/v2/tasks").await, format!("{web_text}{worker_text}"));
    assert_eq!(plain("/v2/apps/lb/web/tasks").await, web_text);

    // Without asking for text (curl's `*/*`), the JSON list as before.
    let r = api
        .http
        .get(api.url("/v2/tasks"))
        .header("Accept", "*/*")
        .send()
        .await
        .expect("GET */*");
    let listed: serde_json::Value = r.json().await.expect("JSON task list");
    assert_eq!(
        listed["tasks"].as_array().map(Vec::len),
        Some(3),
        "{listed}"
    );
}
