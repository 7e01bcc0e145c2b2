//! Test support for crates that test against a real etcd: one member on free loopback
//! ports, started from Debian's `etcd-server` (`BERTH_ETCD` names another binary). Built
//! for this crate's tests and, with the `testkit` feature, for other crates' tests.

use crate::{EtcdOptions, EtcdStore};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// An etcd cluster of one or more members on free loopback ports, each in its own
/// directory; every member is killed on drop.
pub struct EtcdProcess {
    members: Vec<Member>,
    /// The first member's client URL.
    pub endpoint: String,
    bin: String,
    dir: tempfile::TempDir,
}

struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Whether tests that need etcd must run (CI) rather than skip.
fn etcd_required() -> bool {
    ["BERTH_REQUIRE_ETCD", "BERTH_REQUIRE_DOCKER", "CI"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|x| !x.is_empty() && x != "0" && x != "false"))
}

impl EtcdProcess {
    /// Starts one etcd member, or `None` (the test skips) when there is no `etcd` and CI
    /// does not require it.
    pub async fn start(test: &str) -> Option<EtcdProcess> {
        EtcdProcess::start_cluster(test, 1).await
    }

    /// Starts `n` members forming one cluster; returns once every member answers.
    pub async fn start_cluster(test: &str, n: usize) -> Option<EtcdProcess> {
        let bin = std::env::var("BERTH_ETCD").unwrap_or_else(|_| "etcd".into());
        if Command::new(&bin).arg("--version").output().is_err() {
            assert!(
                !etcd_required(),
                "{test}: etcd is required (CI) but `{bin}` cannot run; \
                 scripts/test.sh installs etcd-server"
            );
            eprintln!("{test}: skipped, no etcd (apt install etcd-server)");
            return None;
        }
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_port(),
                peer: free_port(),
                child: None,
            })
            .collect();
        let endpoint = format!("http://127.0.0.1:{}", members[0].client);
        let mut etcd = EtcdProcess {
            members,
            endpoint,
            bin,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        for i in 0..n {
            etcd.spawn(i);
        }
        for i in 0..n {
            etcd.wait_answers(test, i).await;
        }
        Some(etcd)
    }

    fn spawn(&mut self, i: usize) {
        let cluster: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect();
        let m = &self.members[i];
        let client = format!("http://127.0.0.1:{}", m.client);
        let peer = format!("http://127.0.0.1:{}", m.peer);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", m.name)))
            .expect("etcd log");
        let child = Command::new(&self.bin)
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(self.dir.path().join(&m.name))
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(cluster.join(","))
            .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning etcd");
        self.members[i].child = Some(child);
    }

    async fn wait_answers(&self, test: &str, i: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let endpoint = format!("http://127.0.0.1:{}", self.members[i].client);
        loop {
            let mut o = EtcdOptions::new(vec![endpoint.clone()]);
            o.request_timeout = Duration::from_secs(1);
            o.compact_interval = None;
            if EtcdStore::connect(o).await.is_ok() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{test}: etcd member {i} did not answer within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect()
    }

    /// `etcd://127.0.0.1:p1,127.0.0.1:p2,...` for `berth server --store`.
    pub fn store_flag(&self) -> String {
        let hosts: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client))
            .collect();
        format!("etcd://{}", hosts.join(","))
    }

    /// `kill -9` member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data dir; returns once it answers.
    pub async fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} is running");
        self.spawn(i);
        self.wait_answers("restart", i).await;
    }

    pub fn options(&self) -> EtcdOptions {
        let mut o = EtcdOptions::new(self.endpoints());
        o.compact_interval = None;
        // Small pages, so that the paging is exercised by a few hundred keys.
        o.range_page = 50;
        o
    }

    pub async fn store(&self) -> EtcdStore {
        EtcdStore::connect(self.options())
            .await
            .expect("connecting to etcd")
    }
}
