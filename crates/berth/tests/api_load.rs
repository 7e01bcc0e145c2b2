//! Load without errors: 16 readers (`/v2/apps`, `/v2/apps/{id}`, `/v2/tasks`) and 2 writers
//! (scale changes, bulk PUTs) for 60 s (`BERTH_LOAD_SECS`) against one agent running ~200
//! apps of real processes. Every request must succeed; p50/p99 per route are printed (a
//! figure, not an assertion: speed is for benchmarks).

mod common;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

const APPS: usize = 200;
const READERS: usize = 16;

fn app(i: usize, instances: u32, tag: &str) -> Value {
    json!({
        "id": format!("/load/a{i:03}"),
        "cmd": format!("sleep 3600 # {tag}"),
        "instances": instances,
        "cpus": 0.01,
        "mem": 4,
        "portDefinitions": [],
        "taskKillGracePeriodSeconds": 1,
    })
}

#[derive(Default)]
struct Samples {
    /// Per route: latencies in ms.
    ms: BTreeMap<&'static str, Vec<f64>>,
    /// Per route: what went wrong, for the failure message.
    errors: BTreeMap<&'static str, Vec<String>>,
}

impl Samples {
    fn record(&mut self, route: &'static str, started: Instant, outcome: Result<u16, String>) {
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        self.ms.entry(route).or_default().push(ms);
        match outcome {
            Ok(s) if (200..300).contains(&s) => {}
            Ok(s) => self
                .errors
                .entry(route)
                .or_default()
                .push(format!("status {s}")),
            Err(e) => self.errors.entry(route).or_default().push(e),
        }
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn request(
    http: &reqwest::Client,
    base: &str,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<u16, String> {
    let mut req = http
        .request(method, format!("{base}{path}"))
        .timeout(Duration::from_secs(10));
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req.send().await.map_err(|e| format!("{path}: {e}"))?;
    let status = resp.status().as_u16();
    // Read the whole body: a reset mid-body is an error too.
    resp.bytes().await.map_err(|e| format!("{path}: {e}"))?;
    Ok(status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_and_writers_for_a_minute_without_an_error() {
    let secs: u64 = std::env::var("BERTH_LOAD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let c = Cluster::start("load").await;
    let api = &c.api;
    let all: Vec<Value> = (0..APPS).map(|i| app(i, 1, "v0")).collect();
    let r = api.put("/v2/apps", &Value::Array(all)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    api.wait_no_deployments(Duration::from_secs(180)).await;
    let running = api.get_ok("/v2/tasks").await["tasks"]
        .as_array()
        .map(Vec::len)
        .unwrap_or(0);
    assert_eq!(running, APPS, "one task per app before the load");

    // Every request carries the admin token, as a real client's would (auth is on).
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", c.admin_token())
            .parse()
            .expect("token header"),
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .default_headers(headers)
        .build()
        .expect("client");
    let base = c.url();
    let samples = Arc::new(Mutex::new(Samples::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for r in 0..READERS {
        let (http, base, samples, stop) =
            (http.clone(), base.clone(), samples.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut n = r;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let (route, path) = match n % 3 {
                    0 => ("GET /v2/apps", "/v2/apps".to_string()),
                    1 => (
                        "GET /v2/apps/{id}",
                        format!("/v2/apps/load/a{:03}", n * 7 % APPS),
                    ),
                    _ => ("GET /v2/tasks", "/v2/tasks".to_string()),
                };
                let t = Instant::now();
                let out = request(&http, &base, Method::GET, &path, None).await;
                samples.lock().await.record(route, t, out);
            }
        }));
    }
    // Writer 1: scale changes. Writer 2: bulk PUTs of 10 apps with a new command (restarts).
    for w in 0..2 {
        let (http, base, samples, stop) =
            (http.clone(), base.clone(), samples.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let t = Instant::now();
                if w == 0 {
                    let i = n * 13 % APPS;
                    let body = json!({"instances": 1 + (n / APPS) % 2});
                    let path = format!("/v2/apps/load/a{i:03}?force=true");
                    let out = request(&http, &base, Method::PUT, &path, Some(&body)).await;
                    samples.lock().await.record("PUT /v2/apps/{id}", t, out);
                } else {
                    let first = n * 10 % APPS;
                    let batch: Vec<Value> = (first..first + 10)
                        .map(|i| app(i % APPS, 1, &format!("v{n}")))
                        .collect();
                    let out = request(
                        &http,
                        &base,
                        Method::PUT,
                        "/v2/apps?force=true",
                        Some(&Value::Array(batch)),
                    )
                    .await;
                    samples.lock().await.record("PUT /v2/apps", t, out);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    let s = samples.lock().await;
    eprintln!("api load: {READERS} readers, 2 writers, {secs} s, {APPS} apps on one agent");
    for (route, ms) in &s.ms {
        let mut sorted = ms.clone();
        sorted.sort_by(f64::total_cmp);
        eprintln!(
            "  {route:<20} {:>7} req  p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms  errors {}",
            sorted.len(),
            pct(&sorted, 0.5),
            pct(&sorted, 0.99),
            sorted.last().copied().unwrap_or(0.0),
            s.errors.get(route).map_or(0, Vec::len)
        );
    }
    for route in [
        "GET /v2/apps",
        "GET /v2/apps/{id}",
        "GET /v2/tasks",
        "PUT /v2/apps",
    ] {
        assert!(
            s.ms.get(route).is_some_and(|m| m.len() > 10),
            "{route} was exercised"
        );
    }
    let errors: Vec<(&&str, &Vec<String>)> = s.errors.iter().collect();
    assert!(
        errors.is_empty(),
        "errors under load: {:?}",
        errors
            .iter()
            .map(|(r, e)| (r, e.len(), e.iter().take(3).collect::<Vec<_>>()))
            .collect::<Vec<_>>()
    );
    // The cluster is still whole: every app converges to what the writers left.
    api.wait_no_deployments(Duration::from_secs(180)).await;
    let apps = api.get_ok("/v2/apps").await;
    let list = apps["apps"].as_array().expect("apps");
    assert_eq!(list.len(), APPS);
    for a in list {
        assert_eq!(
            a["tasksRunning"], a["instances"],
            "{} runs what it asks for",
            a["id"]
        );
    }
    drop(s);
    let _ = api.raw(Method::GET, "/ping", None).await;
}
