//! Following a deployment to its end: polls Berth's `/api/v1/deployments/{id}` (falling back
//! to Marathon's `/v2/deployments` on servers without it), shows progress, and once the
//! deployment is gone decides whether it succeeded by looking at the app.

use crate::Ctx;
use crate::deployment::{describe_actions, fetch_deployments};
use crate::error::CliError;
use crate::progress::{Display, Shown};
use crate::view::{arr, int, s};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::time::Instant;

/// How often a wait polls the server.
pub(crate) const POLL_INTERVAL: Duration = if cfg!(test) {
    Duration::from_millis(50)
} else {
    Duration::from_millis(500)
};

/// One app's progress within a deployment (Berth's `progress[]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AppProgress {
    pub app: String,
    pub target: i64,
    pub old: i64,
    pub new: i64,
    pub healthy: i64,
}

/// What a deployment looks like at one poll.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub step: i64,
    pub total_steps: i64,
    /// `restart /web, scale /db`.
    pub actions: String,
    /// Empty when the server only gave Marathon's fields.
    pub apps: Vec<AppProgress>,
    /// The server's `blocked`, plus task failures since the deployment started.
    pub blocked: Option<String>,
}

impl Snapshot {
    pub fn from_json(d: &Value) -> Self {
        let created = s(d, "createdAt");
        let mut reasons: Vec<String> = Vec::new();
        if !s(d, "blocked").is_empty() {
            reasons.push(s(d, "blocked").to_string());
        }
        let apps = arr(d, "progress")
            .iter()
            .map(|p| {
                let a = AppProgress {
                    app: s(p, "app").to_string(),
                    target: int(p, "targetInstances"),
                    old: int(p, "oldInstances"),
                    new: int(p, "newInstances"),
                    healthy: int(p, "healthyNewInstances"),
                };
                if a.healthy < a.target
                    && let Some(f) = recent_failure(p.get("lastTaskFailure"), created)
                {
                    reasons.push(format!("{}: {f}", a.app));
                }
                a
            })
            .collect();
        Snapshot {
            step: int(d, "currentStep"),
            total_steps: int(d, "totalSteps"),
            actions: describe_actions(arr(d, "currentActions")),
            apps,
            blocked: if reasons.is_empty() {
                None
            } else {
                Some(reasons.join("; "))
            },
        }
    }

    fn totals(&self) -> (i64, i64, i64, i64) {
        self.apps.iter().fold((0, 0, 0, 0), |(t, o, n, h), a| {
            (t + a.target, o + a.old, n + a.new, h + a.healthy)
        })
    }

    /// The counts as one line, e.g. `step 1/1 (restart /web): /web old 3, new 2/4, healthy 1/4`.
    pub fn progress_text(&self) -> String {
        let mut out = format!("step {}/{}", self.step, self.total_steps);
        if !self.actions.is_empty() {
            out.push_str(&format!(" ({})", self.actions));
        }
        if !self.apps.is_empty() {
            let apps: Vec<String> = self
                .apps
                .iter()
                .map(|a| {
                    format!(
                        "{} old {}, new {}/{}, healthy {}/{}",
                        a.app, a.old, a.new, a.target, a.healthy, a.target
                    )
                })
                .collect();
            out.push_str(": ");
            out.push_str(&apps.join("; "));
        }
        out
    }

    /// [`Snapshot::progress_text`] plus `; blocked: <reason>` when blocked.
    pub fn line(&self) -> String {
        let mut out = self.progress_text();
        if let Some(b) = &self.blocked {
            out.push_str(&format!("; blocked: {b}"));
        }
        out
    }

    pub fn shown(&self) -> Shown {
        let (target, old, new, healthy) = self.totals();
        let mut bar_msg = format!("step {}/{}", self.step, self.total_steps);
        if !self.apps.is_empty() {
            bar_msg.push_str(&format!("  old {old}  new {new}/{target}"));
        }
        if !self.actions.is_empty() {
            bar_msg.push_str(&format!("  ({})", self.actions));
        }
        Shown {
            done: healthy.max(0) as u64,
            total: target.max(0) as u64,
            line: self.line(),
            bar_msg,
            blocked: self.blocked.clone(),
        }
    }
}

