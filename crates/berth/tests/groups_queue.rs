//! Groups (create with apps, list, scaleBy, delete) and the launch queue: an app whose
//! constraint no node meets stays queued, and both `/v2/queue` and the deployment say why.

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn app_ids(group: &Value) -> Vec<String> {
    group["apps"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_scale_queue_and_delete() {
    let c = Cluster::start("groups").await;
    let api = &c.api;

    let r = api
        .post(
            "/v2/groups",
            &json!({
                "id": "/shop",
                "apps": [
                    {"id": "web", "cmd": "sleep 3600", "cpus": 0.1, "mem": 16, "instances": 1},
                    {"id": "/shop/db", "cmd": "sleep 3600", "cpus": 0.1, "mem": 16, "instances": 1},
                ],
            }),
        )
        .await;
    assert_eq!(r.status, 201, "POST /v2/groups: {}", r.text);
    assert!(r.json["deploymentId"].is_string(), "{}", r.text);

    let root = api.get_ok("/v2/groups").await;
    let shop = root["groups"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["id"] == "/shop"))
        .unwrap_or_else(|| panic!("/shop not in the root group: {root}"))
        .clone();
    let mut ids = app_ids(&shop);
    ids.sort();
    assert_eq!(ids, ["/shop/db", "/shop/web"], "{shop}");
    let shop2 = api.get_ok("/v2/groups/shop").await;
    assert_eq!(shop2["id"], "/shop");
    assert_eq!(app_ids(&shop2).len(), 2);

    api.wait_running("/shop/web", 1, T).await;
    api.wait_running("/shop/db", 1, T).await;
    api.wait_no_deployments(T).await;

    // scaleBy 2 doubles every app.
    let r = api.put("/v2/groups/shop", &json!({"scaleBy": 2})).await;
    assert_eq!(r.status, 200, "scaleBy: {}", r.text);
    for id in ["/shop/web", "/shop/db"] {
        let app = api.get_ok(&format!("/v2/apps{id}")).await;
        assert_eq!(app["app"]["instances"], 2, "{id}");
        api.wait_running(id, 2, T).await;
        assert_eq!(c.app_pids(id, "sleep").len(), 2, "{id}: real processes");
    }
    api.wait_no_deployments(T).await;

    // An app no node can take stays queued, with the reason visible.
    let r = api
        .post(
            "/v2/apps",
            &json!({
                "id": "/shop/stuck", "cmd": "sleep 3600", "cpus": 0.1, "mem": 16,
                "instances": 2, "constraints": [["hostname", "LIKE", "nomatch"]],
            }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let dep = r.header("marathon-deployment-id").unwrap();
    let item = wait_for(T, "/shop/stuck in the queue with a reason", || async {
        let q = api.get_ok("/v2/queue").await;
        q["queue"]
            .as_array()?
            .iter()
            .find(|i| i["app"]["id"] == "/shop/stuck")
            .filter(|i| i["processedOffersSummary"]["reason"].is_string())
            .cloned()
    })
    .await;
    assert_eq!(item["count"], 2, "{item}");
    let summary = &item["processedOffersSummary"];
    let reason = summary["reason"].as_str().unwrap().to_string();
    assert!(
        reason.contains("constraint") && reason.contains("hostname"),
        "queue reason: {reason}"
    );
    let declined = summary["rejectSummaryLastOffers"].to_string();
    assert!(declined.contains("hostname"), "{summary}");
    let d = wait_for(T, "the deployment to say why it is blocked", || async {
        let d = api.get_ok(&format!("/api/v1/deployments/{dep}")).await;
        d["blocked"].is_string().then_some(d)
    })
    .await;
    let blocked = d["blocked"].as_str().unwrap();
    assert!(
        blocked.contains("/shop/stuck") && blocked.contains("constraint"),
        "blocked: {blocked}"
    );
    assert!(api.tasks("/shop/stuck").await.is_empty());
    // The other apps of the group are untouched.
    assert_eq!(api.running_ids("/shop/web").await.len(), 2);

    // Deleting the group needs force while the stuck deployment locks one of its apps.
    let r = api.delete("/v2/groups/shop").await;
    assert_eq!(r.status, 409, "group delete of a locked app: {}", r.text);
    let r = api.delete("/v2/groups/shop?force=true").await;
    assert_eq!(r.status, 200, "DELETE group: {}", r.text);
    wait_until(T, "every task process of the group gone", || async {
        c.own_processes().iter().all(|p| p.program() != "sleep")
    })
    .await;
    let apps = api.apps().await;
    assert_eq!(apps["apps"], json!([]), "{apps}");
    let r = api.get("/v2/groups/shop").await;
    assert_eq!(r.status, 404, "{}", r.text);
    let root = api.get_ok("/v2/groups").await;
    assert_eq!(root["groups"], json!([]), "{root}");
    api.wait_no_deployments(T).await;
    let q = api.get_ok("/v2/queue").await;
    assert_eq!(q["queue"], json!([]), "{q}");
}
