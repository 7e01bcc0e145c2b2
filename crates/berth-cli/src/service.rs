//! `berth service ...`: the service catalog (`/api/v1/services`), every app as a service
//! with its healthy and unhealthy instances.

use crate::Ctx;
use crate::client::encode;
use crate::error::CliError;
use crate::table::Table;
use crate::view::{arr, int, kv, or_dash, plain, s};
use serde_json::Value;

#[derive(Debug, clap::Args)]
pub struct ServiceCmd {
    #[command(subcommand)]
    pub command: ServiceSubcommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ServiceSubcommand {
    /// List services with their instance counts.
    #[command(visible_alias = "ls")]
    List,
    /// Show one service (`web-prod`, or the app id `/prod/web`) and every instance.
    Show {
        name: String,
        /// Only the healthy instances (what DNS and load balancers route to).
        #[arg(long)]
        healthy: bool,
    },
}

pub(crate) async fn run(ctx: &mut Ctx<'_>, cmd: ServiceSubcommand) -> Result<(), CliError> {
    match cmd {
        ServiceSubcommand::List => {
            let body = ctx.client.get("/api/v1/services").await?;
            if ctx.json_mode() {
                return ctx.json(&body);
            }
            let text = services_table(arr(&body, "services")).render();
            ctx.write(&text)
        }
        ServiceSubcommand::Show { name, healthy } => {
            let name = berth_core::service::service_name(&name)
                .filter(|_| name.starts_with('/'))
                .unwrap_or(name);
            let mut body = ctx
                .client
                .get(&format!("/api/v1/services/{}", encode(&name, false)))
                .await?;
            if healthy
                && let Some(list) = body
                    .get_mut("service")
                    .and_then(|s| s.get_mut("instances"))
                    .and_then(Value::as_array_mut)
            {
                list.retain(|i| i.get("healthy").and_then(Value::as_bool) == Some(true));
            }
            if ctx.json_mode() {
                return ctx.json(&body);
            }
            let service = body.get("service").unwrap_or(&body);
            ctx.write(&render_service(service))
        }
    }
}

fn numbers(v: &Value, key: &str) -> String {
    or_dash(arr(v, key).iter().map(plain).collect::<Vec<_>>().join(","))
}

pub(crate) fn services_table(services: &[Value]) -> Table {
    let mut t = Table::new(&["NAME", "APPS", "SERVICE PORTS", "TAGS", "HEALTHY"]);
    for svc in services {
        t.row(vec![
            s(svc, "name").to_string(),
            numbers(svc, "apps"),
            numbers(svc, "servicePorts"),
            numbers(svc, "tags"),
            format!("{}/{}", int(svc, "healthy"), int(svc, "instances")),
        ]);
    }
    t
}

/// `8080 (http -> 10000)`: an instance's host ports, their names and service ports.
fn ports_cell(instance: &Value) -> String {
    let ports: Vec<String> = arr(instance, "ports")
        .iter()
        .map(|p| {
            let mut cell = int(p, "port").to_string();
            let name = s(p, "name");
            let service_port = int(p, "servicePort");
            match (name.is_empty(), service_port) {
                (true, 0) => {}
                (false, 0) => cell.push_str(&format!(" ({name})")),
                (true, sp) => cell.push_str(&format!(" (-> {sp})")),
                (false, sp) => cell.push_str(&format!(" ({name} -> {sp})")),
            }
            cell
        })
        .collect();
    or_dash(ports.join(", "))
}

fn render_service(svc: &Value) -> String {
    let mut out = String::new();
    kv(&mut out, "Name", s(svc, "name"));
    kv(&mut out, "Apps", &numbers(svc, "apps"));
    kv(&mut out, "Service ports", &numbers(svc, "servicePorts"));
    kv(&mut out, "Tags", &numbers(svc, "tags"));
    let instances = arr(svc, "instances");
    let healthy = instances
        .iter()
        .filter(|i| i.get("healthy").and_then(Value::as_bool) == Some(true))
        .count();
    kv(
        &mut out,
        "Instances",
        &format!("{} ({healthy} healthy)", instances.len()),
    );
    if instances.is_empty() {
        return out;
    }
    out.push('\n');
    let mut t = Table::new(&["TASK", "ADDRESS", "PORTS", "HEALTH", "VERSION", "NODE"]);
    for i in instances {
        let health = if i.get("healthy").and_then(Value::as_bool) == Some(true) {
            "healthy".to_string()
        } else {
            format!("unhealthy: {}", or_dash(s(i, "reason")))
        };
        t.row(vec![
            s(i, "id").to_string(),
            s(i, "address").to_string(),
            ports_cell(i),
            health,
            s(i, "version").to_string(),
            s(i, "nodeId").to_string(),
        ]);
    }
    out.push_str(&t.render());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_service_shows_its_instances_health_and_ports() {
        let svc = json!({
            "name": "web-prod", "apps": ["/prod/web"], "servicePorts": [10001], "tags": ["edge"],
            "instances": [
                {"id": "t1", "address": "10.0.0.1", "nodeId": "n1", "version": "v1",
                 "healthy": true, "ports": [{"port": 31000, "name": "http", "servicePort": 10001}]},
                {"id": "t2", "address": "10.0.0.2", "nodeId": "n2", "version": "v1",
                 "healthy": false, "reason": "health check failing: exit 1",
                 "ports": [{"port": 31001}]},
            ],
        });
        let text = render_service(&svc);
        assert!(text.contains("Name:           web-prod"), "{text}");
        assert!(text.contains("Instances:      2 (1 healthy)"), "{text}");
        assert!(text.contains("31000 (http -> 10001)"), "{text}");
        assert!(
            text.contains("unhealthy: health check failing: exit 1"),
            "{text}"
        );
        let list = services_table(&[json!({"name": "web-prod", "apps": ["/prod/web"],
            "servicePorts": [10001, 10002], "tags": [], "instances": 3, "healthy": 2})])
        .render();
        assert!(list.contains("10001,10002"), "{list}");
        assert!(list.contains("2/3"), "{list}");
    }
}
