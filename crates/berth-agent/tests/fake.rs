use berth_agent::driver::fake::{FakeConfig, FakeDriver, SIMULATED_FAILURE};
use berth_agent::driver::{Driver, TaskSpec, TaskStatus};
use berth_core::app::{AppDefinition, DriverKind};
use berth_core::node::NodeResources;
use berth_core::task::TaskState;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

fn spec(task_id: &str) -> TaskSpec {
    TaskSpec {
        task_id: task_id.into(),
        app_id: "/sim".into(),
        version: "v1".into(),
        app: AppDefinition::default(),
        ports: vec![],
        host: "sim-1".into(),
        node_id: "sim-1".into(),
        resources: NodeResources::new(0.1, 16.0, 0.0),
        cpuset: vec![],
        secret_env: Default::default(),
    }
}

fn driver(config: FakeConfig) -> (FakeDriver, UnboundedReceiver<TaskStatus>) {
    let (tx, rx) = unbounded_channel();
    (FakeDriver::new(config, tx), rx)
}

fn drain(rx: &mut UnboundedReceiver<TaskStatus>) -> Vec<TaskStatus> {
    let mut out = Vec::new();
    while let Ok(s) = rx.try_recv() {
        out.push(s);
    }
    out
}

#[tokio::test]
async fn zero_latency_runs_at_once_and_kill_reports_killed() {
    let (d, mut rx) = driver(FakeConfig::default());
    assert_eq!(d.kind(), DriverKind::Fake);
    d.start(spec("a")).await.unwrap();
    d.start(spec("a")).await.unwrap(); // no-op
    let states: Vec<_> = drain(&mut rx).into_iter().map(|s| s.state).collect();
    assert_eq!(states, [TaskState::Starting, TaskState::Running]);
    d.kill("a", Duration::from_secs(1)).await.unwrap();
    d.kill("a", Duration::from_secs(1)).await.unwrap();
    d.kill("unknown", Duration::from_secs(1)).await.unwrap();
    let s = drain(&mut rx);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].state, TaskState::Killed);
    assert_eq!(d.list().await.unwrap()[0].state, TaskState::Killed);
    d.forget("a");
    assert!(d.list().await.unwrap().is_empty());
    assert!(d.recover().await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn latency_delays_running() {
    let (d, mut rx) = driver(FakeConfig {
        start_latency: Duration::from_secs(2),
        ..Default::default()
    });
    d.start(spec("a")).await.unwrap();
    d.start(spec("b")).await.unwrap();
    let s = drain(&mut rx);
    assert!(s.iter().all(|s| s.state == TaskState::Starting) && s.len() == 2);
    tokio::time::sleep(Duration::from_millis(1900)).await;
    assert!(drain(&mut rx).is_empty());
    // Killed while starting: it never becomes RUNNING.
    d.kill("b", Duration::ZERO).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = drain(&mut rx);
    let got: Vec<_> = s.iter().map(|s| (s.task_id.as_str(), s.state)).collect();
    assert_eq!(got, [("b", TaskState::Killed), ("a", TaskState::Running)]);
    let listed = d.list().await.unwrap();
    assert_eq!(
        listed.iter().map(|s| s.state).collect::<Vec<_>>(),
        [TaskState::Running, TaskState::Killed]
    );
}

#[tokio::test]
async fn failure_rate_is_respected_and_reproducible() {
    let run = |seed| async move {
        let (d, mut rx) = driver(FakeConfig {
            failure_rate: 0.3,
            seed,
            ..Default::default()
        });
        for i in 0..2000 {
            d.start(spec(&format!("t{i}"))).await.unwrap();
        }
        let statuses = drain(&mut rx);
        let failed: Vec<String> = statuses
            .iter()
            .filter(|s| s.state == TaskState::Failed)
            .inspect(|s| assert_eq!(s.message.as_deref(), Some(SIMULATED_FAILURE)))
            .map(|s| s.task_id.clone())
            .collect();
        let running = statuses
            .iter()
            .filter(|s| s.state == TaskState::Running)
            .count();
        assert_eq!(failed.len() + running, 2000);
        failed
    };
    let a = run(7).await;
    assert!(
        (450..750).contains(&a.len()),
        "{} failures out of 2000 at 30%",
        a.len()
    );
    assert_eq!(a, run(7).await, "same seed, same failures");
    assert_ne!(a, run(8).await);

    let (d, mut rx) = driver(FakeConfig {
        failure_rate: 1.0,
        ..Default::default()
    });
    d.start(spec("x")).await.unwrap();
    assert_eq!(drain(&mut rx).last().unwrap().state, TaskState::Failed);
}

#[tokio::test]
async fn many_tasks_are_cheap() {
    let (d, mut rx) = driver(FakeConfig {
        start_latency: Duration::from_millis(50),
        ..Default::default()
    });
    let started = Instant::now();
    for i in 0..20_000 {
        d.start(spec(&format!("t{i}"))).await.unwrap();
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let running = drain(&mut rx)
        .iter()
        .filter(|s| s.state == TaskState::Running)
        .count();
    assert_eq!(running, 20_000);
    assert_eq!(d.len(), 20_000);
}

#[tokio::test]
async fn standing_in_for_exec_answers_as_exec_and_runs_nothing() {
    let (d, mut rx) = driver(FakeConfig::default());
    let d = d.standing_in_for(DriverKind::Exec);
    assert_eq!(d.kind(), DriverKind::Exec);
    d.start(spec("a")).await.unwrap();
    let states: Vec<_> = drain(&mut rx).into_iter().map(|s| s.state).collect();
    assert_eq!(states, [TaskState::Starting, TaskState::Running]);
}
