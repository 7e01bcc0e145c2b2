//! Test support for crates that test against a real etcd: one member on free loopback
//! ports, started from Debian's `etcd-server` (`BERTH_ETCD` names another binary). Built
//! for this crate's tests and, with the `testkit` feature, for other crates' tests.

use crate::{EtcdOptions, EtcdStore};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// One etcd member on free loopback ports, in its own directory; killed on drop.
pub struct EtcdProcess {
    child: Child,
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
    /// Starts etcd, or `None` (the test skips) when there is no `etcd` and CI does not
    /// require it.
    pub async fn start(test: &str) -> Option<EtcdProcess> {
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
        let dir = tempfile::tempdir().expect("tempdir");
        let (client, peer) = (free_port(), free_port());
        let endpoint = format!("http://127.0.0.1:{client}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("etcd log");
        let child = Command::new(&bin)
            .arg("--name")
            .arg("t")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--listen-client-urls")
            .arg(&endpoint)
            .arg("--advertise-client-urls")
            .arg(&endpoint)
            .arg("--listen-peer-urls")
            .arg(format!("http://127.0.0.1:{peer}"))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://127.0.0.1:{peer}"))
            .arg("--initial-cluster")
            .arg(format!("t=http://127.0.0.1:{peer}"))
            .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning etcd");
        let etcd = EtcdProcess {
            child,
            endpoint,
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let mut o = EtcdOptions::new(vec![etcd.endpoint.clone()]);
            o.request_timeout = Duration::from_secs(1);
            o.compact_interval = None;
            if EtcdStore::connect(o).await.is_ok() {
                return Some(etcd);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{test}: etcd did not answer within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn options(&self) -> EtcdOptions {
        let mut o = EtcdOptions::new(vec![self.endpoint.clone()]);
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
