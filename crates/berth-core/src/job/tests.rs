use super::graph::*;
use super::*;
use serde_json::json;

fn job(v: Value) -> Job {
    job_from_json(v.clone()).unwrap_or_else(|e| panic!("{v}: {e}"))
}

fn errors(v: Value) -> ValidationErrors {
    match job_from_json(v) {
        Ok(j) => panic!("accepted: {j:?}"),
        Err(e) => e,
    }
}

fn has(errs: &ValidationErrors, path: &str, needle: &str) -> bool {
    errs.0
        .iter()
        .any(|f| f.path == path && f.errors.iter().any(|e| e.contains(needle)))
}

fn ts(s: &str) -> jiff::Timestamp {
    s.parse().expect("test timestamp")
}

#[test]
fn defaults_follow_chronos() {
    let j = job(json!({"name": "a", "command": "true", "schedule": "R/2026-01-01T00:00:00Z/PT1H"}));
    assert!(j.shell);
    assert_eq!(j.epsilon, "PT60S");
    assert_eq!(j.retries, 2);
    assert_eq!((j.cpus, j.mem, j.disk), (0.1, 128.0, 256.0));
    assert!(!j.disabled && !j.soft_error && !j.concurrent && !j.async_);
    assert_eq!(j.run_mode, RunMode::PerRun);
    assert_eq!(j.trigger(), Some(Trigger::Schedule));
    // Default is what `{}` deserialises to.
    let empty: Job = serde_json::from_value(json!({})).expect("{}");
    assert_eq!(empty, Job::default());
}

#[test]
fn zero_resources_mean_the_default() {
    let j = job(
        json!({"name": "a", "command": "x", "schedule": "R/2026-01-01T00:00:00Z/P1D",
                       "cpus": 0, "mem": 0.0, "disk": 512}),
    );
    assert_eq!((j.cpus, j.mem, j.disk), (0.1, 128.0, 512.0));
}

#[test]
fn json_uses_chronos_names() {
    let j = job(json!({
        "name": "etl.daily-1", "command": "run", "schedule": "R/2026-01-01T00:00:00Z/P1D",
        "scheduleTimeZone": "Europe/Berlin", "async": true, "softError": true,
        "environmentVariables": [{"name": "A", "value": "1"}],
        "container": {"type": "DOCKER", "image": "busybox", "forcePullImage": true,
                      "volumes": [{"containerPath": "/data", "hostPath": "/srv", "mode": "RO"}]},
        "constraints": [["rack", "LIKE", "r[0-9]"]],
        "maxCompletionTime": 600, "runMode": "warm", "highPriority": true, "runAsUser": "nobody",
        "dataProcessingJobType": true, "ownerName": "Ops", "executorFlags": ""
    }));
    assert!(j.async_ && j.soft_error && j.high_priority && j.data_processing_job_type);
    assert_eq!(j.run_mode, RunMode::Warm);
    assert_eq!(j.max_completion_time, Some(600));
    let c = j.container.as_ref().expect("container");
    assert_eq!((c.kind.as_str(), c.network.as_str()), ("DOCKER", "HOST"));
    let out = serde_json::to_value(&j).expect("serialise");
    for key in [
        "scheduleTimeZone",
        "async",
        "softError",
        "environmentVariables",
        "maxCompletionTime",
        "runMode",
        "errorsSinceLastSuccess",
        "lastSuccess",
        "successCount",
        "executorFlags",
    ] {
        assert!(out.get(key).is_some(), "{key} missing in {out}");
    }
    assert_eq!(out["runMode"], "warm");
    assert_eq!(out["container"]["type"], "DOCKER");
    assert_eq!(out["container"]["forcePullImage"], true);
    // Absent extension fields stay absent; parents only on dependent jobs.
    assert!(out.get("cron").is_none() && out.get("parents").is_none());
    let back: Job = serde_json::from_value(out).expect("round trip");
    assert_eq!(back, j);
}

