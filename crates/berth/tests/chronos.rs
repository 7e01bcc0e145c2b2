//! The Chronos job API (`/scheduler/*` and `/v1/scheduler/*`) against the real binary: every
//! route, Chronos' error shape, 204s with empty bodies, persistence across `kill -9` of the
//! server, and scoped app-admins kept to their namespace (`prod.x` is in `prod`).

mod common;

use common::{Api, Cluster, Reply, wait_for};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

fn scheduled(name: &str) -> Value {
    json!({"name": name, "command": "echo hi", "owner": "ops@example.com",
           "schedule": "R/2030-01-01T00:00:00Z/PT1H"})
}

fn dependent(name: &str, parents: &[&str]) -> Value {
    json!({"name": name, "command": "echo child", "owner": "", "parents": parents})
}

fn assert_204(r: &Reply, what: &str) {
    assert_eq!(r.status, 204, "{what}: {}", r.text);
    assert!(r.text.is_empty(), "{what}: 204 with a body: {}", r.text);
}

/// A Chronos error: the status, `{"message", "status": <reason>}`, and `needle` in the message.
fn assert_chronos_error(r: &Reply, status: u16, reason: &str, needle: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text);
    assert!(
        r.content_type().starts_with("application/json"),
        "{what}: {}",
        r.content_type()
    );
    assert_eq!(r.json["status"], reason, "{what}: {}", r.text);
    assert!(
        r.message().contains(needle),
        "{what}: message {:?} lacks {needle:?}",
        r.message()
    );
}

