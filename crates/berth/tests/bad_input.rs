//! What clients get wrong: every bad request is a 4xx with a JSON body naming the problem,
//! changes nothing, and never takes the server down. Runs against a server without nodes
//! (nothing can run, so deployments stay open and lock their apps).

mod common;

use common::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// A JSON error body with a non-empty `message`.
fn assert_json_error(r: &Reply, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {} {}", r.status, r.text);
    assert!(
        r.content_type().starts_with("application/json"),
        "{what}: content-type {:?}, body {}",
        r.content_type(),
        r.text
    );
    assert!(!r.message().is_empty(), "{what}: no message in {}", r.text);
}

/// All `details[*].errors` as one string.
fn detail_text(r: &Reply) -> String {
    r.json["details"].to_string()
}

fn valid() -> Value {
    cmd_app("/it/ok", "sleep 3600", 1)
}

fn with(mut base: Value, key: &str, v: Value) -> Value {
    base[key] = v;
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_4xx_json_and_change_nothing() {
    let c = Cluster::start_server_only("bad-input").await;
    let api = &c.api;

    // An app that exists (its deployment never finishes: there is no node).
    let r = api
        .post("/v2/apps", &cmd_app("/it/locked", "sleep 3600", 1))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let lock_dep = r.header("marathon-deployment-id").unwrap();

    // Let the controller take the deployment as far as it can (blocked: no node) first.
    wait_until(T, "the deployment to be blocked", || async {
        let d = api.get_ok(&format!("/api/v1/deployments/{lock_dep}")).await;
        d["blocked"].is_string() && d["currentStep"] == 2
    })
    .await;
    let apps_before = api.apps().await;
    let deps_before = api.deployments().await;
    assert_eq!(deps_before.len(), 1);

    // Malformed JSON.
    let r = api
        .raw(Method::POST, "/v2/apps", Some(b"{\"id\": \"/x\",".to_vec()))
        .await;
    assert_json_error(&r, 400, "malformed JSON");
    assert_eq!(r.message(), "Invalid JSON");
    let r = api.raw(Method::POST, "/v2/apps", Some(Vec::new())).await;
    assert_json_error(&r, 400, "empty body");

    // Wrong types.
    let r = api
        .post("/v2/apps", &with(valid(), "instances", json!("five")))
        .await;
    assert_json_error(&r, 422, "instances as a string");
    assert!(
        r.detail_paths().contains(&"/instances".to_string()),
        "{}",
        r.text
    );

    // Unknown constraint operator.
    let r = api
        .post(
            "/v2/apps",
            &with(valid(), "constraints", json!([["hostname", "SOMETIMES"]])),
        )
        .await;
    assert_json_error(&r, 422, "unknown constraint operator");
    assert!(
        r.detail_paths()
            .iter()
            .any(|p| p.starts_with("/constraints(0)")),
        "{}",
        r.text
    );
    assert!(detail_text(&r).contains("operator"), "{}", r.text);

    // Invalid ids.
    for id in ["/Bad_ID", "/a/restart", "/a/tasks", "/-dash", "/a..b", ""] {
        let r = api.post("/v2/apps", &with(valid(), "id", json!(id))).await;
        assert_json_error(&r, 422, &format!("id {id:?}"));
        assert!(
            r.detail_paths().iter().any(|p| p == "/id"),
            "id {id:?}: {}",
            r.text
        );
    }

    // A BERTH_* label Berth acts on, with a value it cannot use.
    let r = api
        .post(
            "/v2/apps",
            &with(valid(), "labels", json!({"BERTH_PIDS_LIMIT": "-5"})),
        )
        .await;
    assert_json_error(&r, 422, "bad BERTH_PIDS_LIMIT");
    assert!(
        r.detail_paths()
            .contains(&"/labels/BERTH_PIDS_LIMIT".to_string()),
        "{}",
        r.text
    );

    // cmd and args together; nothing to run.
    let r = api
        .post("/v2/apps", &with(valid(), "args", json!(["sleep", "1"])))
        .await;
    assert_json_error(&r, 422, "cmd and args");
    assert!(detail_text(&r).contains("args"), "{}", r.text);
    let r = api.post("/v2/apps", &json!({"id": "/it/nothing"})).await;
    assert_json_error(&r, 422, "no cmd, args or container");

    // Negative and absurd resources.
    let r = api
        .post("/v2/apps", &with(valid(), "cpus", json!(-1)))
        .await;
    assert_json_error(&r, 422, "negative cpus");
    assert!(
        r.detail_paths().contains(&"/cpus".to_string()),
        "{}",
        r.text
    );
    let r = api
        .post("/v2/apps", &with(valid(), "mem", json!(-16)))
        .await;
    assert_json_error(&r, 422, "negative mem");
    let r = api
        .post("/v2/apps", &with(valid(), "instances", json!(-3)))
        .await;
    assert_json_error(&r, 422, "negative instances");

    // A body over the limit (2 MiB): 413 with JSON. (On a client of its own: see
    // `oversized_body_says_connection_close_or_keeps_the_connection` for what it does to the connection.)
    let r = Api::with_token(&c.url(), Some(&c.admin_token()))
        .post("/v2/apps", &big_app())
        .await;
    assert_json_error(&r, 413, "3 MB body");

    // PUT with an id in the body that is not the path's.
    let r = api
        .put(
            "/v2/apps/it/locked?force=true",
            &json!({"id": "/it/other", "instances": 2}),
        )
        .await;
    assert_json_error(&r, 422, "mismatched id");
    assert!(r.detail_paths().contains(&"/id".to_string()), "{}", r.text);

    // Unknown app.
    for (m, path) in [
        (Method::GET, "/v2/apps/x"),
        (Method::DELETE, "/v2/apps/x"),
        (Method::GET, "/v2/apps/x/tasks"),
        (Method::POST, "/v2/apps/x/restart"),
    ] {
        let r = api.raw(m.clone(), path, None).await;
        assert_json_error(&r, 404, &format!("{m} {path}"));
        assert_eq!(r.message(), "App '/x' does not exist", "{m} {path}");
    }
    let r = api
        .send(Method::PATCH, "/v2/apps/x", Some(&json!({"instances": 2})))
        .await;
    assert_json_error(&r, 404, "PATCH unknown app");

    // POST of an app that exists.
    let r = api
        .post("/v2/apps", &cmd_app("/it/locked", "sleep 1", 1))
        .await;
    assert_json_error(&r, 409, "POST existing app");
    assert!(r.message().contains("already exists"), "{}", r.text);

    // Locked by its (endless) deployment: 409 naming the deployment.
    let r = api
        .put("/v2/apps/it/locked", &json!({"instances": 2}))
        .await;
    assert_json_error(&r, 409, "update of a locked app");
    assert!(r.message().contains("locked"), "{}", r.text);
    assert_eq!(
        r.json["deployments"],
        json!([{"id": lock_dep}]),
        "{}",
        r.text
    );
    let r = api.post("/v2/apps/it/locked/restart", &json!({})).await;
    assert_json_error(&r, 409, "restart of a locked app");

    // Garbage paths and methods: JSON 404/405, never 500.
    for (m, path, want) in [
        (Method::GET, "/nope", 404),
        (Method::GET, "/v2", 404),
        (Method::GET, "/v2/appsX", 404),
        (Method::GET, "/v2/apps/it/locked/versions/nope", 404),
        (Method::POST, "/v2/apps/it/locked/tasks", 404),
        (Method::DELETE, "/v2/apps/it/locked/tasks/nope", 404),
        (Method::DELETE, "/v2/deployments/nope", 404),
        (Method::GET, "/api/v1/deployments/nope", 404),
        (Method::GET, "/api/v1/nodes/nope", 404),
        (Method::PATCH, "/v2/apps", 405),
        (Method::DELETE, "/v2/info", 405),
        (Method::POST, "/ping", 405),
        (Method::PUT, "/v2/deployments", 405),
    ] {
        let r = api.raw(m.clone(), path, None).await;
        assert_json_error(&r, want, &format!("{m} {path}"));
    }
    for path in [
        "/v2/apps/%ff%fe",
        "/v2/apps//////",
        "/v2/apps/..%2F..%2Fetc",
        "/v2/queue/%00/delay",
        "/v2/apps?embed=%zz",
        "/v2/tasks?status=bogus",
        "/v2/groups/a/b/c/versions/x",
    ] {
        let r = api.raw(Method::GET, path, None).await;
        assert!(r.status < 500, "GET {path}: {} {}", r.status, r.text);
        let r = api.raw(Method::DELETE, path, None).await;
        assert!(r.status < 500, "DELETE {path}: {} {}", r.status, r.text);
    }
    let r = api
        .raw(
            Method::GET,
            "/v2/apps?force=maybe&embed=app.tasks&embed=app.counts",
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = api
        .raw(Method::DELETE, "/v2/apps/it/locked?force=maybe", None)
        .await;
    assert_json_error(&r, 400, "bad boolean");

    // Nothing above changed anything.
    assert_eq!(
        api.apps().await,
        apps_before,
        "apps changed by bad requests"
    );
    assert_eq!(
        api.deployments().await,
        deps_before,
        "deployments changed by bad requests"
    );

    // With force the locked app's update goes through, superseding the deployment.
    let r = api
        .put("/v2/apps/it/locked?force=true", &json!({"instances": 2}))
        .await;
    assert_eq!(r.status, 200, "forced update: {}", r.text);
    let new_dep = r.json["deploymentId"].as_str().unwrap().to_string();
    assert_ne!(new_dep, lock_dep);
    let deps: Vec<String> = api
        .deployments()
        .await
        .iter()
        .map(|d| d["id"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        deps,
        vec![new_dep],
        "the forced change replaced the deployment"
    );
    let app = api.get_ok("/v2/apps/it/locked").await;
    assert_eq!(app["app"]["instances"], 2);
}

fn big_app() -> Value {
    let mut big = valid();
    big["env"] = json!({"BIG": "x".repeat(3 * 1024 * 1024)});
    big
}

/// After a 413 the server stops reading the body and drops the connection. A keep-alive
/// client (reqwest, Python's `requests`) must be told so (`Connection: close`), or its next
/// request on that connection fails with a broken pipe or reset. Checked on a raw socket so
/// the outcome does not depend on timing: either the reply says `Connection: close`, or the
/// same connection answers a second request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_says_connection_close_or_keeps_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let c = Cluster::start_server_only("too-large").await;
    let body = big_app().to_string().into_bytes();
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", c.port))
        .await
        .expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let head = format!(
        "POST /v2/apps HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Authorization: Bearer {}\r\nContent-Length: {}\r\n\r\n",
        c.admin_token(),
        body.len()
    );
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(head.as_bytes()).await;
        let _ = wr.write_all(&body).await;
        wr
    });
    // Read the whole 413 reply (headers, then content-length bytes).
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (headers, body_len) = loop {
        let n = tokio::time::timeout(Duration::from_secs(10), rd.read(&mut chunk))
            .await
            .expect("reply in time")
            .expect("read");
        assert!(n > 0, "connection closed before a reply");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let headers = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = headers
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            buf.drain(..end + 4);
            break (headers, len);
        }
    };
    while buf.len() < body_len {
        let n = rd.read(&mut chunk).await.expect("read body");
        assert!(n > 0, "reply body cut short");
        buf.extend_from_slice(&chunk[..n]);
    }
    assert!(headers.starts_with("http/1.1 413"), "{headers}");
    if headers.lines().any(|l| l.trim() == "connection: close") {
        return; // the client knows not to reuse the connection
    }
    // Not announced as closing: the connection must then serve the next request.
    let mut wr = writer.await.expect("writer");
    let sent = wr
        .write_all(b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await;
    let mut reply = Vec::new();
    let got = tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut reply)).await;
    let reply = String::from_utf8_lossy(&reply).to_string();
    assert!(
        sent.is_ok() && reply.starts_with("HTTP/1.1 200"),
        "the 413 reply kept the connection open (no `Connection: close`: {headers:?}) but \
         the connection did not serve the next request: write {sent:?}, read {got:?}, \
         reply {reply:?}"
    );
}

