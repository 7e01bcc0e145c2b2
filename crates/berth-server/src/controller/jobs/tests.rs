//! The job controller against a simulated cluster (no I/O): schedules, collapsing, retries,
//! deadlines, dependencies.

use super::*;
use crate::jobs::UpsertKind;
use berth_core::protocol::ReportedStatus;
use serde_json::{Value, json};

const T0: i64 = 1_900_000_000_000;

fn iso(ms: i64) -> String {
    crate::jobs::iso_ms(ms)
}

fn add(st: &mut Cluster, v: Value, kind: UpsertKind, now: i64) {
    let mut ch = Changes::default();
    jobs::upsert(st, &mut ch, v, kind, now).unwrap();
}

fn pass(st: &mut Cluster, now: i64) -> (Requeue, Changes) {
    let mut ch = Changes::default();
    let r = reconcile(st, &mut ch, now);
    (r, ch)
}

fn runs(st: &Cluster, job: &str) -> Vec<jobs::JobRun> {
    st.job_runs
        .get(job)
        .map(|r| r.values().cloned().collect())
        .unwrap_or_default()
}

/// The task of `job`'s running run ends as an agent reports it.
fn end_task(st: &mut Cluster, job: &str, state: TaskState, exit: i32, now: i64) {
    let run = runs(st, job)
        .into_iter()
        .find(|r| r.status == RunStatus::Running)
        .unwrap_or_else(|| panic!("no running run of {job}: {:?}", runs(st, job)));
    let task_id = run.task_id.unwrap();
    let node = st.tasks[&task_id].node_id.clone();
    let mut ch = Changes::default();
    crate::controller::apply_statuses(
        st,
        &mut ch,
        &node,
        &[ReportedStatus {
            task_id: task_id.clone(),
            state,
            message: None,
            exit_code: Some(exit),
            ip_addresses: vec![],
            health: None,
        }],
        false,
        now,
    );
    assert!(!st.tasks.contains_key(&task_id));
}

#[test]
fn r3_every_2s_runs_three_times_then_disables_the_job() {
    let mut st = crate::controller::tests::cluster(1);
    let start = T0 + 100;
    add(
        &mut st,
        json!({"name": "tick", "command": "true", "schedule": format!("R3/{}/PT2S", iso(start))}),
        UpsertKind::Scheduled,
        T0,
    );
    // Not due yet: look again at the start.
    let (r, _) = pass(&mut st, T0);
    assert_eq!(r, Requeue::At(start));
    assert!(runs(&st, "tick").is_empty());
    for k in 0..3 {
        let now = start + k * 2000 + 5;
        let (_, ch) = pass(&mut st, now);
        let rs = runs(&st, "tick");
        assert_eq!(rs.len(), k as usize + 1, "after due time {k}");
        let last = rs.last().unwrap();
        assert_eq!(last.status, RunStatus::Running);
        assert_eq!(last.scheduled_for, Some(start + k * 2000));
        // The run, its task and the schedule's progress are one write.
        let keys: Vec<&str> = ch
            .ops
            .iter()
            .filter_map(|op| match op {
                berth_store::Op::Put { key, .. } => Some(key.as_str()),
                _ => None,
            })
            .collect();
        assert!(keys.contains(&"/berth/jobs/tick"), "{keys:?}");
        assert!(
            keys.iter().any(|k| k.starts_with("/berth/jobruns/tick/")),
            "{keys:?}"
        );
        assert!(
            keys.iter().any(|k| k.starts_with("/berth/tasks/tick.run-")),
            "{keys:?}"
        );
        // A second look at the same instant starts nothing more.
        pass(&mut st, now);
        assert_eq!(runs(&st, "tick").len(), k as usize + 1);
        end_task(&mut st, "tick", TaskState::Finished, 0, now + 500);
    }
    let rec = &st.jobs["tick"];
    assert!(rec.job.disabled, "R0 disables the job");
    assert!(rec.job.schedule.starts_with("R0/"), "{}", rec.job.schedule);
    assert_eq!(rec.job.success_count, 3);
    let (r, _) = pass(&mut st, start + 60_000);
    assert_eq!(r, Requeue::Idle);
    assert_eq!(runs(&st, "tick").len(), 3);
    assert!(
        runs(&st, "tick")
            .iter()
            .all(|r| r.status == RunStatus::Success)
    );
}

