//! The job controller against the real binary and the exec driver: runs are tasks an agent
//! executes; `R3/<now>/PT2S` runs exactly three times and disables its job; dependencies and
//! retries; five periods missed while the server is down give one catch-up run; `kill -9` of
//! the server during a run neither loses nor repeats it.

mod common;

use common::{Api, Cluster};
use serde_json::{Value, json};
use std::time::Duration;

fn iso(ms: i64) -> String {
    berth_core::time::format_millis(ms)
}

fn now_ms() -> i64 {
    berth_core::time::now_millis()
}

async fn runs(api: &Api, job: &str) -> Vec<Value> {
    let r = api.get(&format!("/api/v1/jobs/{job}/runs")).await;
    assert_eq!(r.status, 200, "runs of {job}: {}", r.text);
    let mut runs = r.json["runs"].as_array().cloned().unwrap_or_default();
    runs.reverse(); // oldest first
    runs
}

fn statuses(runs: &[Value]) -> Vec<String> {
    runs.iter()
        .map(|r| r["status"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn wait_statuses(api: &Api, job: &str, want: &[&str], timeout: Duration) -> Vec<Value> {
    let api2 = api.clone();
    let job2 = job.to_string();
    let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    let want2 = want.clone();
    let mut last = vec![];
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        last = runs(&api2, &job2).await;
        if statuses(&last) == want2 {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{job}: runs {:?}, wanted {want:?}: {last:#?}",
        statuses(&last)
    );
}

async fn post_job(api: &Api, path: &str, job: Value) {
    let r = api.post(path, &job).await;
    assert_eq!(r.status, 204, "{path} {job}: {}", r.text);
}

async fn run_log(api: &Api, job: &str, run: &Value) -> String {
    let r = api
        .get(&format!("/api/v1/jobs/{job}/runs/{}/logs", run["id"]))
        .await;
    assert_eq!(r.status, 200, "logs of {job} run {}: {}", run["id"], r.text);
    r.text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_every_2s_runs_three_times_then_the_job_is_disabled() {
    let c = Cluster::start("jobs-r3").await;
    let api = c.api.clone();
    let start = now_ms() + 1000;
    post_job(
        &api,
        "/scheduler/iso8601",
        json!({"name": "tick", "command": "echo tick $MESOS_TASK_ID", "owner": "",
               "schedule": format!("R3/{}/PT2S", iso(start))}),
    )
    .await;
    let done = wait_statuses(
        &api,
        "tick",
        &["success", "success", "success"],
        Duration::from_secs(20),
    )
    .await;
    let job = api.get_ok("/scheduler/job/tick").await;
    assert_eq!(job["disabled"], true, "{job}");
    assert_eq!(job["successCount"], 3, "{job}");
    assert!(
        job["schedule"].as_str().unwrap().starts_with("R0/"),
        "{job}"
    );
    // Each run stands for its own due time, 2 s apart, and ran on the node as a task.
    for (k, r) in done.iter().enumerate() {
        assert_eq!(r["scheduledFor"], iso(start + 2000 * k as i64), "{r}");
        assert_eq!(r["attempts"], 1, "{r}");
        assert_eq!(r["exitCode"], 0, "{r}");
        let task = r["taskId"].as_str().unwrap();
        let log = run_log(&api, "tick", r).await;
        assert_eq!(log.trim(), format!("tick {task}"), "{r}");
    }
    // Nothing more runs.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(runs(&api, "tick").await.len(), 3);
    let stat = api.get_ok("/scheduler/job/stat/tick").await;
    assert_eq!(stat["histogram"]["count"], 3, "{stat}");
    // Prometheus: runs by outcome and durations, per job.
    let metrics = reqwest::Client::new()
        .get(format!("{}/metrics", c.url()))
        .bearer_auth(c.admin_token())
        .header("Accept", "text/plain")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "berth_job_runs_total{job=\"tick\",outcome=\"success\"} 3",
        "berth_job_runs_total{job=\"tick\",outcome=\"failure\"} 0",
        "berth_job_runs_active{job=\"tick\"} 0",
        "berth_job_run_duration_seconds_count{job=\"tick\"} 3",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_runs_after_both_parents_and_a_failing_parent_is_retried() {
    let c = Cluster::start("jobs-deps").await;
    let api = c.api.clone();
    let later = iso(now_ms() + 3_600_000);
    post_job(
        &api,
        "/scheduler/iso8601",
        json!({"name": "p1", "command": "true", "schedule": format!("R/{later}/PT1H")}),
    )
    .await;
    post_job(
        &api,
        "/scheduler/iso8601",
        json!({"name": "p2", "command": "echo attempt; exit 3", "retries": 2,
               "schedule": format!("R/{later}/PT1H")}),
    )
    .await;
    post_job(
        &api,
        "/scheduler/dependency",
        json!({"name": "child", "command": "echo child", "parents": ["p1", "p2"]}),
    )
    .await;
    assert_eq!(api.put("/scheduler/job/p1", &json!({})).await.status, 204);
    wait_statuses(&api, "p1", &["success"], Duration::from_secs(15)).await;
    assert_eq!(api.put("/scheduler/job/p2", &json!({})).await.status, 204);
    let failed = wait_statuses(&api, "p2", &["failure"], Duration::from_secs(20)).await;
    assert_eq!(
        failed[0]["attempts"], 3,
        "retries + 1 attempts: {}",
        failed[0]
    );
    assert_eq!(failed[0]["exitCode"], 3, "{}", failed[0]);
    let p2 = api.get_ok("/scheduler/job/p2").await;
    assert_eq!(p2["errorCount"], 1, "{p2}");
    assert!(!p2["lastError"].as_str().unwrap().is_empty(), "{p2}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        runs(&api, "child").await.is_empty(),
        "a failed parent does not count"
    );
    // p2 fixed: once it succeeds, both parents have, and the child runs.
    post_job(
        &api,
        "/scheduler/iso8601",
        json!({"name": "p2", "command": "true", "schedule": format!("R/{later}/PT1H")}),
    )
    .await;
    assert_eq!(api.put("/scheduler/job/p2", &json!({})).await.status, 204);
    let child = wait_statuses(&api, "child", &["success"], Duration::from_secs(15)).await;
    assert_eq!(run_log(&api, "child", &child[0]).await.trim(), "child");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_periods_missed_while_down_give_one_catch_up_run() {
    let mut c = Cluster::start("jobs-catchup").await;
    let api = c.api.clone();
    let start = now_ms() + 500;
    post_job(
        &api,
        "/scheduler/iso8601",
        json!({"name": "every2", "command": "true", "schedule": format!("R/{}/PT2S", iso(start))}),
    )
    .await;
    wait_statuses(&api, "every2", &["success"], Duration::from_secs(15)).await;
    c.kill_server();
    let down_at = now_ms();
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    c.start_server().await;
    let up_at = now_ms();
    let api = c.api.clone();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let all = runs(&api, "every2").await;
    let during: Vec<&Value> = all
        .iter()
        .filter(|r| {
            let q = r["queuedAt"].as_str().unwrap_or_default().to_string();
            q >= iso(up_at - 100) && q <= iso(up_at + 900)
        })
        .collect();
    assert_eq!(
        during.len(),
        1,
        "one catch-up run after 5 missed periods (down {}..{}): {all:#?}",
        iso(down_at),
        iso(up_at)
    );
    // It stands for the latest due time missed; none was queued while the server was down.
    let missed = during[0]["scheduledFor"].as_str().unwrap().to_string();
    assert!(
        missed > iso(up_at - 2_100) && missed <= iso(up_at),
        "{missed}"
    );
    assert!(
        all.iter()
            .all(|r| r["queuedAt"].as_str().unwrap() < iso(down_at).as_str()
                || r["queuedAt"].as_str().unwrap() >= iso(up_at - 100).as_str()),
        "{all:#?}"
    );
    // Then the schedule goes on at its own pace.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let later = runs(&api, "every2").await;
    assert!(later.len() > all.len(), "{later:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_server_during_a_run_neither_loses_nor_repeats_it() {
    let mut c = Cluster::start("jobs-kill9").await;
    let api = c.api.clone();
    post_job(
        &api,
        "/scheduler/iso8601",
        json!({"name": "long", "command": "echo begin; sleep 3; echo end", "retries": 2,
               "schedule": format!("R/{}/PT1H", iso(now_ms() + 3_600_000))}),
    )
    .await;
    assert_eq!(api.put("/scheduler/job/long", &json!({})).await.status, 204);
    let running = wait_statuses(&api, "long", &["running"], Duration::from_secs(10)).await;
    let task = running[0]["taskId"].as_str().unwrap().to_string();
    // Its process runs: the launch is durable (agents only see durable tasks). Killed before
    // that, the server would relaunch the run, once, as a new task after the restart.
    common::wait_until(Duration::from_secs(10), "the run's process starts", || {
        let task = task.clone();
        async move { !common::task_processes(&task, "sleep").is_empty() }
    })
    .await;
    c.kill_server();
    // The run ends while the server is down; its agent keeps the outcome until told.
    tokio::time::sleep(Duration::from_secs(4)).await;
    c.start_server().await;
    let api = c.api.clone();
    let done = wait_statuses(&api, "long", &["success"], Duration::from_secs(20)).await;
    assert_eq!(
        done[0]["taskId"],
        task.as_str(),
        "the same task: {}",
        done[0]
    );
    assert_eq!(done[0]["attempts"], 1, "{}", done[0]);
    let log = run_log(&api, "long", &done[0]).await;
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        ["begin", "end"],
        "ran once"
    );
    let job = api.get_ok("/scheduler/job/long").await;
    assert_eq!(
        (job["successCount"].as_u64(), job["errorCount"].as_u64()),
        (Some(1), Some(0))
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(runs(&api, "long").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_past_max_completion_time_is_killed_and_kill_stops_a_run() {
    let c = Cluster::start("jobs-timeout").await;
    let api = c.api.clone();
    let later = iso(now_ms() + 3_600_000);
    post_job(
        &api,
        "/scheduler/iso8601",
        json!({"name": "slow", "command": "sleep 60", "retries": 0, "maxCompletionTime": 2,
               "schedule": format!("R/{later}/PT1H")}),
    )
    .await;
    assert_eq!(api.put("/scheduler/job/slow", &json!({})).await.status, 204);
    let failed = wait_statuses(&api, "slow", &["failure"], Duration::from_secs(15)).await;
    assert!(
        failed[0]["message"]
            .as_str()
            .unwrap()
            .contains("maxCompletionTime"),
        "{}",
        failed[0]
    );
    let ran = failed[0]["durationMs"].as_i64().unwrap();
    assert!((2000..6000).contains(&ran), "{}", failed[0]);
    // Its process is gone.
    let task = failed[0]["taskId"].as_str().unwrap().to_string();
    common::wait_until(
        Duration::from_secs(10),
        "the timed-out run's process ends",
        || {
            let task = task.clone();
            async move { common::task_processes(&task, "sleep").is_empty() }
        },
    )
    .await;
    // DELETE /scheduler/task/kill/{job} stops a running run.
    post_job(
        &api,
        "/scheduler/iso8601",
        json!({"name": "victim", "command": "sleep 60", "schedule": format!("R/{later}/PT1H")}),
    )
    .await;
    assert_eq!(
        api.put("/scheduler/job/victim", &json!({})).await.status,
        204
    );
    let running = wait_statuses(&api, "victim", &["running"], Duration::from_secs(10)).await;
    let task = running[0]["taskId"].as_str().unwrap().to_string();
    common::wait_until(Duration::from_secs(10), "the run's process starts", || {
        let task = task.clone();
        async move { !common::task_processes(&task, "sleep").is_empty() }
    })
    .await;
    assert_eq!(api.delete("/scheduler/task/kill/victim").await.status, 204);
    wait_statuses(&api, "victim", &["killed"], Duration::from_secs(5)).await;
    common::wait_until(
        Duration::from_secs(10),
        "the killed run's process ends",
        || {
            let task = task.clone();
            async move { common::task_processes(&task, "sleep").is_empty() }
        },
    )
    .await;
}
