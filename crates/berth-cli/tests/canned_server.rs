//! Runs the CLI against a tiny in-process axum server that answers with canned
//! Marathon-shaped JSON, and checks what `run` prints and returns.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use berth_cli::{CliError, ClientCommand, ClientOpts, run_with_output};
use clap::Parser;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug, Parser)]
struct TestCli {
    #[command(flatten)]
    opts: ClientOpts,
    #[command(subcommand)]
    cmd: ClientCommand,
}

#[derive(Default)]
struct Canned {
    deployment_polls: AtomicUsize,
    progress_polls: AtomicUsize,
    node_polls: AtomicUsize,
}

const VERSION: &str = "2024-01-01T00:00:00.000Z";

fn apps_body() -> Value {
    json!({"apps": [
        {"id": "/web", "cmd": "python3 -m http.server $PORT0", "instances": 2, "cpus": 0.1, "mem": 32.0,
         "tasksRunning": 2, "tasksStaged": 0, "tasksHealthy": 2, "tasksUnhealthy": 0,
         "healthChecks": [{"protocol": "HTTP", "path": "/"}], "deployments": []},
        {"id": "/db", "instances": 1, "cpus": 1.0, "mem": 512.0,
         "container": {"type": "DOCKER", "docker": {"image": "postgres:16"}},
         "tasksRunning": 0, "tasksStaged": 1, "tasksHealthy": 0, "tasksUnhealthy": 0,
         "healthChecks": [], "deployments": [{"id": "dep-db"}]}
    ]})
}

async fn list_apps(RawQuery(q): RawQuery) -> Response {
    if q.as_deref() != Some("embed=app.counts") {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"message": format!("query {q:?}")})),
        )
            .into_response();
    }
    Json(apps_body()).into_response()
}

async fn put_app(Path(id): Path<String>, RawQuery(q): RawQuery, body: Bytes) -> Response {
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"message": "Invalid JSON"})),
            )
                .into_response();
        }
    };
    if id == "bad" {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"message": "Object is not valid", "details": [
                {"path": "/cpus", "errors": ["error.min"]},
                {"path": "/container/docker/image", "errors": ["must not be empty", "is required"]}
            ]})),
        )
            .into_response();
    }
    if id == "locked" && q.as_deref() != Some("force=true") {
        return (
            StatusCode::CONFLICT,
            Json(json!({"message": "App is locked by one or more deployments. Override with the option '?force=true'",
                        "deployments": [{"id": "dep-old"}]})),
        )
            .into_response();
    }
    let dep = match body["id"].as_str() {
        Some("/stuck") => "dep-stuck",
        Some("/prog") => "dep-prog",
        Some("/blocked") => "dep-blocked",
        Some("/rolled") => "dep-rolled",
        _ => "dep-1",
    };
    (
        StatusCode::CREATED,
        Json(json!({"deploymentId": dep, "version": VERSION})),
    )
        .into_response()
}

async fn get_app(Path(id): Path<String>) -> Response {
    if id == "prog" || id == "rolled" {
        let version = if id == "prog" { VERSION } else { "v-old" };
        return Json(json!({"app": {"id": format!("/{id}"), "version": version,
            "versionInfo": {"lastConfigChangeAt": version}, "instances": 2,
            "tasksRunning": 2, "tasksHealthy": 2, "healthChecks": [{"protocol": "HTTP"}]}}))
        .into_response();
    }
    if id != "web" {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"message": format!("App '/{id}' does not exist")})),
        )
            .into_response();
    }
    let mut app = apps_body()["apps"][0].clone();
    app["tasks"] = json!([{"id": "web.1", "appId": "/web", "host": "n1", "state": "TASK_RUNNING",
                           "ports": [31000], "startedAt": "2024-01-01T00:00:01.000Z",
                           "healthCheckResults": [{"alive": true}]}]);
    Json(json!({ "app": app })).into_response()
}

/// `dep-1` is listed on the first poll only; `dep-stuck` forever.
async fn deployments(State(s): State<Arc<Canned>>) -> Json<Value> {
    let n = s.deployment_polls.fetch_add(1, Ordering::SeqCst);
    let mut list = vec![
        json!({"id": "dep-stuck", "version": "v", "affectedApps": ["/stuck"],
        "affectedPods": [], "steps": [{"actions": []}], "currentActions":
        [{"action": "StartApplication", "app": "/stuck", "readinessCheckResults": []}],
        "currentStep": 1, "totalSteps": 1}),
    ];
    if n == 0 {
        list.push(
            json!({"id": "dep-1", "version": "v", "affectedApps": ["/web"], "affectedPods": [],
            "steps": [], "currentActions": [], "currentStep": 1, "totalSteps": 1}),
        );
    }
    Json(Value::Array(list))
}