#[test]
fn missed_periods_collapse_into_one_run() {
    let mut st = crate::controller::tests::cluster(1);
    add(
        &mut st,
        json!({"name": "j", "command": "true", "schedule": format!("R/{}/PT2S", iso(T0))}),
        UpsertKind::Scheduled,
        T0,
    );
    // Five periods pass unseen (a server that was down).
    pass(&mut st, T0 + 10_500);
    let rs = runs(&st, "j");
    assert_eq!(rs.len(), 1, "{rs:?}");
    assert_eq!(rs[0].scheduled_for, Some(T0 + 10_000));
    assert!(
        st.jobs["j"].job.schedule.contains(&iso(T0 + 12_000)[..19]),
        "{}",
        st.jobs["j"].job.schedule
    );
    end_task(&mut st, "j", TaskState::Finished, 0, T0 + 11_000);
    pass(&mut st, T0 + 11_500);
    assert_eq!(runs(&st, "j").len(), 1);
    pass(&mut st, T0 + 12_001);
    assert_eq!(runs(&st, "j").len(), 2);
}

#[test]
fn a_cron_job_runs_once_per_minute_matched() {
    let mut st = crate::controller::tests::cluster(1);
    // T0 is 2030-03-17T17:46:40Z.
    add(
        &mut st,
        json!({"name": "c", "command": "true", "cron": "* * * * *"}),
        UpsertKind::Scheduled,
        T0,
    );
    let (r, _) = pass(&mut st, T0);
    let next_minute = T0 - T0 % 60_000 + 60_000;
    assert_eq!(r, Requeue::At(next_minute));
    pass(&mut st, next_minute + 10);
    assert_eq!(runs(&st, "c").len(), 1);
    pass(&mut st, next_minute + 20);
    assert_eq!(runs(&st, "c").len(), 1);
}

#[test]
fn a_failing_job_with_retries_runs_retries_plus_one_times_then_records_the_error() {
    let mut st = crate::controller::tests::cluster(1);
    add(
        &mut st,
        json!({"name": "f", "command": "false", "retries": 2, "schedule": format!("R1/{}/PT1H", iso(T0))}),
        UpsertKind::Scheduled,
        T0,
    );
    let mut now = T0 + 1;
    for attempt in 1..=3 {
        pass(&mut st, now);
        let rs = runs(&st, "f");
        assert_eq!(rs.len(), 1, "one run, several attempts");
        assert_eq!(rs[0].status, RunStatus::Running);
        assert_eq!(rs[0].attempts, attempt);
        end_task(&mut st, "f", TaskState::Failed, 1, now + 10);
        now += 100;
    }
    let rs = runs(&st, "f");
    assert_eq!(rs[0].status, RunStatus::Failure);
    assert_eq!(rs[0].exit_code, Some(1));
    assert_eq!(st.jobs["f"].job.error_count, 1);
    assert!(!st.jobs["f"].job.last_error.is_empty());
    pass(&mut st, now);
    assert_eq!(runs(&st, "f")[0].attempts, 3, "no fourth attempt");
    assert!(st.tasks.is_empty());
}

#[test]
fn a_child_runs_only_after_both_parents_succeed() {
    let mut st = crate::controller::tests::cluster(1);
    for p in ["p1", "p2"] {
        add(
            &mut st,
            json!({"name": p, "command": "true", "schedule": format!("R1/{}/PT1H", iso(T0))}),
            UpsertKind::Scheduled,
            T0,
        );
    }
    add(
        &mut st,
        json!({"name": "child", "command": "true", "parents": ["p1", "p2"]}),
        UpsertKind::Dependent,
        T0,
    );
    pass(&mut st, T0 + 1);
    end_task(&mut st, "p1", TaskState::Finished, 0, T0 + 10);
    pass(&mut st, T0 + 20);
    assert!(runs(&st, "child").is_empty(), "one parent is not enough");
    end_task(&mut st, "p2", TaskState::Failed, 2, T0 + 30);
    pass(&mut st, T0 + 40);
    assert!(
        runs(&st, "child").is_empty(),
        "a failed parent does not count"
    );
    // p2 succeeds on a manual run.
    let mut ch = Changes::default();
    jobs::run_now(&mut st, &mut ch, "p2", None, T0 + 50).unwrap();
    pass(&mut st, T0 + 60);
    end_task(&mut st, "p2", TaskState::Finished, 0, T0 + 70);
    pass(&mut st, T0 + 80);
    let rs = runs(&st, "child");
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].status, RunStatus::Running);
}

