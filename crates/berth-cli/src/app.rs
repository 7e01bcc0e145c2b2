//! `berth app ...`: Marathon's `/v2/apps`.

use crate::client::{is_created, normalize_id, query};
use crate::error::CliError;
use crate::table::{Table, truncate};
use crate::task::task_table;
use crate::view::{arr, fmt_num, int, kv, kv_list, num, or_dash, plain, s, short_time};
use crate::watch::{self, Target};
use crate::{Ctx, view};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

#[derive(Debug, clap::Args)]
pub struct AppCmd {
    #[command(subcommand)]
    pub command: AppSubcommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum AppSubcommand {
    /// List apps with their instance counts.
    #[command(visible_alias = "ls")]
    List,
    /// Show one app and its tasks.
    Show { id: String },
    /// Create or update an app from a JSON definition (PUT /v2/apps/{id}), then follow the
    /// deployment until the app runs the new version (unless --detach).
    Deploy(DeployArgs),
    /// Delete an app and kill its tasks.
    #[command(visible_alias = "rm")]
    Delete {
        id: String,
        /// Override deployments that lock the app.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Change an app's number of instances.
    Scale {
        id: String,
        /// The new number of instances.
        instances: u32,
        /// Override deployments that lock the app.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Replace all of an app's tasks (rolling, per its upgrade strategy).
    Restart {
        id: String,
        /// Override deployments that lock the app.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    /// App definition (JSON with an `id`); `-` reads standard input.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: String,
    /// Override deployments that lock the app.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub wait: DeployWaitArgs,
}

/// `app deploy` waits by default.
#[derive(Debug, Clone, clap::Args)]
pub struct DeployWaitArgs {
    /// Return as soon as the server accepted the change, printing the deployment id and version.
    #[arg(long, conflicts_with = "wait")]
    pub detach: bool,
    /// Wait for the deployment (the default; accepted for older scripts).
    #[arg(long, hide = true)]
    pub wait: bool,
    /// Give up (exit non-zero, printing why the deployment is stuck) after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub timeout: u64,
}

#[derive(Debug, Clone, clap::Args)]
pub struct WaitArgs {
    /// Wait until the deployment has finished.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up (exit non-zero) after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 300, requires = "wait")]
    pub timeout: u64,
}

pub(crate) async fn run(ctx: &mut Ctx<'_>, cmd: AppSubcommand) -> Result<(), CliError> {
    match cmd {
        AppSubcommand::List => list(ctx).await,
        AppSubcommand::Show { id } => show(ctx, &id).await,
        AppSubcommand::Deploy(args) => deploy(ctx, args).await,
        AppSubcommand::Delete { id, force, wait } => {
            let id = normalize_id(&id)?;
            let path = format!("/v2/apps{id}{}", force_query(force));
            let reply = ctx.client.delete(&path).await?;
            started(ctx, &reply, &format!("Deleting app {id}"), wait.wait)?;
            let target = Target {
                app_id: Some(id),
                deleting: true,
                ..target_of(&reply)
            };
            finish_wait(ctx, target, wait.wait, wait.timeout).await
        }
        AppSubcommand::Scale {
            id,
            instances,
            force,
            wait,
        } => {
            let id = normalize_id(&id)?;
            let path = format!("/v2/apps{id}{}", force_query(force));
            let reply = ctx
                .client
                .put(&path, &json!({ "instances": instances }))
                .await?;
            started(
                ctx,
                &reply,
                &format!("Scaling app {id} to {instances} instance(s)"),
                wait.wait,
            )?;
            let target = Target {
                app_id: Some(id),
                ..target_of(&reply)
            };
            finish_wait(ctx, target, wait.wait, wait.timeout).await
        }
        AppSubcommand::Restart { id, force, wait } => {
            let id = normalize_id(&id)?;
            let path = format!("/v2/apps{id}/restart{}", force_query(force));
            let reply = ctx.client.post(&path, &json!({})).await?;
            started(ctx, &reply, &format!("Restarting app {id}"), wait.wait)?;
            let target = Target {
                app_id: Some(id),
                ..target_of(&reply)
            };
            finish_wait(ctx, target, wait.wait, wait.timeout).await
        }
    }
}

fn force_query(force: bool) -> String {
    query(&[("force", force.to_string())])
}

async fn list(ctx: &mut Ctx<'_>) -> Result<(), CliError> {
    let body = ctx.client.get("/v2/apps?embed=app.counts").await?;
    if ctx.json_mode() {
        return ctx.json(&body);
    }
    let text = apps_table(arr(&body, "apps")).render();
    ctx.write(&text)
}

pub(crate) fn apps_table(apps: &[Value]) -> Table {
    let mut t = Table::new(&[
        "ID",
        "INSTANCES",
        "HEALTHY",
        "CPUS",
        "MEM",
        "CMD/IMAGE",
        "DEPLOYMENTS",
    ]);
    for app in apps {
        let deployments = arr(app, "deployments").len();
        t.row(vec![
            s(app, "id").to_string(),
            format!("{}/{}", int(app, "tasksRunning"), int(app, "instances")),
            healthy_cell(app),
            fmt_num(num(app, "cpus")),
            fmt_num(num(app, "mem")),
            truncate(&what_runs(app), 48),
            if deployments == 0 {
                "-".into()
            } else {
                deployments.to_string()
            },
        ]);
    }
    t
}

/// Healthy task count, or `-` when the app has no health checks.
fn healthy_cell(app: &Value) -> String {
    if arr(app, "healthChecks").is_empty() {
        "-".into()
    } else {
        int(app, "tasksHealthy").to_string()
    }
}

/// The image for container apps, else the command (or args).
fn what_runs(app: &Value) -> String {
    let image = app
        .get("container")
        .and_then(|c| c.get("docker"))
        .and_then(|d| d.get("image"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if !image.is_empty() {
        return image.to_string();
    }
    let cmd = s(app, "cmd");
    if !cmd.is_empty() {
        return cmd.replace('\n', " ");
    }
    arr(app, "args")
        .iter()
        .map(plain)
        .collect::<Vec<_>>()
        .join(" ")
}

async fn show(ctx: &mut Ctx<'_>, id: &str) -> Result<(), CliError> {
    let id = normalize_id(id)?;
    let body = ctx.client.get(&format!("/v2/apps{id}")).await?;
    if ctx.json_mode() {
        return ctx.json(&body);
    }
    // Why tasks wait (no node fits, a launch back-off): the queue knows; without it the
    // app is still shown.
    let queued = ctx.client.get("/v2/queue").await.ok().and_then(|q| {
        arr(&q, "queue")
            .iter()
            .find(|e| e.get("app").is_some_and(|a| s(a, "id") == id))
            .cloned()
    });
    let text = render_app(body.get("app").unwrap_or(&body), queued.as_ref());
    ctx.write(&text)
}

/// What a `/v2/queue` entry says about an app's waiting tasks: how many, and why.
fn describe_waiting(entry: &Value) -> Option<String> {
    let count = int(entry, "count");
    if count <= 0 {
        return None;
    }
    let tasks = if count == 1 { "task" } else { "tasks" };
    let delay = entry.get("delay");
    let left = delay.map(|d| num(d, "timeLeftSeconds")).unwrap_or(0.0);
    let why = entry
        .get("processedOffersSummary")
        .map(|p| s(p, "reason"))
        .filter(|r| !r.is_empty());
    Some(match (why, left > 0.0) {
        (_, true) => format!(
            "{count} {tasks}: launch back-off after failures, {}s left",
            left.ceil()
        ),
        (Some(why), false) => format!("{count} {tasks}: {why}"),
        (None, false) => format!("{count} {tasks}: being placed"),
    })
}

pub(crate) fn render_app(app: &Value, queued: Option<&Value>) -> String {
    let mut out = String::new();
    kv(&mut out, "ID", s(app, "id"));
    kv(&mut out, "Version", s(app, "version"));
    let image = app
        .get("container")
        .and_then(|c| c.get("docker"))
        .and_then(|d| d.get("image"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if !image.is_empty() {
        kv(&mut out, "Image", image);
    }
    if !s(app, "cmd").is_empty() {
        kv(&mut out, "Command", s(app, "cmd"));
    }
    if !arr(app, "args").is_empty() {
        kv(
            &mut out,
            "Args",
            &arr(app, "args")
                .iter()
                .map(plain)
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    kv(
        &mut out,
        "Instances",
        &format!(
            "{} running / {} desired ({} staged, {} healthy, {} unhealthy)",
            int(app, "tasksRunning"),
            int(app, "instances"),
            int(app, "tasksStaged"),
            int(app, "tasksHealthy"),
            int(app, "tasksUnhealthy"),
        ),
    );
    kv(
        &mut out,
        "Resources",
        &format!(
            "cpus {}, mem {} MiB, disk {} MiB",
            fmt_num(num(app, "cpus")),
            fmt_num(num(app, "mem")),
            fmt_num(num(app, "disk"))
        ),
    );
    let constraints: Vec<String> = arr(app, "constraints")
        .iter()
        .map(|c| match c.as_array() {
            Some(parts) => parts.iter().map(plain).collect::<Vec<_>>().join(":"),
            None => plain(c),
        })
        .collect();
    kv(&mut out, "Constraints", &or_dash(constraints.join(", ")));
    kv(&mut out, "Labels", &or_dash(kv_list(app.get("labels"))));
    let checks: Vec<String> = arr(app, "healthChecks")
        .iter()
        .map(describe_check)
        .collect();
    kv(&mut out, "Health checks", &or_dash(checks.join(", ")));
    let deployments: Vec<&str> = arr(app, "deployments")
        .iter()
        .map(|d| s(d, "id"))
        .filter(|d| !d.is_empty())
        .collect();
    kv(&mut out, "Deployments", &or_dash(deployments.join(", ")));
    if let Some(waiting) = queued.and_then(describe_waiting) {
        kv(&mut out, "Waiting", &waiting);
    }
    if let Some(f) = app.get("lastTaskFailure").filter(|f| f.is_object()) {
        kv(
            &mut out,
            "Last failure",
            &format!(
                "{} {} {} on {}: {}",
                short_time(s(f, "timestamp")),
                s(f, "taskId"),
                s(f, "state"),
                or_dash(s(f, "host")),
                s(f, "message")
            ),
        );
    }
    out.push_str("\nTasks:\n");
    let tasks = arr(app, "tasks");
    if tasks.is_empty() {
        out.push_str("(none)\n");
    } else {
        out.push_str(&task_table(tasks).render());
    }
    out
}

fn describe_check(hc: &Value) -> String {
    let protocol = view::or_dash(s(hc, "protocol"));
    let mut text = protocol;
    if let Some(cmd) = hc
        .get("command")
        .and_then(|c| c.get("value"))
        .and_then(Value::as_str)
    {
        text.push_str(&format!(" `{cmd}`"));
    }
    if !s(hc, "path").is_empty() {
        text.push_str(&format!(" {}", s(hc, "path")));
    }
    if let Some(p) = hc.get("port").and_then(Value::as_i64) {
        text.push_str(&format!(" port {p}"));
    } else if let Some(i) = hc.get("portIndex").and_then(Value::as_i64) {
        text.push_str(&format!(" port index {i}"));
    }
    text
}

async fn deploy(ctx: &mut Ctx<'_>, args: DeployArgs) -> Result<(), CliError> {
    let (source, text) = if args.file == "-" {
        let mut text = String::new();
        tokio::io::stdin()
            .read_to_string(&mut text)
            .await
            .map_err(|e| CliError::io("reading the app definition from stdin", e))?;
        ("<stdin>".to_string(), text)
    } else {
        let text = tokio::fs::read_to_string(&args.file)
            .await
            .map_err(|e| CliError::io(format!("reading {}", args.file), e))?;
        (args.file.clone(), text)
    };
    let (id, body) = parse_definition(&source, &text)?;
    let path = format!("/v2/apps{id}{}", force_query(args.force));
    let reply = ctx.client.send(Method::PUT, &path, Some(&body)).await?;
    let wait = !args.wait.detach;
    if ctx.json_mode() {
        if !wait {
            ctx.json(&reply.body)?;
        }
    } else {
        let verb = if is_created(reply.status) {
            "Created"
        } else {
            "Updating"
        };
        let mut out = format!("{verb} app {id}\n");
        kv(
            &mut out,
            "Deployment",
            &or_dash(s(&reply.body, "deploymentId")),
        );
        kv(&mut out, "Version", &or_dash(s(&reply.body, "version")));
        ctx.write(&out)?;
    }
    let target = Target {
        app_id: Some(id),
        ..target_of(&reply.body)
    };
    finish_wait(ctx, target, wait, args.wait.timeout).await
}

/// Checks an app definition file: a JSON object with a non-empty string `id`. Returns the
/// normalised id and the body to send (unchanged).
pub(crate) fn parse_definition(source: &str, text: &str) -> Result<(String, Value), CliError> {
    let body: Value = serde_json::from_str(text)
        .map_err(|e| CliError::Input(format!("{source}: not valid JSON: {e}")))?;
    if !body.is_object() {
        return Err(CliError::Input(format!(
            "{source}: expected a JSON object (one app definition)"
        )));
    }
    let id = body.get("id").and_then(Value::as_str).unwrap_or("");
    if id.trim().trim_matches('/').is_empty() {
        return Err(CliError::Input(format!(
            "{source}: the app definition needs an \"id\""
        )));
    }
    Ok((normalize_id(id)?, body))
}

/// Prints the `{deploymentId, version}` a change returned (table mode) or the JSON (unless
/// waiting: then only the final document is printed).
fn started(ctx: &mut Ctx<'_>, reply: &Value, what: &str, waiting: bool) -> Result<(), CliError> {
    if ctx.json_mode() {
        return if waiting { Ok(()) } else { ctx.json(reply) };
    }
    let mut out = format!("{what}\n");
    kv(&mut out, "Deployment", &or_dash(s(reply, "deploymentId")));
    kv(&mut out, "Version", &or_dash(s(reply, "version")));
    ctx.write(&out)
}

/// The deployment a change's reply names.
fn target_of(reply: &Value) -> Target {
    Target {
        deployment_id: s(reply, "deploymentId").to_string(),
        version: s(reply, "version").to_string(),
        ..Target::default()
    }
}

/// When waiting: follows the deployment with live progress, then reports the app's counts
/// (JSON mode: prints one document with the outcome, the last deployment view and the app).
/// Fails when the deployment was cancelled, rolled back or superseded, or on timeout.
async fn finish_wait(
    ctx: &mut Ctx<'_>,
    target: Target,
    wait: bool,
    timeout_secs: u64,
) -> Result<(), CliError> {
    if !wait {
        return Ok(());
    }
    if target.deployment_id.is_empty() {
        return Err(CliError::BadResponse {
            url: ctx.client.base_url().to_string(),
            reason: "the server returned no deploymentId to wait for".into(),
        });
    }
    let outcome = watch::follow(ctx, &target, timeout_secs).await?;
    if ctx.json_mode() {
        ctx.json(&outcome.json(&target))?;
        return outcome.into_result();
    }
    if outcome.status == watch::Status::Succeeded {
        let id = &target.deployment_id;
        let line = match (&target.app_id, &outcome.app) {
            (Some(app_id), Some(app)) => format!(
                "Deployment {id} finished: {app_id} has {}",
                watch::counts(app)
            ),
            (Some(app_id), None) if target.deleting => {
                format!("Deployment {id} finished: {app_id} deleted")
            }
            _ => format!("Deployment {id} finished"),
        };
        ctx.line(&line)?;
    }
    outcome.into_result()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_list_table() {
        let apps = json!([
            {"id": "/web", "instances": 3, "tasksRunning": 2, "tasksHealthy": 2, "cpus": 0.1, "mem": 16.0,
             "cmd": "sleep 3600", "healthChecks": [{"protocol": "HTTP"}], "deployments": [{"id": "d1"}]},
            {"id": "/db", "instances": 1, "tasksRunning": 1, "cpus": 1, "mem": 128,
             "container": {"type": "DOCKER", "docker": {"image": "postgres:16"}}, "deployments": []}
        ]);
        let text = apps_table(apps.as_array().unwrap()).render();
        assert_eq!(
            text,
            "ID    INSTANCES  HEALTHY  CPUS  MEM  CMD/IMAGE    DEPLOYMENTS\n\
             /web  2/3        2        0.1   16   sleep 3600   1\n\
             /db   1/1        -        1     128  postgres:16  -\n"
        );
    }

    #[test]
    fn app_show_lists_facts_and_tasks() {
        let app = json!({"id": "/web", "version": "v1", "cmd": "sleep 1", "instances": 1,
            "tasksRunning": 1, "cpus": 0.5, "mem": 32, "disk": 0,
            "constraints": [["hostname", "UNIQUE"]], "labels": {"team": "a"},
            "healthChecks": [{"protocol": "HTTP", "path": "/health", "portIndex": 0}],
            "deployments": [],
            "tasks": [{"id": "web.1", "appId": "/web", "host": "n1", "state": "TASK_RUNNING",
                       "ports": [31000], "startedAt": "2024-01-01T00:00:00.000Z"}]});
        let text = render_app(&app, None);
        assert!(text.contains("ID:             /web\n"), "{text}");
        assert!(!text.contains("Waiting:"), "{text}");
        assert!(text.contains(
            "Instances:      1 running / 1 desired (0 staged, 0 healthy, 0 unhealthy)\n"
        ));
        assert!(text.contains("Resources:      cpus 0.5, mem 32 MiB, disk 0 MiB\n"));
        assert!(text.contains("Constraints:    hostname:UNIQUE\n"));
        assert!(text.contains("Labels:         team=a\n"));
        assert!(text.contains("Health checks:  HTTP /health port index 0\n"));
        assert!(text.contains("Deployments:    -\n"));
        assert!(text.contains("web.1  /web  n1    RUNNING  31000"), "{text}");
    }

    #[test]
    fn app_show_says_why_tasks_wait() {
        let app = json!({"id": "/d", "instances": 2, "tasks": []});
        let unplaced = json!({"count": 2, "delay": {"overdue": true, "timeLeftSeconds": 0},
            "processedOffersSummary": {"reason": "no node fits (1 node): 1 driver docker not available"}});
        let text = render_app(&app, Some(&unplaced));
        assert!(
            text.contains(
                "Waiting:        2 tasks: no node fits (1 node): 1 driver docker not available\n"
            ),
            "{text}"
        );
        let backoff = json!({"count": 1, "delay": {"overdue": false, "timeLeftSeconds": 25.2},
            "processedOffersSummary": {"reason": null}});
        let text = render_app(&app, Some(&backoff));
        assert!(
            text.contains("Waiting:        1 task: launch back-off after failures, 26s left\n"),
            "{text}"
        );
        let text = render_app(&app, Some(&json!({"count": 0})));
        assert!(!text.contains("Waiting:"), "{text}");
    }

    #[test]
    fn definitions_need_an_id() {
        let (id, body) = parse_definition("a.json", r#"{"id":"prod/web","cmd":"x"}"#).unwrap();
        assert_eq!(id, "/prod/web");
        assert_eq!(body["id"], "prod/web", "the body is sent unchanged");
        let err = parse_definition("a.json", r#"{"cmd":"x"}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a.json: the app definition needs an \"id\""
        );
        assert!(parse_definition("a.json", "[1]").is_err());
        let err = parse_definition("a.json", "{").unwrap_err();
        assert!(err.to_string().starts_with("a.json: not valid JSON"));
    }
}