/// A `lastTaskFailure` that happened after the deployment was created, in words.
pub(crate) fn recent_failure(f: Option<&Value>, created_at: &str) -> Option<String> {
    let f = f.filter(|f| f.is_object())?;
    let at = s(f, "timestamp");
    // Both are the server's fixed-width UTC timestamps, so they compare as strings.
    if !created_at.is_empty() && !at.is_empty() && at < created_at {
        return None;
    }
    let mut text = format!("task {} {}", s(f, "taskId"), s(f, "state"));
    if !s(f, "host").is_empty() {
        text.push_str(&format!(" on {}", s(f, "host")));
    }
    if !s(f, "message").is_empty() {
        text.push_str(&format!(": {}", s(f, "message")));
    }
    Some(text)
}

/// What a wait is for: the deployment a change returned, and what it changes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Target {
    pub deployment_id: String,
    /// The version the change returned (the app should end up at it).
    pub version: String,
    /// The app to check afterwards (None: only wait for the deployment to go).
    pub app_id: Option<String>,
    /// The change deletes the app: success is the app being gone.
    pub deleting: bool,
}

/// The verdict once the deployment is no longer in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Still listed: keep waiting.
    Running,
    Succeeded,
    Failed(String),
    /// The deployment is gone but the app's tasks are not all up yet: keep waiting.
    Settling(String),
}

/// Decides how a deployment that `GET /api/v1/deployments/{id}` no longer knows ended.
/// `list` is the current deployment list, `app` the app (None when it does not exist).
pub(crate) fn judge(target: &Target, list: &[Value], app: Option<&Value>) -> Verdict {
    let id = target.deployment_id.as_str();
    if list.iter().any(|d| s(d, "id") == id) {
        return Verdict::Running;
    }
    if let Some(rb) = list.iter().find(|d| s(d, "rollbackOf") == id) {
        return Verdict::Failed(format!(
            "deployment {id} was cancelled: rollback deployment {} is restoring the previous version",
            s(rb, "id")
        ));
    }
    let Some(app_id) = target.app_id.as_deref() else {
        return Verdict::Succeeded;
    };
    let Some(app) = app else {
        return if target.deleting {
            Verdict::Succeeded
        } else {
            Verdict::Failed(format!(
                "deployment {id} ended but app {app_id} no longer exists"
            ))
        };
    };
    if target.deleting {
        return Verdict::Settling(format!("deployment {id} ended; {app_id} still exists"));
    }
    let version = s(app, "version");
    let config_version = app
        .get("versionInfo")
        .map(|v| s(v, "lastConfigChangeAt"))
        .unwrap_or("");
    if !target.version.is_empty()
        && !version.is_empty()
        && version != target.version
        && config_version != target.version
    {
        return Verdict::Failed(format!(
            "deployment {id} did not complete: app {app_id} is at version {version}, not {} \
             (the deployment was cancelled, rolled back or superseded)",
            target.version
        ));
    }
    let (running, healthy, instances) = (
        int(app, "tasksRunning"),
        int(app, "tasksHealthy"),
        int(app, "instances"),
    );
    let checks = !arr(app, "healthChecks").is_empty();
    if running == instances && (!checks || healthy == instances) {
        Verdict::Succeeded
    } else {
        Verdict::Settling(format!(
            "deployment {id} ended; waiting for {app_id}: {}",
            counts(app)
        ))
    }
}

/// `2/2 running, 2 healthy` (without `healthy` when the app has no health checks).
pub(crate) fn counts(app: &Value) -> String {
    let mut text = format!(
        "{}/{} running",
        int(app, "tasksRunning"),
        int(app, "instances")
    );
    if !arr(app, "healthChecks").is_empty() {
        text.push_str(&format!(", {} healthy", int(app, "tasksHealthy")));
    }
    text
}

/// How a wait ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Status {
    Succeeded,
    Failed(String),
    TimedOut(String),
}