/// Random type changes at random keys of a valid app: 201 or 4xx, never 5xx; the server
/// stays up and still serves its apps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_app_definitions_never_5xx() {
    let c = Cluster::start_server_only("fuzz").await;
    let api = &c.api;
    let base = json!({
        "id": "/fuzz/app",
        "cmd": "sleep 3600",
        "cpus": 0.1,
        "mem": 16,
        "disk": 0,
        "instances": 1,
        "env": {"A": "1"},
        "labels": {"team": "x"},
        "constraints": [["hostname", "UNIQUE"]],
        "portDefinitions": [{"port": 0, "protocol": "tcp", "name": "http"}],
        "healthChecks": [{"protocol": "COMMAND", "command": {"value": "true"}}],
        "upgradeStrategy": {"minimumHealthCapacity": 0.5, "maximumOverCapacity": 0.5},
        "unreachableStrategy": {"inactiveAfterSeconds": 10, "expungeAfterSeconds": 20},
        "backoffSeconds": 1,
        "backoffFactor": 1.15,
        "maxLaunchDelaySeconds": 300,
        "killSelection": "YOUNGEST_FIRST",
        "requirePorts": false,
        "fetch": [{"uri": "http://example.com/x.tgz"}],
        "container": {"type": "DOCKER", "docker": {"image": "busybox"}, "volumes": []},
        "networks": [{"mode": "host"}],
    });
    let r = api.post("/v2/apps", &base).await;
    assert_eq!(r.status, 201, "the unmutated app is valid: {}", r.text);
    let mut rng = SmallRng::seed_from_u64(0xbe47);
    let mut created = 1;
    let mut status_counts = std::collections::BTreeMap::<u16, usize>::new();
    for i in 0..200 {
        let mut app = base.clone();
        app["id"] = json!(format!("/fuzz/app{i}"));
        let mutations = rng.random_range(1..=3);
        for _ in 0..mutations {
            mutate(&mut app, &mut rng, 0);
        }
        let r = api.post("/v2/apps", &app).await;
        *status_counts.entry(r.status).or_default() += 1;
        assert!(
            r.status == 201 || (400..500).contains(&r.status),
            "mutation {i}: {} {} for {app}",
            r.status,
            r.text
        );
        if r.status == 201 {
            created += 1;
        } else {
            assert!(
                r.json["message"].is_string(),
                "mutation {i}: error without a JSON message: {} for {app}",
                r.text
            );
        }
    }
    eprintln!("fuzz statuses: {status_counts:?}");
    let r = api.get("/ping").await;
    assert_eq!(r.status, 200, "the server survived the fuzzing");
    let apps = api.apps().await;
    assert_eq!(
        apps["apps"].as_array().map(Vec::len),
        Some(created),
        "every 201 created exactly one app"
    );
    assert!(
        created > 0 && created < 200,
        "the mutations were a mix: {status_counts:?}"
    );
}