fn not_found(what: String) -> Response {
    (StatusCode::NOT_FOUND, Json(json!({ "message": what }))).into_response()
}

/// Berth's view of a deployment of one app with these counts.
fn berth_deployment_json(
    id: &str,
    app: &str,
    (target, old, new, healthy): (u32, u32, u32, u32),
    blocked: Option<&str>,
    failure: Option<Value>,
) -> Value {
    json!({"id": id, "version": VERSION, "affectedApps": [app], "affectedPods": [],
           "steps": [{"actions": [{"action": "RestartApplication", "app": app}]}],
           "currentActions": [{"action": "RestartApplication", "app": app, "readinessCheckResults": []}],
           "currentStep": 1, "totalSteps": 1, "blocked": blocked, "rollbackOf": null,
           "createdAt": "2024-01-01T00:00:00.000Z",
           "progress": [{"app": app, "targetInstances": target, "oldInstances": old,
                         "newInstances": new, "healthyNewInstances": healthy,
                         "unplaced": blocked.map(|_| json!({"count": 4, "reasons": {"insufficient mem": 7,
                             "constraint rack:UNIQUE": 3}, "summary": "7 insufficient mem, 3 constraint rack:UNIQUE"})),
                         "lastTaskFailure": failure}]})
}

fn blocked_deployment() -> Value {
    berth_deployment_json(
        "dep-blocked",
        "/blocked",
        (4, 0, 0, 0),
        Some("/blocked: 4 of 4 instances unplaced: 7 insufficient mem, 3 constraint rack:UNIQUE"),
        None,
    )
}

/// `dep-prog` moves through four states (the 2nd and 3rd equal), then is gone;
/// `dep-blocked` never moves.
async fn berth_deployment(State(s): State<Arc<Canned>>, Path(id): Path<String>) -> Response {
    match id.as_str() {
        "dep-prog" => {
            let failure = json!({"taskId": "prog.2", "state": "TASK_FAILED", "host": "n1",
                "message": "health check failed", "timestamp": "2024-01-01T00:00:01.000Z"});
            let counts = match s.progress_polls.fetch_add(1, Ordering::SeqCst) {
                0 => (2, 2, 0, 0),
                1 | 2 => (2, 1, 1, 0),
                3 => (2, 0, 2, 2),
                _ => return not_found(format!("DeploymentPlan {id} does not exist")),
            };
            let failure = (counts.3 < 2 && counts.2 > 0).then_some(failure);
            Json(berth_deployment_json(&id, "/prog", counts, None, failure)).into_response()
        }
        "dep-blocked" => Json(blocked_deployment()).into_response(),
        _ => not_found(format!("DeploymentPlan {id} does not exist")),
    }
}

/// `dep-rolled` was cancelled: only its rollback is listed.
async fn berth_deployments() -> Json<Value> {
    let mut rollback = berth_deployment_json("dep-rb", "/rolled", (2, 2, 0, 0), None, None);
    rollback["rollbackOf"] = json!("dep-rolled");
    Json(json!({"deployments": [blocked_deployment(), rollback]}))
}

fn node_json(id: &str, tasks: u32, draining: bool, blocked: Option<&str>) -> Value {
    json!({"id": id, "hostname": id, "address": "10.0.0.1:9090", "status": "ready",
           "cordoned": draining, "draining": draining, "drainBlocked": blocked,
           "resources": {"cpus": 4, "mem": 8192, "disk": 0},
           "allocatable": {"cpus": 4, "mem": 8192, "disk": 0},
           "used": {"cpus": 0, "mem": 0, "disk": 0}, "tasks": tasks,
           "lastHeartbeat": "2024-01-01T00:00:05.000Z"})
}

const WAITING: &str = "/web: 2 task(s) wait for healthy replacements (minimumHealthCapacity)";

