//! The agent protocol (see `berth_core::protocol`): register, long-poll assignments, report.

use super::{Params, json_body, ok};
use crate::Shared;
use crate::auth::{Caller, Principal};
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
use berth_core::secret::SecretEnv;
use berth_core::task::TaskGoal;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// Longest a long-poll is held open.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// Most CPUs a node may offer. The scheduler keeps per-core state for pinning (`0..cpus`): a
/// node that claimed 1e308 CPUs made it allocate and scan 2^32 cores under the state lock.
const MAX_NODE_CPUS: f64 = 65_536.0;

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
    if info.resources.cpus > MAX_NODE_CPUS {
        errs.add(
            "/resources/cpus",
            format!("must be at most {MAX_NODE_CPUS}"),
        );
    }
    for (i, r) in info.port_ranges.iter().enumerate() {
        if r.begin > r.end {
            errs.add(format!("/portRanges({i})"), "begin must not exceed end");
        }
    }
    Ok(errs.into_result()?)
}

/// 403 unless the caller is the agent of `node` (or authentication is off).
fn check_node(who: &Principal, node: &str) -> ApiResult<()> {
    match who {
        Principal::Anonymous => Ok(()),
        Principal::Node(n) if n == node => Ok(()),
        _ => Err(ApiError::Forbidden(format!(
            "permission denied: {} may not act for node '{node}'",
            who.name()
        ))),
    }
}

pub async fn register(
    State(s): State<Shared>,
    Caller(who): Caller,
    body: Body,
) -> ApiResult<Response> {
    let v = json_body(&s, body).await?;
    let info = NodeInfo::deserialize(&v).map_err(|e| ApiError::invalid("/", e.to_string()))?;
    check_info(&info)?;
    let now = berth_core::time::now_millis();
    let id = info.id.clone();
    // A join token may claim a node id nobody holds, or one whose agent stopped reporting
    // (an agent that lost its data dir); never a live node's, which would let any holder of
    // the join token take over that node's tasks.
    let issue = match &who {
        Principal::Joining(_) => {
            let live = s
                .state
                .read()
                .nodes
                .get(&id)
                .is_some_and(|n| n.status == NodeStatus::Ready);
            if live && s.auth.has_node_credential(&id) {
                return Err(ApiError::Conflict {
                    message: format!(
                        "node '{id}' is registered and reporting with its own credential; \
                         a join token cannot take it over (if its agent lost its credential, \
                         wait until the node is unreachable, then join again)"
                    ),
                    deployments: vec![],
                });
            }
            true
        }
        other => {
            check_node(other, &id)?;
            false
        }
    };
    let tls = crate::tls::register_certificates(&s, &v, &info)?;
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
    let credential = if issue {
        Some(
            s.auth
                .issue_node_credential(s.store.as_ref(), &id)
                .await
                .map_err(|e| ApiError::Unavailable(e.to_string()))?,
        )
    } else {
        None
    };
    tracing::info!(node = %id, joined = issue, "node registered");
    let interval = (s.config.node_timeout / 4).as_millis() as u64;
    Ok(ok(serde_json::to_value(RegisterResponse {
        node_id: id,
        heartbeat_interval_ms: interval.max(100),
        credential,
        tls,
    })
    .unwrap_or_default()))
}

/// One assignment as sent to the agent: [`Assignment`]'s JSON shape (the app definition
/// travels once per response in `apps`).
///
/// [`Assignment`]: berth_core::protocol::Assignment
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
    /// The task's secret env values, for a task to run (see [`crate::secrets::resolve_env`]).
    #[serde(skip_serializing_if = "SecretEnv::is_empty")]
    secret_env: SecretEnv,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret_error: Option<String>,
}

/// [`berth_core::protocol::Assignments`]' JSON shape, borrowing the app definitions.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct AssignmentsOut {
    generation: u64,
    full: bool,
    assignments: Vec<AssignmentOut>,
    removed: Vec<String>,
    #[serde(serialize_with = "serialize_apps")]
    apps: Vec<Arc<AppDefinition>>,
    /// The user tasks of apps without `user` run as (`--default-task-user`).
    default_user: String,
}

fn serialize_apps<S: serde::Serializer>(
    apps: &[Arc<AppDefinition>],
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(apps.len()))?;
    for a in apps {
        seq.serialize_element(a.as_ref())?;
    }
    seq.end()
}