fn random_value(rng: &mut SmallRng) -> Value {
    match rng.random_range(0..16) {
        0 => Value::Null,
        1 => json!(rng.random::<bool>()),
        2 => json!(rng.random_range(-5..5)),
        3 => json!(i64::MAX),
        4 => json!(-1e300),
        5 => json!(rng.random::<f64>()),
        6 => json!(""),
        7 => json!("five"),
        8 => json!("/Weird ID/../x"),
        9 => json!([]),
        10 => json!({}),
        11 => json!([1, "two", null, {"x": []}]),
        12 => json!({"nested": {"deeper": [[["x"]]]}}),
        13 => json!("\u{0000}\u{ffff}é"),
        14 => json!(u64::MAX),
        _ => json!([["hostname", "LIKE", "(unclosed"]]),
    }
}

/// Replaces a random key (at any depth) with a random value, or deletes it.
fn mutate(v: &mut Value, rng: &mut SmallRng, depth: usize) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            let keys: Vec<String> = map.keys().cloned().collect();
            let k = keys[rng.random_range(0..keys.len())].clone();
            let descend = depth < 3 && rng.random_bool(0.3);
            match map.get_mut(&k) {
                Some(child) if descend && (child.is_object() || child.is_array()) => {
                    mutate(child, rng, depth + 1)
                }
                _ if rng.random_bool(0.1) => {
                    map.remove(&k);
                }
                Some(child) => *child = random_value(rng),
                None => {}
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let i = rng.random_range(0..items.len());
            if depth < 3 && rng.random_bool(0.5) {
                mutate(&mut items[i], rng, depth + 1);
            } else {
                items[i] = random_value(rng);
            }
        }
        other => *other = random_value(rng),
    }
}