/// `n1` drains 3 -> 2 -> 1 -> 0 tasks; `n2` keeps 2 forever.
async fn get_node(State(s): State<Arc<Canned>>, Path(id): Path<String>) -> Response {
    match id.as_str() {
        "n1" => {
            let tasks = match s.node_polls.fetch_add(1, Ordering::SeqCst) {
                0 => 2,
                1 => 1,
                _ => 0,
            };
            let blocked = (tasks == 2).then_some(WAITING);
            Json(node_json("n1", tasks, true, blocked)).into_response()
        }
        "n2" => Json(node_json("n2", 2, true, Some(WAITING))).into_response(),
        _ => not_found(format!("node '{id}' does not exist")),
    }
}

async fn node_action(Path((id, action)): Path<(String, String)>, body: Bytes) -> Response {
    assert!(body.is_empty(), "node actions send no body");
    let draining = action == "drain";
    match id.as_str() {
        "n1" => Json(node_json("n1", 3, draining, None)).into_response(),
        "n2" => Json(node_json("n2", 2, draining, None)).into_response(),
        _ => not_found(format!("node '{id}' does not exist")),
    }
}

async fn nodes() -> Json<Value> {
    Json(json!({"nodes": [node_json("n1", 3, true, None), node_json("n2", 0, false, None)]}))
}

async fn cancel_deployment(Path(id): Path<String>) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"message": format!("DeploymentPlan {id} does not exist")})),
    )
        .into_response()
}

async fn kill_tasks(RawQuery(q): RawQuery, Json(body): Json<Value>) -> Json<Value> {
    assert_eq!(q.as_deref(), Some("scale=true&wipe=false"));
    Json(json!({"deploymentId": "dep-kill", "version": "v", "ids": body["ids"]}))
}

async fn events(RawQuery(q): RawQuery) -> Response {
    assert_eq!(
        q.as_deref(),
        Some("event_type=status_update_event&event_type=app_terminated_event")
    );
    let body = concat!(
        "event: status_update_event\n",
        "data: {\"eventType\":\"status_update_event\",\"timestamp\":\"2024-01-01T00:00:00.000Z\",",
        "\"appId\":\"/web\",\"taskId\":\"web.1\",\"taskStatus\":\"TASK_RUNNING\",\"host\":\"n1\",\"message\":\"\"}\n\n",
        ": keep-alive\n\n",
        "event: app_terminated_event\n",
        "data: {\"eventType\":\"app_terminated_event\",\"timestamp\":\"2024-01-01T00:00:02.000Z\",\"appId\":\"/web\"}\n\n",
    );
    ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
}

/// A Marathon-only server (no `/api/v1`).
async fn start_server() -> String {
    serve(marathon_routes()).await
}

/// A Berth server: Marathon's API plus `/api/v1` deployments and nodes.
async fn start_berth_server() -> String {
    let routes = marathon_routes()
        .route("/api/v1/deployments", get(berth_deployments))
        .route("/api/v1/deployments/{id}", get(berth_deployment))
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/nodes/{id}", get(get_node))
        .route("/api/v1/nodes/{id}/{action}", post(node_action));
    serve(routes).await
}

fn marathon_routes() -> Router<Arc<Canned>> {
    Router::new()
        .route("/v2/apps", get(list_apps))
        .route("/v2/apps/{id}", get(get_app).put(put_app))
        .route("/v2/deployments", get(deployments))
        .route("/v2/deployments/{id}", delete(cancel_deployment))
        .route("/v2/tasks/delete", post(kill_tasks))
        .route("/v2/events", get(events))
}

async fn serve(routes: Router<Arc<Canned>>) -> String {
    let app = routes.with_state(Arc::new(Canned::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    format!("http://{addr}")
}

/// Parses `args` as the binary would and runs the command; returns (stdout, result).
async fn berth(server: &str, args: &[&str]) -> (String, Result<(), CliError>) {
    let argv = ["berth", "--server", server]
        .into_iter()
        .chain(args.iter().copied());
    let cli = TestCli::try_parse_from(argv).unwrap();
    let mut out = Vec::new();
    let res = run_with_output(&cli.opts, cli.cmd, &mut out).await;
    (String::from_utf8(out).unwrap(), res)
}

fn write_app(dir: &tempfile::TempDir, name: &str, body: &Value) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, body.to_string()).unwrap();
    path.to_str().unwrap().to_string()
}

#[tokio::test]
async fn app_list_renders_a_table_and_json() {
    let server = start_server().await;
    let (out, res) = berth(&server, &["app", "list"]).await;
    res.unwrap();
    assert_eq!(
        out,
        "ID    INSTANCES  HEALTHY  CPUS  MEM  CMD/IMAGE                      DEPLOYMENTS\n\
         /web  2/2        2        0.1   32   python3 -m http.server $PORT0  -\n\
         /db   0/1        -        1     512  postgres:16                    1\n"
    );

    let (out, res) = berth(&server, &["app", "list", "-o", "json"]).await;
    res.unwrap();
    let parsed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(parsed, apps_body());
    assert!(out.contains("\n  \"apps\""), "pretty-printed: {out}");
}

