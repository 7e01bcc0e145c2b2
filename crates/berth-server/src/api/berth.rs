//! Berth's own API (`/api/v1`): what Marathon never had (nodes, deployment diagnostics).

use super::ok;
use crate::Shared;
use crate::error::{ApiError, ApiResult};
use crate::state::Cluster;
use axum::extract::{Path, State};
use axum::response::Response;
use berth_core::node::{Node, NodeResources};
use berth_core::time::format_millis;
use serde_json::{Value, json};

fn node_json(st: &Cluster, n: &Node) -> Value {
    let usage = st.scheduler.node_usage(n.id());
    let (used, tasks) = match &usage {
        Some(u) => (
            json!({"cpus": u.cpus, "mem": u.mem, "disk": u.disk}),
            u.tasks,
        ),
        None => (json!(NodeResources::default()), 0),
    };
    json!({
        "id": n.info.id,
        "hostname": n.info.hostname,
        "address": n.info.address,
        "status": n.status,
        "cordoned": n.cordoned,
        "draining": n.draining,
        "drainBlocked": drain_blocked(st, n),
        "schedulable": n.schedulable(),
        "resources": n.info.resources,
        "reserved": n.info.reserved,
        "overcommit": n.info.overcommit,
        "allocatable": n.info.allocatable(),
        "used": used,
        "tasks": tasks,
        "portRanges": n.info.port_ranges,
        "attributes": n.info.attributes,
        "drivers": n.info.drivers,
        "conditions": n.info.conditions,
        "agentVersion": n.info.agent_version,
        "agentUrl": n.info.agent_url,
        "registeredAt": format_millis(n.registered_at),
        "lastHeartbeat": format_millis(n.last_heartbeat),
    })
}

/// While a node drains: what keeps its remaining tasks there.
fn drain_blocked(st: &Cluster, n: &Node) -> Option<String> {
    if !n.draining {
        return None;
    }
    let mut apps: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for id in st.tasks_by_node.get(n.id()).into_iter().flatten() {
        if let Some(t) = st.tasks.get(id) {
            *apps.entry(t.app_id.as_str()).or_default() += 1;
        }
    }
    if apps.is_empty() {
        return None;
    }
    let reasons: Vec<String> = apps
        .iter()
        .map(|(app, count)| match st.unplaced.get(*app) {
            Some(u) => format!(
                "{app}: {count} task(s) wait for a replacement that cannot be placed: {}",
                u.summary
            ),
            None => format!(
                "{app}: {count} task(s) wait for healthy replacements (minimumHealthCapacity)"
            ),
        })
        .collect();
    Some(reasons.join("; "))
}

async fn act(s: Shared, id: String, action: crate::ops::NodeAction) -> ApiResult<Response> {
    s.apply(|st, ch| crate::ops::node_action(st, ch, &id, action))
        .await?;
    let st = s.state.read();
    let n = st
        .nodes
        .get(&id)
        .ok_or_else(|| ApiError::NotFound(format!("node '{id}' does not exist")))?;
    Ok(ok(node_json(&st, n)))
}

pub async fn cordon(State(s): State<Shared>, Path(id): Path<String>) -> ApiResult<Response> {
    act(s, id, crate::ops::NodeAction::Cordon).await
}

pub async fn uncordon(State(s): State<Shared>, Path(id): Path<String>) -> ApiResult<Response> {
    act(s, id, crate::ops::NodeAction::Uncordon).await
}

pub async fn drain(State(s): State<Shared>, Path(id): Path<String>) -> ApiResult<Response> {
    act(s, id, crate::ops::NodeAction::Drain).await
}

pub async fn nodes(State(s): State<Shared>) -> Response {
    let st = s.state.read();
    let list: Vec<Value> = st.nodes.values().map(|n| node_json(&st, n)).collect();
    ok(json!({"nodes": list}))
}

pub async fn node(State(s): State<Shared>, Path(id): Path<String>) -> ApiResult<Response> {
    let st = s.state.read();
    let n = st
        .nodes
        .get(&id)
        .ok_or_else(|| ApiError::NotFound(format!("node '{id}' does not exist")))?;
    Ok(ok(node_json(&st, n)))
}

fn deployment_json(st: &Cluster, d: &berth_core::deployment::Deployment) -> Value {
    let mut v = d.to_marathon();
    v["blocked"] = json!(d.blocked);
    v["rollbackOf"] = json!(d.rollback_of);
    v["createdAt"] = json!(format_millis(d.created_at));
    let progress: Vec<Value> = d
        .target
        .iter()
        .map(|(app_id, target)| {
            let config = target.as_ref().map(|t| t.config_version().to_string());
            let mut old = 0;
            let mut new = 0;
            let mut healthy = 0;
            for t in st.app_tasks(app_id) {
                if t.goal != berth_core::task::TaskGoal::Running {
                    continue;
                }
                if Some(&t.config_version) == config.as_ref() {
                    new += 1;
                    if t.state == berth_core::task::TaskState::Running && t.is_healthy() != Some(false) {
                        healthy += 1;
                    }
                } else {
                    old += 1;
                }
            }
            json!({
                "app": app_id,
                "targetInstances": target.as_ref().map(|t| t.instances).unwrap_or(0),
                "oldInstances": old,
                "newInstances": new,
                "healthyNewInstances": healthy,
                "unplaced": st.unplaced.get(app_id).map(|u| json!({"count": u.count, "reasons": u.reasons, "summary": u.summary})),
                "lastTaskFailure": st.last_failures.get(app_id),
            })
        })
        .collect();
    v["progress"] = json!(progress);
    v
}

pub async fn deployments(State(s): State<Shared>) -> Response {
    let st = s.state.read();
    let list: Vec<Value> = st
        .deployments
        .values()
        .map(|d| deployment_json(&st, d))
        .collect();
    ok(json!({"deployments": list}))
}

pub async fn deployment(State(s): State<Shared>, Path(id): Path<String>) -> ApiResult<Response> {
    let st = s.state.read();
    let d = st
        .deployments
        .get(&id)
        .ok_or_else(|| ApiError::NotFound(format!("DeploymentPlan {id} does not exist")))?;
    Ok(ok(deployment_json(&st, d)))
}
