//! `berth task ...`: Marathon's `/v2/tasks`.

use crate::Ctx;
use crate::client::{normalize_id, query};
use crate::error::CliError;
use crate::table::{Table, truncate};
use crate::view::{arr, kv, or_dash, plain, s, short_time};
use serde_json::{Value, json};

#[derive(Debug, clap::Args)]
pub struct TaskCmd {
    #[command(subcommand)]
    pub command: TaskSubcommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum TaskSubcommand {
    /// List running and staging tasks.
    #[command(visible_alias = "ls")]
    List {
        /// Only this app's tasks.
        #[arg(long, value_name = "ID")]
        app: Option<String>,
    },
    /// Kill tasks by id.
    Kill {
        #[arg(required = true, value_name = "TASK_ID")]
        ids: Vec<String>,
        /// Also lower the app's instance count, so the tasks are not replaced.
        #[arg(long)]
        scale: bool,
        /// Also forget the tasks' reservations and persistent volumes.
        #[arg(long)]
        wipe: bool,
    },
    /// Print a task's output (stdout by default), streamed from its node's agent.
    Logs {
        #[arg(value_name = "TASK_ID")]
        id: String,
        /// Keep printing new output as the task writes it (until it ends or Ctrl-C).
        #[arg(long, short = 'f')]
        follow: bool,
        /// Start with the last N lines (default: everything).
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
        /// Print stderr instead of stdout.
        #[arg(long)]
        stderr: bool,
    },
}

pub(crate) async fn run(ctx: &mut Ctx<'_>, cmd: TaskSubcommand) -> Result<(), CliError> {
    match cmd {
        TaskSubcommand::List { app } => {
            let path = match app {
                Some(id) => format!("/v2/apps{}/tasks", normalize_id(&id)?),
                None => "/v2/tasks".to_string(),
            };
            let body = ctx.client.get(&path).await?;
            if ctx.json_mode() {
                return ctx.json(&body);
            }
            let text = task_table(arr(&body, "tasks")).render();
            ctx.write(&text)
        }
        TaskSubcommand::Kill { ids, scale, wipe } => {
            let ids: Vec<String> = ids.iter().map(|i| i.trim().to_string()).collect();
            if let Some(bad) = ids.iter().find(|i| i.is_empty()) {
                return Err(CliError::Input(format!("invalid task id '{bad}'")));
            }
            let path = format!(
                "/v2/tasks/delete{}",
                query(&[("scale", scale.to_string()), ("wipe", wipe.to_string())])
            );
            let body = ctx.client.post(&path, &json!({ "ids": ids })).await?;
            if ctx.json_mode() {
                return ctx.json(&body);
            }
            let text = render_kill(&body, ids.len());
            ctx.write(&text)
        }
        TaskSubcommand::Logs {
            id,
            follow,
            tail,
            stderr,
        } => logs(ctx, &id, follow, tail, stderr).await,
    }
}

/// The query of a logs request: `stream`, `tail`, `follow`.
pub(crate) fn logs_query(follow: bool, tail: Option<usize>, stderr: bool) -> String {
    let mut q = vec![(
        "stream",
        if stderr { "stderr" } else { "stdout" }.to_string(),
    )];
    if let Some(n) = tail {
        q.push(("tail", n.to_string()));
    }
    if follow {
        q.push(("follow", "true".to_string()));
    }
    query(&q)
}

/// The path of `GET /api/v1/tasks/{id}/logs` with its query.
fn logs_path(
    id: &str,
    follow: bool,
    tail: Option<usize>,
    stderr: bool,
) -> Result<String, CliError> {
    let id = id.trim();
    if id.is_empty() || id.contains('/') {
        return Err(CliError::Input(format!("invalid task id '{id}'")));
    }
    Ok(format!(
        "/api/v1/tasks/{}/logs{}",
        crate::client::encode(id, false),
        logs_query(follow, tail, stderr)
    ))
}

/// Copies the task's output to `out` as it arrives (raw bytes: no JSON mode).
async fn logs(
    ctx: &mut Ctx<'_>,
    id: &str,
    follow: bool,
    tail: Option<usize>,
    stderr: bool,
) -> Result<(), CliError> {
    let path = logs_path(id, follow, tail, stderr)?;
    copy_stream(ctx, &path).await
}

/// Copies a streamed text response (logs) to the output as it arrives.
pub(crate) async fn copy_stream(ctx: &mut Ctx<'_>, path: &str) -> Result<(), CliError> {
    use futures::StreamExt;
    let path = path.to_string();
    let resp = ctx.client.stream(&path, "text/plain").await?;
    let url = ctx.client.url(&path);
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ctx.client.transport_error(&url, e))?;
        ctx.out
            .write_all(&chunk)
            .and_then(|()| ctx.out.flush())
            .map_err(|e| CliError::io("writing output", e))?;
    }
    Ok(())
}

