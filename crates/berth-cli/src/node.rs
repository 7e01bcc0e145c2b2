//! `berth node ...`: Berth's own `/api/v1/nodes`.

use crate::Ctx;
use crate::client::normalize_id;
use crate::error::CliError;
use crate::table::Table;
use crate::view::{arr, fmt_num, int, kv, kv_list, num, or_dash, s, short_time};
use serde_json::Value;

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
    }
}

fn res(node: &Value, which: &str, key: &str) -> f64 {
    node.get(which).map(|r| num(r, key)).unwrap_or(0.0)
}

fn status_cell(node: &Value) -> String {
    let mut status = or_dash(s(node, "status"));
    if node.get("cordoned").and_then(Value::as_bool) == Some(true) {
        status.push_str(",cordoned");
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