#[test]
fn a_run_past_max_completion_time_is_killed_and_fails() {
    let mut st = crate::controller::tests::cluster(1);
    add(
        &mut st,
        json!({"name": "slow", "command": "sleep 100", "maxCompletionTime": 3, "retries": 0,
               "schedule": format!("R1/{}/PT1H", iso(T0))}),
        UpsertKind::Scheduled,
        T0,
    );
    let (r, _) = pass(&mut st, T0);
    assert_eq!(
        r,
        Requeue::At(T0 + 3000),
        "the deadline is when to look again"
    );
    let task = runs(&st, "slow")[0].task_id.clone().unwrap();
    pass(&mut st, T0 + 2999);
    assert_eq!(st.tasks[&task].goal, berth_core::task::TaskGoal::Running);
    pass(&mut st, T0 + 3000);
    assert_eq!(st.tasks[&task].goal, berth_core::task::TaskGoal::Killed);
    let run = &runs(&st, "slow")[0];
    assert_eq!(run.status, RunStatus::Failure);
    assert!(
        run.message
            .as_deref()
            .unwrap()
            .contains("maxCompletionTime"),
        "{run:?}"
    );
    // The agent's report of the kill changes nothing more.
    let node = st.tasks[&task].node_id.clone();
    let mut ch = Changes::default();
    crate::controller::apply_statuses(
        &mut st,
        &mut ch,
        &node,
        &[ReportedStatus {
            task_id: task,
            state: TaskState::Killed,
            message: None,
            exit_code: Some(143),
            ip_addresses: vec![],
            health: None,
        }],
        false,
        T0 + 3100,
    );
    assert_eq!(runs(&st, "slow")[0].status, RunStatus::Failure);
    assert_eq!(st.jobs["slow"].job.error_count, 1);
}

#[test]
fn a_due_run_is_skipped_while_one_is_active_unless_concurrent() {
    let mut st = crate::controller::tests::cluster(1);
    for (name, concurrent) in [("serial", false), ("parallel", true)] {
        add(
            &mut st,
            json!({"name": name, "command": "sleep 10", "concurrent": concurrent,
                   "schedule": format!("R/{}/PT1S", iso(T0))}),
            UpsertKind::Scheduled,
            T0,
        );
    }
    pass(&mut st, T0);
    pass(&mut st, T0 + 1000);
    pass(&mut st, T0 + 2000);
    assert_eq!(runs(&st, "serial").len(), 1);
    assert_eq!(runs(&st, "parallel").len(), 3);
    assert_eq!(st.counters.get("job_runs_skipped"), Some(&2));
}

#[test]
fn killing_a_job_stops_its_task_and_the_run_stays_killed() {
    let mut st = crate::controller::tests::cluster(1);
    add(
        &mut st,
        json!({"name": "k", "command": "sleep 100", "schedule": format!("R1/{}/PT1H", iso(T0))}),
        UpsertKind::Scheduled,
        T0,
    );
    pass(&mut st, T0);
    let task = runs(&st, "k")[0].task_id.clone().unwrap();
    let mut ch = Changes::default();
    assert_eq!(jobs::kill(&mut st, &mut ch, "k", T0 + 10).unwrap(), 1);
    assert_eq!(st.tasks[&task].goal, berth_core::task::TaskGoal::Killed);
    assert_eq!(runs(&st, "k")[0].status, RunStatus::Killed);
}

#[test]
fn an_unplaceable_run_waits_queued_and_says_why() {
    let mut st = crate::controller::tests::cluster(1);
    add(
        &mut st,
        json!({"name": "big", "command": "true", "cpus": 64, "schedule": format!("R1/{}/PT1H", iso(T0))}),
        UpsertKind::Scheduled,
        T0,
    );
    pass(&mut st, T0);
    let run = &runs(&st, "big")[0];
    assert_eq!(run.status, RunStatus::Queued);
    assert!(run.message.as_deref().unwrap().contains("cpus"), "{run:?}");
    assert!(st.tasks.is_empty());
}