#[test]
fn names_are_checked() {
    for bad in ["", "a b", "a/b", "..", ".", "é", "a?"] {
        let e =
            errors(json!({"name": bad, "command": "x", "schedule": "R/2026-01-01T00:00:00Z/P1D"}));
        assert!(e.0.iter().any(|f| f.path == "/name"), "{bad:?}: {e}");
    }
    assert!(has(
        &errors(json!({"command": "x", "schedule": "R/2026-01-01T00:00:00Z/P1D"})),
        "/name",
        "is required"
    ));
    assert!(has(
        &errors(json!({"name": "x".repeat(300), "command": "x", "schedule": "R//P1D"})),
        "/name",
        "at most 255"
    ));
    for good in ["a", "A_b-c.d", "0", "...x"] {
        assert!(is_valid_job_name(good), "{good}");
    }
}

#[test]
fn exactly_one_trigger() {
    let none = errors(json!({"name": "a", "command": "x"}));
    assert!(has(
        &none,
        "/schedule",
        "needs a schedule, a cron expression or parents"
    ));
    let both =
        errors(json!({"name": "a", "command": "x", "schedule": "R//P1D", "cron": "* * * * *"}));
    assert!(has(&both, "/cron", "not both"));
    let mixed =
        errors(json!({"name": "a", "command": "x", "schedule": "R//P1D", "parents": ["b"]}));
    assert!(has(&mixed, "/parents", "cannot also have a schedule"));
    let c = job(json!({"name": "a", "command": "x", "cron": "0 3 * * *"}));
    assert_eq!(c.trigger(), Some(Trigger::Cron));
    assert!(
        c.parsed_schedule()
            .is_some_and(|s| s.is_ok_and(|s| s.is_cron()))
    );
    let d = job(json!({"name": "a", "command": "x", "parents": ["b"]}));
    assert_eq!(d.trigger(), Some(Trigger::Parents));
    assert!(d.parsed_schedule().is_none());
}

#[test]
fn schedule_errors_land_on_their_field() {
    let e = errors(json!({"name": "a", "command": "x", "schedule": "R/2026-01-01T00:00:00Z/PT"}));
    assert!(has(&e, "/schedule", "period 'PT' has no fields"), "{e}");
    let e = errors(
        json!({"name": "a", "command": "x", "schedule": "R/2026-01-01T00:00:00Z/PT1H",
                          "scheduleTimeZone": "Mars/Base"}),
    );
    assert!(
        has(&e, "/scheduleTimeZone", "unknown time zone 'Mars/Base'"),
        "{e}"
    );
    let e = errors(json!({"name": "a", "command": "x", "cron": "61 * * * *"}));
    assert!(has(&e, "/cron", "field 1 (minute) '61'"), "{e}");
}

#[test]
fn resources_retries_and_lists() {
    let e = errors(json!({"name": "a", "command": "x", "schedule": "R//P1D",
                          "cpus": -1, "retries": 101}));
    assert!(has(&e, "/cpus", "finite number, 0 or more"));
    assert!(has(&e, "/retries", "between 0 and 100"));
    // JSON has no infinity; a typed job can.
    let inf = Job {
        mem: f64::INFINITY,
        ..sched("a", "R//P1D")
    };
    assert!(has(&validate_job(&inf).unwrap_err(), "/mem", "finite"));
    let e = errors(
        json!({"name": "a", "command": "x", "schedule": "R//P1D", "retries": -1,
                          "disk": -0.5}),
    );
    assert!(has(&e, "/retries", "between 0 and 100") && has(&e, "/disk", "0 or more"));
    let e = errors(json!({"name": "a", "command": "x", "schedule": "R//P1D",
                          "parents": [], "constraints": [["rack", "NEAR", "x"], ["a", "LIKE"], ["h", "LIKE", "("]],
                          "environmentVariables": [{"name": "", "value": "v"}],
                          "container": {"type": "LXC", "image": "", "network": "NONE",
                                        "volumes": [{"containerPath": "", "mode": "RX"}]}}));
    for (path, needle) in [
        ("/constraints(0)", "EQUALS, LIKE or UNLIKE"),
        ("/constraints(1)", "[attribute, operator, value]"),
        ("/constraints(2)", "not a valid regular expression"),
        ("/environmentVariables(0)/name", "non-empty"),
        ("/container/type", "DOCKER or MESOS"),
        ("/container/image", "is required"),
        ("/container/network", "BRIDGE, HOST or USER"),
        ("/container/volumes(0)/containerPath", "is required"),
        ("/container/volumes(0)/mode", "RW or RO"),
    ] {
        assert!(has(&e, path, needle), "{path}: {e}");
    }
    let e = errors(json!({"name": "a", "schedule": "R//P1D"}));
    assert!(has(&e, "/command", "is required unless a container"));
    assert!(
        job_from_json(json!({"name": "a", "schedule": "R//P1D",
                                 "container": {"image": "busybox"}}))
        .is_ok()
    );
}

