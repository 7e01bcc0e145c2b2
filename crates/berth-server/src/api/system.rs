//! `/ping`, `/metrics`, `/v2/info`, `/v2/leader`, `/v2/queue`, `/v2/deployments`.

use super::{Params, ctx, ok};
use crate::Shared;
use crate::error::{ApiError, ApiResult};
use crate::ops;
use crate::render::{Embed, app_json, visible_state};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use berth_core::path;
use berth_core::time::format_millis;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;

pub const MARATHON_COMPAT_VERSION: &str = "1.10.0";

pub async fn ping() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "pong",
    )
        .into_response()
}

pub async fn info(State(s): State<Shared>) -> Response {
    let leader = s.config.advertise.clone();
    let port = s.config.listen.port();
    ok(json!({
        "name": "marathon",
        "version": MARATHON_COMPAT_VERSION,
        "buildref": concat!("berth-", env!("CARGO_PKG_VERSION")),
        "elected": true,
        "leader": leader,
        "frameworkId": "berth",
        "http_config": {"http_port": port, "https_port": 0, "assets_path": null},
        "event_subscriber": null,
        "marathon_config": {
            "master": "berth",
            "framework_name": "berth",
            "hostname": leader,
            "ha": false,
            "checkpoint": true,
            "local_port_min": 10000,
            "local_port_max": 20000,
            "executor": "//cmd",
            "failover_timeout": 604800,
            "task_launch_timeout": 300000,
            "reconciliation_initial_delay": 15000,
            "reconciliation_interval": 600000,
            "mesos_user": "root",
            "features": [],
        },
        "zookeeper_config": {"zk": "embedded", "zk_timeout": 10000, "zk_session_timeout": 10000, "zk_max_versions": 50},
    }))
}

pub async fn leader(State(s): State<Shared>) -> Response {
    ok(json!({"leader": s.config.advertise}))
}

/// `GET /api/v1/cluster`: where the state is, which server leads, and with etcd its
/// members and their health.
pub async fn cluster(State(s): State<Shared>) -> Response {
    let me = s.config.advertise.clone();
    let Some(etcd) = &s.config.etcd else {
        return ok(json!({"store": "embedded", "leader": me, "self": me, "servers": [me]}));
    };
    let members = match etcd.members().await {
        Ok(m) => serde_json::to_value(m).unwrap_or_default(),
        Err(e) => json!({"error": e.to_string()}),
    };
    ok(json!({
        "store": "etcd",
        "leader": me,
        "self": me,
        "fenceRevision": s.config.leadership.as_ref().map(|l| l.fence_revision),
        "etcd": {"members": members},
    }))
}

pub async fn abdicate(State(s): State<Shared>) -> Response {
    match &s.config.leadership {
        // Several servers: this one resigns (the process steps down and comes back as a
        // follower); another wins the election.
        Some(l) => {
            let _ = l.abdicate.send(());
            ok(json!({"message": "Leadership abdicated"}))
        }
        // A single server (embedded store) stays leader: abdicating would leave no leader.
        None => ok(json!({"message": "Leadership abdicated"})),
    }
}

fn wants_prometheus(headers: &HeaderMap) -> bool {
    let accept = super::accept(headers);
    !accept.contains("application/json")
        && (accept.contains("text/plain") || accept.contains("openmetrics"))
}

