//! `berth server --store etcd://...` against a real etcd (Debian's `etcd-server`, started by
//! the test): state lives in etcd, acknowledged writes survive `kill -9` of the server, and
//! the server refuses to start on an etcd it cannot reach or on data it cannot read.

mod common;

use berth_store::testkit::{EtcdProcess, free_port};
use berth_store::{Store, StoreExt};
use common::*;
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn store_flag(etcd: &EtcdProcess) -> String {
    format!("etcd://{}", etcd.endpoint.trim_start_matches("http://"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_etcd_keeps_its_state_and_tasks_across_kill_9() {
    let Some(etcd) =
        EtcdProcess::start("a_server_on_etcd_keeps_its_state_and_tasks_across_kill_9").await
    else {
        return;
    };
    let flag = store_flag(&etcd);
    let mut c = Cluster::start_server_with("etcd", &["--store", &flag]).await;
    c.start_agent().await;
    let api = c.api.clone();
    let r = api
        .post("/v2/apps", &cmd_app("/etcd/web", "exec sleep 3600", 2))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = api
        .put(
            "/api/v1/namespaces/etcd",
            &json!({"quota": {"instances": 10}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    api.wait_running("/etcd/web", 2, T).await;
    let pids_before: Vec<i32> = c
        .app_processes("/etcd/web", "sleep")
        .iter()
        .map(|p| p.pid)
        .collect();
    assert_eq!(pids_before.len(), 2);

    // The state is in etcd, not in a file of the data dir.
    let store = etcd.store().await;
    let (apps, _) = store.range("/berth/apps/").await.expect("range");
    assert!(
        apps.iter().any(|kv| kv.key.contains("etcd/web")),
        "{:?}",
        apps.iter().map(|kv| &kv.key).collect::<Vec<_>>()
    );
    assert!(
        store
            .get("/berth/meta/format")
            .await
            .expect("get")
            .is_some()
    );
    assert!(
        !c.path().join("server").join("berth.redb").exists(),
        "no embedded store file"
    );

    // kill -9 and restart: the app, the namespace and the tasks are as they were.
    c.kill_server();
    c.start_server().await;
    let api = c.api.clone();
    let app = api.get_ok("/v2/apps/etcd/web").await;
    assert_eq!(app["app"]["instances"], 2);
    let ns = api.get_ok("/api/v1/namespaces/etcd").await;
    assert_eq!(ns["quota"]["instances"], 10);
    c.wait_node_ready().await;
    api.wait_running("/etcd/web", 2, T).await;
    // Let the restarted server see a few reports: nothing is killed or started twice.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut pids_after: Vec<i32> = c
        .app_processes("/etcd/web", "sleep")
        .iter()
        .map(|p| p.pid)
        .collect();
    let mut before = pids_before.clone();
    before.sort_unstable();
    pids_after.sort_unstable();
    assert_eq!(pids_after, before, "no task was restarted");
    assert_eq!(api.running_ids("/etcd/web").await.len(), 2);
}

/// Runs `berth server` to its exit (at most 30 s); returns its exit success and output.
fn run_server_to_exit(dir: &std::path::Path, store: &str) -> (bool, String) {
    let mut child = Command::new(BERTH)
        .args(["server", "--listen"])
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--data-dir")
        .arg(dir)
        .args(["--store", store])
        .env("BERTH_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning berth server");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100))
            }
            _ => {
                let _ = child.kill();
                break;
            }
        }
    }
    let out = child.wait_with_output().expect("server output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_refuses_an_unreachable_etcd_and_data_it_cannot_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nobody = format!("etcd://127.0.0.1:{}", free_port());
    let (ok, out) = run_server_to_exit(&dir.path().join("a"), &nobody);
    assert!(!ok, "the server must not start: {out}");
    assert!(out.contains("etcd"), "{out}");
    assert!(!out.contains("listening"), "{out}");

    let (ok, out) = run_server_to_exit(&dir.path().join("b"), "etcd://");
    assert!(!ok && out.contains("names no etcd member"), "{out}");

    let Some(etcd) =
        EtcdProcess::start("a_server_refuses_an_unreachable_etcd_and_data_it_cannot_read").await
    else {
        return;
    };
    let store = etcd.store().await;
    store
        .put(
            "/berth/meta/format",
            json!({"format": 99, "writtenBy": "9.0.0"}).to_string(),
        )
        .await
        .expect("put");
    let (ok, out) = run_server_to_exit(&dir.path().join("c"), &store_flag(&etcd));
    assert!(!ok, "the server must not start: {out}");
    assert!(out.contains("format 99") && out.contains("9.0.0"), "{out}");
    // Nothing was written by the refused server.
    let (keys, _) = store.range("/berth/").await.expect("range");
    assert_eq!(keys.len(), 1, "{keys:?}");
}
