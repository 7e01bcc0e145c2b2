//! `berth job ...`: Chronos jobs (`/scheduler/*`) and their runs (`/api/v1/jobs/*`).

use crate::Ctx;
use crate::client::encode;
use crate::error::CliError;
use crate::table::{Table, truncate};
use crate::view::{arr, int, kv, or_dash, plain, s, short_time};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

#[derive(Debug, clap::Args)]
pub struct JobCmd {
    #[command(subcommand)]
    pub command: JobSubcommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum JobSubcommand {
    /// List jobs: schedule or parents, last outcome, whether a run is active.
    #[command(visible_alias = "ls")]
    List,
    /// Show one job's definition and counters.
    Show { name: String },
    /// Create or replace a job from a Chronos job JSON file (`-` for stdin). Jobs with
    /// `parents` go to /scheduler/dependency, the others to /scheduler/iso8601.
    Add {
        #[arg(long, short = 'f', value_name = "FILE")]
        file: String,
    },
    /// Start a run now.
    Run {
        name: String,
        /// Replace the job's arguments for this run (space-separated, as Chronos takes them).
        #[arg(long)]
        arguments: Option<String>,
    },
    /// Kill the job's queued and running runs.
    Kill { name: String },
    /// Delete the job (its children inherit its parents, or its schedule).
    Delete { name: String },
    /// The job's runs, newest first: status, attempts, node, timings, exit code.
    History { name: String },
    /// Print a run's output (the latest run by default).
    Logs {
        name: String,
        /// The run id (from `berth job history`).
        #[arg(long)]
        run: Option<u64>,
        /// Keep printing new output while the run writes it.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Start with the last N lines.
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
        /// Print stderr instead of stdout.
        #[arg(long)]
        stderr: bool,
    },
}

fn check_name(name: &str) -> Result<&str, CliError> {
    let name = name.trim();
    if berth_core::job::is_valid_job_name(name) {
        Ok(name)
    } else {
        Err(CliError::Input(format!(
            "invalid job name '{name}': letters, digits, '_', '.' and '-' only"
        )))
    }
}

pub(crate) async fn run(ctx: &mut Ctx<'_>, cmd: JobSubcommand) -> Result<(), CliError> {
    match cmd {
        JobSubcommand::List => {
            let body = ctx.client.get("/scheduler/jobs/summary").await?;
            if ctx.json_mode() {
                return ctx.json(&body);
            }
            let text = list_table(arr(&body, "jobs")).render();
            ctx.write(&text)
        }
        JobSubcommand::Show { name } => {
            let name = check_name(&name)?;
            let body = ctx
                .client
                .get(&format!("/scheduler/job/{}", encode(name, false)))
                .await?;
            if ctx.json_mode() {
                return ctx.json(&body);
            }
            let text = render_job(&body);
            ctx.write(&text)
        }
        JobSubcommand::Add { file } => add(ctx, &file).await,
        JobSubcommand::Run { name, arguments } => {
            let name = check_name(&name)?;
            let mut path = format!("/scheduler/job/{}", encode(name, false));
            if let Some(a) = arguments {
                path.push_str(&crate::client::query(&[("arguments", a)]));
            }
            ctx.client.send(Method::PUT, &path, None).await?;
            done(ctx, &format!("Started a run of {name}"))
        }
        JobSubcommand::Kill { name } => {
            let name = check_name(&name)?;
            ctx.client
                .delete(&format!("/scheduler/task/kill/{}", encode(name, false)))
                .await?;
            done(ctx, &format!("Killed the runs of {name}"))
        }
        JobSubcommand::Delete { name } => {
            let name = check_name(&name)?;
            ctx.client
                .delete(&format!("/scheduler/job/{}", encode(name, false)))
                .await?;
            done(ctx, &format!("Deleted job {name}"))
        }
        JobSubcommand::History { name } => {
            let name = check_name(&name)?;
            let body = runs(ctx, name).await?;
            if ctx.json_mode() {
                return ctx.json(&body);
            }
            let text = history_table(arr(&body, "runs")).render();
            ctx.write(&text)
        }
        JobSubcommand::Logs {
            name,
            run,
            follow,
            tail,
            stderr,
        } => {
            let name = check_name(&name)?;
            let id = match run {
                Some(id) => id,
                None => {
                    let body = runs(ctx, name).await?;
                    let started = arr(&body, "runs")
                        .iter()
                        .find(|r| !s(r, "taskId").is_empty())
                        .map(|r| int(r, "id") as u64);
                    started.ok_or_else(|| {
                        CliError::Input(format!("job {name} has no run that started yet"))
                    })?
                }
            };
            let path = format!(
                "/api/v1/jobs/{}/runs/{id}/logs{}",
                encode(name, false),
                crate::task::logs_query(follow, tail, stderr)
            );
            crate::task::copy_stream(ctx, &path).await
        }
    }
}

async fn runs(ctx: &mut Ctx<'_>, name: &str) -> Result<Value, CliError> {
    ctx.client
        .get(&format!("/api/v1/jobs/{}/runs", encode(name, false)))
        .await
}

/// `{}` in JSON mode (the Chronos routes answer 204), else the sentence.
fn done(ctx: &mut Ctx<'_>, text: &str) -> Result<(), CliError> {
    if ctx.json_mode() {
        return ctx.json(&Value::Null);
    }
    ctx.line(text)
}

async fn add(ctx: &mut Ctx<'_>, file: &str) -> Result<(), CliError> {
    let (source, text) = if file == "-" {
        let mut text = String::new();
        tokio::io::stdin()
            .read_to_string(&mut text)
            .await
            .map_err(|e| CliError::io("reading the job from stdin", e))?;
        ("<stdin>".to_string(), text)
    } else {
        let text = tokio::fs::read_to_string(file)
            .await
            .map_err(|e| CliError::io(format!("reading {file}"), e))?;
        (file.to_string(), text)
    };
    let body: Value = serde_json::from_str(&text)
        .map_err(|e| CliError::Input(format!("{source}: not valid JSON: {e}")))?;
    let name = s(&body, "name").to_string();
    if !body.is_object() || name.is_empty() {
        return Err(CliError::Input(format!(
            "{source}: a job is a JSON object with a \"name\""
        )));
    }
    let dependent = !arr(&body, "parents").is_empty();
    let path = if dependent {
        "/scheduler/dependency"
    } else {
        "/scheduler/iso8601"
    };
    ctx.client.send(Method::POST, path, Some(&body)).await?;
    if ctx.json_mode() {
        let job = ctx
            .client
            .get(&format!("/scheduler/job/{}", encode(&name, false)))
            .await
            .unwrap_or(json!({}));
        return ctx.json(&job);
    }
    ctx.line(&format!("Saved job {name}"))
}

fn trigger(job: &Value) -> String {
    let parents: Vec<String> = arr(job, "parents").iter().map(plain).collect();
    if !parents.is_empty() {
        return format!("after {}", parents.join(", "));
    }
    let cron = s(job, "cron");
    if !cron.is_empty() {
        return format!("cron {cron}");
    }
    or_dash(s(job, "schedule"))
}

fn list_table(jobs: &[Value]) -> Table {
    let mut t = Table::new(&["NAME", "TRIGGER", "LAST", "STATE", "DISABLED"]);
    for j in jobs {
        t.row(vec![
            s(j, "name").to_string(),
            truncate(&trigger(j), 50),
            or_dash(s(j, "status")),
            or_dash(s(j, "state")),
            j.get("disabled")
                .and_then(Value::as_bool)
                .unwrap_or(false)
                .to_string(),
        ]);
    }
    t
}

fn render_job(j: &Value) -> String {
    let mut out = String::new();
    kv(&mut out, "Name", s(j, "name"));
    kv(&mut out, "Command", s(j, "command"));
    kv(&mut out, "Trigger", &trigger(j));
    let tz = s(j, "scheduleTimeZone");
    if !tz.is_empty() {
        kv(&mut out, "Time zone", tz);
    }
    let image = j
        .get("container")
        .map(|c| s(c, "image").to_string())
        .unwrap_or_default();
    kv(&mut out, "Image", &or_dash(image));
    kv(&mut out, "Run mode", &or_dash(s(j, "runMode")));
    kv(
        &mut out,
        "Resources",
        &format!(
            "cpus {} mem {} disk {}",
            plain(&j["cpus"]),
            plain(&j["mem"]),
            plain(&j["disk"])
        ),
    );
    kv(&mut out, "Retries", &plain(&j["retries"]));
    kv(&mut out, "Disabled", &plain(&j["disabled"]));
    kv(&mut out, "Concurrent", &plain(&j["concurrent"]));
    kv(
        &mut out,
        "Runs",
        &format!(
            "{} succeeded, {} failed",
            int(j, "successCount"),
            int(j, "errorCount")
        ),
    );
    kv(&mut out, "Last success", &short_time(s(j, "lastSuccess")));
    kv(&mut out, "Last error", &short_time(s(j, "lastError")));
    out
}

fn history_table(runs: &[Value]) -> Table {
    let mut t = Table::new(&[
        "RUN", "STATUS", "ATTEMPTS", "NODE", "STARTED", "DURATION", "EXIT", "MESSAGE",
    ]);
    for r in runs {
        let duration = match r.get("durationMs").and_then(Value::as_i64) {
            Some(ms) => format!("{:.1}s", ms as f64 / 1000.0),
            None => "-".into(),
        };
        t.row(vec![
            plain(&r["id"]),
            s(r, "status").to_string(),
            plain(&r["attempts"]),
            or_dash(s(r, "node")),
            short_time(s(r, "startedAt")),
            duration,
            or_dash(plain(&r["exitCode"])),
            or_dash(truncate(s(r, "message"), 60)),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_show_triggers_and_runs() {
        let jobs = vec![
            json!({"name": "a", "schedule": "R/2030-01-01T00:00:00.000Z/PT1H", "status": "success", "state": "idle", "disabled": false}),
            json!({"name": "b", "parents": ["a", "c"], "status": "fresh", "state": "queued", "disabled": true}),
        ];
        let text = list_table(&jobs).render();
        assert!(text.contains("R/2030-01-01T00:00:00.000Z/PT1H"), "{text}");
        assert!(text.contains("after a, c"), "{text}");
        let runs = vec![
            json!({"id": 2, "status": "failure", "attempts": 3, "node": "n1", "startedAt": "2030-01-01T00:00:00.000Z", "durationMs": 1500, "exitCode": 3, "message": "TASK_FAILED with exit code 3"}),
        ];
        let text = history_table(&runs).render();
        assert!(
            text.contains("failure") && text.contains("1.5s") && text.contains("n1"),
            "{text}"
        );
        assert!(check_name("bad/name").is_err());
        assert_eq!(check_name(" ok.name ").unwrap(), "ok.name");
    }
}
