//! Limits that keep one client from exhausting the server (docs/api.md, "Limits"): bulk
//! requests cost memory linear in their size, a stalled event-stream client is dropped
//! instead of buffered for, and subscribers, long-polls, apps per request and bodies are
//! capped with clear 4xx answers.

mod common;

use common::*;
use serde_json::{Value, json};
use std::io::Write;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn bulk(n: usize, tag: &str) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({"id": format!("/bulk/a{i}"), "cmd": format!("sleep {tag}"), "instances": 0, "cpus": 0.01, "mem": 8}))
            .collect(),
    )
}

/// The server's resident memory in MiB.
fn rss_mib(c: &Cluster) -> u64 {
    let pid = c.server_pid().expect("server pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

async fn metric(api: &Api, name: &str) -> f64 {
    let text = api
        .http
        .get(api.url("/metrics"))
        .header("Accept", "text/plain; version=0.0.4")
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("/metrics body");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_put_of_5000_apps_is_one_step_and_bounded() {
    let c = Cluster::start_server_only("bulk").await;
    let api = &c.api;
    let r = api.put("/v2/apps", &bulk(5000, "1")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.json["deploymentId"]
        .as_str()
        .expect("deploymentId")
        .to_string();
    for d in api.deployments().await {
        if d["id"] == id.as_str() {
            assert_eq!(d["totalSteps"], 1, "independent apps share one step");
        }
    }
    api.wait_no_deployments(T).await;
    let apps = api.get_ok("/v2/apps").await;
    assert_eq!(apps["apps"].as_array().map(Vec::len), Some(5000));
    // It used to grow by 150 MB a second and reach 24 GB before the OOM killer.
    let rss = rss_mib(&c);
    assert!(rss < 600, "server RSS after 5,000 apps: {rss} MiB");

    // Past the limit: a 422 that names it, and nothing changes.
    let r = api.put("/v2/apps", &bulk(10_001, "2")).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.text.contains("at most 10000"), "{}", r.text);
    // A body over the size limit: 413, with Marathon's error shape.
    let huge = format!(
        "[{}]",
        vec![r#"{"id":"/bulk/x","cmd":"sleep 1"}"#; 100_000].join(",")
    );
    let r = api
        .raw(reqwest::Method::PUT, "/v2/apps", Some(huge.into_bytes()))
        .await;
    assert_eq!(r.status, 413, "{}", r.text);
    assert!(!r.message().is_empty(), "{}", r.text);
    // Dependencies order the steps; a cycle is refused.
    let r = api
        .put(
            "/v2/apps",
            &json!([
                {"id": "/dep/web", "cmd": "sleep 1", "instances": 0, "dependencies": ["/dep/db"]},
                {"id": "/dep/db", "cmd": "sleep 1", "instances": 0},
            ]),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = api
        .put(
            "/v2/apps",
            &json!([
                {"id": "/cyc/a", "cmd": "sleep 1", "dependencies": ["/cyc/b"]},
                {"id": "/cyc/b", "cmd": "sleep 1", "dependencies": ["/cyc/a"]},
            ]),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    api.wait_no_deployments(T).await;
    let apps = api.get_ok("/v2/apps").await;
    let ids: Vec<&str> = apps["apps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["id"].as_str())
        .filter(|id| !id.starts_with("/bulk/"))
        .collect();
    assert_eq!(ids, vec!["/dep/db", "/dep/web"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_stops_showing_a_deployment_once_it_is_gone() {
    // No node: the deployment cannot finish until it is cancelled.
    let c = Cluster::start_server_only("depcache").await;
    let api = &c.api;
    let r = api
        .post(
            "/v2/apps",
            &json!({"id": "/stuck/a", "cmd": "sleep 1", "instances": 1}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.json["deployments"][0]["id"]
        .as_str()
        .expect("deployment")
        .to_string();
    // Rendered (and cached) while the deployment runs...
    let during = api.get_ok("/v2/apps/stuck/a").await;
    assert_eq!(during["app"]["deployments"], json!([{"id": id}]));
    let r = api
        .delete(&format!("/v2/deployments/{id}?force=true"))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    // ...and not shown once the deployment is gone, though the app itself did not change.
    let after = api.get_ok("/v2/apps/stuck/a").await;
    assert_eq!(after["app"]["deployments"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_event_client_is_dropped_and_readers_keep_everything() {
    let c = Cluster::start_server_with(
        "stall",
        &[
            "--event-queue-bytes",
            "16000000",
            "--max-event-subscribers",
            "3",
        ],
    )
    .await;
    let api = &c.api;
    // A client that asks for the stream and never reads it.
    let mut stalled = std::net::TcpStream::connect(("127.0.0.1", c.port)).expect("connect");
    write!(
        stalled,
        "GET /v2/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\
         Authorization: Bearer {}\r\n\r\n",
        c.admin_token()
    )
    .expect("request");
    let mut reader = EventStream::connect(api, "?event_type=deployment_success").await;
    wait_until(T, "both subscribers attached", || async {
        metric(api, "berth_event_subscribers").await == 2.0
    })
    .await;
    let third = EventStream::connect(api, "").await;
    let r = api.get("/v2/events").await;
    assert_eq!(r.status, 429, "a fourth subscriber: {}", r.text);
    assert!(r.message().contains("subscribers"), "{}", r.text);
    drop(third);

    // ~3 MB of events per PUT of 1,000 apps (each deployment event carries the whole plan).
    let mut deployments = Vec::new();
    let mut peak = 0;
    for round in 0..25 {
        let r = api.put("/v2/apps", &bulk(1000, &round.to_string())).await;
        assert_eq!(r.status, 200, "{}", r.text);
        deployments.push(r.json["deploymentId"].as_str().unwrap().to_string());
        api.wait_no_deployments(T).await;
        peak = peak.max(rss_mib(&c));
    }
    assert!(
        metric(api, "berth_event_subscribers_dropped_total").await >= 1.0,
        "the stalled client was dropped"
    );
    assert_eq!(metric(api, "berth_event_subscribers").await, 1.0);
    assert!(peak < 600, "server RSS peaked at {peak} MiB");
    for id in &deployments {
        reader
            .wait_for(T, "deployment_success of every PUT", |e| {
                e.data["id"] == id.as_str()
            })
            .await;
    }
    // The place it held is free again.
    let again = EventStream::connect(api, "").await;
    drop(again);
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_are_capped() {
    let c = Cluster::start_server_with("polls", &["--max-long-polls", "2"]).await;
    let api = &c.api;
    let node = json!({
        "id": "lp1", "hostname": "lp1", "address": "127.0.0.1",
        "resources": {"cpus": 1.0, "mem": 1024.0, "disk": 1024.0},
        "portRanges": [{"begin": 31000, "end": 31010}], "drivers": ["fake"],
    });
    // Acting as an agent: join with the join token, then use the node's credential.
    let join = common::read_token(&c.join_token_file());
    let r = Api::with_token(&c.url(), Some(&join))
        .post("/api/v1/agent/register", &node)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let credential = r.json["credential"].as_str().expect("a node credential");
    let agent = Api::with_token(&c.url(), Some(credential));
    let first = agent.get_ok("/api/v1/agent/lp1/assignments").await;
    let generation = first["generation"].as_u64().expect("generation");
    let path = format!("/api/v1/agent/lp1/assignments?after={generation}&wait=30");
    let mut held = Vec::new();
    for _ in 0..2 {
        let agent = agent.clone();
        let path = path.clone();
        held.push(tokio::spawn(async move { agent.get(&path).await.status }));
    }
    wait_until(T, "two long-polls waiting", || async {
        metric(api, "berth_long_polls").await == 2.0
    })
    .await;
    let r = agent.get(&path).await;
    assert_eq!(r.status, 429, "{}", r.text);
    assert!(r.message().contains("long-polls"), "{}", r.text);
    // A poll that does not wait is always answered.
    let r = agent.get("/api/v1/agent/lp1/assignments").await;
    assert_eq!(r.status, 200, "{}", r.text);
    for h in held {
        h.abort();
    }
    wait_until(T, "aborted long-polls released", || async {
        metric(api, "berth_long_polls").await == 0.0
    })
    .await;
}
