use super::*;
use serde_json::json;

const NOW: i64 = 1_700_000_000_000;

fn sched(name: &str) -> Value {
    json!({"name": name, "command": "true", "schedule": "R/2030-01-01T00:00:00Z/PT1H"})
}

fn dep(name: &str, parents: &[&str]) -> Value {
    json!({"name": name, "command": "true", "parents": parents})
}

fn cluster() -> Cluster {
    Cluster::new(1)
}

fn put(st: &mut Cluster, v: Value, kind: UpsertKind) -> ApiResult<String> {
    let mut ch = Changes::default();
    upsert(st, &mut ch, v, kind, NOW)
}

fn msg(e: ApiError) -> String {
    assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST, "{e}");
    e.to_string()
}

#[test]
fn upsert_stores_and_persists() {
    let mut st = cluster();
    let mut ch = Changes::default();
    upsert(&mut st, &mut ch, sched("a"), UpsertKind::Scheduled, NOW).unwrap();
    assert!(st.jobs.contains_key("a"));
    assert!(ch.ops.iter().any(|op| matches!(op,
        berth_store::Op::Put { key, .. } if key == "/berth/jobs/a")));
}

#[test]
fn empty_schedule_start_is_fixed_once() {
    let mut st = cluster();
    put(
        &mut st,
        json!({"name": "a", "command": "x", "schedule": "R5//PT1M"}),
        UpsertKind::Scheduled,
    )
    .unwrap();
    let s = st.jobs["a"].job.schedule.clone();
    assert!(s.starts_with("R5/2023-11-14T22:13:20"), "{s}");
    // Re-parsing the stored form gives the same string.
    let again = Schedule::parse_iso_at(&s, "", jiff::Timestamp::now()).unwrap();
    assert_eq!(again.to_string(), s);
}

#[test]
fn bad_schedule_unknown_parent_and_cycles_are_400_naming_them() {
    let mut st = cluster();
    let e = put(
        &mut st,
        json!({"name": "a", "command": "x", "schedule": "nope"}),
        UpsertKind::Scheduled,
    )
    .unwrap_err();
    assert!(msg(e).contains("schedule"));
    put(&mut st, sched("a"), UpsertKind::Scheduled).unwrap();
    let e = put(&mut st, dep("b", &["ghost"]), UpsertKind::Dependent).unwrap_err();
    assert!(msg(e).contains("ghost"));
    put(&mut st, dep("b", &["a"]), UpsertKind::Dependent).unwrap();
    put(&mut st, dep("c", &["b"]), UpsertKind::Dependent).unwrap();
    // a -> b -> c; making a depend on c closes a cycle.
    let e = put(&mut st, dep("a", &["c"]), UpsertKind::Dependent).unwrap_err();
    let m = msg(e);
    assert!(m.contains("cycle") && m.contains("a -> c -> b -> a"), "{m}");
    // The wrong endpoint for the trigger.
    assert!(put(&mut st, dep("d", &["a"]), UpsertKind::Scheduled).is_err());
    assert!(put(&mut st, sched("d"), UpsertKind::Dependent).is_err());
}

#[test]
fn replacing_keeps_counters() {
    let mut st = cluster();
    put(&mut st, sched("a"), UpsertKind::Scheduled).unwrap();
    let mut ch = Changes::default();
    mark_success(&mut st, &mut ch, "a", NOW).unwrap();
    let mut v = sched("a");
    v["successCount"] = json!(99);
    put(&mut st, v, UpsertKind::Scheduled).unwrap();
    assert_eq!(st.jobs["a"].job.success_count, 1);
    assert!(!st.jobs["a"].job.last_success.is_empty());
}

#[test]
fn job_limit_is_a_400() {
    let mut st = cluster();
    for i in 0..MAX_JOBS {
        let rec = JobRecord {
            job: Job {
                name: format!("j{i}"),
                ..Job::default()
            },
            parent_successes: BTreeMap::new(),
            next_run_id: 1,
            cron_checked_at: None,
        };
        st.jobs.insert(rec.job.name.clone(), rec);
    }
    let e = put(&mut st, sched("one-more"), UpsertKind::Scheduled).unwrap_err();
    assert!(msg(e).contains("too many jobs"));
    // Replacing an existing one is still fine.
    put(&mut st, sched("j1"), UpsertKind::Scheduled).unwrap();
}

