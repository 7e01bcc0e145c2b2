//! `berth deployment ...`: Marathon's `/v2/deployments`, and waiting for a deployment.

use crate::Ctx;
use crate::client::{normalize_id, query};
use crate::error::CliError;
use crate::table::Table;
use crate::view::{arr, int, kv, or_dash, plain, s};
use serde_json::Value;
use std::time::Duration;
use tokio::time::Instant;

/// How often `--wait` polls `/v2/deployments`.
const POLL_INTERVAL: Duration = if cfg!(test) {
    Duration::from_millis(50)
} else {
    Duration::from_secs(1)
};

#[derive(Debug, clap::Args)]
pub struct DeploymentCmd {
    #[command(subcommand)]
    pub command: DeploymentSubcommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum DeploymentSubcommand {
    /// List deployments in progress.
    #[command(visible_alias = "ls")]
    List,
    /// Cancel a deployment: rolls back, or with --force just stops it where it is.
    Cancel {
        id: String,
        /// Stop without starting a rollback deployment.
        #[arg(long)]
        force: bool,
    },
}

pub(crate) async fn run(ctx: &mut Ctx<'_>, cmd: DeploymentSubcommand) -> Result<(), CliError> {
    match cmd {
        DeploymentSubcommand::List => {
            let body = ctx.client.get("/v2/deployments").await?;
            if ctx.json_mode() {
                return ctx.json(&body);
            }
            let text = deployments_table(deployment_list(&body)).render();
            ctx.write(&text)
        }
        DeploymentSubcommand::Cancel { id, force } => {
            let path = format!(
                "/v2/deployments{}{}",
                normalize_id(&id)?,
                query(&[("force", force.to_string())])
            );
            let body = ctx.client.delete(&path).await?;
            if ctx.json_mode() {
                return ctx.json(&body);
            }
            let id = id.trim().trim_matches('/');
            let mut out = String::new();
            if s(&body, "deploymentId").is_empty() {
                out.push_str(&format!("Deployment {id} cancelled (no rollback)\n"));
            } else {
                out.push_str(&format!("Deployment {id} cancelled; rolling back\n"));
                kv(&mut out, "Rollback", s(&body, "deploymentId"));
                kv(&mut out, "Version", &or_dash(s(&body, "version")));
            }
            ctx.write(&out)
        }
    }
}

/// `/v2/deployments` is a bare array (tolerate `{"deployments": [...]}` too).
fn deployment_list(body: &Value) -> &[Value] {
    match body {
        Value::Array(a) => a,
        other => arr(other, "deployments"),
    }
}

/// `StartApplication /web` -> `start /web`.
fn describe_actions(actions: &[Value]) -> String {
    actions
        .iter()
        .map(|a| {
            let kind = s(a, "action");
            let kind = kind
                .strip_suffix("Application")
                .unwrap_or(kind)
                .to_lowercase();
            format!("{kind} {}", s(a, "app")).trim().to_string()
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn step_cell(d: &Value) -> String {
    format!("{}/{}", int(d, "currentStep"), int(d, "totalSteps"))
}

pub(crate) fn deployments_table(list: &[Value]) -> Table {
    let mut t = Table::new(&["ID", "APPS", "ACTIONS", "STEP", "VERSION"]);
    for d in list {
        let apps: Vec<String> = arr(d, "affectedApps").iter().map(plain).collect();
        t.row(vec![
            s(d, "id").to_string(),
            or_dash(apps.join(",")),
            or_dash(describe_actions(arr(d, "currentActions"))),
            step_cell(d),
            or_dash(s(d, "version")),
        ]);
    }
    t
}

/// Polls `/v2/deployments` until `id` is no longer listed; fails after `timeout_secs`.
pub(crate) async fn wait_for_deployment(
    ctx: &mut Ctx<'_>,
    id: &str,
    timeout_secs: u64,
) -> Result<(), CliError> {
    if !ctx.json_mode() {
        ctx.line(&format!(
            "Waiting for deployment {id} (up to {timeout_secs} s)..."
        ))?;
    }
    let deadline = Instant::now() + Duration::from_secs(timeout_secs);
    loop {
        let body = ctx.client.get("/v2/deployments").await?;
        let current = deployment_list(&body)
            .iter()
            .find(|d| s(d, "id") == id)
            .cloned();
        let Some(current) = current else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            let actions = describe_actions(arr(&current, "currentActions"));
            return Err(CliError::Timeout(format!(
                "deployment {id} did not finish within {timeout_secs} s (step {}{}); it is still running on the server: see `berth deployment list`",
                step_cell(&current),
                if actions.is_empty() {
                    String::new()
                } else {
                    format!(": {actions}")
                },
            )));
        }
        tokio::time::sleep(POLL_INTERVAL.min(deadline.saturating_duration_since(Instant::now())))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deployment_table() {
        let list = json!([{
            "id": "5ed4c0c5-9ff8-4a6f-a0cd-f57f59a34b43", "version": "2024-01-01T00:00:00.000Z",
            "affectedApps": ["/a", "/b"], "affectedPods": [],
            "steps": [{"actions": []}, {"actions": []}],
            "currentActions": [{"action": "StartApplication", "app": "/a", "readinessCheckResults": []},
                               {"action": "ScaleApplication", "app": "/b", "readinessCheckResults": []}],
            "currentStep": 1, "totalSteps": 2
        }]);
        assert_eq!(
            deployments_table(deployment_list(&list)).render(),
            "ID                                    APPS   ACTIONS             STEP  VERSION\n\
             5ed4c0c5-9ff8-4a6f-a0cd-f57f59a34b43  /a,/b  start /a, scale /b  1/2   2024-01-01T00:00:00.000Z\n"
        );
        assert!(deployment_list(&json!({})).is_empty());
    }
}