#[tokio::test]
async fn app_show_prints_facts_and_tasks() {
    let server = start_server().await;
    let (out, res) = berth(&server, &["app", "show", "web"]).await;
    res.unwrap();
    assert!(out.starts_with("ID:             /web\n"), "{out}");
    assert!(
        out.contains("Instances:      2 running / 2 desired (0 staged, 2 healthy, 0 unhealthy)")
    );
    assert!(
        out.contains("web.1  /web  n1    RUNNING  31000  2024-01-01T00:00:01Z  healthy"),
        "{out}"
    );

    let (_, res) = berth(&server, &["app", "show", "/nope"]).await;
    let err = res.unwrap_err();
    assert_eq!(err.status(), Some(404));
    assert_eq!(err.report(), "error: App '/nope' does not exist");
}

#[tokio::test]
async fn deploy_reports_validation_errors_from_a_422() {
    let server = start_server().await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_app(&dir, "bad.json", &json!({"id": "bad", "cpus": 0}));
    let (out, res) = berth(&server, &["app", "deploy", "-f", &file]).await;
    assert_eq!(out, "");
    let err = res.unwrap_err();
    assert!(matches!(err, CliError::Api { status: 422, .. }), "{err:?}");
    assert_eq!(
        err.report(),
        "error: Object is not valid\n  /cpus: error.min\n  /container/docker/image: must not be empty; is required"
    );
    assert_ne!(err.exit_code(), 0);
}

#[tokio::test]
async fn deploy_locked_app_suggests_force_and_force_is_sent() {
    let server = start_server().await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_app(
        &dir,
        "locked.json",
        &json!({"id": "/locked", "cmd": "sleep 1"}),
    );
    let (_, res) = berth(&server, &["app", "deploy", "-f", &file]).await;
    let err = res.unwrap_err();
    assert_eq!(err.status(), Some(409));
    assert!(
        err.to_string().contains("locked by deployment(s) dep-old"),
        "{err}"
    );
    let (out, res) = berth(
        &server,
        &["app", "deploy", "-f", &file, "--force", "--detach"],
    )
    .await;
    res.unwrap();
    assert_eq!(
        out,
        "Created app /locked\nDeployment:     dep-1\nVersion:        2024-01-01T00:00:00.000Z\n"
    );
}

/// Against a server without `/api/v1` the wait falls back to `/v2/deployments`.
#[tokio::test]
async fn deploy_waits_for_the_deployment_then_prints_counts() {
    let server = start_server().await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_app(&dir, "web.json", &json!({"id": "/web", "cmd": "sleep 1"}));
    let (out, res) = berth(&server, &["app", "deploy", "-f", &file, "--wait"]).await;
    res.unwrap();
    assert_eq!(
        out,
        "Created app /web\n\
         Deployment:     dep-1\n\
         Version:        2024-01-01T00:00:00.000Z\n\
         Waiting for deployment dep-1 (up to 600 s)...\n\
         step 1/1\n\
         Deployment dep-1 finished: /web has 2/2 running, 2 healthy\n"
    );
}

#[tokio::test]
async fn deploy_wait_times_out_with_the_current_step() {
    let server = start_server().await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_app(
        &dir,
        "stuck.json",
        &json!({"id": "/stuck", "cmd": "sleep 1"}),
    );
    let (_, res) = berth(
        &server,
        &["app", "deploy", "-f", &file, "--wait", "--timeout", "1"],
    )
    .await;
    let err = res.unwrap_err();
    assert!(matches!(err, CliError::Timeout(_)), "{err:?}");
    assert_eq!(
        err.report(),
        "error: deployment dep-stuck did not finish within 1 s\n  \
         last progress: step 1/1 (start /stuck)\n  \
         it is still running on the server: see `berth deployment show dep-stuck`"
    );
}

