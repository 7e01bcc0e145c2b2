//! The agent protocol (see `berth_core::protocol`): register, long-poll assignments, report.

use super::{Params, json_body, ok};
use crate::Shared;
use crate::controller::apply_statuses;
use crate::error::{ApiError, ApiResult};
use crate::state::K_NODES;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::Uri;
use axum::response::IntoResponse;
use axum::response::Response;
use berth_core::app::AppDefinition;
use berth_core::node::NodeResources;
use berth_core::node::{Node, NodeInfo, NodeStatus};
use berth_core::protocol::{RegisterResponse, StatusAck, StatusReport};
use berth_core::task::TaskGoal;
use std::sync::Arc;
use std::time::Duration;

/// Longest a long-poll is held open.
const MAX_WAIT: Duration = Duration::from_secs(60);

fn check_info(info: &NodeInfo) -> ApiResult<()> {
    let mut errs = berth_core::error::ValidationErrors::new();
    if info.id.is_empty() || info.id.len() > 200 || info.id.contains('/') {
        errs.add("/id", "node id must be 1 to 200 characters without '/'");
    }
    if info.hostname.is_empty() {
        errs.add("/hostname", "hostname must not be empty");
    }
    for (name, v) in [
        ("cpus", info.resources.cpus),
        ("mem", info.resources.mem),
        ("disk", info.resources.disk),
    ] {
        if !v.is_finite() || v < 0.0 {
            errs.add(
                format!("/resources/{name}"),
                "must be a non-negative number",
            );
        }
    }
    for (i, r) in info.port_ranges.iter().enumerate() {
        if r.begin > r.end {
            errs.add(format!("/portRanges({i})"), "begin must not exceed end");
        }
    }
    Ok(errs.into_result()?)
}

pub async fn register(State(s): State<Shared>, body: Body) -> ApiResult<Response> {
    let v = json_body(&s, body).await?;
    let info: NodeInfo =
        serde_json::from_value(v).map_err(|e| ApiError::invalid("/", e.to_string()))?;
    check_info(&info)?;
    let now = berth_core::time::now_millis();
    let id = info.id.clone();
    s.apply(|st, ch| {
        // Operator decisions (cordon, drain) survive an agent re-registering.
        let (cordoned, draining, registered_at) = st
            .nodes
            .get(&id)
            .map(|n| (n.cordoned, n.draining, n.registered_at))
            .unwrap_or((false, false, now));
        let node = Node {
            info,
            status: NodeStatus::Ready,
            cordoned,
            draining,
            registered_at,
            last_heartbeat: now,
        };
        ch.put(format!("{K_NODES}{id}"), &node);
        ch.nodes.insert(id.clone());
        st.nodes.insert(id.clone(), node);
        st.sync_sched_node(&id);
        Ok(())
    })
    .await?;
    tracing::info!(node = %id, "node registered");
    let interval = (s.config.node_timeout / 4).as_millis() as u64;
    Ok(ok(serde_json::to_value(RegisterResponse {
        node_id: id,
        heartbeat_interval_ms: interval.max(100),
    })
    .unwrap_or_default()))
}

/// One assignment as sent to the agent: [`Assignment`]'s JSON shape, borrowing the app.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct AssignmentOut {
    task_id: String,
    app_id: String,
    version: String,
    goal: TaskGoal,
    ports: Vec<u16>,
    host: String,
    resources: NodeResources,
    cpuset: Vec<u32>,
    #[serde(serialize_with = "serialize_app")]
    app: Arc<AppDefinition>,
}

fn serialize_app<S: serde::Serializer>(app: &Arc<AppDefinition>, s: S) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(app.as_ref(), s)
}

#[derive(serde::Serialize)]
struct AssignmentsOut {
    generation: u64,
    assignments: Vec<AssignmentOut>,
}

/// Collects the node's assignments under the lock (cheap clones only); the caller encodes
/// them after the lock is released.
fn build_assignments(s: &Shared, node_id: &str) -> ApiResult<AssignmentsOut> {
    let mut st = s.state.lock();
    if !st.nodes.contains_key(node_id) {
        return Err(ApiError::NotFound(format!(
            "node '{node_id}' is not registered"
        )));
    }
    let generation = *st.node_gen(node_id).borrow();
    let st = &*st;
    let mut assignments = Vec::new();
    for id in st.tasks_by_node.get(node_id).into_iter().flatten() {
        if st.uncommitted.contains(id) {
            continue;
        }
        let Some(t) = st.tasks.get(id) else { continue };
        if t.state.is_terminal() {
            continue;
        }
        let app = st.app_at(&t.app_id, &t.version).unwrap_or_else(|| {
            Arc::new(AppDefinition {
                id: t.app_id.clone(),
                ..Default::default()
            })
        });
        assignments.push(AssignmentOut {
            task_id: t.id.clone(),
            app_id: t.app_id.clone(),
            version: t.version.clone(),
            goal: t.goal,
            ports: t.ports.clone(),
            host: t.host.clone(),
            resources: t.resources,
            cpuset: t.cpuset.clone(),
            app,
        });
    }
    Ok(AssignmentsOut {
        generation,
        assignments,
    })
}

pub async fn assignments(
    State(s): State<Shared>,
    Path(node): Path<String>,
    uri: Uri,
) -> ApiResult<Response> {
    let p = Params::from_uri(&uri);
    let after: u64 = p.get("after").and_then(|v| v.parse().ok()).unwrap_or(0);
    let wait = p
        .get("wait")
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::ZERO);
    let mut rx = {
        let mut st = s.state.lock();
        if !st.nodes.contains_key(&node) {
            return Err(ApiError::NotFound(format!(
                "node '{node}' is not registered"
            )));
        }
        st.node_gen(&node).subscribe()
    };
    if *rx.borrow_and_update() == after && !wait.is_zero() {
        let _ = tokio::time::timeout(wait.min(MAX_WAIT), rx.changed()).await;
    }
    let a = build_assignments(&s, &node)?;
    let body = serde_json::to_vec(&a).map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

pub async fn status(
    State(s): State<Shared>,
    Path(node): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    let v = json_body(&s, body).await?;
    let report: StatusReport =
        serde_json::from_value(v).map_err(|e| ApiError::invalid("/", e.to_string()))?;
    if let Some(info) = &report.info {
        check_info(info)?;
    }
    let now = berth_core::time::now_millis();
    let unknown = s
        .apply(|st, ch| {
            let Some(n) = st.nodes.get_mut(&node) else {
                return Err(ApiError::NotFound(format!(
                    "node '{node}' is not registered"
                )));
            };
            n.last_heartbeat = now;
            let mut changed = false;
            if n.status != NodeStatus::Ready {
                n.status = NodeStatus::Ready;
                changed = true;
                tracing::info!(node = %node, "node is reachable again");
            }
            if let Some(c) = &report.conditions
                && *c != n.info.conditions
            {
                n.info.conditions = c.clone();
                changed = true;
            }
            if let Some(info) = &report.info
                && info.id == node
                && *info != n.info
            {
                n.info = info.clone();
                changed = true;
            }
            if changed {
                ch.put(format!("{K_NODES}{node}"), &*n);
                st.sync_sched_node(&node);
            }
            Ok(apply_statuses(
                st,
                ch,
                &node,
                &report.statuses,
                report.full,
                now,
            ))
        })
        .await?;
    Ok(ok(
        serde_json::to_value(StatusAck { unknown }).unwrap_or_default()
    ))
}
