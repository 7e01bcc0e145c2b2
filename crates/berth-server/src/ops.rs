//! Every change a client can ask for, as functions over the in-memory model. They validate
//! first and only then change anything (see [`crate::Inner::apply`]). HTTP parsing lives in
//! `api`; these functions know nothing about requests.

use crate::error::{ApiError, ApiResult};
use crate::state::{
    Changes, Cluster, K_APPS, K_DELAYS, K_DEPLOYMENTS, K_FAILURES, K_GROUPS, version_key,
};
use crate::tenancy::{Change, admit};
use berth_core::app::{AppDefinition, VersionInfo};
use berth_core::deployment::{
    ActionKind, Deployment, DeploymentAction, DeploymentStep, steps_by_dependencies,
};
use berth_core::event::Event;
use berth_core::path;
use berth_core::task::{Task, TaskGoal};
use berth_core::validate;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// Where a request came from, for `api_post_event`.
#[derive(Debug, Clone, Default)]
pub struct RequestCtx {
    pub client_ip: String,
    pub uri: String,
    /// Who asked: an app-admin may change only apps inside its scopes.
    pub principal: crate::auth::Principal,
}

impl RequestCtx {
    /// 403 unless the caller may change the app or group `id`.
    pub fn may_change(&self, id: &str) -> ApiResult<()> {
        self.principal
            .check_on(berth_core::rbac::Permission::AppWrite, id)
    }

    /// 403 unless the caller may use every secret `app` names: an app-admin only those
    /// whose name lies in its scopes (`prod/db` for scope `prod`), or it could have any
    /// secret's value delivered to a task of its own.
    pub fn may_use_secrets(&self, app: &AppDefinition) -> ApiResult<()> {
        for d in app.secrets.values() {
            self.principal.check_on(
                berth_core::rbac::Permission::SecretWrite,
                &format!("/{}", d.source.trim_start_matches('/')),
            )?;
        }
        Ok(())
    }
}

/// What a change returns to the client: `{"deploymentId": .., "version": ..}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentRef {
    pub deployment_id: String,
    pub version: String,
}

impl DeploymentRef {
    pub fn to_json(&self) -> Value {
        json!({"deploymentId": self.deployment_id, "version": self.version})
    }
}

/// Service ports are drawn from this range, as in Marathon.
const SERVICE_PORT_MIN: i64 = 10000;
const SERVICE_PORT_MAX: i64 = 20000;

/// A new, strictly increasing version timestamp (two changes in one millisecond still get
/// distinct versions).
pub fn next_version() -> (i64, String) {
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = berth_core::time::now_millis();
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(prev + 1);
        match LAST.compare_exchange(prev, next, Ordering::SeqCst, Ordering::Relaxed) {
            Ok(_) => return (next, berth_core::time::format_millis(next)),
            Err(actual) => prev = actual,
        }
    }
}

/// Rejects a change to apps locked by a deployment, unless forced; a forced change cancels
/// the locking deployments (they are superseded).
fn check_lock(
    st: &mut Cluster,
    ch: &mut Changes,
    app_ids: &[String],
    force: bool,
) -> ApiResult<()> {
    let mut locking: Vec<String> = app_ids.iter().flat_map(|a| st.deployments_of(a)).collect();
    locking.sort();
    locking.dedup();
    if locking.is_empty() {
        return Ok(());
    }
    if !force {
        return Err(ApiError::locked(locking));
    }
    for id in locking {
        if let Some(d) = st.deployments.remove(&id) {
            ch.delete(format!("{K_DEPLOYMENTS}{id}"));
            ch.event(Event::with_plan(
                "deployment_failed",
                json!({"id": d.id}),
                &d.plan_json(),
            ));
        }
    }
    Ok(())
}

/// Gives every `port: 0` port definition / `servicePort: 0` mapping a free service port,
/// keeping the ports the app already had. Uses the cluster's port index: a bulk request of
/// thousands of apps once spent seconds here scanning every other app for each one.
fn assign_service_ports(st: &mut Cluster, app: &mut AppDefinition) {
    let previous: Vec<i64> = st
        .apps
        .get(&app.id)
        .map(|a| a.service_ports())
        .unwrap_or_default();
    let app_id = app.id.clone();
    let mut mine: BTreeSet<i64> = BTreeSet::new();
    let pick =
        |idx: usize, mine: &mut BTreeSet<i64>, st: &mut Cluster| -> i64 {
            if let Some(p) = previous.get(idx).copied().filter(|p| {
                *p != 0 && !mine.contains(p) && !st.service_port_held_by_other(*p, &app_id)
            }) {
                mine.insert(p);
                return p;
            }
            let p = st.free_service_port(SERVICE_PORT_MIN, SERVICE_PORT_MAX, &app_id, mine);
            mine.insert(p);
            p
        };
    if let Some(mappings) = app
        .container
        .as_mut()
        .and_then(|c| c.port_mappings.as_mut())
    {
        for (i, m) in mappings.iter_mut().enumerate() {
            if m.service_port == 0 {
                m.service_port = pick(i, &mut mine, st);
            } else {
                mine.insert(m.service_port);
            }
        }
        return;
    }
    if let Some(defs) = app.port_definitions.as_mut() {
        for (i, d) in defs.iter_mut().enumerate() {
            if d.port == 0 {
                d.port = pick(i, &mut mine, st);
            } else {
                mine.insert(d.port);
            }
        }
    }
}

