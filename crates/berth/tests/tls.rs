//! TLS on a real server and agent: `berth server --tls auto` (its own CA in the data dir) and
//! `--tls-cert/--tls-key` (the operator's), agents that verify the server with `--ca-cert` and
//! serve their endpoint with a certificate the server issued, and the server's calls to agents
//! (task logs) over TLS with its client certificate. Wrong CAs, plain HTTP and clients without
//! a certificate are refused.

mod common;

use berth_tls::{Ca, Leaf, Usage};
use common::*;
use reqwest::Method;
use serde_json::json;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// A reqwest client verifying servers with the CA in `ca` only (and presenting `identity`).
fn client(ca: &Path, identity: Option<(&str, &str)>) -> reqwest::Client {
    let pem = std::fs::read(ca).expect("reading a CA file");
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).expect("CA"));
    if let Some((cert, key)) = identity {
        b = b.identity(reqwest::Identity::from_pem(format!("{cert}\n{key}").as_bytes()).unwrap());
    }
    b.build().expect("client")
}

fn leaf(name: &str, names: &[&str], usage: Usage) -> Leaf {
    Leaf {
        common_name: name.into(),
        names: names.iter().map(|s| s.to_string()).collect(),
        usage,
        valid_for: Duration::from_secs(86_400),
    }
}