#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub status: Status,
    /// The last view of the deployment (Berth's, else Marathon's), if one was seen.
    pub deployment: Option<Value>,
    /// The app at the end (None when there is none or none was asked for).
    pub app: Option<Value>,
}

impl Outcome {
    /// The `--output json` document.
    pub fn json(&self, target: &Target) -> Value {
        let (status, message) = match &self.status {
            Status::Succeeded => ("succeeded", None),
            Status::Failed(m) => ("failed", Some(m.as_str())),
            Status::TimedOut(m) => ("timeout", Some(m.as_str())),
        };
        json!({
            "deploymentId": target.deployment_id,
            "version": target.version,
            "status": status,
            "message": message,
            "deployment": self.deployment,
            "app": self.app,
        })
    }

    pub fn into_result(self) -> Result<(), CliError> {
        match self.status {
            Status::Succeeded => Ok(()),
            Status::Failed(m) => Err(CliError::Failed(m)),
            Status::TimedOut(m) => Err(CliError::Timeout(m)),
        }
    }
}

/// Errors worth retrying while waiting (the server restarting, a proxy hiccup).
fn transient(e: &CliError) -> bool {
    match e {
        CliError::Unreachable { .. } | CliError::Http { .. } => true,
        CliError::Api { status, .. } => matches!(status, 502..=504),
        _ => false,
    }
}

fn is_not_found(e: &CliError) -> bool {
    e.status() == Some(404)
}

/// Polls until the deployment has ended and the app is settled, or `timeout_secs` passed.
/// Errors only when the server answers something unusable (or the output breaks);
/// failure and timeout are reported in the [`Outcome`].
pub(crate) async fn follow(
    ctx: &mut Ctx<'_>,
    target: &Target,
    timeout_secs: u64,
) -> Result<Outcome, CliError> {
    let id = target.deployment_id.as_str();
    let deadline = Instant::now() + Duration::from_secs(timeout_secs);
    if !ctx.json_mode() {
        ctx.line(&format!(
            "Waiting for deployment {id} (up to {timeout_secs} s)..."
        ))?;
    }
    let mut display = Display::for_ctx(ctx);
    display.set_unit("healthy");
    let mut per_id_endpoint = true;
    let mut last_deployment: Option<Value> = None;
    let mut last_app: Option<Value> = None;
    let mut last_blocked: Option<String> = None;
    let mut blocked_now = false;
    let mut last_state = String::new();
    let mut retrying = false;
    let dep_path = format!("/api/v1/deployments/{}", crate::client::encode(id, false));
    let result = loop {
        match poll_once(ctx, target, &dep_path, &mut per_id_endpoint).await {
            Ok(Poll::InProgress(d)) => {
                retrying = false;
                let snap = Snapshot::from_json(&d);
                blocked_now = snap.blocked.is_some();
                if blocked_now {
                    last_blocked.clone_from(&snap.blocked);
                }
                last_state = snap.progress_text();
                display.update(ctx, &snap.shown())?;
                last_deployment = Some(d);
            }
            Ok(Poll::Ended(verdict, app)) => {
                retrying = false;
                last_app = app;
                match verdict {
                    Verdict::Running => {}
                    Verdict::Succeeded => break Status::Succeeded,
                    Verdict::Failed(m) => break Status::Failed(m),
                    Verdict::Settling(m) => {
                        blocked_now = false;
                        last_state.clone_from(&m);
                        let app = last_app.as_ref().unwrap_or(&Value::Null);
                        let shown = Shown {
                            done: int(app, "tasksRunning").max(0) as u64,
                            total: int(app, "instances").max(0) as u64,
                            bar_msg: "deployment ended; waiting for the tasks".into(),
                            blocked: None,
                            line: m,
                        };
                        display.update(ctx, &shown)?;
                    }
                }
            }
            Err(e) if transient(&e) && Instant::now() < deadline => {
                if !retrying {
                    display.note(ctx, &format!("{e}; retrying"))?;
                    retrying = true;
                }
            }
            Err(e) => {
                display.finish();
                return Err(e);
            }
        }
        if Instant::now() >= deadline {
            let mut msg = format!("deployment {id} did not finish within {timeout_secs} s");
            if let Some(b) = &last_blocked {
                let when = if blocked_now {
                    "blocked"
                } else {
                    "last blocked"
                };
                msg.push_str(&format!(": {when}: {b}"));
            }
            if !last_state.is_empty() {
                msg.push_str(&format!("\n  last progress: {last_state}"));
            }
            msg.push_str(&format!(
                "\n  it is still running on the server: see `berth deployment show {id}`"
            ));
            break Status::TimedOut(msg);
        }
        tokio::time::sleep(POLL_INTERVAL.min(deadline.saturating_duration_since(Instant::now())))
            .await;
    };
    display.finish();
    Ok(Outcome {
        status: result,
        deployment: last_deployment,
        app: last_app,
    })
}

