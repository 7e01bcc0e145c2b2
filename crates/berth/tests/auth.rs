//! Authentication, RBAC, the audit log and node identity, against the real binary
//! (`berth server` authenticates by default; the harness acts as its admin).

mod common;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

async fn token(api: &Api, body: Value) -> String {
    let r = api.post("/api/v1/tokens", &body).await;
    assert_eq!(r.status, 201, "creating a token: {}", r.text);
    r.json["token"].as_str().expect("token").to_string()
}

fn assert_denied(r: &Reply, status: u16, needle: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text);
    assert!(
        r.content_type().starts_with("application/json"),
        "{what}: {}",
        r.content_type()
    );
    assert!(r.message().contains(needle), "{what}: {}", r.text);
}

/// Every documented operation, with its path parameters filled in.
fn operations(doc: &Value) -> Vec<(Method, String)> {
    let mut out = Vec::new();
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        let concrete = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "x" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        for m in ops.as_object().expect("ops").keys() {
            out.push((
                Method::from_bytes(m.to_uppercase().as_bytes()).expect("method"),
                concrete.clone(),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credentials_every_route_but_ping_is_401() {
    let c = Cluster::start_server_only("auth-401").await;
    let token_file = c.path().join("server").join("admin.token");
    let mode = std::fs::metadata(&token_file)
        .expect("admin.token")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "admin.token must be private");
    let doc = c.api.get_ok("/openapi.json").await;
    let anon = c.anonymous();
    let ops = operations(&doc);
    assert!(ops.len() > 40, "{} operations", ops.len());
    for (m, path) in ops {
        let body = (m != Method::GET && m != Method::DELETE).then(|| b"{}".to_vec());
        let r = anon.raw(m.clone(), &path, body).await;
        if path == "/ping" {
            assert_eq!(r.status, 200, "{m} {path}");
            continue;
        }
        assert_denied(&r, 401, "authentication required", &format!("{m} {path}"));
        assert!(r.header("www-authenticate").is_some(), "{m} {path}");
    }
    // A wrong token, a wrong password: 401 too, and nothing was created.
    let forged = Api::with_token(&c.url(), Some("bt_000000000000_nope"));
    let r = forged.post("/v2/apps", &cmd_app("/x", "sleep 60", 0)).await;
    assert_denied(&r, 401, "unknown or revoked token", "forged token");
    assert_eq!(c.api.get_ok("/v2/apps").await["apps"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_scopes_decide_and_every_write_is_audited() {
    let c = Cluster::start("auth-rbac").await;
    let admin = &c.api;
    let viewer = Api::with_token(
        &c.url(),
        Some(&token(admin, json!({"name": "dash", "role": "viewer"})).await),
    );
    let operator = Api::with_token(
        &c.url(),
        Some(&token(admin, json!({"name": "oncall", "role": "operator"})).await),
    );
    let prod = Api::with_token(
        &c.url(),
        Some(
            &token(
                admin,
                json!({"name": "jenkins", "role": "app-admin", "scopes": ["prod"], "ttl": "1d"}),
            )
            .await,
        ),
    );

    // A viewer reads, and may not write.
    assert_eq!(viewer.get("/v2/apps").await.status, 200);
    let r = viewer
        .post("/v2/apps", &cmd_app("/prod/v", "sleep 60", 0))
        .await;
    assert_denied(&r, 403, "apps:write", "viewer POST");
    assert_denied(
        &viewer.get("/api/v1/tokens").await,
        403,
        "cluster:write",
        "viewer tokens",
    );

    // The app-admin of `prod` changes `prod` only, bulk requests included.
    let r = prod
        .post("/v2/apps", &cmd_app("/prod/web", "sleep 600", 1))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = prod
        .post("/v2/apps", &cmd_app("/dev/web", "sleep 600", 1))
        .await;
    assert_denied(&r, 403, "'/dev/web'", "out-of-scope POST");
    let bulk = json!([
        cmd_app("/prod/api", "sleep 600", 0),
        cmd_app("/dev/api", "sleep 600", 0)
    ]);
    let r = prod.put("/v2/apps", &bulk).await;
    assert_denied(&r, 403, "'/dev/api'", "bulk PUT with one app out of scope");
    assert_eq!(
        admin.get("/v2/apps/prod/api").await.status,
        404,
        "nothing of it was stored"
    );
    let r = prod.send(Method::DELETE, "/v2/groups/dev", None).await;
    assert_denied(&r, 403, "apps:write", "out-of-scope group delete");

    // Its tasks' logs yes, another namespace's no.
    let r = admin
        .post(
            "/v2/apps",
            &cmd_app("/dev/web", "echo dev-secret; sleep 600", 1),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let dev_task = admin.wait_running("/dev/web", 1, T).await[0]["id"]
        .as_str()
        .expect("task id")
        .to_string();
    let prod_task = admin.wait_running("/prod/web", 1, T).await[0]["id"]
        .as_str()
        .expect("task id")
        .to_string();
    let r = prod.get(&format!("/api/v1/tasks/{dev_task}/logs")).await;
    assert_denied(&r, 403, "logs:read", "logs of another namespace");
    assert_eq!(
        prod.get(&format!("/api/v1/tasks/{prod_task}/logs"))
            .await
            .status,
        200
    );
    let r = viewer.get(&format!("/api/v1/tasks/{dev_task}/logs")).await;
    assert_denied(&r, 403, "logs:read", "viewer logs");
    wait_until(
        T,
        "the admin reads the dev task's log through the agent",
        || async {
            admin
                .get(&format!("/api/v1/tasks/{dev_task}/logs"))
                .await
                .text
                .contains("dev-secret")
        },
    )
    .await;

    // The operator runs nodes, not apps.
    assert_eq!(
        operator
            .post("/api/v1/nodes/n1/cordon", &json!({}))
            .await
            .status,
        200
    );
    assert_eq!(
        operator
            .post("/api/v1/nodes/n1/uncordon", &json!({}))
            .await
            .status,
        200
    );
    let r = operator
        .post("/v2/apps", &cmd_app("/prod/o", "sleep 60", 0))
        .await;
    assert_denied(&r, 403, "apps:write", "operator POST");
    let r = prod.post("/api/v1/nodes/n1/cordon", &json!({})).await;
    assert_denied(&r, 403, "nodes:write", "app-admin cordon");
    let r = prod.post("/api/v1/nodes/n1/drain", &json!({})).await;
    assert_denied(&r, 403, "nodes:write", "app-admin drain");

    // Namespaces (quotas, dedicated nodes, policies) are the cluster-admin's: not even the
    // app-admin of `prod` may raise its own quota.
    let quota = json!({"quota": {"cpus": 1000}});
    for (who, api) in [
        ("app-admin", &prod),
        ("operator", &operator),
        ("viewer", &viewer),
    ] {
        let r = api.put("/api/v1/namespaces/prod", &quota).await;
        assert_denied(&r, 403, "cluster:write", &format!("{who} namespace PUT"));
        let r = api
            .send(Method::DELETE, "/api/v1/namespaces/prod", None)
            .await;
        assert_denied(&r, 403, "cluster:write", &format!("{who} namespace DELETE"));
    }
    assert_eq!(prod.get("/api/v1/namespaces/prod").await.status, 200);
    assert_eq!(
        admin.get_ok("/api/v1/namespaces/prod").await["defined"],
        false
    );
    let r = admin.put("/api/v1/namespaces/prod", &quota).await;
    assert_eq!(r.status, 201, "{}", r.text);

    // The audit log: who did what, and what was refused.
    let records = operator.get_ok("/api/v1/audit?limit=100").await["records"]
        .as_array()
        .expect("records")
        .clone();
    let find = |who: &str, path: &str, status: u64| {
        records.iter().any(|r| {
            r["who"].as_str().is_some_and(|w| w.contains(who))
                && r["path"] == path
                && r["status"] == status
        })
    };
    assert!(find("jenkins", "/v2/apps", 201), "{records:#?}");
    assert!(find("jenkins", "/v2/apps", 403), "{records:#?}");
    assert!(find("dash", "/v2/apps", 403), "{records:#?}");
    assert!(
        find("oncall", "/api/v1/nodes/n1/cordon", 200),
        "{records:#?}"
    );
    assert!(
        records.iter().all(|r| r["method"] != "GET"),
        "reads are not audited"
    );
    assert_denied(
        &prod.get("/api/v1/audit").await,
        403,
        "audit:read",
        "app-admin audit",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expire_and_revoked_tokens_stop_at_once() {
    let c = Cluster::start_server_only("auth-tokens").await;
    let admin = &c.api;
    let r = admin
        .post(
            "/api/v1/tokens",
            &json!({"name": "short", "role": "viewer", "ttl": 1}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let short = Api::with_token(&c.url(), r.json["token"].as_str());
    assert_eq!(short.get("/v2/apps").await.status, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_denied(
        &short.get("/v2/apps").await,
        401,
        "expired",
        "expired token",
    );

    let r = admin
        .post(
            "/api/v1/tokens",
            &json!({"name": "ci", "role": "cluster-admin"}),
        )
        .await;
    let id = r.json["id"].as_str().expect("id").to_string();
    let ci = Api::with_token(&c.url(), r.json["token"].as_str());
    assert_eq!(ci.get("/v2/apps").await.status, 200);
    let listed = admin.get_ok("/api/v1/tokens").await;
    let text = listed.to_string();
    assert!(text.contains(&id), "{text}");
    assert!(
        !text.contains("secret"),
        "no secret or hash is listed: {text}"
    );
    assert_eq!(
        admin.delete(&format!("/api/v1/tokens/{id}")).await.status,
        200
    );
    assert_denied(&ci.get("/v2/apps").await, 401, "revoked", "revoked token");

    // Bad requests are 422 with the field.
    for (body, path) in [
        (json!({"name": "x", "role": "root"}), "/role"),
        (json!({"name": "x", "role": "app-admin"}), "/scopes"),
        (json!({"name": "x", "role": "viewer", "ttl": "5y"}), "/ttl"),
        (json!({"name": "", "role": "viewer"}), "/name"),
    ] {
        let r = admin.post("/api/v1/tokens", &body).await;
        assert_eq!(r.status, 422, "{body}: {}", r.text);
        assert!(
            r.detail_paths().contains(&path.to_string()),
            "{body}: {}",
            r.text
        );
    }
    // Survives a restart (the store keeps the hashes).
    let r = admin
        .post("/api/v1/tokens", &json!({"name": "kept", "role": "viewer"}))
        .await;
    let kept = Api::with_token(&c.url(), r.json["token"].as_str());
    let mut c = c;
    c.kill_server();
    c.start_server().await;
    assert_eq!(kept.get("/v2/apps").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_acts_only_for_itself_and_its_port_answers_only_the_server() {
    let c = Cluster::start("auth-nodes").await;
    let credential = std::fs::read_to_string(c.path().join("agent").join("node.credential"))
        .expect("the agent kept its credential");
    let mode = std::fs::metadata(c.path().join("agent").join("node.credential"))
        .expect("credential file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let node = Api::with_token(&c.url(), Some(credential.trim()));
    assert_eq!(node.get("/api/v1/agent/n1/assignments").await.status, 200);
    let r = node.get("/api/v1/agent/n2/assignments").await;
    assert_denied(&r, 403, "node 'n2'", "another node's assignments");
    let r = node
        .post("/api/v1/agent/n2/status", &json!({"statuses": []}))
        .await;
    assert_denied(&r, 403, "node 'n2'", "another node's report");
    assert_denied(
        &node.get("/v2/apps").await,
        403,
        "read",
        "a node reading the API",
    );
    // A user is not an agent, and the join token cannot take over a live node.
    let r = c.api.get("/api/v1/agent/n1/assignments").await;
    assert_denied(&r, 403, "node credential", "admin on the agent protocol");
    let join = Api::with_token(&c.url(), Some(&read_token(&c.join_token_file())));
    let info = c.api.get_ok("/api/v1/nodes/n1").await;
    let info = if info["info"].is_object() {
        info["info"].clone()
    } else {
        info
    };
    let r = join.post("/api/v1/agent/register", &info).await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert_denied(
        &join.get("/v2/apps").await,
        403,
        "read",
        "join token reading the API",
    );

    // The agent's own port: logs only for the server.
    let agent_url = info["agentUrl"].as_str().expect("agentUrl").to_string();
    let plain = Api::new(&agent_url);
    let r = plain.get("/v1/tasks/nope/logs").await;
    assert_eq!(r.status, 401, "{}", r.text);
    let r = plain.get("/metrics").await;
    assert_eq!(r.status, 401, "{}", r.text);
    let as_server = Api::with_token(&agent_url, Some(credential.trim()));
    assert_eq!(as_server.get("/v1/tasks/nope/logs").await.status, 404);
    assert_eq!(plain.get("/ping").await.status, 200);

    // Restarting the agent keeps its credential: no new join, the node stays one node.
    let mut c = c;
    c.kill_agent();
    c.start_agent().await;
    let again = std::fs::read_to_string(c.path().join("agent").join("node.credential"))
        .expect("credential");
    assert_eq!(again, credential, "the agent reused its credential");
    wait_until(T, "n1 ready again", || async {
        node_list(&c.api.get_ok("/api/v1/nodes").await).len() == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_users_and_tokens_as_passwords() {
    let c = Cluster::start_server_with("auth-basic", &["--http-credentials", "ops:pa55"]).await;
    let http = reqwest::Client::new();
    let get = |user: &str, pass: &str| {
        http.get(c.api.url("/v2/apps"))
            .basic_auth(user, Some(pass))
            .send()
    };
    assert_eq!(
        get("ops", "pa55").await.expect("GET").status().as_u16(),
        200
    );
    assert_eq!(
        get("ops", "wrong").await.expect("GET").status().as_u16(),
        401
    );
    assert_eq!(
        get("nobody", "pa55").await.expect("GET").status().as_u16(),
        401
    );
    let viewer = token(&c.api, json!({"name": "py", "role": "viewer"})).await;
    assert_eq!(
        get("any", &viewer).await.expect("GET").status().as_u16(),
        200
    );
    let r = http
        .post(c.api.url("/v2/apps"))
        .basic_auth("any", Some(&viewer))
        .json(&cmd_app("/b", "sleep 1", 0))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status().as_u16(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_creates_tokens_and_logs_in() {
    let c = Cluster::start_server_only("auth-cli").await;
    let config = c.path().join("cli.json");
    let berth = |args: &[&str], token: Option<&str>| {
        let mut cmd = std::process::Command::new(BERTH);
        cmd.args(args)
            .env("BERTH_ADDR", c.url())
            .env("BERTH_CONFIG", &config)
            .env_remove("BERTH_TOKEN");
        if let Some(t) = token {
            cmd.env("BERTH_TOKEN", t);
        }
        let out = cmd.output().expect("running berth");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let admin = c.admin_token();
    let (ok, out, err) = berth(
        &[
            "token",
            "create",
            "--name",
            "deploy",
            "--role",
            "app-admin",
            "--scope",
            "prod",
        ],
        Some(&admin),
    );
    assert!(ok, "{out}{err}");
    let new = out.trim().to_string();
    assert!(new.starts_with("bt_"), "{out}");
    let (ok, out, err) = berth(&["login", "--with-token", &new], None);
    assert!(ok, "{out}{err}");
    assert!(out.contains("app-admin"), "{out}");
    assert_eq!(
        std::fs::metadata(&config)
            .expect("config")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    // The kept token is used without --token.
    let (ok, out, err) = berth(&["app", "list"], None);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = berth(&["-o", "json", "token", "list"], Some(&admin));
    assert!(ok, "{out}{err}");
    let listed: Value = serde_json::from_str(&out).expect("json");
    let id = listed["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .find(|t| t["name"] == "deploy")
        .and_then(|t| t["id"].as_str())
        .expect("deploy token")
        .to_string();
    let (ok, out, err) = berth(&["token", "revoke", &id], Some(&admin));
    assert!(ok, "{out}{err}");
    let (ok, _, err) = berth(&["app", "list"], None);
    assert!(!ok, "a revoked token fails");
    assert!(err.contains("revoked"), "{err}");
    let (ok, _, err) = berth(&["app", "list"], Some("bt_bad_token"));
    assert!(!ok);
    assert!(err.contains("token"), "{err}");
}