/// Stores the app as current, records the version, emits the change events.
fn save_app(st: &mut Cluster, ch: &mut Changes, app: Arc<AppDefinition>, ctx: &RequestCtx) {
    ch.put(format!("{K_APPS}{}", app.id), app.as_ref());
    st.store_version(&app, ch);
    // A new version resets the launch back-off.
    if st.delays.remove(&app.id).is_some() {
        ch.delete(format!("{K_DELAYS}{}", app.id));
    }
    ch.event(Event::new(
        "api_post_event",
        json!({"clientIp": ctx.client_ip, "uri": ctx.uri, "appDefinition": app.as_ref()}),
    ));
    st.put_app(app);
}

/// Creates and records a deployment; returns its reference.
fn start_deployment(
    st: &mut Cluster,
    ch: &mut Changes,
    version: &str,
    created_at: i64,
    steps: Vec<DeploymentStep>,
    original: BTreeMap<String, Option<AppDefinition>>,
    target: BTreeMap<String, Option<AppDefinition>>,
) -> DeploymentRef {
    let d = Deployment::new(version.to_string(), steps, original, target, created_at);
    ch.put(format!("{K_DEPLOYMENTS}{}", d.id), &d);
    let current = d
        .steps
        .first()
        .map(|s| json!({"actions": s.actions}))
        .unwrap_or(json!({"actions": []}));
    ch.event(Event::with_plan(
        "deployment_info",
        json!({"currentStep": current}),
        &d.plan_json(),
    ));
    ch.event(Event::new(
        "group_change_success",
        json!({"groupId": "/", "version": version}),
    ));
    let r = DeploymentRef {
        deployment_id: d.id.clone(),
        version: version.to_string(),
    };
    st.deployments.insert(d.id.clone(), d);
    r
}

/// All actions in one step (no step at all when there is nothing to do).
fn one_step(actions: Vec<DeploymentAction>) -> Vec<DeploymentStep> {
    if actions.is_empty() {
        vec![]
    } else {
        vec![DeploymentStep { actions }]
    }
}

fn step(action: ActionKind, app: &str) -> DeploymentStep {
    DeploymentStep {
        actions: vec![DeploymentAction {
            action,
            app: app.to_string(),
        }],
    }
}

/// Prepares a validated new app (version stamps, service ports).
fn stamp_new(st: &mut Cluster, mut app: AppDefinition, version: &str) -> AppDefinition {
    app.version = Some(version.to_string());
    app.version_info = Some(VersionInfo {
        last_scaling_at: version.to_string(),
        last_config_change_at: version.to_string(),
    });
    assign_service_ports(st, &mut app);
    app
}

/// `POST /v2/apps`.
pub fn create_app(
    st: &mut Cluster,
    ch: &mut Changes,
    app: AppDefinition,
    ctx: &RequestCtx,
) -> ApiResult<(Arc<AppDefinition>, DeploymentRef)> {
    ctx.may_change(&app.id)?;
    if st.apps.contains_key(&app.id) {
        return Err(ApiError::Conflict {
            message: format!("An app with id [{}] already exists.", app.id),
            deployments: vec![],
        });
    }
    if st.groups.contains(&app.id) {
        return Err(ApiError::Conflict {
            message: format!("A group with id [{}] already exists.", app.id),
            deployments: vec![],
        });
    }
    crate::secrets::check_sources(st, &app)?;
    ctx.may_use_secrets(&app)?;
    admit(st, &[Change::new(&app.id, Some(&app))])?;
    let (now, version) = next_version();
    let app = Arc::new(stamp_new(st, app, &version));
    let r = start_deployment(
        st,
        ch,
        &version,
        now,
        vec![
            step(ActionKind::StartApplication, &app.id),
            step(ActionKind::ScaleApplication, &app.id),
        ],
        BTreeMap::from([(app.id.clone(), None)]),
        BTreeMap::from([(app.id.clone(), Some(app.as_ref().clone()))]),
    );
    save_app(st, ch, app.clone(), ctx);
    Ok((app, r))
}

/// Read-only keys a client may send back from a GET; they are ignored on update.
const READ_ONLY_KEYS: &[&str] = &[
    "version",
    "versionInfo",
    "tasks",
    "tasksStaged",
    "tasksRunning",
    "tasksHealthy",
    "tasksUnhealthy",
    "deployments",
    "lastTaskFailure",
    "taskStats",
    "readinessCheckResults",
];

/// What a PUT/PATCH body asks for.
pub enum AppUpdate {
    /// `{"version": v}`: go back to a stored version.
    Rollback(String),
    /// A (partial or full) definition.
    Definition(serde_json::Map<String, Value>),
}

impl AppUpdate {
    pub fn parse(body: Value) -> ApiResult<AppUpdate> {
        let Value::Object(map) = body else {
            return Err(ApiError::invalid("/", "expected a JSON object"));
        };
        if let Some(v) = map.get("version") {
            let others: Vec<&String> = map
                .keys()
                .filter(|k| *k != "version" && *k != "id")
                .collect();
            if others.is_empty() {
                let Some(v) = v.as_str() else {
                    return Err(ApiError::invalid(
                        "/version",
                        "must be a version timestamp string",
                    ));
                };
                return Ok(AppUpdate::Rollback(v.to_string()));
            }
        }
        Ok(AppUpdate::Definition(map))
    }
}

