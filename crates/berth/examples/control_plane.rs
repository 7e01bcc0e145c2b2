//! Whole-control-plane benchmark: `berth server` + `berth sim` as separate processes, then
//! N apps x M instances (fake driver) posted through the API, timed until every task is
//! TASK_RUNNING, then API latency under that load. Run through `bench/control_plane.sh`.
//!
//! `control_plane [--quick] [--nodes N] [--apps A] [--instances I] [--clients C]
//!  [--seconds S] [--timeout S] [--stall S] [--mem MB] [--constraint FIELD:OP[:VALUE]]...
//!  [--no-driver-label] [--berth PATH]`
//!
//! When not every task runs within `--timeout` seconds (or none more starts for `--stall`
//! seconds), it says how many run and why the rest wait (the
//! queue's reasons) and exits with status 1.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

struct Opts {
    nodes: usize,
    apps: usize,
    instances: usize,
    clients: usize,
    seconds: u64,
    berth: std::path::PathBuf,
    timeout: u64,
    stall: u64,
    mem: f64,
    /// Marathon's form: `["hostname", "MAX_PER", "5"]`.
    constraints: Vec<Vec<String>>,
    /// Post apps as a new user would, without `BERTH_DRIVER=fake` (they ask for `exec`).
    driver_label: bool,
    /// `embedded` (redb in the data dir) or `etcd` (one etcd member the bench starts).
    store: String,
}

