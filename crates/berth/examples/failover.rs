//! Failover benchmark: 3 `berth server`s on a 3-member etcd cluster (all on this host), then
//! `--rounds` times (10): `kill -9` the leader and time until another server accepts a write
//! (`POST /v2/apps`, asked every 20 ms through a surviving server); the killed server is
//! started again as a follower before the next round. Prints every round, the median and max.
//!
//!   bench/failover.sh [--rounds N] [--leader-ttl S]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

struct Server {
    port: u16,
    dir: std::path::PathBuf,
    child: Option<Child>,
}

impl Server {
    fn spawn(
        &mut self,
        berth: &std::path::Path,
        store: &str,
        ttl: &str,
        key: &std::path::Path,
    ) -> Res<()> {
        let child = Command::new(berth)
            .args(["server", "--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--store", store, "--leader-ttl", ttl])
            .arg("--secrets-key-file")
            .arg(key)
            .env("BERTH_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    fn kill_9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn hostport(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill_9();
    }
}

fn free_port() -> Res<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn leader_of(http: &reqwest::Client, s: &Server) -> Option<String> {
    let r = http
        .get(format!("http://{}/v2/leader", s.hostport()))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    let v: serde_json::Value = r.json().await.ok()?;
    v["leader"].as_str().map(str::to_string)
}

/// Waits until every running server names the same leader; returns its index.
async fn agreed_leader(http: &reqwest::Client, servers: &[Server]) -> Res<usize> {
    let t = Instant::now();
    loop {
        let mut seen = Vec::new();
        for s in servers {
            seen.push(leader_of(http, s).await);
        }
        if let Some(Some(first)) = seen.first()
            && seen.iter().all(|l| l.as_deref() == Some(first.as_str()))
            && let Some(i) = servers.iter().position(|s| s.hostport() == *first)
        {
            return Ok(i);
        }
        if t.elapsed() > Duration::from_secs(60) {
            return Err(format!("the servers do not agree on a leader: {seen:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::main]
async fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut rounds = 10usize;
    let mut ttl = "2".to_string();
    let mut berth = std::env::current_exe()?
        .parent()
        .and_then(|p| p.parent())
        .ok_or("cannot locate the target dir")?
        .join("berth");
    let mut i = 0;
    while i < args.len() {
        let val = args.get(i + 1).ok_or("a flag needs a value")?;
        match args[i].as_str() {
            "--rounds" => rounds = val.parse()?,
            "--leader-ttl" => ttl = val.clone(),
            "--berth" => berth = val.into(),
            other => return Err(format!("unknown argument {other}").into()),
        }
        i += 2;
    }
    let etcd = berth_store::testkit::EtcdProcess::start_cluster("failover", 3)
        .await
        .ok_or("needs etcd (apt install etcd-server)")?;
    let store = etcd.store_flag();
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("secrets.key");
    let mut servers = Vec::new();
    for name in ["a", "b", "c"] {
        servers.push(Server {
            port: free_port()?,
            dir: dir.path().join(name),
            child: None,
        });
    }
    // The first one first, so that its election writes the admin token.
    servers[0].spawn(&berth, &store, &ttl, &key)?;
    let token_file = servers[0].dir.join("admin.token");
    let t = Instant::now();
    while !token_file.exists() {
        if t.elapsed() > Duration::from_secs(30) {
            return Err("the first server wrote no admin.token".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for s in &mut servers[1..] {
        s.spawn(&berth, &store, &ttl, &key)?;
    }
    let token = std::fs::read_to_string(&token_file)?.trim().to_string();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))?,
    );
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(5))
        .build()?;
    let mut times = Vec::new();
    println!("3 servers, 3 etcd members on one host, --leader-ttl {ttl} s");
    for round in 0..rounds {
        let leader = agreed_leader(&http, &servers).await?;
        let survivor = (leader + 1) % servers.len();
        let url = format!("http://{}/v2/apps", servers[survivor].hostport());
        let killed = Instant::now();
        servers[leader].kill_9();
        loop {
            let body = serde_json::json!({"id": format!("/bench/r{round}"), "cmd": "sleep 1", "instances": 0});
            match http.post(&url).json(&body).send().await {
                Ok(r) if r.status().as_u16() == 201 => break,
                _ if killed.elapsed() > Duration::from_secs(60) => {
                    return Err(format!("round {round}: no write accepted within 60 s").into());
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        let took = killed.elapsed();
        println!("round {:>2}: {:.2} s", round + 1, took.as_secs_f64());
        times.push(took.as_secs_f64());
        servers[leader].spawn(&berth, &store, &ttl, &key)?;
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = if times.is_empty() {
        f64::NAN
    } else if times.len() % 2 == 1 {
        times[times.len() / 2]
    } else {
        (times[times.len() / 2 - 1] + times[times.len() / 2]) / 2.0
    };
    println!(
        "| failover: leader kill -9 -> a write accepted ({} rounds) | median {median:.2} s, max {:.2} s | target <= 2 s |",
        times.len(),
        times.last().copied().unwrap_or(f64::NAN)
    );
    drop(servers);
    drop(etcd);
    Ok(())
}