/// Compares two definitions ignoring version stamps and instance count.
pub(crate) fn same_config(a: &AppDefinition, b: &AppDefinition) -> bool {
    let strip = |x: &AppDefinition| {
        let mut x = x.clone();
        x.version = None;
        x.version_info = None;
        x.instances = 0;
        x
    };
    strip(a) == strip(b)
}

/// Replaces an existing app's definition with `new` (validated), as a scale or a restart.
fn change_app(
    st: &mut Cluster,
    ch: &mut Changes,
    old: Arc<AppDefinition>,
    mut new: AppDefinition,
    force: bool,
    ctx: &RequestCtx,
) -> ApiResult<DeploymentRef> {
    crate::secrets::check_sources(st, &new)?;
    ctx.may_use_secrets(&new)?;
    // Service ports first: a body that leaves them 0 keeps the stored ones, and is then
    // the same configuration (re-sending an unchanged marathon.json restarts nothing).
    // (This changes no state: ports are held only once the app is saved.)
    assign_service_ports(st, &mut new);
    admit(st, &[Change::new(&old.id, Some(&new))])?;
    check_lock(st, ch, std::slice::from_ref(&old.id), force)?;
    let (now, version) = next_version();
    let scale_only = same_config(&old, &new);
    let old_info = old.version_info.clone().unwrap_or_default();
    new.version = Some(version.clone());
    new.version_info = Some(VersionInfo {
        last_scaling_at: version.clone(),
        last_config_change_at: if scale_only {
            old_info.last_config_change_at.clone()
        } else {
            version.clone()
        },
    });
    let action = if scale_only {
        ActionKind::ScaleApplication
    } else {
        ActionKind::RestartApplication
    };
    let new = Arc::new(new);
    let r = start_deployment(
        st,
        ch,
        &version,
        now,
        vec![step(action, &new.id)],
        BTreeMap::from([(old.id.clone(), Some(old.as_ref().clone()))]),
        BTreeMap::from([(new.id.clone(), Some(new.as_ref().clone()))]),
    );
    save_app(st, ch, new, ctx);
    Ok(r)
}

/// The stored (canonical) fields a partial update replaces by giving their deprecated forms:
/// the stored app was normalised, so re-sending the original marathon.json (`ports`, `uris`,
/// `container.docker.network`, `ipAddress`) must replace the canonical fields it became, as
/// Marathon does, not clash with them.
fn superseded_by_deprecated(body: &serde_json::Map<String, Value>) -> Vec<&'static str> {
    let mut out = Vec::new();
    if body.contains_key("ports") && !body.contains_key("portDefinitions") {
        out.push("portDefinitions");
    }
    if body.contains_key("uris") && !body.contains_key("fetch") {
        out.push("fetch");
    }
    let legacy_network = body
        .get("container")
        .and_then(|c| c.get("docker"))
        .and_then(|d| d.get("network"))
        .is_some_and(|n| !n.is_null());
    let legacy_ip = body.get("ipAddress").is_some_and(|ip| !ip.is_null());
    if (legacy_network || legacy_ip) && !body.contains_key("networks") {
        out.push("networks");
    }
    out
}

/// Builds the full definition a PUT/PATCH asks for, merging with the current one when partial.
pub fn merged_definition(
    st: &Cluster,
    id: &str,
    mut body: serde_json::Map<String, Value>,
    partial: bool,
) -> ApiResult<AppDefinition> {
    if let Some(body_id) = body.get("id") {
        let Some(s) = body_id.as_str() else {
            return Err(ApiError::invalid("/id", "must be a string"));
        };
        if path::normalize(s) != id {
            return Err(ApiError::invalid(
                "/id",
                format!("the id in the body ('{s}') does not match the id in the path ('{id}')"),
            ));
        }
    }
    for k in READ_ONLY_KEYS {
        body.remove(*k);
    }
    let mut merged = match (partial, st.apps.get(id)) {
        (true, Some(existing)) => match serde_json::to_value(existing.as_ref()) {
            Ok(Value::Object(mut m)) => {
                for k in READ_ONLY_KEYS {
                    m.remove(*k);
                }
                for k in superseded_by_deprecated(&body) {
                    m.remove(k);
                }
                m.extend(body);
                m
            }
            _ => body,
        },
        _ => body,
    };
    merged.insert("id".into(), Value::String(id.to_string()));
    Ok(validate::app_from_json(Value::Object(merged))?)
}

/// `PUT /v2/apps/{id}` (creates when missing, as the Jenkins Marathon plugin expects) and
/// `PATCH`. Returns whether the app was created.
pub fn put_app(
    st: &mut Cluster,
    ch: &mut Changes,
    id: &str,
    update: AppUpdate,
    partial: bool,
    force: bool,
    ctx: &RequestCtx,
) -> ApiResult<(bool, DeploymentRef)> {
    ctx.may_change(id)?;
    match update {
        AppUpdate::Rollback(version) => {
            let old = st
                .apps
                .get(id)
                .cloned()
                .ok_or_else(|| ApiError::app_not_found(id))?;
            let target = st
                .versions
                .get(id)
                .and_then(|v| v.get(&version))
                .cloned()
                .ok_or_else(|| {
                    ApiError::NotFound(format!("App '{id}' does not exist in version {version}"))
                })?;
            let r = change_app(st, ch, old, target.as_ref().clone(), force, ctx)?;
            Ok((false, r))
        }
        AppUpdate::Definition(body) => {
            let new = merged_definition(st, id, body, partial)?;
            match st.apps.get(id).cloned() {
                Some(old) => Ok((false, change_app(st, ch, old, new, force, ctx)?)),
                None => {
                    let (_, r) = create_app(st, ch, new, ctx)?;
                    Ok((true, r))
                }
            }
        }
    }
}

