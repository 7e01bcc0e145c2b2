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
}

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
    let dep = if body["id"] == "/stuck" {
        "dep-stuck"
    } else {
        "dep-1"
    };
    (
        StatusCode::CREATED,
        Json(json!({"deploymentId": dep, "version": "2024-01-01T00:00:00.000Z"})),
    )
        .into_response()
}

async fn get_app(Path(id): Path<String>) -> Response {
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

async fn start_server() -> String {
    let app = Router::new()
        .route("/v2/apps", get(list_apps))
        .route("/v2/apps/{id}", get(get_app).put(put_app))
        .route("/v2/deployments", get(deployments))
        .route("/v2/deployments/{id}", delete(cancel_deployment))
        .route("/v2/tasks/delete", post(kill_tasks))
        .route("/v2/events", get(events))
        .with_state(Arc::new(Canned::default()));
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
    let (out, res) = berth(&server, &["app", "deploy", "-f", &file, "--force"]).await;
    res.unwrap();
    assert!(out.starts_with("Created app /locked\n"), "{out}");
}

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
         Waiting for deployment dep-1 (up to 300 s)...\n\
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
        "error: deployment dep-stuck did not finish within 1 s (step 1/1: start /stuck); \
         it is still running on the server: see `berth deployment list`"
    );
}

#[tokio::test]
async fn deployment_list_cancel_and_task_kill() {
    let server = start_server().await;
    let (out, res) = berth(&server, &["deployment", "list"]).await;
    res.unwrap();
    assert!(
        out.starts_with("ID         APPS    ACTIONS       STEP  VERSION\n"),
        "{out}"
    );
    assert!(
        out.contains("dep-stuck  /stuck  start /stuck  1/1   v\n"),
        "{out}"
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
