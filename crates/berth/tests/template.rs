//! `berth template` driving a real nginx (Debian `nginx`) in front of real containers (busybox
//! httpd under the Docker driver): requests through nginx reach every healthy instance, the
//! upstream follows scaling and health, nothing is written or reloaded when the output does
//! not change, and a broken template or a config nginx refuses leaves nginx and its file as
//! they were.
//!
//! Needs Docker (`BERTH_REQUIRE_DOCKER=1`: fail instead of skipping) and nginx.

mod common;

use common::{Cluster, cmd_app, free_port, wait_for, wait_until};
use serde_json::json;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const IMAGE: &str = "berth-test/busybox:latest";
const T: Duration = Duration::from_secs(120);
const APP: &str = "/tpl/web";

fn required() -> bool {
    std::env::var("BERTH_REQUIRE_DOCKER").is_ok_and(|v| v == "1")
}

fn ok(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Docker with the test image, and nginx: there, or (without BERTH_REQUIRE_DOCKER) a skip.
fn prerequisites(test: &str) -> bool {
    if !ok("docker", &["info"]) {
        assert!(
            !required(),
            "BERTH_REQUIRE_DOCKER=1 but `docker info` fails"
        );
        eprintln!("SKIPPED {test}: no Docker Engine");
        return false;
    }
    if !ok("docker", &["image", "inspect", IMAGE]) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/test-image.sh");
        let _ = Command::new("bash").arg(script).status();
    }
    if !ok("docker", &["image", "inspect", IMAGE]) {
        assert!(
            !required(),
            "BERTH_REQUIRE_DOCKER=1 but the image {IMAGE} is missing"
        );
        eprintln!("SKIPPED {test}: no {IMAGE}");
        return false;
    }
    if !ok("nginx", &["-v"]) {
        assert!(!required(), "nginx is missing: scripts/test.sh installs it");
        eprintln!("SKIPPED {test}: no nginx");
        return false;
    }
    true
}

/// An nginx of the test's own (its prefix, pid file and port), stopped on drop.
struct Nginx {
    dir: PathBuf,
    conf: PathBuf,
    port: u16,
}

impl Nginx {
    fn args(&self) -> String {
        format!("-c {} -p {}", self.conf.display(), self.dir.display())
    }

    fn new(dir: &Path) -> Nginx {
        let port = free_port();
        let conf = dir.join("nginx.conf");
        let d = dir.display();
        std::fs::create_dir_all(dir.join("logs")).expect("nginx logs dir");
        std::fs::write(
            &conf,
            format!(
                "user root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {d}/tmp-body;\n  proxy_temp_path {d}/tmp-proxy;\n\
                 fastcgi_temp_path {d}/tmp-fcgi;\n  uwsgi_temp_path {d}/tmp-uwsgi;\n  scgi_temp_path {d}/tmp-scgi;\n\
                 include {d}/upstreams.conf;\n\
                 server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://web; }} }}\n}}\n"
            ),
        )
        .expect("nginx.conf");
        Nginx {
            dir: dir.to_path_buf(),
            conf,
            port,
        }
    }