/// `PUT /v2/apps` with an array: every app changed in one deployment.
pub fn put_apps(
    st: &mut Cluster,
    ch: &mut Changes,
    bodies: Vec<Value>,
    partial: bool,
    force: bool,
    ctx: &RequestCtx,
) -> ApiResult<DeploymentRef> {
    if bodies.len() > validate::MAX_APPS_PER_REQUEST {
        return Err(ApiError::invalid(
            "/",
            format!(
                "{} apps in one request; at most {} are accepted",
                bodies.len(),
                validate::MAX_APPS_PER_REQUEST
            ),
        ));
    }
    let mut news = Vec::new();
    let mut errs = berth_core::error::ValidationErrors::new();
    for (i, body) in bodies.into_iter().enumerate() {
        let Value::Object(map) = body else {
            errs.add(format!("({i})"), "expected a JSON object");
            continue;
        };
        let Some(id) = map.get("id").and_then(Value::as_str).map(path::normalize) else {
            errs.add(
                format!("({i})/id"),
                "every app in a bulk update needs an id",
            );
            continue;
        };
        ctx.may_change(&id)?;
        match merged_definition(st, &id, map, partial) {
            Ok(app) => match crate::secrets::check_sources(st, &app) {
                Ok(()) => {
                    ctx.may_use_secrets(&app)?;
                    news.push(app)
                }
                Err(e) => errs.extend_prefixed(&format!("({i})"), e),
            },
            Err(ApiError::Invalid(e)) => errs.extend_prefixed(&format!("({i})"), e),
            Err(other) => return Err(other),
        }
    }
    errs.into_result()?;
    let ids: Vec<String> = news.iter().map(|a| a.id.clone()).collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    if unique.len() != ids.len() {
        return Err(ApiError::invalid(
            "/",
            "the same app id appears more than once",
        ));
    }
    let changes = news
        .iter()
        .map(|app| {
            let action = match st.apps.get(&app.id) {
                None => ActionKind::StartApplication,
                Some(o) if same_config(o, app) => ActionKind::ScaleApplication,
                Some(_) => ActionKind::RestartApplication,
            };
            (action, app.id.clone(), app.dependencies.clone())
        })
        .collect();
    // One step for independent apps, so a plan is linear in the number of apps.
    let steps = steps_by_dependencies(changes).map_err(|e| ApiError::invalid("/", e))?;
    let planned: Vec<Change<'_>> = news
        .iter()
        .enumerate()
        .map(|(i, a)| Change {
            id: &a.id,
            new: Some(a),
            at: format!("({i})"),
        })
        .collect();
    admit(st, &planned)?;
    check_lock(st, ch, &ids, force)?;
    let (now, version) = next_version();
    let mut original = BTreeMap::new();
    let mut target = BTreeMap::new();
    for mut app in news {
        let old = st.apps.get(&app.id).cloned();
        let info = match &old {
            Some(o) if same_config(o, &app) => VersionInfo {
                last_scaling_at: version.clone(),
                last_config_change_at: o
                    .version_info
                    .clone()
                    .unwrap_or_default()
                    .last_config_change_at,
            },
            _ => VersionInfo {
                last_scaling_at: version.clone(),
                last_config_change_at: version.clone(),
            },
        };
        app.version = Some(version.clone());
        app.version_info = Some(info);
        assign_service_ports(st, &mut app);
        original.insert(app.id.clone(), old.map(|o| o.as_ref().clone()));
        target.insert(app.id.clone(), Some(app.clone()));
        save_app(st, ch, Arc::new(app), ctx);
    }
    Ok(start_deployment(
        st, ch, &version, now, steps, original, target,
    ))
}

/// Marks every live task of `app_id` to be killed.
fn kill_all_tasks(st: &mut Cluster, ch: &mut Changes, app_id: &str) {
    let ids: Vec<String> = st.app_tasks(app_id).map(|t| t.id.clone()).collect();
    for id in ids {
        if let Some(t) = st.tasks.get_mut(&id)
            && t.goal != TaskGoal::Killed
        {
            t.goal = TaskGoal::Killed;
            st.save_task(&id, ch);
        }
    }
}

/// Removes an app's record and everything keyed by it (its tasks are killed separately).
fn forget_app(st: &mut Cluster, ch: &mut Changes, app_id: &str) {
    st.remove_app(app_id);
    ch.delete(format!("{K_APPS}{app_id}"));
    if let Some(versions) = st.versions.remove(app_id) {
        for v in versions.keys() {
            ch.delete(version_key(app_id, v));
        }
    }
    if st.delays.remove(app_id).is_some() {
        ch.delete(format!("{K_DELAYS}{app_id}"));
    }
    if st.last_failures.remove(app_id).is_some() {
        ch.delete(format!("{K_FAILURES}{app_id}"));
    }
    st.unplaced.remove(app_id);
    ch.event(Event::new("app_terminated_event", json!({"appId": app_id})));
}