/// Table of Marathon task JSON objects.
pub(crate) fn task_table(tasks: &[Value]) -> Table {
    let mut t = Table::new(&["ID", "APP", "HOST", "STATE", "PORTS", "STARTED", "HEALTH"]);
    for task in tasks {
        let state = s(task, "state");
        let ports: Vec<String> = arr(task, "ports").iter().map(plain).collect();
        t.row(vec![
            s(task, "id").to_string(),
            s(task, "appId").to_string(),
            or_dash(s(task, "host")),
            or_dash(state.strip_prefix("TASK_").unwrap_or(state)),
            or_dash(ports.join(",")),
            short_time(s(task, "startedAt")),
            health_cell(task),
        ]);
    }
    t
}

/// `healthy`, `unhealthy: <last cause>`, or `-` without health check results.
fn health_cell(task: &Value) -> String {
    let results = arr(task, "healthCheckResults");
    if results.is_empty() {
        return "-".into();
    }
    let failing: Vec<&Value> = results
        .iter()
        .filter(|r| r.get("alive").and_then(Value::as_bool) != Some(true))
        .collect();
    match failing.first() {
        None => "healthy".into(),
        Some(r) => {
            let cause = s(r, "lastFailureCause");
            if cause.is_empty() {
                "unhealthy".into()
            } else {
                format!("unhealthy: {}", truncate(cause, 40))
            }
        }
    }
}

/// `POST /v2/tasks/delete` answers `{deploymentId, version}` with scale=true and
/// `{"tasks": [...]}` otherwise.
fn render_kill(body: &Value, asked: usize) -> String {
    let mut out = String::new();
    if !s(body, "deploymentId").is_empty() {
        out.push_str(&format!("Killing {asked} task(s) and scaling down\n"));
        kv(&mut out, "Deployment", s(body, "deploymentId"));
        kv(&mut out, "Version", &or_dash(s(body, "version")));
        return out;
    }
    let tasks = arr(body, "tasks");
    if tasks.is_empty() {
        out.push_str("No matching tasks were found\n");
        return out;
    }
    for t in tasks {
        out.push_str(&format!(
            "Killing task {} ({})\n",
            s(t, "id"),
            or_dash(s(t, "appId"))
        ));
    }
    if tasks.len() < asked {
        out.push_str(&format!(
            "{} of {asked} task id(s) did not match a task\n",
            asked - tasks.len()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_table_columns() {
        let tasks = json!([
            {"id": "web.1", "appId": "/web", "host": "node-1", "state": "TASK_RUNNING",
             "ports": [31000, 31001], "startedAt": "2024-05-01T12:00:00.123Z",
             "healthCheckResults": [{"alive": true}]},
            {"id": "web.2", "appId": "/web", "host": "node-2", "state": "TASK_STAGING", "ports": [],
             "healthCheckResults": [{"alive": false, "lastFailureCause": "connection refused"}]}
        ]);
        assert_eq!(
            task_table(tasks.as_array().unwrap()).render(),
            "ID     APP   HOST    STATE    PORTS        STARTED               HEALTH\n\
             web.1  /web  node-1  RUNNING  31000,31001  2024-05-01T12:00:00Z  healthy\n\
             web.2  /web  node-2  STAGING  -            -                     unhealthy: connection refused\n"
        );
    }

    #[test]
    fn logs_paths_and_flags() {
        assert_eq!(
            logs_path("web.1", false, None, false).unwrap(),
            "/api/v1/tasks/web.1/logs?stream=stdout"
        );
        assert_eq!(
            logs_path(" web.1 ", true, Some(20), true).unwrap(),
            "/api/v1/tasks/web.1/logs?stream=stderr&tail=20&follow=true"
        );
        assert!(logs_path("", false, None, false).is_err());
        assert!(logs_path("a/b", false, None, false).is_err());

        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(subcommand)]
            cmd: TaskSubcommand,
        }
        let cli =
            Cli::try_parse_from(["t", "logs", "web.1", "-f", "--tail", "5", "--stderr"]).unwrap();
        assert!(matches!(
            cli.cmd,
            TaskSubcommand::Logs { ref id, follow: true, tail: Some(5), stderr: true } if id == "web.1"
        ));
        let cli = Cli::try_parse_from(["t", "logs", "web.1"]).unwrap();
        assert!(matches!(
            cli.cmd,
            TaskSubcommand::Logs {
                follow: false,
                tail: None,
                stderr: false,
                ..
            }
        ));
        assert!(Cli::try_parse_from(["t", "logs"]).is_err());
    }

    #[test]
    fn kill_replies() {
        let text = render_kill(&json!({"deploymentId": "d1", "version": "v"}), 2);
        assert_eq!(
            text,
            "Killing 2 task(s) and scaling down\nDeployment:     d1\nVersion:        v\n"
        );
        let text = render_kill(&json!({"tasks": [{"id": "a.1", "appId": "/a"}]}), 2);
        assert_eq!(
            text,
            "Killing task a.1 (/a)\n1 of 2 task id(s) did not match a task\n"
        );
        assert_eq!(
            render_kill(&json!({"tasks": []}), 1),
            "No matching tasks were found\n"
        );
    }
}
