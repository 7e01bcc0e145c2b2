//! `/v2/events`: Marathon's SSE framing, `event_stream_attached` first, the events of a
//! deployment in a sensible order, and `event_type` filtering.

mod common;

use common::*;
use std::time::Duration;

const APP: &str = "/it/evented";
const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_events_arrive_in_order_and_filter_works() {
    let c = Cluster::start("events").await;
    let api = &c.api;
    let mut all = EventStream::connect(api, "").await;
    let mut only_status = EventStream::connect(api, "?event_type=status_update_event").await;

    all.wait_for(T, "event_stream_attached", |e| {
        e.event == "event_stream_attached"
    })
    .await;
    assert_eq!(all.seen[0].event, "event_stream_attached", "attached first");
    assert!(all.seen[0].data["remoteAddress"].is_string());

    let r = api.post("/v2/apps", &cmd_app(APP, "sleep 3600", 2)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let dep = r.header("marathon-deployment-id").expect("deployment id");

    all.wait_for(T, "deployment_success", |e| {
        e.event == "deployment_success" && e.data["id"] == dep.as_str()
    })
    .await;
    let types = all.types();
    let pos = |pred: &dyn Fn(&Sse) -> bool| all.seen.iter().position(pred);
    let post = pos(&|e| e.event == "api_post_event" && e.data["appDefinition"]["id"] == APP)
        .unwrap_or_else(|| panic!("no api_post_event for {APP}: {types:?}"));
    let info = pos(&|e| e.event == "deployment_info" && e.data["plan"]["id"] == dep.as_str())
        .unwrap_or_else(|| panic!("no deployment_info for {dep}: {types:?}"));
    let success = pos(&|e| e.event == "deployment_success").unwrap();
    let running: Vec<usize> = all
        .seen
        .iter()
        .enumerate()
        .filter(|(_, e)| {
            e.event == "status_update_event"
                && e.data["appId"] == APP
                && e.data["taskStatus"] == "TASK_RUNNING"
        })
        .map(|(i, _)| i)
        .collect();
    assert_eq!(running.len(), 2, "two TASK_RUNNING updates: {types:?}");
    let last_running = *running.iter().max().unwrap();
    assert!(post < success && info < success, "order: {types:?}");
    assert!(
        last_running < success,
        "deployment_success must come after the tasks run: {types:?}"
    );
    // The plan carries original and target, as marathon-python needs.
    let plan = &all.seen[info].data["plan"];
    assert!(
        plan.get("original").is_some() && plan.get("target").is_some(),
        "{plan}"
    );
    for e in &all.seen {
        assert_eq!(e.data["eventType"], e.event.as_str(), "eventType of {e:?}");
        let ts = e.data["timestamp"].as_str().unwrap_or("");
        assert!(
            ts.len() >= 20 && ts.ends_with('Z') && ts.contains('T'),
            "timestamp of {e:?}"
        );
    }
    let status = &all.seen[running[0]].data;
    for key in [
        "slaveId",
        "taskId",
        "host",
        "ports",
        "version",
        "ipAddresses",
    ] {
        assert!(
            status.get(key).is_some(),
            "status_update_event lacks {key}: {status}"
        );
    }

    // The filtered stream saw only status updates (not even event_stream_attached), including
    // both TASK_RUNNING ones.
    only_status.drain_for(Duration::from_millis(500)).await;
    let filtered = only_status.types();
    assert!(
        filtered.iter().all(|t| t == "status_update_event"),
        "filtered stream: {filtered:?}"
    );
    let filtered_running = only_status
        .seen
        .iter()
        .filter(|e| e.data["appId"] == APP && e.data["taskStatus"] == "TASK_RUNNING")
        .count();
    assert_eq!(filtered_running, 2, "filtered stream: {filtered:?}");

    // An unknown event type is refused rather than silently streaming nothing.
    let r = api.get("/v2/events?event_type=no_such_event").await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.message().contains("no_such_event"), "{}", r.text);
}