pub async fn metrics(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let (apps, deployments, by_state, nodes, counters, unplaced, jobs, queued_runs, job_series) = {
        let st = s.state.read();
        let mut by_state: BTreeMap<&'static str, u64> = BTreeMap::new();
        for t in st.tasks.values() {
            *by_state.entry(visible_state(t).as_str()).or_default() += 1;
        }
        let mut nodes: BTreeMap<String, u64> = BTreeMap::new();
        for n in st.nodes.values() {
            let k = if n.cordoned {
                "cordoned".to_string()
            } else {
                format!("{:?}", n.status).to_lowercase()
            };
            *nodes.entry(k).or_default() += 1;
        }
        let unplaced: usize = st.unplaced.values().map(|u| u.count).sum();
        let mut counters = st.counters.clone();
        // How often the visible state changed: cached renderings last as long as it holds.
        counters.insert("state_revisions", st.revision);
        (
            st.apps.len(),
            st.deployments.len(),
            by_state,
            nodes,
            counters,
            unplaced,
            st.jobs.len(),
            crate::jobs::queued_runs(&st).len(),
            if wants_prometheus(&headers) {
                crate::jobs::prometheus(&st)
            } else {
                String::new()
            },
        )
    };
    let uptime = (berth_core::time::now_millis() - s.started_at) as f64 / 1000.0;
    let store = s.store.stats();
    if wants_prometheus(&headers) {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP berth_apps Number of apps.\n# TYPE berth_apps gauge\nberth_apps {apps}"
        );
        let _ = writeln!(
            out,
            "# HELP berth_deployments Active deployments.\n# TYPE berth_deployments gauge\nberth_deployments {deployments}"
        );
        let _ = writeln!(
            out,
            "# HELP berth_jobs Chronos jobs.\n# TYPE berth_jobs gauge\nberth_jobs {jobs}\n\
             # HELP berth_job_runs_queued Job runs waiting to start.\n# TYPE berth_job_runs_queued gauge\nberth_job_runs_queued {queued_runs}"
        );
        out.push_str(&job_series);
        let _ = writeln!(
            out,
            "# HELP berth_tasks Tasks by state.\n# TYPE berth_tasks gauge"
        );
        for (state, n) in &by_state {
            let _ = writeln!(out, "berth_tasks{{state=\"{state}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP berth_nodes Nodes by status.\n# TYPE berth_nodes gauge"
        );
        for (status, n) in &nodes {
            let _ = writeln!(out, "berth_nodes{{status=\"{status}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP berth_instances_unplaced Instances waiting for a node.\n# TYPE berth_instances_unplaced gauge\nberth_instances_unplaced {unplaced}"
        );
        for (name, n) in &counters {
            let _ = writeln!(
                out,
                "# TYPE berth_{name}_total counter\nberth_{name}_total {n}"
            );
        }
        let _ = writeln!(
            out,
            "# TYPE berth_uptime_seconds gauge\nberth_uptime_seconds {uptime}"
        );
        let _ = writeln!(
            out,
            "# HELP berth_event_subscribers Event stream subscribers attached.\n# TYPE berth_event_subscribers gauge\nberth_event_subscribers {}\n\
             # HELP berth_event_queued_bytes Most bytes of events queued for one subscriber.\n# TYPE berth_event_queued_bytes gauge\nberth_event_queued_bytes {}\n\
             # HELP berth_event_subscribers_dropped_total Subscribers dropped for falling too far behind.\n# TYPE berth_event_subscribers_dropped_total counter\nberth_event_subscribers_dropped_total {}\n\
             # HELP berth_events_published_total Events published.\n# TYPE berth_events_published_total counter\nberth_events_published_total {}\n\
             # HELP berth_long_polls Agent long-polls waiting.\n# TYPE berth_long_polls gauge\nberth_long_polls {}",
            s.events.subscribers(),
            s.events.queued_bytes(),
            s.events.dropped(),
            s.events.published(),
            s.long_polls.load(std::sync::atomic::Ordering::Relaxed),
        );
        if let Some(st) = store {
            let _ = writeln!(
                out,
                "# HELP berth_store_size_bytes Size of the store on disk.\n# TYPE berth_store_size_bytes gauge\nberth_store_size_bytes {}\n\
                 # HELP berth_store_revision Latest committed store revision.\n# TYPE berth_store_revision gauge\nberth_store_revision {}\n\
                 # HELP berth_store_compacted_revision Highest revision compacted out of the store's change log.\n# TYPE berth_store_compacted_revision gauge\nberth_store_compacted_revision {}",
                st.size_bytes, st.revision, st.compacted_revision
            );
        }
        return (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            out,
        )
            .into_response();
    }
    let mut gauges = serde_json::Map::new();
    gauges.insert("berth.apps".into(), json!({"value": apps}));
    gauges.insert("berth.deployments".into(), json!({"value": deployments}));
    gauges.insert("berth.jobs".into(), json!({"value": jobs}));
    gauges.insert(
        "berth.jobs.runs.queued".into(),
        json!({"value": queued_runs}),
    );
    gauges.insert(
        "berth.instances.unplaced".into(),
        json!({"value": unplaced}),
    );
    gauges.insert("berth.uptime.seconds".into(), json!({"value": uptime}));
    gauges.insert(
        "berth.events.subscribers".into(),
        json!({"value": s.events.subscribers()}),
    );
    gauges.insert(
        "berth.long_polls".into(),
        json!({"value": s.long_polls.load(std::sync::atomic::Ordering::Relaxed)}),
    );
    if let Some(st) = store {
        gauges.insert(
            "berth.store.size_bytes".into(),
            json!({"value": st.size_bytes}),
        );
        gauges.insert("berth.store.revision".into(), json!({"value": st.revision}));
        gauges.insert(
            "berth.store.compacted_revision".into(),
            json!({"value": st.compacted_revision}),
        );
    }
    for (state, n) in &by_state {
        gauges.insert(format!("berth.tasks.{state}"), json!({"value": n}));
    }
    for (status, n) in &nodes {
        gauges.insert(format!("berth.nodes.{status}"), json!({"value": n}));
    }
    let counters: serde_json::Map<String, Value> = counters
        .iter()
        .map(|(k, v)| (format!("berth.{k}"), json!({"count": v})))
        .collect();
    ok(json!({
        "version": "4.0.0",
        "gauges": gauges,
        "counters": counters,
        "histograms": {},
        "meters": {},
        "timers": {},
    }))
}

pub async fn queue(State(s): State<Shared>) -> Response {
    let now = berth_core::time::now_millis();
    let st = s.state.read();
    let mut items = Vec::new();
    for (id, app) in &st.apps {
        let active = st.app_tasks(id).filter(|t| t.is_active()).count();
        let waiting = (app.instances.max(0) as usize).saturating_sub(active);
        let delay = st
            .delays
            .get(id)
            .filter(|d| Some(&d.version) == app.version.as_ref() && d.until > now);
        let unplaced = st.unplaced.get(id);
        if waiting == 0 && delay.is_none() {
            continue;
        }
        let time_left = delay
            .map(|d| (d.until - now) as f64 / 1000.0)
            .unwrap_or(0.0);
        let reasons: Vec<Value> = unplaced
            .map(|u| {
                u.reasons
                    .iter()
                    .map(|(reason, n)| json!({"reason": reason, "declined": n, "processed": u.nodes_total}))
                    .collect()
            })
            .unwrap_or_default();
        items.push(json!({
            "count": waiting,
            "delay": {"timeLeftSeconds": time_left, "overdue": delay.is_none()},
            "since": format_millis(unplaced.map(|u| u.since).unwrap_or(now)),
            "app": app_json(&st, app, Embed::default()),
            "processedOffersSummary": {
                "processedOffersCount": unplaced.map(|u| u.nodes_total).unwrap_or(0),
                "unusedOffersCount": unplaced.map(|u| u.nodes_total).unwrap_or(0),
                "lastUnusedOfferAt": unplaced.map(|u| format_millis(u.last_attempt)),
                "rejectSummaryLastOffers": reasons,
                "rejectSummaryLaunchAttempt": [],
                "reason": unplaced.map(|u| u.summary.clone()),
            },
            "lastUnusedOffers": [],
        }));
    }
    ok(json!({"queue": items}))
}

pub async fn reset_delay(
    State(s): State<Shared>,
    crate::auth::Caller(who): crate::auth::Caller,
    Path(rest): Path<String>,
) -> ApiResult<Response> {
    let Some(app) = rest.trim_end_matches('/').strip_suffix("/delay") else {
        return Err(ApiError::NotFound(format!(
            "no such resource: /v2/queue/{rest}"
        )));
    };
    let id = path::normalize(app);
    who.check_on(berth_core::rbac::Permission::AppWrite, &id)?;
    s.apply(|st, ch| ops::reset_delay(st, ch, &id)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn deployments(State(s): State<Shared>) -> Response {
    let st = s.state.read();
    let mut list: Vec<_> = st.deployments.values().collect();
    list.sort_by_key(|a| a.created_at);
    ok(Value::Array(
        list.into_iter().map(|d| d.to_marathon()).collect(),
    ))
}

pub async fn cancel_deployment(
    State(s): State<Shared>,
    addr: ConnectInfo<SocketAddr>,
    caller: crate::auth::Caller,
    uri: Uri,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let force = Params::from_uri(&uri).flag("force", false)?;
    let c = ctx(&addr, &uri, &caller);
    match s
        .apply(|st, ch| ops::cancel_deployment(st, ch, &id, force, &c))
        .await?
    {
        Some(r) => Ok(ok(r.to_json())),
        None => Ok(StatusCode::ACCEPTED.into_response()),
    }
}