/// The task's stdout, fetched through the server (which calls the agent).
async fn wait_logs_contain(c: &Cluster, task: &str, text: &str) {
    let path = format!("/api/v1/tasks/{task}/logs");
    let start = std::time::Instant::now();
    loop {
        let r = c.api.get(&path).await;
        if r.status == 200 && r.text.contains(text) {
            return;
        }
        if start.elapsed() > T {
            panic!(
                "logs of {task} never showed '{text}'; last answer: {} {}",
                r.status, r.text
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Deploys a one-instance exec app printing `text`; returns its task id.
async fn deploy_echo(c: &Cluster, app: &str, text: &str) -> String {
    let r = c
        .api
        .post(
            "/v2/apps",
            &cmd_app(app, &format!("echo {text}; sleep 3600"), 1),
        )
        .await;
    assert_eq!(r.status, 201, "POST /v2/apps: {}", r.text);
    let tasks = c.api.wait_running(app, 1, T).await;
    tasks[0]["id"].as_str().expect("task id").to_string()
}

fn berth_cli(c: &Cluster, ca: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BERTH)
        .args(["--server", &c.url()])
        .args(args)
        .env("BERTH_CA_CERT", ca)
        .env("BERTH_TOKEN", c.admin_token())
        .stdin(Stdio::null())
        .output()
        .expect("running berth")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_tls_cluster_end_to_end() {
    let mut c = Cluster::start_with_tls("tls-auto", Tls::Auto, true).await;
    let tls = c.path().join("server/tls");
    let ca = tls.join("ca.crt");

    // The CA and the keys on disk, readable by their owner only.
    for key in ["ca.key", "server.key", "agents-ca.key"] {
        assert_eq!(mode(&tls.join(key)), 0o600, "{key}");
    }
    let agent_key = c.path().join("agent/tls/agent.key");
    assert_eq!(mode(&agent_key), 0o600);

    // The node registered over HTTPS and serves its endpoint over HTTPS.
    let node = c.api.get_ok("/api/v1/nodes/n1").await;
    let agent_url = node["agentUrl"].as_str().expect("agentUrl").to_string();
    assert!(agent_url.starts_with("https://127.0.0.1:"), "{agent_url}");

    // An exec app runs; its logs come through the server, which calls the agent over TLS.
    let task = deploy_echo(&c, "/tls/echo", "hello-over-tls").await;
    wait_logs_contain(&c, &task, "hello-over-tls").await;

    // Plain HTTP to the TLS port is refused, saying what to do.
    let plain = Api::new(&format!("http://127.0.0.1:{}", c.port));
    let r = plain
        .try_raw(Method::GET, "/v2/apps", None)
        .await
        .expect("a plain-HTTP answer");
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.message().contains("https://"), "{}", r.text);

    // A client with another CA (or the system's roots) fails the handshake.
    let other = Ca::generate("Another CA").unwrap();
    let other_ca = c.path().join("other-ca.crt");
    std::fs::write(&other_ca, other.certificate_pem()).unwrap();
    for api in [Api::with_ca(&c.url(), &other_ca), Api::new(&c.url())] {
        let e = api
            .try_raw(Method::GET, "/ping", None)
            .await
            .expect_err("a server certificate from an unknown CA must be refused");
        let problem = berth_tls::client::certificate_problem(&e)
            .unwrap_or_else(|| panic!("not a certificate error: {e:?}"));
        assert!(problem.contains("UnknownIssuer"), "{problem}");
    }

    // The CLI verifies the server with --ca-cert / BERTH_CA_CERT; another CA is a clear error.
    let out = berth_cli(&c, &ca, &["node", "list", "-o", "json"]);
    assert!(
        out.status.success(),
        "berth node list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"n1\""));
    let out = berth_cli(&c, &other_ca, &["node", "list"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("TLS with") && err.contains("UnknownIssuer") && err.contains("--ca-cert"),
        "{err}"
    );

    // The agent's endpoint: anyone may ping it; logs need both the server's client
    // certificate (TLS) and the node's credential (bearer); /metrics takes the credential or
    // the scrape token without a certificate.
    let agents_ca = tls.join("agents-ca.crt");
    let credential = read_token(&c.path().join("agent/node.credential"));
    let logs = format!("{agent_url}/v1/tasks/{task}/logs");
    let anonymous = client(&agents_ca, None);
    let r = anonymous
        .get(format!("{agent_url}/ping"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let message = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap_or_default();
        (status, body["message"].as_str().unwrap_or("").to_string())
    };
    let (status, msg) = message(anonymous.get(&logs).send().await.unwrap()).await;
    assert_eq!(status, 401);
    assert!(msg.contains("client certificate"), "{msg}");
    // The node's secret alone does not do: no certificate, no logs.
    let r = anonymous
        .get(&logs)
        .bearer_auth(&credential)
        .send()
        .await
        .unwrap();
    let (status, msg) = message(r).await;
    assert_eq!(status, 401);
    assert!(msg.contains("client certificate"), "{msg}");
    let r = anonymous
        .get(format!("{agent_url}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401, "/metrics without the credential");
    let r = anonymous
        .get(format!("{agent_url}/metrics"))
        .bearer_auth(&credential)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "/metrics with the credential");
    // A certificate from the agents CA (as the server's) without the credential: refused by
    // the credential check; with both, the logs.
    let (agents, _) = Ca::load_or_create(&tls, "agents-ca", "unused").unwrap();
    let (cert, key) = agents
        .issue(&leaf("berth-server", &[], Usage::Client))
        .unwrap();
    let server_like = client(&agents_ca, Some((&cert, &key)));
    let r = server_like.get(&logs).send().await.unwrap();
    assert_eq!(
        r.status().as_u16(),
        401,
        "a certificate without the credential"
    );
    let r = server_like
        .get(&logs)
        .bearer_auth(&credential)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.text().await.unwrap().contains("hello-over-tls"));
    // A client certificate from another CA: the handshake fails.
    let (cert, key) = other.issue(&leaf("intruder", &[], Usage::Client)).unwrap();
    let intruder = client(&agents_ca, Some((&cert, &key)));
    assert!(
        intruder
            .get(&logs)
            .bearer_auth(&credential)
            .send()
            .await
            .is_err(),
        "a client certificate from another CA was accepted"
    );

    // A registration with a bad certificate request is refused before anything is stored.
    let node_body = |id: &str, csr: &str| {
        json!({
            "id": id, "hostname": id, "address": "127.0.0.1",
            "resources": {"cpus": 1, "mem": 1, "disk": 1},
            "portRanges": [], "drivers": [], "csr": csr,
        })
    };
    let joining =
        Api::with_token_and_ca(&c.url(), Some(&read_token(&c.join_token_file())), Some(&ca));
    let r = joining
        .post("/api/v1/agent/register", &node_body("n2", "junk"))
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(r.detail_paths(), ["/csr"], "{}", r.text);
    assert_eq!(c.api.get("/api/v1/nodes/n2").await.status, 404);
    // A good one gets a certificate for the node, from the agents CA.
    let key = berth_tls::ca::load_or_create_key(&c.path().join("n3.key")).unwrap();
    let csr = berth_tls::ca::certificate_request(&key, "n3").unwrap();
    let r = joining
        .post("/api/v1/agent/register", &node_body("n3", &csr))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let cert = r.json["certificate"].as_str().expect("certificate");
    assert_eq!(
        r.json["caCertificate"].as_str(),
        Some(std::fs::read_to_string(&agents_ca).unwrap().as_str())
    );
    let chain = berth_tls::pem::certs(cert.as_bytes(), "certificate").unwrap();
    let roots = berth_tls::pem::read_certs(&agents_ca).unwrap();
    berth_tls::verify_server_cert(
        &chain,
        &roots,
        &["127.0.0.1".into(), "n3".into()],
        std::time::SystemTime::now(),
    )
    .unwrap();
    // ... and never one the API's clients would trust.
    let api_roots = berth_tls::pem::read_certs(&ca).unwrap();
    assert!(
        berth_tls::verify_server_cert(
            &chain,
            &api_roots,
            &["127.0.0.1".into()],
            std::time::SystemTime::now()
        )
        .is_err()
    );

    // Restarts: the agent keeps its key, the server its CA and certificate; logs still flow.
    let keep = |p: &Path| std::fs::read_to_string(p).unwrap();
    let (agent_key_before, ca_before, server_cert_before) =
        (keep(&agent_key), keep(&ca), keep(&tls.join("server.crt")));
    c.kill_agent();
    c.start_agent().await;
    assert_eq!(
        keep(&agent_key),
        agent_key_before,
        "the agent made a new key"
    );
    c.kill_server();
    c.start_server().await;
    assert_eq!(keep(&ca), ca_before, "the server made a new CA");
    assert_eq!(keep(&tls.join("server.crt")), server_cert_before);
    c.wait_agent_reported().await;
    assert_eq!(c.api.running_ids("/tls/echo").await.len(), 1);
    wait_logs_contain(&c, &task, "hello-over-tls").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_trusting_another_ca_never_registers() {
    let c = Cluster::start_with_tls("tls-wrong-ca", Tls::Auto, false).await;
    let other = Ca::generate("Another CA").unwrap();
    let other_ca = c.path().join("other-ca.crt");
    std::fs::write(&other_ca, other.certificate_pem()).unwrap();
    let log = c.path().join("bad-agent.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut agent = Command::new(BERTH)
        .args(["agent", "--server", &c.url(), "--ca-cert"])
        .arg(&other_ca)
        .arg("--join-token-file")
        .arg(c.join_token_file())
        .arg("--data-dir")
        .arg(c.path().join("bad-agent"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--address",
            "127.0.0.1",
            "--node-id",
            "bad",
            "--drivers",
            "fake",
        ])
        .env("BERTH_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .expect("spawning berth agent");
    wait_until(T, "the agent to report the certificate error", || async {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("invalid peer certificate: UnknownIssuer")
    })
    .await;
    let nodes = c.api.get_ok("/api/v1/nodes").await;
    assert!(
        !node_list(&nodes).iter().any(|n| n["id"] == "bad"),
        "{nodes}"
    );
    let _ = agent.kill();
    let _ = agent.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_provided_certificates() {
    // The operator's CA and server certificate, made outside Berth.
    let files = tempfile::tempdir().unwrap();
    let op = Ca::generate("Operator CA").unwrap();
    let (cert, key) = op
        .issue(&leaf(
            "berth.example",
            &["127.0.0.1", "localhost"],
            Usage::Server,
        ))
        .unwrap();
    let (ca_path, cert_path, key_path) = (
        files.path().join("ca.pem"),
        files.path().join("server.pem"),
        files.path().join("server-key.pem"),
    );
    std::fs::write(&ca_path, op.certificate_pem()).unwrap();
    std::fs::write(&cert_path, &cert).unwrap();
    std::fs::write(&key_path, &key).unwrap();
    let c = Cluster::start_with_tls(
        "tls-files",
        Tls::Files {
            cert: cert_path,
            key: key_path,
            ca: ca_path.clone(),
        },
        true,
    )
    .await;
    // Served with the operator's certificate: no API CA of the server's own, but the agents
    // CA for the agents' endpoints.
    let tls = c.path().join("server/tls");
    assert!(!tls.join("ca.crt").exists());
    assert_eq!(mode(&tls.join("agents-ca.key")), 0o600);
    let node = c.api.get_ok("/api/v1/nodes/n1").await;
    assert!(
        node["agentUrl"]
            .as_str()
            .unwrap_or("")
            .starts_with("https://"),
        "{node}"
    );
    let task = deploy_echo(&c, "/tls/own", "own-certificates").await;
    wait_logs_contain(&c, &task, "own-certificates").await;
    let out = berth_cli(&c, &ca_path, &["app", "list", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("/tls/own"));
}