#[test]
fn delete_reparents_children_and_drops_runs() {
    let mut st = cluster();
    put(&mut st, sched("a"), UpsertKind::Scheduled).unwrap();
    put(&mut st, dep("b", &["a"]), UpsertKind::Dependent).unwrap();
    put(&mut st, dep("c", &["b"]), UpsertKind::Dependent).unwrap();
    let mut ch = Changes::default();
    run_now(&mut st, &mut ch, "b", None, NOW).unwrap();
    delete(&mut st, &mut ch, "b").unwrap();
    assert!(!st.jobs.contains_key("b"));
    assert!(!st.job_runs.contains_key("b"));
    assert_eq!(st.jobs["c"].job.parents, vec!["a".to_string()]);
    delete(&mut st, &mut ch, "a").unwrap();
    assert!(st.jobs["c"].job.parents.is_empty());
    assert_eq!(st.jobs["c"].job.schedule, st.jobs["c"].job.schedule.trim());
    assert!(st.jobs["c"].job.schedule.starts_with("R/2030"));
    let e = delete(&mut st, &mut ch, "a").unwrap_err();
    assert_eq!(e.status(), axum::http::StatusCode::NOT_FOUND);
}

#[test]
fn run_now_respects_concurrent_and_kill_marks_runs() {
    let mut st = cluster();
    put(&mut st, sched("a"), UpsertKind::Scheduled).unwrap();
    let mut ch = Changes::default();
    let first = run_now(&mut st, &mut ch, "a", Some(vec!["x".into()]), NOW).unwrap();
    assert_eq!(first, Some(1));
    assert_eq!(run_now(&mut st, &mut ch, "a", None, NOW).unwrap(), None);
    assert_eq!(queued_runs(&st), vec![("a".to_string(), 1)]);
    assert_eq!(run_state(&st, "a"), "queued");
    assert_eq!(kill(&mut st, &mut ch, "a", NOW + 1).unwrap(), 1);
    assert_eq!(st.job_runs["a"][&1].status, RunStatus::Killed);
    assert_eq!(run_state(&st, "a"), "idle");
    assert_eq!(run_now(&mut st, &mut ch, "a", None, NOW).unwrap(), Some(2));
    assert!(run_now(&mut st, &mut ch, "ghost", None, NOW).is_err());
    // concurrent=true: a second run is queued.
    let mut v = sched("a");
    v["concurrent"] = json!(true);
    put(&mut st, v, UpsertKind::Scheduled).unwrap();
    assert_eq!(run_now(&mut st, &mut ch, "a", None, NOW).unwrap(), Some(3));
}

#[test]
fn run_history_is_capped() {
    let mut st = cluster();
    let mut v = sched("a");
    v["concurrent"] = json!(true);
    put(&mut st, v, UpsertKind::Scheduled).unwrap();
    let mut ch = Changes::default();
    for _ in 0..(MAX_RUNS_PER_JOB + 20) {
        run_now(&mut st, &mut ch, "a", None, NOW).unwrap();
    }
    assert_eq!(st.job_runs["a"].len(), MAX_RUNS_PER_JOB);
    assert_eq!(st.job_runs["a"].keys().next(), Some(&21));
}

#[test]
fn success_updates_counters_and_fires_children_when_all_parents_succeeded() {
    let mut st = cluster();
    put(&mut st, sched("a"), UpsertKind::Scheduled).unwrap();
    put(&mut st, sched("b"), UpsertKind::Scheduled).unwrap();
    put(&mut st, dep("c", &["a", "b"]), UpsertKind::Dependent).unwrap();
    let mut ch = Changes::default();
    mark_success(&mut st, &mut ch, "a", NOW).unwrap();
    let a = &st.jobs["a"].job;
    assert_eq!((a.success_count, a.errors_since_last_success), (1, 0));
    assert_eq!(a.last_success, "2023-11-14T22:13:20.000Z");
    assert!(st.jobs["c"].parent_successes.contains_key("a"));
    assert!(queued_runs(&st).is_empty());
    mark_success(&mut st, &mut ch, "b", NOW + 5).unwrap();
    assert_eq!(queued_runs(&st), vec![("c".to_string(), 1)]);
    assert!(st.jobs["c"].parent_successes.is_empty());
    assert!(mark_success(&mut st, &mut ch, "ghost", NOW).is_err());
}