/// `DELETE /v2/apps/{id}`.
pub fn delete_app(
    st: &mut Cluster,
    ch: &mut Changes,
    id: &str,
    force: bool,
) -> ApiResult<DeploymentRef> {
    let old = st
        .apps
        .get(id)
        .cloned()
        .ok_or_else(|| ApiError::app_not_found(id))?;
    check_lock(st, ch, &[id.to_string()], force)?;
    let (now, version) = next_version();
    kill_all_tasks(st, ch, id);
    forget_app(st, ch, id);
    Ok(start_deployment(
        st,
        ch,
        &version,
        now,
        vec![step(ActionKind::StopApplication, id)],
        BTreeMap::from([(id.to_string(), Some(old.as_ref().clone()))]),
        BTreeMap::from([(id.to_string(), None)]),
    ))
}

/// `POST /v2/apps/{id}/restart`: a new config version, so every task is replaced.
pub fn restart_app(
    st: &mut Cluster,
    ch: &mut Changes,
    id: &str,
    force: bool,
    ctx: &RequestCtx,
) -> ApiResult<DeploymentRef> {
    ctx.may_change(id)?;
    let old = st
        .apps
        .get(id)
        .cloned()
        .ok_or_else(|| ApiError::app_not_found(id))?;
    check_lock(st, ch, &[id.to_string()], force)?;
    let (now, version) = next_version();
    let mut new = old.as_ref().clone();
    new.version = Some(version.clone());
    new.version_info = Some(VersionInfo {
        last_scaling_at: version.clone(),
        last_config_change_at: version.clone(),
    });
    let new = Arc::new(new);
    let r = start_deployment(
        st,
        ch,
        &version,
        now,
        vec![step(ActionKind::RestartApplication, id)],
        BTreeMap::from([(id.to_string(), Some(old.as_ref().clone()))]),
        BTreeMap::from([(id.to_string(), Some(new.as_ref().clone()))]),
    );
    save_app(st, ch, new, ctx);
    Ok(r)
}

/// What killing tasks produced: the tasks, or (with `scale`) the scaling deployment.
pub struct KillResult {
    pub tasks: Vec<Task>,
    pub deployment: Option<DeploymentRef>,
}

/// Kills tasks by id; with `scale` the apps' instance counts shrink accordingly.
/// `wipe` is accepted for compatibility (Berth keeps no resident reservations).
pub fn kill_tasks(
    st: &mut Cluster,
    ch: &mut Changes,
    task_ids: &[String],
    scale: bool,
    force: bool,
    ctx: &RequestCtx,
) -> ApiResult<KillResult> {
    let mut per_app: BTreeMap<String, usize> = BTreeMap::new();
    let mut found = Vec::new();
    for id in task_ids {
        if let Some(t) = st.tasks.get(id)
            && t.goal == TaskGoal::Running
            && !found.contains(id)
        {
            ctx.may_change(&t.app_id)?;
            *per_app.entry(t.app_id.clone()).or_default() += 1;
            found.push(id.clone());
        }
    }
    let apps: Vec<String> = per_app.keys().cloned().collect();
    if scale {
        check_lock(st, ch, &apps, force)?;
    }
    let mut killed = Vec::new();
    for id in &found {
        if let Some(t) = st.tasks.get_mut(id) {
            t.goal = TaskGoal::Killed;
            killed.push(t.clone());
            st.save_task(id, ch);
        }
    }
    st.count("tasks_killed_by_api", killed.len() as u64);
    let mut deployment = None;
    if scale && !per_app.is_empty() {
        let (now, version) = next_version();
        let mut original = BTreeMap::new();
        let mut target = BTreeMap::new();
        let mut actions = Vec::new();
        for (app_id, n) in per_app {
            let Some(old) = st.apps.get(&app_id).cloned() else {
                continue;
            };
            let mut new = old.as_ref().clone();
            new.instances = (new.instances - n as i64).max(0);
            new.version = Some(version.clone());
            new.version_info = Some(VersionInfo {
                last_scaling_at: version.clone(),
                last_config_change_at: old.config_version().to_string(),
            });
            actions.push(DeploymentAction {
                action: ActionKind::ScaleApplication,
                app: app_id.clone(),
            });
            original.insert(app_id.clone(), Some(old.as_ref().clone()));
            target.insert(app_id.clone(), Some(new.clone()));
            save_app(st, ch, Arc::new(new), ctx);
        }
        deployment = Some(start_deployment(
            st,
            ch,
            &version,
            now,
            one_step(actions),
            original,
            target,
        ));
    }
    Ok(KillResult {
        tasks: killed,
        deployment,
    })
}

/// All app ids within a group (recursively).
pub fn apps_in_group(st: &Cluster, group: &str) -> Vec<String> {
    st.apps
        .keys()
        .filter(|id| path::is_within(&path::parent(id), group) || *id == group)
        .cloned()
        .collect()
}

/// True when the group exists explicitly or is implied by an app below it.
pub fn group_exists(st: &Cluster, group: &str) -> bool {
    group == "/"
        || st.groups.contains(group)
        || st.groups.iter().any(|g| path::is_within(g, group))
        || st
            .apps
            .keys()
            .any(|a| path::is_within(&path::parent(a), group))
}