/// A marathon.json in the deprecated forms (`ports`, `uris`, `container.docker.network`,
/// `docker.portMappings`) is stored normalised; PUTting the same file again, as a Jenkins
/// pipeline does on every build, is an update, not a clash between the deprecated fields
/// sent and the canonical ones stored. A changed network in the old form replaces the stored
/// one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deprecated_marathon_json_redeploys_unchanged() {
    // No nodes: deployments stay open, so each update forces past the last one.
    let c = Cluster::start_server_only("redeploy").await;
    let api = &c.api;
    let bridge = json!({
        "id": "/legacy/web", "cmd": "sleep 3600", "cpus": 0.1, "mem": 16, "instances": 1,
        "container": {"type": "DOCKER", "docker": {
            "image": "busybox", "network": "BRIDGE",
            "portMappings": [{"containerPort": 8080, "hostPort": 0, "protocol": "tcp"}]}},
    });
    let r = api.post("/v2/apps", &bridge).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let networks = |app: &Value| -> Vec<Value> {
        app["app"]["networks"]
            .as_array()
            .map(|n| n.iter().map(|x| x["mode"].clone()).collect())
            .unwrap_or_default()
    };
    let app = api.get_ok("/v2/apps/legacy/web").await;
    assert_eq!(networks(&app), [json!("container/bridge")], "{app}");
    let config_changed = |app: &Value| app["app"]["versionInfo"]["lastConfigChangeAt"].clone();
    let first = config_changed(&app);
    for _ in 0..2 {
        let r = api.put("/v2/apps/legacy/web?force=true", &bridge).await;
        assert_eq!(r.status, 200, "the same file again: {}", r.text);
    }
    // Nothing changed, so nothing restarts: the configuration's version stays.
    let app = api.get_ok("/v2/apps/legacy/web").await;
    assert_eq!(config_changed(&app), first, "{app}");
    let mut host = bridge.clone();
    host["container"]["docker"]["network"] = json!("HOST");
    host["container"]["docker"]
        .as_object_mut()
        .unwrap()
        .remove("portMappings");
    let r = api.put("/v2/apps/legacy/web?force=true", &host).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let app = api.get_ok("/v2/apps/legacy/web").await;
    assert_eq!(networks(&app), [json!("host")], "{app}");

    let exec = json!({
        "id": "/legacy/exec", "cmd": "sleep 3600", "cpus": 0.1, "mem": 16,
        "ports": [0, 0], "uris": ["http://example.invalid/a.tgz"],
    });
    let r = api.post("/v2/apps", &exec).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = api.put("/v2/apps/legacy/exec?force=true", &exec).await;
    assert_eq!(r.status, 200, "the same file again: {}", r.text);
    let mut one_port = exec.clone();
    one_port["ports"] = json!([0]);
    let r = api.put("/v2/apps/legacy/exec?force=true", &one_port).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let app = api.get_ok("/v2/apps/legacy/exec").await;
    assert_eq!(
        app["app"]["portDefinitions"].as_array().map(Vec::len),
        Some(1),
        "{app}"
    );
    assert_eq!(
        app["app"]["fetch"][0]["uri"], "http://example.invalid/a.tgz",
        "{app}"
    );
}