fn opts() -> Res<Opts> {
    let mut o = Opts {
        nodes: 5000,
        apps: 1000,
        instances: 100,
        clients: 16,
        seconds: 10,
        berth: std::env::current_exe()?
            .parent()
            .and_then(|p| p.parent())
            .ok_or("cannot locate the target dir")?
            .join("berth"),
        timeout: 600,
        stall: 60,
        mem: 1.0,
        constraints: Vec::new(),
        driver_label: true,
        store: "embedded".into(),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let val = |i: usize| -> Res<&String> {
            args.get(i + 1)
                .ok_or_else(|| format!("{} needs a value", args[i]).into())
        };
        match args[i].as_str() {
            "--quick" => {
                o.nodes = 200;
                o.apps = 20;
                o.instances = 100;
                o.seconds = 3;
                i += 1;
                continue;
            }
            "--no-driver-label" => {
                o.driver_label = false;
                i += 1;
                continue;
            }
            "--nodes" => o.nodes = val(i)?.parse()?,
            "--apps" => o.apps = val(i)?.parse()?,
            "--instances" => o.instances = val(i)?.parse()?,
            "--clients" => o.clients = val(i)?.parse()?,
            "--seconds" => o.seconds = val(i)?.parse()?,
            "--timeout" => o.timeout = val(i)?.parse()?,
            "--stall" => o.stall = val(i)?.parse()?,
            "--mem" => o.mem = val(i)?.parse()?,
            "--constraint" => {
                let c: Vec<String> = val(i)?.split(':').map(str::to_string).collect();
                if !(2..=3).contains(&c.len()) {
                    return Err(
                        format!("--constraint {}: expected FIELD:OP[:VALUE]", c.join(":")).into(),
                    );
                }
                o.constraints.push(c);
            }
            "--berth" => o.berth = val(i)?.into(),
            "--store" => {
                o.store = val(i)?.clone();
                if o.store != "embedded" && o.store != "etcd" {
                    return Err(format!("--store {}: embedded or etcd", o.store).into());
                }
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
        i += 2;
    }
    Ok(o)
}

/// Kills the child processes when the benchmark ends, however it ends.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn rss_mb(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// User + system CPU seconds of a process.
fn cpu_secs(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields after the command: state is 0, utime is 11, stime is 12.
    (t(11) + t(12)) / 100.0
}

async fn metrics(http: &reqwest::Client, base: &str) -> Res<serde_json::Value> {
    Ok(http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .json()
        .await?)
}

async fn gauge(http: &reqwest::Client, base: &str, name: &str) -> Res<u64> {
    Ok(metrics(http, base).await?["gauges"][name]["value"]
        .as_u64()
        .unwrap_or(0))
}

async fn counter(http: &reqwest::Client, base: &str, name: &str) -> Res<u64> {
    Ok(metrics(http, base).await?["counters"][name]["count"]
        .as_u64()
        .unwrap_or(0))
}

fn app_body(i: usize, o: &Opts) -> serde_json::Value {
    let mut app = serde_json::json!({
        "id": format!("/bench/app-{i:04}"),
        "cmd": "sleep 1",
        "cpus": 0.01,
        "mem": o.mem,
        "instances": o.instances,
        "constraints": o.constraints,
    });
    if o.driver_label {
        app["labels"] = serde_json::json!({"BERTH_DRIVER": "fake"});
    }
    app
}

/// Sum of `tasksRunning` over `GET /v2/apps` (what a user adds up).
async fn apps_running(http: &reqwest::Client, base: &str) -> Res<u64> {
    let v: serde_json::Value = http
        .get(format!("{base}/v2/apps"))
        .send()
        .await?
        .json()
        .await?;
    Ok(v["apps"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x["tasksRunning"].as_u64()).sum())
        .unwrap_or(0))
}

/// Why instances wait, from `GET /v2/queue`: (reason, apps, instances), most instances first.
async fn queue_reasons(http: &reqwest::Client, base: &str) -> Res<Vec<(String, usize, u64)>> {
    let v: serde_json::Value = http
        .get(format!("{base}/v2/queue"))
        .send()
        .await?
        .json()
        .await?;
    let mut by: std::collections::BTreeMap<String, (usize, u64)> = Default::default();
    for q in v["queue"].as_array().into_iter().flatten() {
        let left = q["delay"]["timeLeftSeconds"].as_f64().unwrap_or(0.0);
        let reason = match q["processedOffersSummary"]["reason"].as_str() {
            Some(r) => r.to_string(),
            None if left > 0.0 => "launch back-off".to_string(),
            None => "waiting (no placement attempt reported yet)".to_string(),
        };
        let e = by.entry(reason).or_default();
        e.0 += 1;
        e.1 += q["count"].as_u64().unwrap_or(0);
    }
    let mut out: Vec<(String, usize, u64)> = by.into_iter().map(|(r, (a, n))| (r, a, n)).collect();
    out.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    Ok(out)
}

/// Not every task runs: says how many do and why the others wait; the error to return from
/// `main` (which then exits with status 1, once `Procs` has stopped the server and the sim).
async fn not_running(
    http: &reqwest::Client,
    base: &str,
    why: String,
    total: usize,
) -> Box<dyn std::error::Error + Send + Sync> {
    let running = apps_running(http, base).await;
    let queue = queue_reasons(http, base).await;
    eprintln!();
    eprintln!("FAILED: {why}");
    match running {
        Ok(r) => eprintln!("  sum of tasksRunning over GET /v2/apps: {r} of {total}"),
        Err(e) => eprintln!("  GET /v2/apps failed: {e}"),
    }
    match queue {
        Ok(q) if q.is_empty() => eprintln!("  GET /v2/queue: empty"),
        Ok(q) => {
            eprintln!("  GET /v2/queue, why instances wait:");
            for (reason, apps, n) in q.iter().take(10) {
                eprintln!("    {n} instances of {apps} apps: {reason}");
            }
            if q.len() > 10 {
                eprintln!("    ... and {} more reasons", q.len() - 10);
            }
        }
        Err(e) => eprintln!("  GET /v2/queue failed: {e}"),
    }
    eprintln!("  (no time is reported: the rollout did not complete)");
    format!("FAILED: {why}").into()
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Lat {
    p50: f64,
    p99: f64,
    max: f64,
    n: usize,
    errors: usize,
}

/// `clients` concurrent loops GETting `path(i)` for `secs`; latencies in ms.
async fn load(
    http: &reqwest::Client,
    base: &str,
    clients: usize,
    secs: u64,
    path: Arc<dyn Fn(usize) -> String + Send + Sync>,
) -> Lat {
    let until = Instant::now() + Duration::from_secs(secs);
    let counter = Arc::new(AtomicUsize::new(0));
    let mut joins = Vec::new();
    for _ in 0..clients {
        let http = http.clone();
        let base = base.to_string();
        let path = path.clone();
        let counter = counter.clone();
        joins.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            while Instant::now() < until {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                let ok = match http.get(format!("{base}{}", path(i))).send().await {
                    Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                    _ => false,
                };
                if ok {
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                } else {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for j in joins {
        if let Ok((l, e)) = j.await {
            all.extend(l);
            errors += e;
        }
    }
    all.sort_by(|a, b| a.total_cmp(b));
    Lat {
        p50: pct(&all, 0.50),
        p99: pct(&all, 0.99),
        max: all.last().copied().unwrap_or(f64::NAN),
        n: all.len(),
        errors,
    }
}

#[tokio::main]
async fn main() -> Res<()> {
    let o = opts()?;
    if !o.berth.exists() {
        return Err(format!("{} not found (build it first)", o.berth.display()).into());
    }
    let total = o.apps * o.instances;
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let quiet = |c: &mut Command| {
        c.stdout(Stdio::null()).stderr(Stdio::inherit());
    };
    // The etcd member lives as long as `_etcd` (killed on drop).
    let _etcd = if o.store == "etcd" {
        Some(
            berth_store::testkit::EtcdProcess::start("control_plane")
                .await
                .ok_or("--store etcd needs etcd (apt install etcd-server)")?,
        )
    } else {
        None
    };
    let mut server = Command::new(&o.berth);
    server
        .args(["server", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.path().join("server"));
    if let Some(etcd) = &_etcd {
        server.args(["--store", &etcd.store_flag()]);
    }
    server.env(
        "BERTH_LOG",
        std::env::var("BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
    );
    quiet(&mut server);
    let mut procs = Procs(vec![server.spawn()?]);
    let server_pid = procs.0[0].id();
    // Authentication is on: the first start writes the admin and join tokens.
    let admin_token = dir.path().join("server").join("admin.token");
    let t = Instant::now();
    while !admin_token.exists() {
        if t.elapsed() > Duration::from_secs(30) {
            return Err("the server did not come up (no admin.token)".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token = std::fs::read_to_string(&admin_token)?.trim().to_string();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))?,
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .default_headers(headers)
        .build()?;
    // /v2/info answers once the server leads (on etcd it first follows).
    loop {
        match http.get(format!("{base}/v2/info")).send().await {
            Ok(r) if r.status().is_success() => break,
            _ if t.elapsed() > Duration::from_secs(30) => {
                return Err("the server did not come up".into());
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }

    let mut sim = Command::new(&o.berth);
    sim.args(["sim", "--server", &base, "--nodes", &o.nodes.to_string()])
        .arg("--join-token-file")
        .arg(dir.path().join("server").join("join.token"))
        .args([
            "--attributes",
            "rack=r1..r40",
            "--cpus",
            "32",
            "--mem",
            "128000",
        ]);
    quiet(&mut sim);
    procs.0.push(sim.spawn()?);
    let sim_pid = procs.0[1].id();
    let t_reg = Instant::now();
    loop {
        let ready = gauge(&http, &base, "berth.nodes.ready").await.unwrap_or(0);
        if ready as usize >= o.nodes {
            break;
        }
        if t_reg.elapsed() > Duration::from_secs(o.timeout) {
            return Err(format!("only {ready} of {} nodes registered", o.nodes).into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reg_secs = t_reg.elapsed().as_secs_f64();
    eprintln!("{} nodes registered in {reg_secs:.1} s", o.nodes);
    let server_cpu0 = cpu_secs(server_pid);
    let sim_cpu0 = cpu_secs(sim_pid);

    // Post every app, 32 requests in flight.
    let bodies: Arc<Vec<serde_json::Value>> =
        Arc::new((0..o.apps).map(|i| app_body(i, &o)).collect());
    let t0 = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut posters = Vec::new();
    for _ in 0..32 {
        let http = http.clone();
        let base = base.clone();
        let next = next.clone();
        let bodies = bodies.clone();
        posters.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= bodies.len() {
                    return Ok::<(), String>(());
                }
                let r = http
                    .post(format!("{base}/v2/apps"))
                    .json(&bodies[i])
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if !r.status().is_success() {
                    let s = r.status();
                    return Err(format!(
                        "POST app {i}: {s}: {}",
                        r.text().await.unwrap_or_default()
                    ));
                }
            }
        }));
    }
    for p in posters {
        p.await??;
    }
    let post_secs = t0.elapsed().as_secs_f64();
    eprintln!("{} apps posted in {post_secs:.2} s", o.apps);
    let mut last_print = Instant::now();
    // The last time the running count grew.
    let (mut best, mut progressed) = (0u64, Instant::now());
    let running_secs = loop {
        let running = gauge(&http, &base, "berth.tasks.TASK_RUNNING")
            .await
            .unwrap_or(0);
        if running as usize >= total {
            break t0.elapsed().as_secs_f64();
        }
        if running > best {
            (best, progressed) = (running, Instant::now());
        }
        if last_print.elapsed() > Duration::from_secs(2) {
            eprintln!(
                "  {:>6.1} s: {running} of {total} running (server rss {:.0} MB)",
                t0.elapsed().as_secs_f64(),
                rss_mb(server_pid)
            );
            last_print = Instant::now();
        }
        if t0.elapsed() > Duration::from_secs(o.timeout) {
            let why = format!(
                "only {running} of {total} tasks TASK_RUNNING {} s after the first POST (--timeout)",
                o.timeout
            );
            return Err(not_running(&http, &base, why, total).await);
        }
        if progressed.elapsed() > Duration::from_secs(o.stall) {
            let why = format!(
                "{running} of {total} tasks TASK_RUNNING, and none more for {} s (--stall)",
                o.stall
            );
            return Err(not_running(&http, &base, why, total).await);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The gauge counts tasks by state; check the apps' own counts add up too.
    let per_app = apps_running(&http, &base).await?;
    if per_app < total as u64 {
        let why = format!(
            "the TASK_RUNNING gauge reached {total}, but tasksRunning over GET /v2/apps adds up to {per_app}"
        );
        return Err(not_running(&http, &base, why, total).await);
    }
    let server_cpu = cpu_secs(server_pid) - server_cpu0;
    let sim_cpu = cpu_secs(sim_pid) - sim_cpu0;
    let server_rss = rss_mb(server_pid);
    let sim_rss = rss_mb(sim_pid);
    eprintln!("all {total} tasks running after {running_secs:.2} s; measuring API latency");
    let revisions0 = counter(&http, &base, "berth.state_revisions").await?;

    let list = load(
        &http,
        &base,
        o.clients,
        o.seconds,
        Arc::new(|_| "/v2/apps".to_string()),
    )
    .await;
    let apps = o.apps;
    let one = load(
        &http,
        &base,
        o.clients,
        o.seconds,
        Arc::new(move |i| format!("/v2/apps/bench/app-{:04}", (i * 7919) % apps)),
    )
    .await;
    let server_rss_after = rss_mb(server_pid);
    let revisions = counter(&http, &base, "berth.state_revisions").await? - revisions0;

    let rate = total as f64 / running_secs;
    println!();
    println!(
        "Berth control plane: {} simulated nodes, {} apps x {} instances = {total} tasks (fake driver), 2 cores",
        o.nodes, o.apps, o.instances
    );
    let cons: Vec<String> = o.constraints.iter().map(|c| c.join(":")).collect();
    println!(
        "apps: cpus 0.01, mem {}, constraints [{}], {}",
        o.mem,
        cons.join(", "),
        if o.driver_label {
            "label BERTH_DRIVER=fake"
        } else {
            "no driver label (exec, simulated)"
        }
    );
    println!("store: {}", o.store);
    println!("| metric | Berth | target | anchor |");
    println!("|---|---|---|---|");
    println!(
        "| {} nodes registered | {reg_secs:.1} s | | Kubemark ~10 hollow nodes/core |",
        o.nodes
    );
    println!(
        "| {total} tasks: POST -> all TASK_RUNNING | {running_secs:.1} s ({rate:.0} tasks/s) | <= 30 s for 100k | Nomad C1M 3,750/s; C2M ~1,500/s; Marathon 14.2 s for 500 instances |"
    );
    println!(
        "| {} app POSTs (32 in flight) | {post_secs:.2} s | | |",
        o.apps
    );
    println!(
        "| server CPU during rollout | {server_cpu:.1} s ({:.0}% of one core) | | |",
        100.0 * server_cpu / running_secs
    );
    println!("| sim CPU during rollout | {sim_cpu:.1} s | | Kubemark 0.09 CPU per hollow node |");
    println!(
        "| server RSS at {total} tasks | {server_rss:.0} MB ({server_rss_after:.0} MB after API load) | | Kubemark 220 MB per hollow node |"
    );
    println!(
        "| sim RSS ({} agents) | {sim_rss:.0} MB ({:.1} KB/node) | | |",
        o.nodes,
        sim_rss * 1024.0 / o.nodes as f64
    );
    println!(
        "| GET /v2/apps ({} apps), {} clients | p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} req, {} err) | p99 <= 50 ms | Marathon: 12 s at 1,000 tasks |",
        o.apps, o.clients, list.p50, list.p99, list.max, list.n, list.errors
    );
    println!(
        "| GET /v2/apps/{{id}}, {} clients | p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms ({} req, {} err) | p99 <= 5 ms | |",
        o.clients, one.p50, one.p99, one.max, one.n, one.errors
    );
    println!(
        "| state changes during the API load | {revisions} | | (each one invalidates the cached /v2/apps) |"
    );
    let on_disk = if o.store == "etcd" {
        let cluster: serde_json::Value = http
            .get(format!("{base}/api/v1/cluster"))
            .send()
            .await?
            .json()
            .await?;
        cluster["etcd"]["members"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|x| x["dbSizeBytes"].as_u64())
                    .sum::<u64>()
            })
            .unwrap_or(0)
    } else {
        dir_bytes(&dir.path().join("server"))
    };
    println!(
        "| store on disk ({}) | {:.0} MB | | |",
        if o.store == "etcd" {
            "etcd's db"
        } else {
            "berth.redb and the data dir"
        },
        on_disk as f64 / 1e6
    );
    drop(procs);
    Ok(())
}

/// Bytes of the files under `dir` (as allocated on disk).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}