/// Collects the apps of a group JSON (`{"id", "apps": [..], "groups": [..]}`), resolving
/// relative ids against the enclosing group. Errors carry the JSON path.
pub fn collect_group_apps(
    st: &Cluster,
    group_id: &str,
    body: &Value,
    at: &str,
    apps: &mut Vec<AppDefinition>,
    groups: &mut Vec<String>,
    errs: &mut berth_core::error::ValidationErrors,
) {
    groups.push(group_id.to_string());
    if let Some(list) = body.get("apps") {
        let Some(list) = list.as_array() else {
            errs.add(format!("{at}/apps"), "must be an array");
            return;
        };
        for (i, a) in list.iter().enumerate() {
            let mut a = a.clone();
            if let Some(id) = a.get("id").and_then(Value::as_str) {
                let abs = if id.starts_with('/') {
                    path::normalize(id)
                } else {
                    path::normalize(&format!("{group_id}/{id}"))
                };
                a["id"] = Value::String(abs);
            }
            match validate::app_from_json(a).and_then(|app| {
                crate::secrets::check_sources(st, &app)?;
                Ok(app)
            }) {
                Ok(app) => apps.push(app),
                Err(e) => errs.extend_prefixed(&format!("{at}/apps({i})"), e),
            }
        }
    }
    if let Some(list) = body.get("groups") {
        let Some(list) = list.as_array() else {
            errs.add(format!("{at}/groups"), "must be an array");
            return;
        };
        for (i, g) in list.iter().enumerate() {
            let Some(id) = g.get("id").and_then(Value::as_str) else {
                errs.add(format!("{at}/groups({i})/id"), "a group needs an id");
                continue;
            };
            let abs = if id.starts_with('/') {
                path::normalize(id)
            } else {
                path::normalize(&format!("{group_id}/{id}"))
            };
            collect_group_apps(
                st,
                &abs,
                g,
                &format!("{at}/groups({i})"),
                apps,
                groups,
                errs,
            );
        }
    }
}

/// `POST /v2/groups`: creates a group with its apps and subgroups in one deployment.
pub fn create_group(
    st: &mut Cluster,
    ch: &mut Changes,
    body: Value,
    ctx: &RequestCtx,
) -> ApiResult<DeploymentRef> {
    if !body.is_object() {
        return Err(ApiError::invalid("/", "expected a JSON object"));
    }
    let Some(id) = body.get("id").and_then(Value::as_str).map(path::normalize) else {
        return Err(ApiError::invalid("/id", "a group needs an id"));
    };
    if let Err(e) = path::check_id(&id) {
        return Err(ApiError::invalid("/id", e));
    }
    ctx.may_change(&id)?;
    if group_exists(st, &id) || st.apps.contains_key(&id) {
        return Err(ApiError::Conflict {
            message: format!("Group {id} is already created. Use PUT to change this group."),
            deployments: vec![],
        });
    }
    let mut apps = Vec::new();
    let mut groups = Vec::new();
    let mut errs = berth_core::error::ValidationErrors::new();
    collect_group_apps(st, &id, &body, "", &mut apps, &mut groups, &mut errs);
    errs.into_result()?;
    for app in &apps {
        ctx.may_use_secrets(app)?;
    }
    if apps.len() + groups.len() > validate::MAX_APPS_PER_REQUEST {
        return Err(ApiError::invalid(
            "/",
            format!(
                "{} apps and {} groups in one request; at most {} in all are accepted",
                apps.len(),
                groups.len(),
                validate::MAX_APPS_PER_REQUEST
            ),
        ));
    }
    for a in &apps {
        if st.apps.contains_key(&a.id) {
            return Err(ApiError::Conflict {
                message: format!("An app with id [{}] already exists.", a.id),
                deployments: vec![],
            });
        }
    }
    let planned: Vec<Change<'_>> = apps.iter().map(|a| Change::new(&a.id, Some(a))).collect();
    admit(st, &planned)?;
    let steps = steps_by_dependencies(
        apps.iter()
            .map(|a| {
                (
                    ActionKind::StartApplication,
                    a.id.clone(),
                    a.dependencies.clone(),
                )
            })
            .collect(),
    )
    .map_err(|e| ApiError::invalid("/", e))?;
    let (now, version) = next_version();
    for g in &groups {
        st.groups.insert(g.clone());
        ch.put(
            format!("{K_GROUPS}{g}"),
            &json!({"id": g, "version": version}),
        );
    }
    let mut original = BTreeMap::new();
    let mut target = BTreeMap::new();
    for app in apps {
        let app = stamp_new(st, app, &version);
        original.insert(app.id.clone(), None);
        target.insert(app.id.clone(), Some(app.clone()));
        save_app(st, ch, Arc::new(app), ctx);
    }
    Ok(start_deployment(
        st, ch, &version, now, steps, original, target,
    ))
}

/// `DELETE /v2/groups/{id}`: removes the group, its subgroups and all their apps.
pub fn delete_group(
    st: &mut Cluster,
    ch: &mut Changes,
    id: &str,
    force: bool,
) -> ApiResult<DeploymentRef> {
    if !group_exists(st, id) {
        return Err(ApiError::NotFound(format!("Group '{id}' does not exist")));
    }
    let apps = apps_in_group(st, id);
    check_lock(st, ch, &apps, force)?;
    let (now, version) = next_version();
    let mut original = BTreeMap::new();
    let mut target = BTreeMap::new();
    let mut actions = Vec::new();
    for app_id in &apps {
        if let Some(old) = st.apps.get(app_id).cloned() {
            kill_all_tasks(st, ch, app_id);
            forget_app(st, ch, app_id);
            actions.push(DeploymentAction {
                action: ActionKind::StopApplication,
                app: app_id.clone(),
            });
            original.insert(app_id.clone(), Some(old.as_ref().clone()));
            target.insert(app_id.clone(), None);
        }
    }
    let groups: Vec<String> = st
        .groups
        .iter()
        .filter(|g| path::is_within(g, id))
        .cloned()
        .collect();
    for g in groups {
        st.groups.remove(&g);
        ch.delete(format!("{K_GROUPS}{g}"));
    }
    let steps = one_step(actions);
    Ok(start_deployment(
        st, ch, &version, now, steps, original, target,
    ))
}