    fn start(&self) {
        let out = Command::new("nginx")
            .args(["-c"])
            .arg(&self.conf)
            .arg("-p")
            .arg(&self.dir)
            .output()
            .expect("starting nginx");
        assert!(
            out.status.success(),
            "nginx: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn pid(&self) -> String {
        std::fs::read_to_string(self.dir.join("nginx.pid"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("nginx")
            .args(["-s", "stop", "-c"])
            .arg(&self.conf)
            .arg("-p")
            .arg(&self.dir)
            .output();
    }
}

/// The distinct bodies (task ids) 30 requests through nginx get.
async fn served(port: u16) -> BTreeSet<String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .expect("client");
    let mut seen = BTreeSet::new();
    for _ in 0..30 {
        if let Ok(r) = http.get(format!("http://127.0.0.1:{port}/")).send().await
            && r.status().is_success()
            && let Ok(body) = r.text().await
        {
            seen.insert(body.trim().to_string());
        }
    }
    seen
}

async fn healthy_ids(c: &Cluster) -> BTreeSet<String> {
    ids_of(&c.api.get("/api/v1/services/web-tpl").await.json)
}

/// The healthy instance ids of a `/api/v1/services/{name}` answer.
fn ids_of(body: &serde_json::Value) -> BTreeSet<String> {
    body["service"]["instances"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|i| i["healthy"] == json!(true))
                .filter_map(|i| i["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn berth_template(c: &Cluster, args: &[&str]) -> Command {
    let mut cmd = c.client_command();
    cmd.arg("template").args(args);
    cmd
}

fn reloads(counter: &Path) -> usize {
    std::fs::read_to_string(counter)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// Kills the template daemon and the agent, and (with `containers`) removes the Docker
/// app's containers.
struct Guard {
    children: Vec<Child>,
    containers: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !self.containers {
            return;
        }
        let out = Command::new("docker")
            .args(["ps", "-aq", "--filter", "name=berth-tpl_web"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        for id in out.split_whitespace() {
            let _ = Command::new("docker").args(["rm", "-f", id]).output();
        }
    }
}

const UPSTREAM: &str = "upstream web {\n\
{% for i in service('web-tpl') %}  server {{ i.address }}:{{ i.port }};\n\
{% else %}  server 127.0.0.1:1 down;\n\
{% endfor %}}\n";

/// Waits until the service has exactly `n` healthy instances; returns their ids.
async fn wait_healthy(c: &Cluster, n: usize) -> BTreeSet<String> {
    wait_for(T, &format!("{n} healthy instances"), || async {
        let ids = healthy_ids(c).await;
        (ids.len() == n).then_some(ids)
    })
    .await
}

/// Renders [`UPSTREAM`] once with `berth template --once` and starts an nginx on it;
/// returns nginx, the rendered file and the `--template` spec.
fn nginx_on_upstreams(c: &Cluster) -> (Nginx, PathBuf, String) {
    let dir = c.path().join("nginx");
    std::fs::create_dir_all(&dir).expect("nginx dir");
    let nginx = Nginx::new(&dir);
    let dest = dir.join("upstreams.conf");
    let src = dir.join("upstreams.conf.j2");
    std::fs::write(&src, UPSTREAM).expect("template");
    let spec = format!("{}:{}", src.display(), dest.display());
    let out = berth_template(c, &["--once", "--template", &spec])
        .output()
        .expect("berth template");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    nginx.start();
    (nginx, dest, spec)
}

#[tokio::test(flavor = "multi_thread")]
async fn nginx_follows_the_catalog_through_berth_template() {
    if !prerequisites("nginx_follows_the_catalog_through_berth_template") {
        return;
    }
    let mut c = Cluster::prepare("template", &[]);
    c.start_server().await;
    let log = std::fs::File::create(c.agent_log()).expect("agent log");
    let agent = c
        .agent_command("n1", "agent")
        .args([
            "--cpus",
            "8",
            "--mem",
            "8192",
            "--disk",
            "10000",
            "--drivers",
            "docker,exec",
            "--ports",
        ])
        .arg(c.agent_ports())
        .stdout(log.try_clone().expect("log fd"))
        .stderr(log)
        .spawn()
        .expect("spawning berth agent");
    let mut guard = Guard {
        children: vec![agent],
        containers: true,
    };
    c.wait_node_ready().await;

    let app = json!({
        "id": APP,
        // Each httpd serves its task id; /ok is its health check, removed to make it sick.
        "cmd": "mkdir -p /www && echo $MESOS_TASK_ID > /www/index.html && echo ok > /www/ok && exec httpd -f -p 8080 -h /www",
        "cpus": 0.1, "mem": 32, "instances": 3, "taskKillGracePeriodSeconds": 1,
        "container": {"type": "DOCKER", "docker": {"image": IMAGE},
            "portMappings": [{"containerPort": 8080, "hostPort": 0, "name": "http"}]},
        "networks": [{"mode": "container/bridge"}],
        "healthChecks": [{"protocol": "HTTP", "path": "/ok", "portIndex": 0, "intervalSeconds": 1,
            "gracePeriodSeconds": 10, "timeoutSeconds": 2, "maxConsecutiveFailures": 0}],
    });
    let r = c.api.post("/v2/apps", &app).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let three = wait_healthy(&c, 3).await;

    // --once renders the file; nginx starts on it and reaches all 3.
    let (nginx, dest, spec) = nginx_on_upstreams(&c);
    let dir = c.path().join("nginx");
    let text = std::fs::read_to_string(&dest).expect("rendered");
    assert_eq!(text.matches("server 127.0.0.1:").count(), 3, "{text}");
    wait_until(T, "nginx reaches the 3 instances", || async {
        served(nginx.port).await == three
    })
    .await;

    // The daemon: the first render equals the file, so nothing is written or reloaded.
    let counter = dir.join("reloads");
    let reload = format!(
        "nginx -s reload {} && echo reloaded >> {}",
        nginx.args(),
        counter.display()
    );
    let check = format!("nginx -t -q {}", nginx.args());
    let daemon = berth_template(
        &c,
        &[
            "--template",
            &spec,
            "--check",
            &check,
            "--reload",
            &reload,
            "--wait",
            "20ms:500ms",
        ],
    )
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(dir.join("template.log")).expect("log"))
    .spawn()
    .expect("berth template daemon");
    guard.children.push(daemon);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(reloads(&counter), 0, "nothing changed, nothing reloaded");

    // Scale to 5: nginx is reloaded and reaches 5.
    let r = c
        .api
        .put(&format!("/v2/apps{APP}"), &json!({"instances": 5}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let five = wait_healthy(&c, 5).await;
    wait_until(T, "nginx reaches the 5 instances", || async {
        served(nginx.port).await == five
    })
    .await;
    assert!(reloads(&counter) >= 1);

    // One instance fails its check: it leaves the upstream.
    let sick = five.iter().next().expect("an instance").clone();
    let rm = Command::new("docker")
        .args(["exec", &format!("berth-{sick}"), "rm", "/www/ok"])
        .output()
        .expect("docker exec");
    assert!(
        rm.status.success(),
        "{}",
        String::from_utf8_lossy(&rm.stderr)
    );
    let four: BTreeSet<String> = five.iter().filter(|i| **i != sick).cloned().collect();
    wait_until(T, "the sick instance leaves nginx's upstream", || async {
        served(nginx.port).await == four
    })
    .await;

    // A change the template does not read (another app) renders nothing new: no reload.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = reloads(&counter);
    let r = c
        .api
        .post("/v2/apps", &cmd_app("/tpl/other", "exec sleep 3600", 1))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    c.api.wait_running("/tpl/other", 1, T).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        reloads(&counter),
        before,
        "no reload without a change in the output"
    );

    // A broken template, and a config nginx refuses: the file and nginx stay as they were.
    let good = std::fs::read(&dest).expect("current file");
    let nginx_pid = nginx.pid();
    // `berth template --once` of `text` onto the live file must fail; returns its stderr.
    let once_fails = |name: &str, text: &str| {
        let src = dir.join(name);
        std::fs::write(&src, text).expect("template");
        let spec = format!("{}:{}", src.display(), dest.display());
        let out = berth_template(
            &c,
            &[
                "--once",
                "--template",
                &spec,
                "--check",
                &check,
                "--reload",
                &reload,
            ],
        )
        .output()
        .expect("berth template");
        assert!(!out.status.success(), "{name} must fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = once_fails(
        "broken.j2",
        "upstream web {\n{% for i in service('web-tpl') %}\n",
    );
    assert!(stderr.contains("broken.j2"), "{stderr}");
    let stderr = once_fails(
        "refused.j2",
        "upstream web {\n{% for i in service('web-tpl') %}  server {{ i.address }}:{{ i.port }} no_such_param;\n{% endfor %}}\n",
    );
    assert!(stderr.contains("check refused"), "{stderr}");
    assert_eq!(
        std::fs::read(&dest).expect("file"),
        good,
        "the file is untouched"
    );
    assert_eq!(nginx.pid(), nginx_pid, "nginx still runs");
    assert_eq!(served(nginx.port).await, four, "and serves as before");
    drop(guard);
}

/// `bench/discovery.sh`: from the catalog showing a health change to nginx serving the new
/// upstream set, over 50 changes (p50, p99). Not a test: run with `--ignored`.
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn bench_propagation_to_nginx() {
    if !prerequisites("bench_propagation_to_nginx") {
        return;
    }
    let rounds: usize = std::env::var("BERTH_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let mut c = Cluster::prepare("template-bench", &[]);
    c.start_server().await;
    c.start_agent().await;
    let mut app = cmd_app(
        "/tpl/web",
        "echo $MESOS_TASK_ID > index.html && touch ok && exec busybox httpd -f -p $PORT0 -h .",
        3,
    );
    app["portDefinitions"] = json!([{"port": 0, "name": "http"}]);
    app["healthChecks"] = json!([{"protocol": "COMMAND", "command": {"value": "test -f ok"},
        "gracePeriodSeconds": 10, "intervalSeconds": 1, "maxConsecutiveFailures": 0}]);
    let r = c.api.post("/v2/apps", &app).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let three = wait_healthy(&c, 3).await;
    let (nginx, _dest, spec) = nginx_on_upstreams(&c);
    let reload = format!("nginx -s reload {}", nginx.args());
    let daemon = berth_template(
        &c,
        &[
            "--template",
            &spec,
            "--reload",
            &reload,
            "--wait",
            "0ms:100ms",
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("daemon");
    let _guard = Guard {
        children: vec![daemon],
        containers: false,
    };
    wait_until(T, "nginx serves 3", || async {
        served(nginx.port).await == three
    })
    .await;
    let victim = three.iter().next().expect("one").clone();
    let ok_file = c
        .path()
        .join("agent/exec/tasks")
        .join(&victim)
        .join("sandbox/ok");
    let two: BTreeSet<String> = three.iter().filter(|i| **i != victim).cloned().collect();
    let http = reqwest::Client::new();
    let mut times = Vec::new();
    let mut index = c.api.get("/api/v1/services/web-tpl").await.json["index"]
        .as_u64()
        .unwrap_or(0);
    for round in 0..rounds {
        let healthy = round % 2 == 1;
        if healthy {
            std::fs::write(&ok_file, b"").expect("touch");
        } else {
            std::fs::remove_file(&ok_file).expect("rm");
        }
        let want = if healthy { &three } else { &two };
        // t0: the catalog shows the change, seen through a blocking query (it answers
        // within a millisecond or so of the change, unlike a poll).
        loop {
            let r = c
                .api
                .get(&format!("/api/v1/services/web-tpl?index={index}&wait=10s"))
                .await;
            index = r.json["index"].as_u64().unwrap_or(0);
            if ids_of(&r.json) == *want {
                break;
            }
        }
        let t0 = Instant::now();
        // t1: nginx routes to exactly the new set (every request in a row of 12 agrees).
        loop {
            let mut seen = BTreeSet::new();
            for _ in 0..12 {
                if let Ok(r) = http
                    .get(format!("http://127.0.0.1:{}/", nginx.port))
                    .send()
                    .await
                    && let Ok(b) = r.text().await
                {
                    seen.insert(b.trim().to_string());
                }
            }
            if seen == *want {
                break;
            }
            assert!(t0.elapsed() < T, "nginx never served {want:?}");
        }
        times.push(t0.elapsed());
    }
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1];
    println!(
        "propagation catalog -> nginx over {} changes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        times.len(),
        pct(0.50).as_secs_f64() * 1000.0,
        pct(0.99).as_secs_f64() * 1000.0,
        times
            .last()
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    );
}

/// A reload that fails is retried with backoff (the new file stays) until it succeeds, and
/// a burst of changes is rendered as one.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_reload_is_retried_until_it_succeeds() {
    let c = Cluster::start("template-retry").await;
    let r = c
        .api
        .post("/v2/apps", &cmd_app("/tpl/retry", "exec sleep 3600", 1))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    c.api.wait_running("/tpl/retry", 1, T).await;
    let dir = c.path().join("retry");
    std::fs::create_dir_all(&dir).expect("dir");
    let (src, dest, flag, counter) = (
        dir.join("t.j2"),
        dir.join("out.txt"),
        dir.join("reload-works"),
        dir.join("reloads"),
    );
    std::fs::write(
        &src,
        "{% for i in service('retry-tpl') %}{{ i.id }}\n{% endfor %}",
    )
    .expect("template");
    let reload = format!(
        "test -f {} && echo reloaded >> {}",
        flag.display(),
        counter.display()
    );
    let log = dir.join("template.log");
    let daemon = berth_template(
        &c,
        &[
            "--template",
            &format!("{}:{}", src.display(), dest.display()),
            "--reload",
            &reload,
            "--wait",
            "300ms:2s",
        ],
    )
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&log).expect("log"))
    .spawn()
    .expect("berth template");
    let _guard = Guard {
        children: vec![daemon],
        containers: false,
    };
    wait_until(T, "the file is rendered", || async {
        std::fs::read_to_string(&dest).is_ok_and(|s| s.lines().count() == 1)
    })
    .await;
    // Scale 1 -> 3 in quick steps: one burst.
    for n in [2, 3] {
        let r = c
            .api
            .put("/v2/apps/tpl/retry?force=true", &json!({"instances": n}))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    wait_until(T, "3 instances in the file", || async {
        std::fs::read_to_string(&dest).is_ok_and(|s| s.lines().count() == 3)
    })
    .await;
    // The reload fails (no flag): retried, never counted.
    wait_until(T, "a retry is logged", || async {
        std::fs::read_to_string(&log).is_ok_and(|s| s.matches("retrying in").count() >= 2)
    })
    .await;
    assert_eq!(reloads(&counter), 0);
    std::fs::write(&flag, b"").expect("flag");
    wait_until(T, "the retried reload succeeds", || async {
        reloads(&counter) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(reloads(&counter), 1, "once it worked it is not run again");
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("wrote"), "{text}");
}
