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
        "registeredAt": format_millis(n.registered_at),
        "lastHeartbeat": format_millis(n.last_heartbeat),
    })
}

pub async fn nodes(State(s): State<Shared>) -> Response {
    let st = s.state.lock();
    let list: Vec<Value> = st.nodes.values().map(|n| node_json(&st, n)).collect();
    ok(json!({"nodes": list}))
}

pub async fn node(State(s): State<Shared>, Path(id): Path<String>) -> ApiResult<Response> {
    let st = s.state.lock();
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
    let st = s.state.lock();
    let list: Vec<Value> = st
        .deployments
        .values()
        .map(|d| deployment_json(&st, d))
        .collect();
    ok(json!({"deployments": list}))
}

pub async fn deployment(State(s): State<Shared>, Path(id): Path<String>) -> ApiResult<Response> {
    let st = s.state.lock();
    let d = st
        .deployments
        .get(&id)
        .ok_or_else(|| ApiError::NotFound(format!("DeploymentPlan {id} does not exist")))?;
    Ok(ok(deployment_json(&st, d)))
}