/// `PUT /v2/groups/{id}` with `{"scaleBy": f}`: every app's instances times f (rounded up).
pub fn scale_group(
    st: &mut Cluster,
    ch: &mut Changes,
    id: &str,
    factor: f64,
    force: bool,
    ctx: &RequestCtx,
) -> ApiResult<DeploymentRef> {
    if !factor.is_finite() || factor < 0.0 {
        return Err(ApiError::invalid(
            "/scaleBy",
            "scaleBy must be a non-negative number",
        ));
    }
    if !group_exists(st, id) {
        return Err(ApiError::NotFound(format!("Group '{id}' does not exist")));
    }
    ctx.may_change(id)?;
    let apps = apps_in_group(st, id);
    for a in &apps {
        if let Some(app) = st.apps.get(a) {
            let n = (app.instances as f64 * factor).ceil();
            if n > 1_000_000.0 {
                return Err(ApiError::invalid(
                    "/scaleBy",
                    format!("scaling {a} to {n} instances exceeds the limit of 1000000"),
                ));
            }
        }
    }
    let scaled: Vec<(Arc<AppDefinition>, AppDefinition)> = apps
        .iter()
        .filter_map(|id| st.apps.get(id).cloned())
        .map(|old| {
            let mut new = old.as_ref().clone();
            new.instances = (old.instances as f64 * factor).ceil() as i64;
            (old, new)
        })
        .collect();
    let planned: Vec<Change<'_>> = scaled
        .iter()
        .map(|(old, new)| Change::new(&old.id, Some(new)))
        .collect();
    admit(st, &planned)?;
    check_lock(st, ch, &apps, force)?;
    let (now, version) = next_version();
    let mut original = BTreeMap::new();
    let mut target = BTreeMap::new();
    let mut actions = Vec::new();
    for (old, mut new) in scaled {
        let app_id = old.id.clone();
        new.version = Some(version.clone());
        new.version_info = Some(VersionInfo {
            last_scaling_at: version.clone(),
            last_config_change_at: old.config_version().to_string(),
        });
        actions.push(DeploymentAction {
            action: ActionKind::ScaleApplication,
            app: app_id.clone(),
        });
        original.insert(app_id.clone(), Some(old.as_ref().clone()));
        target.insert(app_id.clone(), Some(new.clone()));
        save_app(st, ch, Arc::new(new), ctx);
    }
    let steps = one_step(actions);
    Ok(start_deployment(
        st, ch, &version, now, steps, original, target,
    ))
}

/// `DELETE /v2/deployments/{id}`: with `force` just forget it; without, roll the affected
/// apps back to their original definitions in a new deployment.
pub fn cancel_deployment(
    st: &mut Cluster,
    ch: &mut Changes,
    id: &str,
    force: bool,
    ctx: &RequestCtx,
) -> ApiResult<Option<DeploymentRef>> {
    let Some(d) = st.deployments.get(id).cloned() else {
        return Err(ApiError::NotFound(format!(
            "DeploymentPlan {id} does not exist"
        )));
    };
    for app in &d.affected_apps {
        ctx.may_change(app)?;
    }
    if !force {
        // Rolling back changes desired state like any other write.
        let planned: Vec<Change<'_>> = d
            .original
            .iter()
            .map(|(app_id, before)| Change::new(app_id, before.as_ref()))
            .collect();
        admit(st, &planned)?;
    }
    st.deployments.remove(id);
    ch.delete(format!("{K_DEPLOYMENTS}{id}"));
    ch.event(Event::with_plan(
        "deployment_failed",
        json!({"id": d.id}),
        &d.plan_json(),
    ));
    if force {
        return Ok(None);
    }
    let (now, version) = next_version();
    let mut original = BTreeMap::new();
    let mut target = BTreeMap::new();
    let mut actions = Vec::new();
    for (app_id, before) in &d.original {
        let current = st.apps.get(app_id).cloned();
        original.insert(app_id.clone(), current.as_ref().map(|a| a.as_ref().clone()));
        match before {
            Some(def) => {
                let mut restored = def.clone();
                let config_same = current
                    .as_ref()
                    .map(|c| same_config(c, def))
                    .unwrap_or(false);
                restored.version = Some(version.clone());
                restored.version_info = Some(VersionInfo {
                    last_scaling_at: version.clone(),
                    last_config_change_at: if config_same {
                        current
                            .as_ref()
                            .map(|c| c.config_version().to_string())
                            .unwrap_or_default()
                    } else {
                        def.config_version().to_string()
                    },
                });
                let action = if current.is_none() {
                    ActionKind::StartApplication
                } else if config_same {
                    ActionKind::ScaleApplication
                } else {
                    ActionKind::RestartApplication
                };
                actions.push(DeploymentAction {
                    action,
                    app: app_id.clone(),
                });
                target.insert(app_id.clone(), Some(restored.clone()));
                save_app(st, ch, Arc::new(restored), ctx);
            }
            None => {
                if current.is_some() {
                    kill_all_tasks(st, ch, app_id);
                    forget_app(st, ch, app_id);
                }
                actions.push(DeploymentAction {
                    action: ActionKind::StopApplication,
                    app: app_id.clone(),
                });
                target.insert(app_id.clone(), None);
            }
        }
    }
    let steps = one_step(actions);
    let r = start_deployment(st, ch, &version, now, steps, original, target);
    if let Some(nd) = st.deployments.get_mut(&r.deployment_id) {
        nd.rollback_of = Some(id.to_string());
        ch.put(format!("{K_DEPLOYMENTS}{}", nd.id), &*nd);
    }
    Ok(Some(r))
}