#[tokio::test]
async fn deployment_list_cancel_and_task_kill() {
    let server = start_server().await;
    let (out, res) = berth(&server, &["deployment", "list"]).await;
    res.unwrap();
    assert_eq!(
        out,
        "ID         APPS    ACTIONS       STEP  VERSION  BLOCKED\n\
         dep-stuck  /stuck  start /stuck  1/1   v        -\n\
         dep-1      /web    -             1/1   v        -\n",
        "falls back to /v2/deployments"
    );

    let (_, res) = berth(&server, &["deployment", "cancel", "nope"]).await;
    assert_eq!(
        res.unwrap_err().report(),
        "error: DeploymentPlan nope does not exist"
    );

    let (out, res) = berth(&server, &["task", "kill", "web.1", "web.2", "--scale"]).await;
    res.unwrap();
    assert_eq!(
        out,
        "Killing 2 task(s) and scaling down\nDeployment:     dep-kill\nVersion:        v\n"
    );
}

#[tokio::test]
async fn events_print_one_line_per_event_until_the_stream_ends() {
    let server = start_server().await;
    let args = [
        "events",
        "--type",
        "status_update_event",
        "--type",
        "app_terminated_event",
    ];
    let (out, res) = berth(&server, &args).await;
    res.unwrap();
    assert_eq!(
        out,
        "2024-01-01T00:00:00.000Z status_update_event /web web.1 TASK_RUNNING on n1\n\
         2024-01-01T00:00:02.000Z app_terminated_event /web\n"
    );
    let mut json_args = args.to_vec();
    json_args.extend(["-o", "json"]);
    let (out, res) = berth(&server, &json_args).await;
    res.unwrap();
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["eventType"], "app_terminated_event");
}

#[tokio::test]
async fn unreachable_server() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let server = format!("http://127.0.0.1:{port}");
    let (_, res) = berth(&server, &["node", "list"]).await;
    assert_eq!(
        res.unwrap_err().report(),
        format!("error: cannot reach Berth at {server}: is the server running?")
    );
}

#[tokio::test]
async fn deploy_shows_progress_until_the_app_runs_the_new_version() {
    let server = start_berth_server().await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_app(&dir, "prog.json", &json!({"id": "/prog", "cmd": "sleep 1"}));
    let (out, res) = berth(&server, &["app", "deploy", "-f", &file]).await;
    res.unwrap();
    assert_eq!(
        out,
        "Created app /prog\n\
         Deployment:     dep-prog\n\
         Version:        2024-01-01T00:00:00.000Z\n\
         Waiting for deployment dep-prog (up to 600 s)...\n\
         step 1/1 (restart /prog): /prog old 2, new 0/2, healthy 0/2\n\
         step 1/1 (restart /prog): /prog old 1, new 1/2, healthy 0/2; \
         blocked: /prog: task prog.2 TASK_FAILED on n1: health check failed\n\
         step 1/1 (restart /prog): /prog old 0, new 2/2, healthy 2/2\n\
         Deployment dep-prog finished: /prog has 2/2 running, 2 healthy\n"
    );
    assert!(
        !out.contains('\x1b') && !out.contains('\r'),
        "no terminal codes when not a tty"
    );

    // JSON: one final document (the deployment is gone by now).
    let (out, res) = berth(&server, &["app", "deploy", "-f", &file, "-o", "json"]).await;
    res.unwrap();
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["status"], "succeeded");
    assert_eq!(doc["deploymentId"], "dep-prog");
    assert_eq!(doc["app"]["tasksHealthy"], 2);
}

#[tokio::test]
async fn deploy_blocked_times_out_with_the_reason() {
    let server = start_berth_server().await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_app(&dir, "b.json", &json!({"id": "/blocked", "cmd": "sleep 1"}));
    let (out, res) = berth(&server, &["app", "deploy", "-f", &file, "--timeout", "1"]).await;
    assert!(
        out.ends_with(
            "step 1/1 (restart /blocked): /blocked old 0, new 0/4, healthy 0/4; \
             blocked: /blocked: 4 of 4 instances unplaced: 7 insufficient mem, 3 constraint rack:UNIQUE\n"
        ),
        "{out}"
    );
    assert_eq!(
        out.matches("step 1/1").count(),
        1,
        "one line per change: {out}"
    );
    let err = res.unwrap_err();
    assert!(matches!(err, CliError::Timeout(_)), "{err:?}");
    assert_eq!(
        err.report(),
        "error: deployment dep-blocked did not finish within 1 s: blocked: \
         /blocked: 4 of 4 instances unplaced: 7 insufficient mem, 3 constraint rack:UNIQUE\n  \
         last progress: step 1/1 (restart /blocked): /blocked old 0, new 0/4, healthy 0/4\n  \
         it is still running on the server: see `berth deployment show dep-blocked`"
    );
    assert_ne!(err.exit_code(), 0);

    // --detach returns at once.
    let (out, res) = berth(&server, &["app", "deploy", "-f", &file, "--detach"]).await;
    res.unwrap();
    assert_eq!(
        out,
        "Created app /blocked\nDeployment:     dep-blocked\nVersion:        2024-01-01T00:00:00.000Z\n"
    );
}