#[test]
fn outcomes_update_counters_and_stats() {
    let mut st = cluster();
    put(&mut st, sched("a"), UpsertKind::Scheduled).unwrap();
    put(&mut st, sched("idle"), UpsertKind::Scheduled).unwrap();
    let mut ch = Changes::default();
    // Never run: zeros and no history.
    let s = job_stat_json(&st, "a").unwrap();
    assert_eq!(s["histogram"]["count"], 0);
    assert_eq!(s["histogram"]["median"], 0.0);
    assert_eq!(s["taskStatHistory"], json!([]));
    for (i, ms) in [1000, 3000].into_iter().enumerate() {
        let id = run_now(&mut st, &mut ch, "a", None, NOW).unwrap().unwrap();
        mark_run_started(&mut st, &mut ch, "a", id, "n1", &format!("t{i}"), NOW).unwrap();
        assert_eq!(run_state(&st, "a"), "running");
        let out = RunOutcome {
            success: true,
            exit_code: Some(0),
            message: None,
            ended_at: NOW + ms,
        };
        record_run_outcome(&mut st, &mut ch, "a", id, out).unwrap();
    }
    let id = run_now(&mut st, &mut ch, "a", None, NOW).unwrap().unwrap();
    mark_run_started(&mut st, &mut ch, "a", id, "n1", "t9", NOW).unwrap();
    let fail = RunOutcome {
        success: false,
        exit_code: Some(1),
        message: Some("exit 1".into()),
        ended_at: NOW + 9000,
    };
    record_run_outcome(&mut st, &mut ch, "a", id, fail).unwrap();
    let j = &st.jobs["a"].job;
    assert_eq!(
        (j.success_count, j.error_count, j.errors_since_last_success),
        (2, 1, 1)
    );
    assert_eq!(last_status(j), "failure");
    let s = job_stat_json(&st, "a").unwrap();
    assert_eq!(s["histogram"]["count"], 2);
    assert_eq!(s["histogram"]["mean"], 2000.0);
    assert_eq!(s["histogram"]["99thPercentile"], 3000.0);
    assert_eq!(s["taskStatHistory"].as_array().unwrap().len(), 3);
    let p = stats_json(&st, "99thPercentile").unwrap();
    assert_eq!(
        p,
        json!([{"jobNameLabel": "a", "time": 3.0}, {"jobNameLabel": "idle", "time": 0.0}])
    );
    assert!(stats_json(&st, "42ndPercentile").is_none());
}

#[test]
fn graph_summary_and_search() {
    let mut st = cluster();
    put(&mut st, sched("prod.a"), UpsertKind::Scheduled).unwrap();
    let mut v = dep("prod.b", &["prod.a"]);
    v["command"] = json!("echo HELLO");
    put(&mut st, v, UpsertKind::Dependent).unwrap();
    assert_eq!(
        graph_csv(&st),
        "node,prod.a,fresh,idle\nnode,prod.b,fresh,idle\nlink,prod.a,prod.b\n"
    );
    assert!(graph_dot(&st).contains("\"prod.a\" -> \"prod.b\";"));
    assert_eq!(summary_json(&st)["jobs"][1]["parents"], json!(["prod.a"]));
    let q = |name: Option<&str>, command: Option<&str>, any: Option<&str>| Search {
        name: name.map(str::to_string),
        command: command.map(str::to_string),
        any: any.map(str::to_string),
        limit: 10,
        offset: 0,
    };
    let names = |v: Vec<&Job>| v.into_iter().map(|j| j.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(search(&st, &q(Some("PROD"), None, None))).len(), 2);
    assert_eq!(
        names(search(&st, &q(None, Some("hello"), None))),
        ["prod.b"]
    );
    assert_eq!(
        names(search(&st, &q(None, None, Some("hello")))),
        ["prod.b"]
    );
    let mut paged = q(None, None, None);
    paged.offset = 1;
    assert_eq!(names(search(&st, &paged)), ["prod.b"]);
    assert_eq!(job_namespace("prod.etl-daily"), "prod");
    assert_eq!(job_namespace("etl"), "default");
    assert_eq!(job_namespace(".x"), "default");
}