/// `DELETE /v2/queue/{id}/delay`.
pub fn reset_delay(st: &mut Cluster, ch: &mut Changes, id: &str) -> ApiResult<()> {
    if !st.apps.contains_key(id) {
        return Err(ApiError::app_not_found(id));
    }
    if st.delays.remove(id).is_some() {
        ch.delete(format!("{K_DELAYS}{id}"));
    }
    Ok(())
}

/// What an operator asks of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeAction {
    /// No new tasks are placed on it.
    Cordon,
    /// It takes new tasks again (and stops draining).
    Uncordon,
    /// Cordon, and move every task off, each replacement healthy elsewhere before the old one
    /// is killed, within each app's minimumHealthCapacity.
    Drain,
}

/// `POST /api/v1/nodes/{id}/cordon|uncordon|drain`.
pub fn node_action(
    st: &mut Cluster,
    ch: &mut Changes,
    id: &str,
    action: NodeAction,
) -> ApiResult<()> {
    let Some(n) = st.nodes.get_mut(id) else {
        return Err(ApiError::NotFound(format!("node '{id}' does not exist")));
    };
    match action {
        NodeAction::Cordon => n.cordoned = true,
        NodeAction::Uncordon => {
            n.cordoned = false;
            n.draining = false;
        }
        NodeAction::Drain => {
            n.cordoned = true;
            n.draining = true;
        }
    }
    ch.put(format!("{}{id}", crate::state::K_NODES), &*n);
    st.sync_sched_node(id);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(n: usize, prefix: &str) -> Vec<Value> {
        (0..n)
            .map(|i| json!({"id": format!("/{prefix}/a{i}"), "cmd": "sleep 1", "instances": 0, "portDefinitions": [{"port": 0}, {"port": 0}]}))
            .collect()
    }

    #[test]
    fn a_bulk_put_is_one_step_with_distinct_service_ports() {
        let mut st = Cluster::new(1);
        let mut ch = Changes::default();
        let ctx = RequestCtx::default();
        put_apps(&mut st, &mut ch, bulk(3000, "x"), false, false, &ctx).unwrap();
        let d = st.deployments.values().next().unwrap();
        assert_eq!(d.steps.len(), 1);
        assert_eq!(d.steps[0].actions.len(), 3000);
        let mut ports: Vec<i64> = st.apps.values().flat_map(|a| a.service_ports()).collect();
        ports.sort();
        let expected: Vec<i64> = (SERVICE_PORT_MIN..SERVICE_PORT_MIN + 6000).collect();
        assert_eq!(ports, expected);
        // A freed port is handed out again; an updated app keeps its own.
        delete_app(&mut st, &mut ch, "/x/a7", true).unwrap();
        put_apps(&mut st, &mut ch, bulk(1, "y"), false, true, &ctx).unwrap();
        assert_eq!(st.apps["/y/a0"].service_ports(), vec![10014, 10015]);
        let again = vec![json!({"id": "/x/a8", "cmd": "sleep 2"})];
        put_apps(&mut st, &mut ch, again, true, true, &ctx).unwrap();
        assert_eq!(st.apps["/x/a8"].service_ports(), vec![10016, 10017]);
        // The next new app goes past all of them.
        put_apps(&mut st, &mut ch, bulk(1, "z"), false, true, &ctx).unwrap();
        assert_eq!(st.apps["/z/a0"].service_ports(), vec![16000, 16001]);
    }

    #[test]
    fn too_many_apps_or_a_dependency_cycle_change_nothing() {
        let mut st = Cluster::new(1);
        let mut ch = Changes::default();
        let ctx = RequestCtx::default();
        let err = put_apps(
            &mut st,
            &mut ch,
            bulk(validate::MAX_APPS_PER_REQUEST + 1, "x"),
            false,
            false,
            &ctx,
        )
        .unwrap_err();
        assert_eq!(err.status(), axum::http::StatusCode::UNPROCESSABLE_ENTITY);
        let cycle = vec![
            json!({"id": "/a", "cmd": "sleep 1", "dependencies": ["/b"]}),
            json!({"id": "/b", "cmd": "sleep 1", "dependencies": ["/a"]}),
        ];
        let err = put_apps(&mut st, &mut ch, cycle, false, false, &ctx).unwrap_err();
        assert!(err.body().to_string().contains("cycle"), "{}", err.body());
        assert!(st.apps.is_empty() && st.deployments.is_empty() && ch.ops.is_empty());
    }
}
