//! DNS over the catalog with a real resolver client (`dig`, Debian `bind9-dnsutils`):
//! A and SRV answers list healthy instances only and follow health as it changes, over UDP
//! and TCP; unknown names are NXDOMAIN and other zones REFUSED.

mod common;

use common::{Cluster, cmd_app, free_port, wait_until};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn have_dig() -> bool {
    let found = std::process::Command::new("dig")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found && std::env::var_os("CI").is_some() {
        panic!("dig is missing: scripts/test.sh installs bind9-dnsutils");
    }
    if !found {
        eprintln!("skipped: no dig (apt-get install bind9-dnsutils)");
    }
    found
}

/// `dig` against the cluster's DNS: (status, answer lines of `+short`).
fn dig(port: u16, args: &[&str]) -> (String, Vec<String>) {
    let out = std::process::Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), "+tries=1", "+time=5"])
        .args(args)
        .output()
        .expect("running dig");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or_else(|| panic!("no status in dig's output: {text}"))
        .to_string();
    let short = std::process::Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &port.to_string(),
            "+tries=1",
            "+time=5",
            "+short",
        ])
        .args(args)
        .output()
        .expect("running dig +short");
    let lines = String::from_utf8_lossy(&short.stdout)
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect();
    (status, lines)
}

/// SRV answers as (port, target).
fn srv(port: u16, name: &str, tcp: bool) -> BTreeSet<(u16, String)> {
    let mut args = vec![name, "SRV"];
    if tcp {
        args.push("+tcp");
    }
    let (status, lines) = dig(port, &args);
    assert_eq!(status, "NOERROR", "{name}: {lines:?}");
    lines
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 4, "{l}");
            (f[2].parse().expect("port"), f[3].to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn dns_answers_a_and_srv_for_healthy_instances_only() {
    if !have_dig() {
        return;
    }
    let dns_port = free_port();
    let mut c = Cluster::start_server_with(
        "dns",
        &[
            "--dns-listen",
            &format!("127.0.0.1:{dns_port}"),
            "--dns-ttl",
            "1",
        ],
    )
    .await;
    c.start_agent().await;
    let api = &c.api;
    let mut app = cmd_app("/prod/web", "touch ready; exec sleep 3600", 3);
    app["portDefinitions"] = json!([{"port": 0, "name": "http"}, {"port": 0, "name": "admin"}]);
    app["healthChecks"] = json!([{"protocol": "COMMAND", "command": {"value": "test -f ready"},
        "gracePeriodSeconds": 30, "intervalSeconds": 1, "maxConsecutiveFailures": 0}]);
    let r = api.post("/v2/apps", &app).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let tasks = api.wait_running("/prod/web", 3, T).await;
    let port_of = |t: &serde_json::Value, i: usize| t["ports"][i].as_u64().expect("port") as u16;
    let http: BTreeSet<u16> = tasks.iter().map(|t| port_of(t, 0)).collect();
    let admin: BTreeSet<u16> = tasks.iter().map(|t| port_of(t, 1)).collect();
    wait_until(T, "3 SRV records", || async {
        srv(dns_port, "_web-prod._tcp.berth.", false).len() == 3
    })
    .await;

    let (status, a) = dig(dns_port, &["web-prod.berth.", "A"]);
    assert_eq!(
        (status.as_str(), a),
        ("NOERROR", vec!["127.0.0.1".to_string()])
    );
    let records = srv(dns_port, "_web-prod._tcp.berth.", false);
    assert_eq!(records.iter().map(|r| r.0).collect::<BTreeSet<_>>(), http);
    assert_eq!(
        records,
        srv(dns_port, "_web-prod._tcp.berth.", true),
        "TCP answers the same"
    );
    let named: BTreeSet<u16> = srv(dns_port, "_admin._web-prod._tcp.berth.", false)
        .into_iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(named, admin);
    // Each SRV target resolves to its instance.
    let target = records.iter().next().expect("a record").1.clone();
    assert!(target.ends_with(".web-prod.berth."), "{target}");
    assert_eq!(
        dig(dns_port, &[&target, "A"]).1,
        vec!["127.0.0.1".to_string()]
    );

    // One instance fails its check: its SRV record goes, the others stay.
    let sick = &tasks[0];
    let sick_port = port_of(sick, 0);
    let sandbox = c
        .path()
        .join("agent/exec/tasks")
        .join(sick["id"].as_str().expect("task id"))
        .join("sandbox");
    std::fs::remove_file(sandbox.join("ready")).expect("removing ready");
    wait_until(T, "the sick instance leaves DNS", || async {
        !srv(dns_port, "_web-prod._tcp.berth.", false)
            .iter()
            .any(|r| r.0 == sick_port)
    })
    .await;
    let records = srv(dns_port, "_web-prod._tcp.berth.", false);
    assert_eq!(records.len(), 2, "{records:?}");
    let sick_name = format!(
        "{}.web-prod.berth.",
        berth_core::dns::instance_label(sick["id"].as_str().expect("task id"))
    );
    assert_eq!(dig(dns_port, &[&sick_name, "A"]).0, "NXDOMAIN");
    // Back healthy: back in DNS.
    std::fs::write(sandbox.join("ready"), b"").expect("touching ready");
    wait_until(T, "the instance is back in DNS", || async {
        srv(dns_port, "_web-prod._tcp.berth.", false).len() == 3
    })
    .await;

    // Unknown names, other zones, names without such records.
    assert_eq!(dig(dns_port, &["nope.berth.", "A"]).0, "NXDOMAIN");
    assert_eq!(dig(dns_port, &["_nope._tcp.berth.", "SRV"]).0, "NXDOMAIN");
    assert_eq!(
        dig(dns_port, &["_ftp._web-prod._tcp.berth.", "SRV"]).0,
        "NXDOMAIN"
    );
    assert_eq!(dig(dns_port, &["example.com.", "A"]).0, "REFUSED");
    let (status, none) = dig(dns_port, &["web-prod.berth.", "AAAA"]);
    assert_eq!((status.as_str(), none.len()), ("NOERROR", 0));

    // Scaled to 0: the name exists, with no address.
    let r = api.put("/v2/apps/prod/web", &json!({"instances": 0})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    wait_until(T, "no SRV records", || async {
        srv(dns_port, "_web-prod._tcp.berth.", false).is_empty()
    })
    .await;
    let (status, a) = dig(dns_port, &["web-prod.berth.", "A"]);
    assert_eq!((status.as_str(), a.len()), ("NOERROR", 0));
}
