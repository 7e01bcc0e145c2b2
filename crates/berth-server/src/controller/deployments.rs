//! Deployments: how far each has come (steps, convergence) and why it is stuck.

use super::is_healthy;
use crate::state::{Changes, Cluster, K_DEPLOYMENTS};
use berth_core::app::AppDefinition;
use berth_core::event::Event;
use berth_core::task::TaskGoal;
use serde_json::json;

/// Is this app in the state a deployment's target asks for?
fn converged(
    st: &Cluster,
    app_id: &str,
    target: Option<&AppDefinition>,
    deployment_version: &str,
) -> bool {
    let killing = st.app_tasks(app_id).any(|t| t.goal == TaskGoal::Killed);
    match target {
        None => {
            let superseded = st
                .apps
                .get(app_id)
                .map(|a| a.version.as_deref().unwrap_or("") > deployment_version);
            !killing && superseded.unwrap_or(true)
        }
        Some(def) => {
            let Some(current) = st.apps.get(app_id) else {
                return true;
            };
            if current.version != def.version {
                return true; // superseded by a newer (forced) change
            }
            if killing {
                return false;
            }
            let config = def.config_version();
            let mut n = 0usize;
            for t in st.app_tasks(app_id) {
                if t.config_version != config || !is_healthy(def, t) {
                    return false;
                }
                n += 1;
            }
            n == def.instances.max(0) as usize
        }
    }
}

/// Why a deployment is not finished yet, in words: instances that cannot be placed, or a
/// new version that fails its health checks or keeps failing.
fn blocked_reason(st: &Cluster, app_id: &str, target: Option<&AppDefinition>) -> Option<String> {
    let def = target?;
    let mut reasons = Vec::new();
    if let Some(u) = st.unplaced.get(app_id) {
        reasons.push(format!(
            "{app_id}: {} of {} instances unplaced: {}",
            u.count, def.instances, u.summary
        ));
    }
    let config = def.config_version();
    let failing_check = st
        .app_tasks(app_id)
        .filter(|t| t.config_version == config && t.goal == TaskGoal::Running)
        .flat_map(|t| t.health.iter())
        .filter(|h| !h.alive && h.last_failure.is_some())
        .max_by(|a, b| a.last_failure.cmp(&b.last_failure));
    if let Some(h) = failing_check {
        reasons.push(format!(
            "{app_id}: new version failing health checks: last failure {} at {}",
            h.last_failure_cause.as_deref().unwrap_or("unknown"),
            h.last_failure.as_deref().unwrap_or("?")
        ));
    } else if let Some(f) = st
        .last_failures
        .get(app_id)
        .filter(|f| f["version"].as_str() == def.version.as_deref())
    {
        reasons.push(format!(
            "{app_id}: new version tasks fail: {} ({} at {})",
            f["message"].as_str().unwrap_or(""),
            f["state"].as_str().unwrap_or(""),
            f["timestamp"].as_str().unwrap_or("")
        ));
    }
    if let Some(d) = st
        .delays
        .get(app_id)
        .filter(|d| Some(&d.version) == def.version.as_ref())
    {
        reasons.push(format!(
            "{app_id}: launches delayed by back-off after {} failures",
            d.failures
        ));
    }
    if reasons.is_empty() {
        None
    } else {
        Some(reasons.join("; "))
    }
}

/// Moves forward the deployments that touch an app `looked_at` selects, looking again only
/// at those apps (at all of a deployment's apps on a `full` pass and on the first look).
/// Linear in what changed: a plan is never cloned, and its `plan` JSON is rendered once.
pub(super) fn progress_deployments(
    st: &mut Cluster,
    ch: &mut Changes,
    looked_at: impl Fn(&str) -> bool,
    full: bool,
) {
    let ids: Vec<String> = st
        .deployments
        .values()
        .filter(|d| full || d.affected_apps.iter().any(|a| looked_at(a)))
        .map(|d| d.id.clone())
        .collect();
    for id in ids {
        let Some(d) = st.deployments.get(&id) else {
            continue;
        };
        // StartApplication steps complete as soon as the app exists.
        let mut step = d.current_step;
        while step < d.steps.len()
            && d.steps[step - 1]
                .actions
                .iter()
                .all(|a| a.action == berth_core::deployment::ActionKind::StartApplication)
        {
            ch.event(step_success(d, step));
            step += 1;
        }
        let check_all = full || d.unconverged.is_none();
        let verdicts: Vec<(String, bool, Option<String>)> = d
            .target
            .iter()
            .filter(|(app_id, _)| check_all || looked_at(app_id))
            .map(|(app_id, target)| {
                let ok = converged(st, app_id, target.as_ref(), &d.version);
                let why = if ok {
                    None
                } else {
                    blocked_reason(st, app_id, target.as_ref())
                };
                (app_id.clone(), ok, why)
            })
            .collect();
        let Some(d) = st.deployments.get_mut(&id) else {
            continue;
        };
        let unconverged = d.unconverged.get_or_insert_with(Default::default);
        if check_all {
            unconverged.clear();
        }
        let mut reasons_changed = check_all && !d.blocked_by_app.is_empty();
        if check_all {
            d.blocked_by_app.clear();
        }
        for (app_id, ok, why) in verdicts {
            if ok {
                unconverged.remove(&app_id);
            } else {
                unconverged.insert(app_id.clone());
            }
            match why {
                Some(w) => {
                    if d.blocked_by_app.get(&app_id) != Some(&w) {
                        d.blocked_by_app.insert(app_id, w);
                        reasons_changed = true;
                    }
                }
                None => reasons_changed |= d.blocked_by_app.remove(&app_id).is_some(),
            }
        }
        if unconverged.is_empty() {
            if step >= 1 && step <= d.steps.len() {
                ch.event(step_success(d, step));
            }
            ch.event(Event::with_plan(
                "deployment_success",
                json!({"id": d.id}),
                &d.plan_json(),
            ));
            st.deployments.remove(&id);
            ch.delete(format!("{K_DEPLOYMENTS}{id}"));
            continue;
        }
        if reasons_changed {
            let reasons: Vec<&str> = d.blocked_by_app.values().map(String::as_str).collect();
            d.blocked = (!reasons.is_empty()).then(|| reasons.join("; "));
        }
        if step != d.current_step {
            d.current_step = step;
            ch.put(format!("{K_DEPLOYMENTS}{id}"), &*d);
        }
    }
}

/// `deployment_step_success` for the 1-based `step` of `d`.
fn step_success(d: &berth_core::deployment::Deployment, step: usize) -> Event {
    let actions = d
        .steps
        .get(step.saturating_sub(1))
        .map(|s| s.actions.as_slice())
        .unwrap_or_default();
    Event::with_plan(
        "deployment_step_success",
        json!({"currentStep": {"actions": actions}}),
        &d.plan_json(),
    )
}
