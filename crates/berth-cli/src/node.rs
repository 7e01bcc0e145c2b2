//! `berth node ...`: Berth's own `/api/v1/nodes`.

use crate::Ctx;
use crate::client::normalize_id;
use crate::error::CliError;
use crate::progress::{Display, Shown};
use crate::table::Table;
use crate::view::{arr, fmt_num, int, kv, kv_list, num, or_dash, s, short_time};
use crate::watch::POLL_INTERVAL;
use reqwest::Method;
use serde_json::Value;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, clap::Args)]
pub struct NodeCmd {
    #[command(subcommand)]
    pub command: NodeSubcommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum NodeSubcommand {
    /// List nodes with their capacity and usage.
    #[command(visible_alias = "ls")]
    List,
    /// Show one node.
    Show { id: String },
    /// Stop placing new tasks on a node (its running tasks stay).
    Cordon { id: String },
    /// Let the scheduler place tasks on a node again (also ends a drain).
    Uncordon { id: String },
    /// Cordon a node and move its tasks elsewhere.
    Drain {
        id: String,
        /// Wait until no tasks are left on the node, showing progress.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up (exit non-zero, printing what keeps the tasks) after this
        /// many seconds.
        #[arg(long, value_name = "SECS", default_value_t = 600, requires = "wait")]
        timeout: u64,
    },
}

pub(crate) async fn run(ctx: &mut Ctx<'_>, cmd: NodeSubcommand) -> Result<(), CliError> {
    match cmd {
        NodeSubcommand::List => {
            let body = ctx.client.get("/api/v1/nodes").await?;
            if ctx.json_mode() {
                return ctx.json(&body);
            }
            let list = match &body {
                Value::Array(a) => a.as_slice(),
                other => arr(other, "nodes"),
            };
            let text = nodes_table(list).render();
            ctx.write(&text)
        }
        NodeSubcommand::Show { id } => {
            let body = ctx
                .client
                .get(&format!("/api/v1/nodes{}", normalize_id(&id)?))
                .await?;
            if ctx.json_mode() {
                return ctx.json(&body);
            }
            let node = body.get("node").unwrap_or(&body);
            let text = render_node(node);
            ctx.write(&text)
        }
        NodeSubcommand::Cordon { id } => {
            let node = act(ctx, &id, "cordon").await?;
            if ctx.json_mode() {
                return ctx.json(&node);
            }
            ctx.line(&format!(
                "Node {} cordoned: no new tasks will be placed on it ({} running)",
                s(&node, "id"),
                int(&node, "tasks")
            ))
        }
        NodeSubcommand::Uncordon { id } => {
            let node = act(ctx, &id, "uncordon").await?;
            if ctx.json_mode() {
                return ctx.json(&node);
            }
            ctx.line(&format!(
                "Node {} uncordoned: tasks may be placed on it again",
                s(&node, "id")
            ))
        }
        NodeSubcommand::Drain { id, wait, timeout } => {
            let node = act(ctx, &id, "drain").await?;
            if !wait {
                if ctx.json_mode() {
                    return ctx.json(&node);
                }
                return ctx.line(&format!(
                    "Node {} draining: {} task(s) to move",
                    s(&node, "id"),
                    int(&node, "tasks")
                ));
            }
            drain_wait(ctx, &id, node, timeout).await
        }
    }
}

/// `POST /api/v1/nodes/{id}/{action}` with an empty body; returns the node.
async fn act(ctx: &mut Ctx<'_>, id: &str, action: &str) -> Result<Value, CliError> {
    let path = format!("/api/v1/nodes{}/{action}", normalize_id(id)?);
    let body = ctx.client.send(Method::POST, &path, None).await?.body;
    Ok(body.get("node").cloned().unwrap_or(body))
}

/// One plain line for a draining node, e.g. `n1: 3 task(s) remaining; blocked: ...`.
pub(crate) fn drain_shown(node: &Value, initial: i64) -> Shown {
    let tasks = int(node, "tasks");
    let blocked = Some(s(node, "drainBlocked"))
        .filter(|b| !b.is_empty())
        .map(str::to_string);
    let mut line = format!("{}: {tasks} task(s) remaining", s(node, "id"));
    if let Some(b) = &blocked {
        line.push_str(&format!("; blocked: {b}"));
    }
    Shown {
        done: (initial - tasks).max(0) as u64,
        total: initial.max(0) as u64,
        line,
        bar_msg: format!("{tasks} task(s) remaining on {}", s(node, "id")),
        blocked,
    }
}

/// `drain --wait`: polls the node until it runs no tasks.
async fn drain_wait(
    ctx: &mut Ctx<'_>,
    id: &str,
    mut node: Value,
    timeout_secs: u64,
) -> Result<(), CliError> {
    let path = format!("/api/v1/nodes{}", normalize_id(id)?);
    let deadline = Instant::now() + Duration::from_secs(timeout_secs);
    let initial = int(&node, "tasks");
    if !ctx.json_mode() {
        ctx.line(&format!(
            "Draining node {}: waiting for {initial} task(s) to move (up to {timeout_secs} s)...",
            s(&node, "id")
        ))?;
    }
    let mut display = Display::for_ctx(ctx);
    display.set_unit("moved");
    let mut last_blocked: Option<String> = None;
    loop {
        let shown = drain_shown(&node, initial.max(int(&node, "tasks")));
        if shown.blocked.is_some() {
            last_blocked.clone_from(&shown.blocked);
        }
        let tasks = int(&node, "tasks");
        if tasks == 0 {
            display.finish();
            if ctx.json_mode() {
                return ctx.json(&node);
            }
            return ctx.line(&format!("Node {} drained: no tasks left", s(&node, "id")));
        }
        display.update(ctx, &shown)?;
        if Instant::now() >= deadline {
            display.finish();
            if ctx.json_mode() {
                ctx.json(&node)?;
            }
            let reason = last_blocked
                .map(|b| format!(": {b}"))
                .unwrap_or_else(|| ": the server gave no reason".into());
            return Err(CliError::Timeout(format!(
                "node {} still runs {tasks} task(s) after {timeout_secs} s{reason}; it stays cordoned and draining",
                s(&node, "id")
            )));
        }
        tokio::time::sleep(POLL_INTERVAL.min(deadline.saturating_duration_since(Instant::now())))
            .await;
        let body = ctx.client.get(&path).await?;
        node = body.get("node").cloned().unwrap_or(body);
    }
}

fn res(node: &Value, which: &str, key: &str) -> f64 {
    node.get(which).map(|r| num(r, key)).unwrap_or(0.0)
}

/// `ready`, `ready,cordoned`, `ready,cordoned,draining` (`drained` once no tasks are left).
fn status_cell(node: &Value) -> String {
    let flag = |key| node.get(key).and_then(Value::as_bool) == Some(true);
    let mut status = or_dash(s(node, "status"));
    if flag("cordoned") {
        status.push_str(",cordoned");
    }
    if flag("draining") {
        status.push_str(if int(node, "tasks") == 0 {
            ",drained"
        } else {
            ",draining"
        });
    }
    status
}

pub(crate) fn nodes_table(nodes: &[Value]) -> Table {
    let mut t = Table::new(&[
        "ID",
        "HOSTNAME",
        "ADDRESS",
        "STATUS",
        "CPUS (USED/ALLOC)",
        "MEM (USED/ALLOC)",
        "TASKS",
        "HEARTBEAT",
    ]);
    for n in nodes {
        t.row(vec![
            s(n, "id").to_string(),
            or_dash(s(n, "hostname")),
            or_dash(s(n, "address")),
            status_cell(n),
            format!(
                "{}/{}",
                fmt_num(res(n, "used", "cpus")),
                fmt_num(res(n, "allocatable", "cpus"))
            ),
            format!(
                "{}/{}",
                fmt_num(res(n, "used", "mem")),
                fmt_num(res(n, "allocatable", "mem"))
            ),
            int(n, "tasks").to_string(),
            short_time(s(n, "lastHeartbeat")),
        ]);
    }
    t
}

pub(crate) fn render_node(n: &Value) -> String {
    let mut out = String::new();
    kv(&mut out, "ID", s(n, "id"));
    kv(&mut out, "Hostname", &or_dash(s(n, "hostname")));
    kv(&mut out, "Address", &or_dash(s(n, "address")));
    kv(&mut out, "Status", &status_cell(n));
    kv(&mut out, "Tasks", &int(n, "tasks").to_string());
    if !s(n, "drainBlocked").is_empty() {
        kv(&mut out, "Drain blocked", s(n, "drainBlocked"));
    }
    kv(
        &mut out,
        "Last heartbeat",
        &short_time(s(n, "lastHeartbeat")),
    );
    kv(
        &mut out,
        "Attributes",
        &or_dash(kv_list(n.get("attributes"))),
    );
    out.push_str("\nResources:\n");
    let mut t = Table::new(&["RESOURCE", "TOTAL", "ALLOCATABLE", "USED"]);
    for key in ["cpus", "mem", "disk"] {
        t.row(vec![
            key.to_string(),
            fmt_num(res(n, "resources", key)),
            fmt_num(res(n, "allocatable", key)),
            fmt_num(res(n, "used", key)),
        ]);
    }
    out.push_str(&t.render());
    out.push_str("\nConditions:\n");
    let conditions = arr(n, "conditions");
    if conditions.is_empty() {
        out.push_str("(none)\n");
    } else {
        let mut t = Table::new(&["TYPE", "OK", "MESSAGE"]);
        for c in conditions {
            let ok = match c.get("ok").and_then(Value::as_bool) {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            };
            t.row(vec![
                s(c, "type").to_string(),
                ok.to_string(),
                s(c, "message").to_string(),
            ]);
        }
        out.push_str(&t.render());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node() -> Value {
        json!({"id": "n1", "hostname": "host-1", "address": "10.0.0.1:9090", "status": "ready",
               "cordoned": true, "resources": {"cpus": 4, "mem": 8192, "disk": 100000},
               "allocatable": {"cpus": 3.5, "mem": 7680, "disk": 90000},
               "used": {"cpus": 0.5, "mem": 256, "disk": 0}, "tasks": 2,
               "attributes": {"zone": "a"},
               "conditions": [{"type": "DiskPressure", "ok": false, "message": "95% full"}],
               "lastHeartbeat": "2024-01-01T00:00:05.100Z"})
    }

    #[test]
    fn node_table() {
        assert_eq!(
            nodes_table(&[node()]).render(),
            "ID  HOSTNAME  ADDRESS        STATUS          CPUS (USED/ALLOC)  MEM (USED/ALLOC)  TASKS  HEARTBEAT\n\
             n1  host-1    10.0.0.1:9090  ready,cordoned  0.5/3.5            256/7680          2      2024-01-01T00:00:05Z\n"
        );
    }

    #[test]
    fn status_shows_cordoned_draining_and_drained() {
        let mut n = node();
        n["draining"] = json!(true);
        assert_eq!(status_cell(&n), "ready,cordoned,draining");
        n["tasks"] = json!(0);
        assert_eq!(status_cell(&n), "ready,cordoned,drained");
        n["cordoned"] = json!(false);
        n["draining"] = json!(false);
        assert_eq!(status_cell(&n), "ready");
    }

    #[test]
    fn drain_progress_line() {
        let mut n = node();
        n["drainBlocked"] =
            json!("/web: 2 task(s) wait for healthy replacements (minimumHealthCapacity)");
        let shown = drain_shown(&n, 5);
        assert_eq!(
            shown.line,
            "n1: 2 task(s) remaining; blocked: /web: 2 task(s) wait for healthy replacements (minimumHealthCapacity)"
        );
        assert_eq!((shown.done, shown.total), (3, 5));
        n["drainBlocked"] = Value::Null;
        assert_eq!(drain_shown(&n, 2).line, "n1: 2 task(s) remaining");
        assert!(render_node(&n).contains("Tasks:          2\n"));
    }

    #[test]
    fn node_details() {
        let text = render_node(&node());
        assert!(text.contains("Status:         ready,cordoned\n"), "{text}");
        assert!(text.contains("Attributes:     zone=a\n"));
        assert!(
            text.contains("mem       8192    7680         256\n"),
            "{text}"
        );
        assert!(text.contains("DiskPressure  NO  95% full\n"), "{text}");
    }
}
