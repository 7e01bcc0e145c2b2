//! `berth deployment ...`: Berth's `/api/v1/deployments` (with progress and why a deployment
//! is blocked), falling back to Marathon's `/v2/deployments`.

use crate::client::{Client, encode, normalize_id, query};
use crate::error::CliError;
use crate::table::{Table, truncate};
use crate::view::{arr, int, kv, or_dash, plain, s, short_time};
use crate::watch::recent_failure;
use crate::{Ctx, watch};
use serde_json::Value;

#[derive(Debug, clap::Args)]
pub struct DeploymentCmd {
    #[command(subcommand)]
    pub command: DeploymentSubcommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum DeploymentSubcommand {
    /// List deployments in progress (with why each is blocked, if it is).
    #[command(visible_alias = "ls")]
    List,
    /// Show one deployment: steps, current actions, per-app progress, blocked reason.
    Show { id: String },
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
            let (list, body) = fetch_deployments(&ctx.client).await?;
            if ctx.json_mode() {
                return ctx.json(&body);
            }
            let text = deployments_table(&list).render();
            ctx.write(&text)
        }
        DeploymentSubcommand::Show { id } => {
            let id = id.trim().trim_matches('/').to_string();
            if id.is_empty() {
                return Err(CliError::Input("a deployment id is required".into()));
            }
            let body = match ctx
                .client
                .get(&format!("/api/v1/deployments/{}", encode(&id, false)))
                .await
            {
                Ok(body) => body,
                // A server without Berth's API: find it in Marathon's list.
                Err(e) if e.status() == Some(404) => {
                    let (list, _) = fetch_deployments(&ctx.client).await?;
                    match list.into_iter().find(|d| s(d, "id") == id) {
                        Some(d) => d,
                        None => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            };
            if ctx.json_mode() {
                return ctx.json(&body);
            }
            let text = render_deployment(&body);
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

/// `/v2/deployments` is a bare array, `/api/v1/deployments` `{"deployments": [...]}`.
fn deployment_list(body: &Value) -> &[Value] {
    match body {
        Value::Array(a) => a,
        other => arr(other, "deployments"),
    }
}

/// The deployments in progress, from Berth's `/api/v1/deployments` or, when the server has no
/// such endpoint (404), Marathon's `/v2/deployments`. Also returns the body as sent.
pub(crate) async fn fetch_deployments(client: &Client) -> Result<(Vec<Value>, Value), CliError> {
    let body = match client.get("/api/v1/deployments").await {
        Ok(body) => body,
        Err(e) if e.status() == Some(404) => client.get("/v2/deployments").await?,
        Err(e) => return Err(e),
    };
    Ok((deployment_list(&body).to_vec(), body))
}

/// `StartApplication /web` -> `start /web`.
pub(crate) fn describe_actions(actions: &[Value]) -> String {
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
    let mut t = Table::new(&["ID", "APPS", "ACTIONS", "STEP", "VERSION", "BLOCKED"]);
    for d in list {
        let apps: Vec<String> = arr(d, "affectedApps").iter().map(plain).collect();
        t.row(vec![
            s(d, "id").to_string(),
            or_dash(apps.join(",")),
            or_dash(describe_actions(arr(d, "currentActions"))),
            step_cell(d),
            or_dash(s(d, "version")),
            or_dash(truncate(&blocked_text(d), 100)),
        ]);
    }
    t
}

/// The server's `blocked` plus task failures since the deployment started.
fn blocked_text(d: &Value) -> String {
    watch::Snapshot::from_json(d).blocked.unwrap_or_default()
}

/// `berth deployment show`: the deployment in words.
pub(crate) fn render_deployment(d: &Value) -> String {
    let mut out = String::new();
    kv(&mut out, "ID", s(d, "id"));
    kv(&mut out, "Version", &or_dash(s(d, "version")));
    if !s(d, "createdAt").is_empty() {
        kv(&mut out, "Created", &short_time(s(d, "createdAt")));
    }
    let apps: Vec<String> = arr(d, "affectedApps").iter().map(plain).collect();
    kv(&mut out, "Apps", &or_dash(apps.join(", ")));
    kv(&mut out, "Step", &step_cell(d));
    kv(
        &mut out,
        "Current",
        &or_dash(describe_actions(arr(d, "currentActions"))),
    );
    if !s(d, "rollbackOf").is_empty() {
        kv(&mut out, "Rollback of", s(d, "rollbackOf"));
    }
    kv(&mut out, "Blocked", &or_dash(blocked_text(d)));

    let steps = arr(d, "steps");
    if !steps.is_empty() {
        out.push_str("\nSteps:\n");
        let current = int(d, "currentStep");
        for (i, step) in steps.iter().enumerate() {
            let n = i as i64 + 1;
            let mark = if n < current {
                "done"
            } else if n == current {
                "current"
            } else {
                "pending"
            };
            out.push_str(&format!(
                "  {n}. {}  ({mark})\n",
                or_dash(describe_actions(arr(step, "actions")))
            ));
        }
    }

    let progress = arr(d, "progress");
    if !progress.is_empty() {
        out.push_str("\nProgress:\n");
        let mut t = Table::new(&["APP", "TARGET", "OLD", "NEW", "HEALTHY", "UNPLACED"]);
        for p in progress {
            let unplaced = match p.get("unplaced").filter(|u| u.is_object()) {
                Some(u) if !s(u, "summary").is_empty() => {
                    format!("{} ({})", int(u, "count"), s(u, "summary"))
                }
                Some(u) => int(u, "count").to_string(),
                None => "-".into(),
            };
            t.row(vec![
                s(p, "app").to_string(),
                int(p, "targetInstances").to_string(),
                int(p, "oldInstances").to_string(),
                int(p, "newInstances").to_string(),
                int(p, "healthyNewInstances").to_string(),
                unplaced,
            ]);
        }
        out.push_str(&t.render());
        for p in progress {
            if let Some(f) = recent_failure(p.get("lastTaskFailure"), "") {
                let at = p
                    .get("lastTaskFailure")
                    .map(|f| short_time(s(f, "timestamp")))
                    .unwrap_or_default();
                out.push_str(&format!("Last failure of {} ({at}): {f}\n", s(p, "app")));
            }
        }
    }
    out
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
            "ID                                    APPS   ACTIONS             STEP  VERSION                   BLOCKED\n\
             5ed4c0c5-9ff8-4a6f-a0cd-f57f59a34b43  /a,/b  start /a, scale /b  1/2   2024-01-01T00:00:00.000Z  -\n"
        );
        assert!(deployment_list(&json!({})).is_empty());
        let blocked = json!({"deployments": [{"id": "d1", "currentStep": 1, "totalSteps": 1,
            "blocked": "/a: 1 of 2 instances unplaced: 3 insufficient mem"}]});
        assert_eq!(
            deployments_table(deployment_list(&blocked)).render(),
            "ID  APPS  ACTIONS  STEP  VERSION  BLOCKED\n\
             d1  -     -        1/1   -        /a: 1 of 2 instances unplaced: 3 insufficient mem\n"
        );
    }

    #[test]
    fn deployment_details() {
        let d = json!({
            "id": "dep-2", "version": "v2", "affectedApps": ["/web"], "createdAt": "2024-01-01T00:00:10.000Z",
            "steps": [{"actions": [{"action": "StartApplication", "app": "/web"}]},
                      {"actions": [{"action": "RestartApplication", "app": "/web"}]}],
            "currentActions": [{"action": "RestartApplication", "app": "/web"}],
            "currentStep": 2, "totalSteps": 2, "rollbackOf": "dep-1",
            "blocked": "/web: 2 of 4 instances unplaced: 7 insufficient mem",
            "progress": [{"app": "/web", "targetInstances": 4, "oldInstances": 3, "newInstances": 2,
                          "healthyNewInstances": 1,
                          "unplaced": {"count": 2, "reasons": {"insufficient mem": 7}, "summary": "7 insufficient mem"},
                          "lastTaskFailure": {"taskId": "web.3", "state": "TASK_FAILED", "host": "n1",
                                              "message": "exited 1", "timestamp": "2024-01-01T00:00:05.000Z"}}]
        });
        assert_eq!(
            render_deployment(&d),
            "ID:             dep-2\n\
             Version:        v2\n\
             Created:        2024-01-01T00:00:10Z\n\
             Apps:           /web\n\
             Step:           2/2\n\
             Current:        restart /web\n\
             Rollback of:    dep-1\n\
             Blocked:        /web: 2 of 4 instances unplaced: 7 insufficient mem\n\
             \n\
             Steps:\n  \
             1. start /web  (done)\n  \
             2. restart /web  (current)\n\
             \n\
             Progress:\n\
             APP   TARGET  OLD  NEW  HEALTHY  UNPLACED\n\
             /web  4       3    2    1        2 (7 insufficient mem)\n\
             Last failure of /web (2024-01-01T00:00:05Z): task web.3 TASK_FAILED on n1: exited 1\n"
        );
    }
}