#[test]
fn a_busy_child_is_queued_when_its_run_ends() {
    let mut st = cluster();
    put(&mut st, sched("a"), UpsertKind::Scheduled).unwrap();
    put(&mut st, dep("c", &["a"]), UpsertKind::Dependent).unwrap();
    let mut ch = Changes::default();
    let id = run_now(&mut st, &mut ch, "c", None, NOW).unwrap().unwrap();
    mark_run_started(&mut st, &mut ch, "c", id, "n1", "t1", NOW).unwrap();
    // `a` succeeds while `c` runs: no second run of `c` yet, the progress is kept.
    mark_success(&mut st, &mut ch, "a", NOW + 1).unwrap();
    assert!(queued_runs(&st).is_empty());
    assert!(st.jobs["c"].parent_successes.contains_key("a"));
    let done = RunOutcome {
        success: true,
        exit_code: Some(0),
        message: None,
        ended_at: NOW + 2,
    };
    record_run_outcome(&mut st, &mut ch, "c", id, done).unwrap();
    assert_eq!(queued_runs(&st), vec![("c".to_string(), id + 1)]);
}

#[test]
fn soft_error_failures_fire_dependents() {
    let mut st = cluster();
    let mut v = sched("a");
    v["softError"] = json!(true);
    put(&mut st, v, UpsertKind::Scheduled).unwrap();
    put(&mut st, dep("c", &["a"]), UpsertKind::Dependent).unwrap();
    let mut ch = Changes::default();
    let id = run_now(&mut st, &mut ch, "a", None, NOW).unwrap().unwrap();
    let fail = RunOutcome {
        success: false,
        exit_code: Some(2),
        message: None,
        ended_at: NOW + 1,
    };
    record_run_outcome(&mut st, &mut ch, "a", id, fail).unwrap();
    assert_eq!(st.jobs["a"].job.error_count, 1);
    assert_eq!(queued_runs(&st), vec![("c".to_string(), 1)]);
}

#[test]
fn records_round_trip_through_load_record() {
    let mut st = cluster();
    put(&mut st, sched("a"), UpsertKind::Scheduled).unwrap();
    let mut ch = Changes::default();
    run_now(&mut st, &mut ch, "a", None, NOW).unwrap();
    let mut fresh = cluster();
    let rec = serde_json::to_value(&st.jobs["a"]).unwrap();
    let run = serde_json::to_value(&st.job_runs["a"][&1]).unwrap();
    assert!(load_record(&mut fresh, &job_key("a"), rec));
    assert!(load_record(&mut fresh, &run_key("a", 1), run));
    assert!(!load_record(&mut fresh, "/berth/apps/x", json!({})));
    assert_eq!(fresh.jobs, st.jobs);
    assert_eq!(fresh.job_runs, st.job_runs);
    assert_eq!(run_key("a", 1), "/berth/jobruns/a/00000000000000000001");
}

#[test]
fn a_killed_run_keeps_its_status() {
    let mut st = cluster();
    put(&mut st, sched("a"), UpsertKind::Scheduled).unwrap();
    let mut ch = Changes::default();
    let id = run_now(&mut st, &mut ch, "a", None, NOW).unwrap().unwrap();
    kill(&mut st, &mut ch, "a", NOW).unwrap();
    assert!(mark_run_started(&mut st, &mut ch, "a", id, "n", "t", NOW).is_err());
    let out = RunOutcome {
        success: true,
        exit_code: Some(0),
        message: None,
        ended_at: NOW + 1,
    };
    record_run_outcome(&mut st, &mut ch, "a", id, out).unwrap();
    assert_eq!(st.job_runs["a"][&id].status, RunStatus::Killed);
    assert_eq!(st.jobs["a"].job.success_count, 0);
    assert!(
        record_run_outcome(
            &mut st,
            &mut ch,
            "a",
            99,
            RunOutcome {
                success: true,
                exit_code: None,
                message: None,
                ended_at: NOW,
            }
        )
        .is_err()
    );
}