#[test]
fn wrong_types_name_the_path() {
    let e = errors(json!({"name": "a", "retries": "two"}));
    assert_eq!(e.0[0].path, "/retries");
    let e = errors(json!({"name": "a", "container": {"volumes": [{"mode": 1}]}}));
    assert_eq!(e.0[0].path, "/container/volumes(0)/mode");
    let e = errors(json!({"name": "a", "runMode": "cold"}));
    assert_eq!(e.0[0].path, "/runMode");
    assert_eq!(errors(json!([1])).0[0].path, "/");
}

#[test]
fn parents_are_names_without_repeats_or_self() {
    let e = errors(json!({"name": "a", "command": "x", "parents": ["b", "", "b", "a", "c d"]}));
    assert!(has(&e, "/parents(1)", "parent name is required"));
    assert!(has(&e, "/parents(2)", "listed twice"));
    assert!(has(&e, "/parents(3)", "its own parent"));
    assert!(has(&e, "/parents(4)", "may only contain"));
}

fn dep(name: &str, parents: &[&str]) -> Job {
    Job {
        name: name.into(),
        command: "x".into(),
        parents: parents.iter().map(|p| p.to_string()).collect(),
        ..Job::default()
    }
}

fn sched(name: &str, schedule: &str) -> Job {
    Job {
        name: name.into(),
        command: "x".into(),
        schedule: schedule.into(),
        schedule_time_zone: "Europe/Berlin".into(),
        ..Job::default()
    }
}

fn names(ps: &[String]) -> Vec<&str> {
    ps.iter().map(String::as_str).collect()
}

#[test]
fn cycles_are_found_with_their_path() {
    let jobs = [
        sched("a", "R/2026-01-01T00:00:00Z/P1D"),
        dep("b", &["a"]),
        dep("c", &["b"]),
        dep("d", &["c", "a"]),
    ];
    let g = JobGraph::from_jobs(&jobs);
    assert_eq!(g.children("a"), ["b", "d"]);
    assert_eq!(g.check_upsert("e", &["d".into(), "b".into()]), Ok(()));
    // Making b depend on d: b -> d -> c -> b.
    assert_eq!(
        g.check_upsert("b", &["d".into()]),
        Err(GraphError::Cycle {
            path: vec!["b".into(), "d".into(), "c".into(), "b".into()]
        })
    );
    // Replacing c's parents drops the old edge c -> b: no cycle through it.
    assert_eq!(g.check_upsert("c", &["a".into()]), Ok(()));
    let e = g.check_upsert("a", &["d".into()]).unwrap_err();
    assert!(
        e.to_string().starts_with("dependency cycle: a -> d -> "),
        "{e}"
    );
    assert!(e.to_string().ends_with("-> a"), "{e}");
    assert_eq!(
        g.check_upsert("x", &["x".into()]),
        Err(GraphError::Cycle {
            path: vec!["x".into(), "x".into()]
        })
    );
    assert_eq!(
        g.check_upsert("x", &["nope".into()])
            .unwrap_err()
            .to_string(),
        "parent 'nope' does not exist"
    );
}