enum Poll {
    InProgress(Value),
    Ended(Verdict, Option<Value>),
}

async fn poll_once(
    ctx: &mut Ctx<'_>,
    target: &Target,
    dep_path: &str,
    per_id_endpoint: &mut bool,
) -> Result<Poll, CliError> {
    if *per_id_endpoint {
        match ctx.client.get(dep_path).await {
            Ok(d) => return Ok(Poll::InProgress(d)),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e),
        }
    }
    let (list, _) = fetch_deployments(&ctx.client).await?;
    if let Some(d) = list.iter().find(|d| s(d, "id") == target.deployment_id) {
        // Listed although the per-id endpoint 404'd: a server without Berth's API.
        *per_id_endpoint = false;
        return Ok(Poll::InProgress(d.clone()));
    }
    let app = match &target.app_id {
        Some(app_id) => match ctx.client.get(&format!("/v2/apps{app_id}")).await {
            Ok(body) => Some(body.get("app").cloned().unwrap_or(body)),
            Err(e) if is_not_found(&e) => None,
            Err(e) => return Err(e),
        },
        None => None,
    };
    Ok(Poll::Ended(judge(target, &list, app.as_ref()), app))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment() -> Value {
        json!({
            "id": "dep-1", "version": "v2", "affectedApps": ["/web"],
            "currentActions": [{"action": "RestartApplication", "app": "/web"}],
            "currentStep": 1, "totalSteps": 1,
            "createdAt": "2024-01-01T00:00:10.000Z",
            "blocked": "/web: 2 of 4 instances unplaced: 7 insufficient mem, 3 constraint rack:UNIQUE",
            "rollbackOf": null,
            "progress": [{"app": "/web", "targetInstances": 4, "oldInstances": 3,
                          "newInstances": 2, "healthyNewInstances": 1,
                          "unplaced": {"count": 2, "reasons": {"insufficient mem": 7}, "summary": "7 insufficient mem"},
                          "lastTaskFailure": null}]
        })
    }

    #[test]
    fn progress_line_shows_counts_step_and_blocked_reason() {
        let snap = Snapshot::from_json(&deployment());
        assert_eq!(
            snap.line(),
            "step 1/1 (restart /web): /web old 3, new 2/4, healthy 1/4; \
             blocked: /web: 2 of 4 instances unplaced: 7 insufficient mem, 3 constraint rack:UNIQUE"
        );
        let shown = snap.shown();
        assert_eq!((shown.done, shown.total), (1, 4));
        assert_eq!(shown.bar_msg, "step 1/1  old 3  new 2/4  (restart /web)");
        assert!(shown.blocked.unwrap().starts_with("/web: 2 of 4"));
    }

    #[test]
    fn recent_task_failures_count_as_blocked_old_ones_do_not() {
        let mut d = deployment();
        d["blocked"] = Value::Null;
        d["progress"][0]["lastTaskFailure"] = json!({"taskId": "web.7", "state": "TASK_FAILED",
            "host": "n2", "message": "health check failed: HTTP 500", "timestamp": "2024-01-01T00:00:11.000Z"});
        let snap = Snapshot::from_json(&d);
        assert_eq!(
            snap.blocked.as_deref(),
            Some("/web: task web.7 TASK_FAILED on n2: health check failed: HTTP 500")
        );
        d["progress"][0]["lastTaskFailure"]["timestamp"] = json!("2024-01-01T00:00:09.000Z");
        assert_eq!(
            Snapshot::from_json(&d).blocked,
            None,
            "before the deployment"
        );
        // Marathon-only deployments: step and actions, no counts.
        let snap = Snapshot::from_json(&json!({"id": "d", "currentStep": 1, "totalSteps": 2,
            "currentActions": [{"action": "StartApplication", "app": "/a"}]}));
        assert_eq!(snap.line(), "step 1/2 (start /a)");
        assert_eq!(snap.shown().total, 0);
    }

    #[test]
    fn plain_display_prints_only_changes() {
        let mut out = Vec::new();
        let mut ctx = Ctx {
            client: crate::Client::new("http://127.0.0.1:1").unwrap(),
            format: crate::OutputFormat::Table,
            tty: false,
            out: &mut out,
        };
        let mut display = Display::for_ctx(&ctx);
        let mut snap = Snapshot::from_json(&deployment());
        display.update(&mut ctx, &snap.shown()).unwrap();
        display.update(&mut ctx, &snap.shown()).unwrap();
        snap.apps[0].healthy = 2;
        snap.blocked = None;
        display.update(&mut ctx, &snap.shown()).unwrap();
        display.finish();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.ends_with("step 1/1 (restart /web): /web old 3, new 2/4, healthy 2/4\n"));
        assert!(
            !text.contains('\r') && !text.contains('\x1b'),
            "no terminal codes"
        );
    }

    fn target() -> Target {
        Target {
            deployment_id: "dep-1".into(),
            version: "v2".into(),
            app_id: Some("/web".into()),
            deleting: false,
        }
    }

    fn app(version: &str, running: i64, healthy: i64) -> Value {
        json!({"id": "/web", "version": version, "versionInfo": {"lastConfigChangeAt": version},
               "instances": 2, "tasksRunning": running, "tasksHealthy": healthy,
               "healthChecks": [{"protocol": "HTTP"}]})
    }

    #[test]
    fn finished_deployment_succeeds_when_the_app_is_up_at_our_version() {
        let t = target();
        assert_eq!(judge(&t, &[json!({"id": "dep-1"})], None), Verdict::Running);
        assert_eq!(judge(&t, &[], Some(&app("v2", 2, 2))), Verdict::Succeeded);
        assert_eq!(
            judge(&t, &[], Some(&app("v2", 2, 1))),
            Verdict::Settling(
                "deployment dep-1 ended; waiting for /web: 2/2 running, 1 healthy".into()
            )
        );
        // A later scale changes `version` but not the config version.
        let mut scaled = app("v3", 2, 2);
        scaled["versionInfo"]["lastConfigChangeAt"] = json!("v2");
        assert_eq!(judge(&t, &[], Some(&scaled)), Verdict::Succeeded);
        // No app to check (e.g. waiting for a task kill).
        let t2 = Target {
            app_id: None,
            ..target()
        };
        assert_eq!(judge(&t2, &[], None), Verdict::Succeeded);
        let del = Target {
            deleting: true,
            ..target()
        };
        assert_eq!(judge(&del, &[], None), Verdict::Succeeded);
    }

    #[test]
    fn cancelled_rolled_back_or_superseded_deployments_fail() {
        let t = target();
        let list = [json!({"id": "dep-rb", "rollbackOf": "dep-1"})];
        assert_eq!(
            judge(&t, &list, Some(&app("v1", 2, 2))),
            Verdict::Failed(
                "deployment dep-1 was cancelled: rollback deployment dep-rb is restoring the previous version".into()
            )
        );
        let Verdict::Failed(m) = judge(&t, &[], Some(&app("v1", 2, 2))) else {
            panic!()
        };
        assert!(
            m.starts_with("deployment dep-1 did not complete: app /web is at version v1, not v2"),
            "{m}"
        );
        assert!(
            matches!(judge(&t, &[], None), Verdict::Failed(m) if m.contains("no longer exists"))
        );
    }
}