async fn names(api: &Api, path: &str) -> Vec<String> {
    let r = api.get(path).await;
    assert_eq!(r.status, 200, "{path}: {}", r.text);
    r.json
        .as_array()
        .unwrap_or_else(|| panic!("{path}: not a list: {}", r.text))
        .iter()
        .map(|j| j["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chronos_routes_errors_and_persistence() {
    let mut c = Cluster::start_server_only("chronos").await;
    let api = c.api.clone();
    for pre in ["/scheduler", "/v1/scheduler"] {
        assert_eq!(
            names(&api, &format!("{pre}/jobs")).await,
            Vec::<String>::new()
        );
    }

    // Upserts: iso8601 by POST, dependency by PUT on the 2.x prefix; 204 and no body.
    let r = api.post("/v1/scheduler/iso8601", &scheduled("etl")).await;
    assert_204(&r, "POST iso8601");
    let r = api
        .send(
            Method::PUT,
            "/scheduler/dependency",
            Some(&dependent("report", &["etl"])),
        )
        .await;
    assert_204(&r, "PUT dependency");
    let mut now_start = scheduled("soon");
    now_start["schedule"] = json!("R3//PT10M");
    assert_204(
        &api.post("/scheduler/iso8601", &now_start).await,
        "empty start",
    );
    let soon = api.get_ok("/v1/scheduler/job/soon").await;
    let stored = soon["schedule"].as_str().unwrap_or_default().to_string();
    // Due at once, so the job controller may already have queued its first run (R2/<start
    // + 10 min>); either way the start is a fixed instant now.
    assert!(
        (stored.starts_with("R3/2") || stored.starts_with("R2/2")) && stored.ends_with("/PT10M"),
        "{stored}"
    );
    // Due at once, its first run is queued within a controller pass: wait for that, so the
    // kill -9 below compares against a schedule nothing is about to move.
    let stored = wait_for(
        Duration::from_secs(30),
        "the first run of soon is queued",
        || async {
            let s = api.get_ok("/v1/scheduler/job/soon").await["schedule"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            s.starts_with("R2/2").then_some(s)
        },
    )
    .await;

    // Bad input: 400 in Chronos' shape, never a 5xx.
    let r = api
        .raw(
            Method::POST,
            "/v1/scheduler/iso8601",
            Some(b"{not json".to_vec()),
        )
        .await;
    assert_chronos_error(&r, 400, "Bad Request", "Invalid JSON", "bad JSON");
    let r = api
        .post(
            "/v1/scheduler/iso8601",
            &json!({"name": "x", "command": 5, "schedule": "R/2030-01-01T00:00:00Z/PT1H"}),
        )
        .await;
    assert_chronos_error(&r, 400, "Bad Request", "command", "wrong type");
    let r = api.post("/v1/scheduler/iso8601", &json!([1, 2])).await;
    assert_chronos_error(&r, 400, "Bad Request", "object", "not an object");
    let mut bad = scheduled("bad");
    bad["schedule"] = json!("every tuesday");
    let r = api.post("/v1/scheduler/iso8601", &bad).await;
    assert_chronos_error(&r, 400, "Bad Request", "schedule", "bad schedule");
    let r = api
        .post("/v1/scheduler/dependency", &dependent("orphan", &["ghost"]))
        .await;
    assert_chronos_error(&r, 400, "Bad Request", "ghost", "unknown parent");
    let r = api
        .post("/v1/scheduler/dependency", &dependent("etl", &["report"]))
        .await;
    assert_chronos_error(&r, 400, "Bad Request", "etl -> report -> etl", "cycle");
    let huge = vec![b' '; 3 * 1024 * 1024];
    let r = api
        .try_raw(Method::POST, "/v1/scheduler/iso8601", Some(huge))
        .await;
    if let Ok(r) = r {
        // The server may close the connection before the client has sent everything.
        assert_chronos_error(&r, 413, "Payload Too Large", "limit", "huge body");
    }

    // Reads.
    let job = api.get_ok("/scheduler/job/etl").await;
    assert_eq!(job["owner"], "ops@example.com");
    assert_eq!(job["retries"], 2);
    let r = api.get("/v1/scheduler/job/nope").await;
    assert_chronos_error(&r, 404, "Not Found", "nope", "unknown job");
    assert_eq!(
        names(&api, "/v1/scheduler/jobs/search?name=ET").await,
        ["etl"]
    );
    assert_eq!(
        names(&api, "/v1/scheduler/jobs/search?command=child").await,
        ["report"]
    );
    assert_eq!(
        names(&api, "/scheduler/jobs/search?any=echo&limit=1&offset=1").await,
        ["report"]
    );
    let r = api.get("/v1/scheduler/jobs/search?limit=lots").await;
    assert_chronos_error(&r, 400, "Bad Request", "limit", "bad limit");
    let summary = api.get_ok("/v1/scheduler/jobs/summary").await;
    assert_eq!(summary["jobs"][0]["name"], "etl");
    assert_eq!(summary["jobs"][0]["status"], "fresh");
    assert_eq!(summary["jobs"][0]["state"], "idle");
    assert_eq!(summary["jobs"][1]["parents"], json!(["etl"]));

    // Never run: zeros and an empty history.
    let stat = api.get_ok("/v1/scheduler/job/stat/etl").await;
    assert_eq!(stat["histogram"]["count"], 0);
    assert_eq!(stat["histogram"]["99thPercentile"], 0.0);
    assert_eq!(stat["taskStatHistory"], json!([]));
    for s in [
        "99thPercentile",
        "98thPercentile",
        "95thPercentile",
        "75thPercentile",
        "median",
        "mean",
    ] {
        let v = api.get_ok(&format!("/scheduler/stats/{s}")).await;
        assert_eq!(v[0], json!({"jobNameLabel": "etl", "time": 0.0}), "{s}");
    }
    let r = api.get("/v1/scheduler/stats/42nd").await;
    assert_chronos_error(&r, 404, "Not Found", "42nd", "unknown stat");

    // Run now: recorded as queued; a second one is not added (concurrent=false).
    assert_204(
        &api.send(Method::PUT, "/v1/scheduler/job/etl?arguments=a%20b", None)
            .await,
        "run",
    );
    assert_204(
        &api.send(Method::PUT, "/scheduler/job/etl", None).await,
        "run again",
    );
    let r = api.send(Method::PUT, "/v1/scheduler/job/nope", None).await;
    assert_chronos_error(&r, 404, "Not Found", "nope", "run unknown");
    let csv = api.get("/v1/scheduler/graph/csv").await;
    assert_eq!(csv.status, 200);
    assert!(csv.content_type().starts_with("text/plain"));
    assert!(
        csv.text.contains("node,etl,fresh,queued\n") && csv.text.contains("link,etl,report\n"),
        "{}",
        csv.text
    );

    // Kill, mark success (fires the dependent), the dot graph, the leader.
    assert_204(&api.delete("/v1/scheduler/task/kill/etl").await, "kill");
    let r = api
        .send(Method::PUT, "/v1/scheduler/job/success/etl", None)
        .await;
    assert_eq!((r.status, r.text.as_str()), (200, "true"));
    let etl = api.get_ok("/v1/scheduler/job/etl").await;
    assert_eq!(etl["successCount"], 1);
    assert_ne!(etl["lastSuccess"], "");
    let csv = api.get("/scheduler/graph/csv").await.text;
    assert!(
        csv.contains("node,etl,success,idle\n") && csv.contains("node,report,fresh,queued\n"),
        "{csv}"
    );
    let dot = api.get("/v1/scheduler/graph/dot").await;
    assert!(dot.text.contains("\"etl\" -> \"report\";"), "{}", dot.text);
    let leader = api.get_ok("/v1/scheduler/leader").await;
    assert_eq!(leader["leader"], format!("127.0.0.1:{}", c.port));

    // kill -9: everything is still there, the schedule did not move.
    c.kill_server();
    c.start_server().await;
    let api = c.api.clone();
    assert_eq!(
        names(&api, "/v1/scheduler/jobs").await,
        ["etl", "report", "soon"]
    );
    assert_eq!(
        api.get_ok("/v1/scheduler/job/soon").await["schedule"],
        stored
    );
    assert_eq!(api.get_ok("/v1/scheduler/job/etl").await["successCount"], 1);
    let csv = api.get("/scheduler/graph/csv").await.text;
    assert!(csv.contains("node,report,fresh,queued\n"), "{csv}");

    // Jobs named like the fixed segments of other routes are still reachable.
    for name in ["success", "stat"] {
        assert_204(
            &api.post("/v1/scheduler/iso8601", &scheduled(name)).await,
            name,
        );
        assert_eq!(
            api.get_ok(&format!("/v1/scheduler/job/{name}")).await["name"],
            name
        );
        assert_204(&api.delete(&format!("/scheduler/job/{name}")).await, name);
    }

    // Delete: the child inherits the schedule; deleting again is a 404.
    assert_204(&api.delete("/v1/scheduler/job/etl").await, "delete");
    let report = api.get_ok("/v1/scheduler/job/report").await;
    assert_eq!(report["schedule"], "R/2030-01-01T00:00:00Z/PT1H");
    assert!(report.get("parents").is_none_or(|p| p == &json!([])));
    let r = api.delete("/scheduler/job/etl").await;
    assert_chronos_error(&r, 404, "Not Found", "etl", "delete twice");
    let r = api.delete("/v1/scheduler/task/kill/etl").await;
    assert_chronos_error(&r, 404, "Not Found", "etl", "kill unknown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_app_admins_change_only_jobs_of_their_namespace() {
    let c = Cluster::start_server_only("chronos-scopes").await;
    let admin = &c.api;
    let r = admin
        .post(
            "/api/v1/tokens",
            &json!({"name": "etl-bot", "role": "app-admin", "scopes": ["prod"], "ttl": "1d"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let prod = Api::with_token(&c.url(), r.json["token"].as_str());

    assert_204(
        &prod
            .post("/v1/scheduler/iso8601", &scheduled("prod.etl"))
            .await,
        "in scope",
    );
    for (what, r) in [
        (
            "other namespace",
            prod.post("/v1/scheduler/iso8601", &scheduled("dev.etl"))
                .await,
        ),
        (
            "default namespace",
            prod.post("/v1/scheduler/iso8601", &scheduled("etl")).await,
        ),
    ] {
        assert_eq!(r.status, 403, "{what}: {}", r.text);
        assert!(
            r.message().contains("permission denied"),
            "{what}: {}",
            r.text
        );
    }
    assert_204(
        &admin
            .post("/v1/scheduler/iso8601", &scheduled("dev.etl"))
            .await,
        "admin",
    );
    for (method, path) in [
        (Method::PUT, "/v1/scheduler/job/dev.etl"),
        (Method::DELETE, "/v1/scheduler/job/dev.etl"),
        (Method::PUT, "/scheduler/job/success/dev.etl"),
        (Method::DELETE, "/scheduler/task/kill/dev.etl"),
    ] {
        let r = prod.send(method.clone(), path, None).await;
        assert_eq!(r.status, 403, "{method} {path}: {}", r.text);
    }
    // Reads are not scoped; its own jobs it runs and deletes.
    assert_eq!(prod.get("/v1/scheduler/job/dev.etl").await.status, 200);
    assert_204(
        &prod
            .send(Method::PUT, "/v1/scheduler/job/prod.etl", None)
            .await,
        "run own",
    );
    assert_204(
        &prod.delete("/v1/scheduler/job/prod.etl").await,
        "delete own",
    );
    // Without credentials: 401 with a Basic challenge.
    let r = c.anonymous().get("/v1/scheduler/jobs").await;
    assert_eq!(r.status, 401);
    assert!(
        r.header("www-authenticate")
            .is_some_and(|h| h.starts_with("Basic"))
    );
}