#[test]
fn cycle_check_is_linear_on_a_long_chain() {
    let mut jobs = vec![sched("j0", "R//PT1H")];
    for i in 1..5000 {
        jobs.push(dep(&format!("j{i}"), &[&format!("j{}", i - 1)]));
    }
    let g = JobGraph::from_jobs(&jobs);
    let e = g.check_upsert("j0", &["j4999".into()]).unwrap_err();
    let GraphError::Cycle { path } = e else {
        panic!("{e}")
    };
    assert_eq!(path.len(), 5001);
}

#[test]
fn deleting_a_dependent_parent_hands_its_parents_down() {
    let jobs = [
        sched("a", "R/2026-01-01T00:00:00Z/P1D"),
        sched("z", "R/2026-01-01T00:00:00Z/P1D"),
        dep("b", &["a", "z"]),
        dep("c", &["b"]),
        dep("d", &["b", "a"]),
    ];
    let changed = reparent_on_delete(&jobs, "b");
    assert_eq!(changed.len(), 2);
    assert_eq!(changed[0].name, "c");
    assert_eq!(names(&changed[0].parents), ["a", "z"]);
    assert_eq!(changed[1].name, "d");
    assert_eq!(names(&changed[1].parents), ["a", "z"]);
    assert!(changed.iter().all(|j| j.schedule.is_empty() && !j.disabled));
    assert!(reparent_on_delete(&jobs, "c").is_empty());
    assert!(reparent_on_delete(&jobs, "missing").is_empty());
}

#[test]
fn deleting_a_scheduled_parent_hands_its_schedule_down() {
    let jobs = [
        sched("a", "R/2026-01-01T02:30:00+01:00/P1D"),
        sched("z", "R/2026-01-01T00:00:00Z/P1D"),
        dep("only_a", &["a"]),
        dep("a_and_z", &["a", "z"]),
    ];
    let changed = reparent_on_delete(&jobs, "a");
    let only = changed.iter().find(|j| j.name == "only_a").expect("only_a");
    assert!(only.parents.is_empty());
    assert_eq!(only.schedule, "R/2026-01-01T02:30:00+01:00/P1D");
    assert_eq!(only.schedule_time_zone, "Europe/Berlin");
    assert_eq!(only.trigger(), Some(Trigger::Schedule));
    assert!(validate_job(only).is_ok());
    let both = changed
        .iter()
        .find(|j| j.name == "a_and_z")
        .expect("a_and_z");
    assert_eq!(names(&both.parents), ["z"]);
    assert!(both.schedule.is_empty());
    // A parent with no trigger at all (invalid, but stored): the orphan is disabled.
    let broken = [dep("p", &[]), dep("q", &["p"])];
    let changed = reparent_on_delete(&broken, "p");
    assert!(changed[0].parents.is_empty() && changed[0].disabled);
}

#[test]
fn readiness_needs_every_parent_since_the_last_run() {
    let p = |name, t: Option<&str>| ParentState {
        name,
        last_success: t.map(ts),
    };
    let run = Some(ts("2026-01-01T10:00:00Z"));
    let parents = [
        p("a", Some("2026-01-01T10:05:00Z")),
        p("b", Some("2026-01-01T09:00:00Z")),
    ];
    assert_eq!(pending_parents(run, &parents), ["b"]);
    assert!(!is_ready(run, &parents));
    let parents = [
        p("a", Some("2026-01-01T10:05:00Z")),
        p("b", Some("2026-01-01T10:06:00Z")),
    ];
    assert!(is_ready(run, &parents));
    // A success at the instant the child started was what started it.
    assert!(!is_ready(run, &[p("a", Some("2026-01-01T10:00:00Z"))]));
    // Never ran: any success of each parent will do; a parent that never succeeded blocks.
    assert!(is_ready(None, &[p("a", Some("2000-01-01T00:00:00Z"))]));
    assert_eq!(
        pending_parents(None, &[p("a", None), p("b", Some("2000-01-01T00:00:00Z"))]),
        ["a"]
    );
    assert!(!is_ready(None, &[]));
}