#[tokio::test]
async fn deploy_fails_when_the_deployment_was_rolled_back() {
    let server = start_berth_server().await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_app(&dir, "r.json", &json!({"id": "/rolled", "cmd": "sleep 1"}));
    let (_, res) = berth(&server, &["app", "deploy", "-f", &file]).await;
    let err = res.unwrap_err();
    assert!(matches!(err, CliError::Failed(_)), "{err:?}");
    assert_eq!(
        err.report(),
        "error: deployment dep-rolled was cancelled: rollback deployment dep-rb is restoring the previous version"
    );
}

#[tokio::test]
async fn deployment_show_and_list_with_blocked_reason() {
    let server = start_berth_server().await;
    let (out, res) = berth(&server, &["deployment", "show", "dep-blocked"]).await;
    res.unwrap();
    assert!(out.starts_with("ID:             dep-blocked\n"), "{out}");
    assert!(out.contains("Current:        restart /blocked\n"), "{out}");
    assert!(
        out.contains(
            "Blocked:        /blocked: 4 of 4 instances unplaced: 7 insufficient mem, 3 constraint rack:UNIQUE\n"
        ),
        "{out}"
    );
    assert!(out.contains("  1. restart /blocked  (current)\n"), "{out}");
    assert!(
        out.contains(
            "APP       TARGET  OLD  NEW  HEALTHY  UNPLACED\n\
             /blocked  4       0    0    0        4 (7 insufficient mem, 3 constraint rack:UNIQUE)\n"
        ),
        "{out}"
    );
    let (_, res) = berth(&server, &["deployment", "show", "nope"]).await;
    assert_eq!(
        res.unwrap_err().report(),
        "error: DeploymentPlan nope does not exist"
    );

    let (out, res) = berth(&server, &["deployment", "list"]).await;
    res.unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].ends_with("VERSION                   BLOCKED"),
        "{out}"
    );
    assert!(
        lines[1].ends_with(
            "/blocked: 4 of 4 instances unplaced: 7 insufficient mem, 3 constraint rack:UNIQUE"
        ),
        "{out}"
    );
    assert!(lines[2].starts_with("dep-rb "), "{out}");
}

#[tokio::test]
async fn node_cordon_drain_wait_and_status() {
    let server = start_berth_server().await;
    let (out, res) = berth(&server, &["node", "cordon", "n1"]).await;
    res.unwrap();
    assert_eq!(
        out,
        "Node n1 cordoned: no new tasks will be placed on it (3 running)\n"
    );
    let (out, res) = berth(&server, &["node", "uncordon", "n1"]).await;
    res.unwrap();
    assert_eq!(out, "Node n1 uncordoned: tasks may be placed on it again\n");

    let (out, res) = berth(&server, &["node", "drain", "n1", "--wait"]).await;
    res.unwrap();
    assert_eq!(
        out,
        "Draining node n1: waiting for 3 task(s) to move (up to 600 s)...\n\
         n1: 3 task(s) remaining\n\
         n1: 2 task(s) remaining; blocked: /web: 2 task(s) wait for healthy replacements (minimumHealthCapacity)\n\
         n1: 1 task(s) remaining\n\
         Node n1 drained: no tasks left\n"
    );

    let (_, res) = berth(
        &server,
        &["node", "drain", "n2", "--wait", "--timeout", "1"],
    )
    .await;
    let err = res.unwrap_err();
    assert!(matches!(err, CliError::Timeout(_)), "{err:?}");
    assert_eq!(
        err.report(),
        "error: node n2 still runs 2 task(s) after 1 s: /web: 2 task(s) wait for healthy \
         replacements (minimumHealthCapacity); it stays cordoned and draining"
    );

    let (out, res) = berth(&server, &["node", "list"]).await;
    res.unwrap();
    assert!(out.contains("  ready,cordoned,draining  "), "{out}");
    assert!(
        out.contains("\nn2  n2        10.0.0.1:9090  ready     "),
        "{out}"
    );
}