/// Collects the node's assignments under the lock (cheap clones only); the caller encodes
/// them after the lock is released. With `after` recent enough (see
/// [`crate::state::NodeFeed`]), only what changed since generation `after`.
fn build_assignments(s: &Shared, node_id: &str, after: u64) -> ApiResult<AssignmentsOut> {
    let st = s.state.read();
    if !st.nodes.contains_key(node_id) {
        return Err(ApiError::NotFound(format!(
            "node '{node_id}' is not registered"
        )));
    }
    // The caller subscribed to the node's feed, so it exists; without one, send everything.
    let (generation, floor) = st
        .feeds
        .get(node_id)
        .map(|f| (*f.generation.borrow(), f.floor))
        .unwrap_or((0, u64::MAX));
    let st = &*st;
    let full = after == 0 || after < floor || after > generation;
    let mut out = AssignmentsOut {
        generation,
        full,
        assignments: Vec::new(),
        removed: Vec::new(),
        apps: Vec::new(),
        default_user: st.task_defaults.default_user.clone(),
    };
    if !full && let Some(feed) = st.feeds.get(node_id) {
        out.removed = feed
            .removed
            .iter()
            .filter(|(g, _)| *g > after)
            .map(|(_, id)| id.clone())
            .collect();
    }
    let mut versions: std::collections::HashSet<(&str, &str)> = Default::default();
    // Secret env values, opened once per app version in this response.
    let mut secret_envs: std::collections::HashMap<(&str, &str), Result<SecretEnv, String>> =
        Default::default();
    for id in st.tasks_by_node.get(node_id).into_iter().flatten() {
        if !full && st.assign_gen.get(id).is_none_or(|g| *g <= after) {
            continue;
        }
        if st.uncommitted.contains(id) {
            continue;
        }
        let Some(t) = st.tasks.get(id) else { continue };
        if t.state.is_terminal() {
            if !full {
                out.removed.push(t.id.clone());
            }
            continue;
        }
        if versions.insert((&t.app_id, &t.version)) {
            let app = match st.app_at(&t.app_id, &t.version) {
                Some(a) if a.version.as_deref() == Some(t.version.as_str()) => a,
                // The definition the task was launched from is gone: send the current one
                // (or an empty one) under the task's version so the agent can resolve it.
                other => Arc::new(AppDefinition {
                    id: t.app_id.clone(),
                    version: Some(t.version.clone()),
                    ..other.map(|a| (*a).clone()).unwrap_or_default()
                }),
            };
            if app.uses_secrets() {
                secret_envs.insert(
                    (&t.app_id, &t.version),
                    crate::secrets::resolve_env(st, &s.secrets_key, &app),
                );
            }
            out.apps.push(app);
        }
        // Only a task to run gets its secrets: one being killed needs none.
        let (secret_env, secret_error) = match secret_envs.get(&(&t.app_id, &t.version)) {
            Some(Ok(env)) if t.goal == TaskGoal::Running => (env.clone(), None),
            Some(Err(e)) if t.goal == TaskGoal::Running => (SecretEnv::new(), Some(e.clone())),
            _ => (SecretEnv::new(), None),
        };
        out.assignments.push(AssignmentOut {
            task_id: t.id.clone(),
            app_id: t.app_id.clone(),
            version: t.version.clone(),
            goal: t.goal,
            ports: t.ports.clone(),
            host: t.host.clone(),
            resources: t.resources,
            cpuset: t.cpuset.clone(),
            secret_env,
            secret_error,
        });
    }
    Ok(out)
}

/// One waiting long-poll, counted against `max_long_polls` while it lives.
struct LongPoll<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> LongPoll<'a> {
    fn enter(s: &'a Shared) -> ApiResult<Self> {
        use std::sync::atomic::Ordering;
        let max = s.config.max_long_polls;
        let held = s.long_polls.fetch_add(1, Ordering::AcqRel);
        if held >= max {
            s.long_polls.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError::TooManyRequests(format!(
                "{held} long-polls are open (at most {max}); poll again without wait or later"
            )));
        }
        Ok(Self(&s.long_polls))
    }
}

impl Drop for LongPoll<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

pub async fn assignments(
    State(s): State<Shared>,
    Caller(who): Caller,
    Path(node): Path<String>,
    uri: Uri,
) -> ApiResult<Response> {
    check_node(&who, &node)?;
    let p = Params::from_uri(&uri);
    let after: u64 = p.get("after").and_then(|v| v.parse().ok()).unwrap_or(0);
    let wait = p
        .get("wait")
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::ZERO);
    let mut rx = {
        let mut st = s.state.write();
        if !st.nodes.contains_key(&node) {
            return Err(ApiError::NotFound(format!(
                "node '{node}' is not registered"
            )));
        }
        st.node_gen(&node).subscribe()
    };
    if *rx.borrow_and_update() == after && !wait.is_zero() {
        let _held = LongPoll::enter(&s)?;
        let _ = tokio::time::timeout(wait.min(MAX_WAIT), rx.changed()).await;
    }
    let a = build_assignments(&s, &node, after)?;
    let body = serde_json::to_vec(&a).map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

/// Counts a node's status report as in flight until it is answered (or dropped), then
/// notes the answer time: the node is alive while it waits (see `Cluster::reports`).
struct ReportInFlight {
    reports: std::sync::Arc<
        parking_lot::Mutex<std::collections::HashMap<String, crate::state::ReportsInFlight>>,
    >,
    node: String,
}

impl ReportInFlight {
    fn start(s: &Shared, node: &str) -> Option<ReportInFlight> {
        let reports = {
            let st = s.state.read();
            if !st.nodes.contains_key(node) {
                return None;
            }
            st.reports.clone()
        };
        reports.lock().entry(node.to_string()).or_default().handling += 1;
        Some(ReportInFlight {
            reports,
            node: node.to_string(),
        })
    }
}

impl Drop for ReportInFlight {
    fn drop(&mut self) {
        let mut reports = self.reports.lock();
        if let Some(r) = reports.get_mut(&self.node) {
            r.handling = r.handling.saturating_sub(1);
            r.answered_at = berth_core::time::now_millis();
        }
    }
}

pub async fn status(
    State(s): State<Shared>,
    Caller(who): Caller,
    Path(node): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    check_node(&who, &node)?;
    let v = json_body(&s, body).await?;
    let report: StatusReport =
        serde_json::from_value(v).map_err(|e| ApiError::invalid("/", e.to_string()))?;
    if let Some(info) = &report.info {
        check_info(info)?;
    }
    let now = berth_core::time::now_millis();
    let _in_flight = ReportInFlight::start(&s, &node);
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
