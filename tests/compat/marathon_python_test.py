#!/usr/bin/env python3
"""Drive a Berth server with marathon-python 0.13.0, exactly as its users do.

Usage: BERTH_URL=http://127.0.0.1:8080 python marathon_python_test.py

marathon-python builds model objects with ``cls(**json)``, so any key it does not know
raises TypeError: every response below must parse. Each check prints PASS/FAIL; the last
line is ``N passed, M failed`` (parsed by CI) and the exit status is non-zero on failure.
"""

import collections
import collections.abc

# marathon-python 0.13.0 still uses the pre-3.10 aliases.
for _name in ("Iterable", "Mapping", "MutableMapping", "Sequence", "Callable"):
    if not hasattr(collections, _name):
        setattr(collections, _name, getattr(collections.abc, _name))

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import uuid  # noqa: E402

import marathon  # noqa: E402
from marathon import MarathonClient  # noqa: E402
from marathon.exceptions import ConflictError, MarathonHttpError, NotFoundError  # noqa: E402
from marathon.models import (  # noqa: E402
    MarathonApp,
    MarathonDeployment,
    MarathonGroup,
    MarathonHealthCheck,
    MarathonInfo,
    MarathonQueueItem,
    MarathonTask,
)
from marathon.models.events import EventFactory, MarathonEvent  # noqa: E402

URL = os.environ.get("BERTH_URL", "http://127.0.0.1:8080").rstrip("/")
WAIT = float(os.environ.get("BERTH_COMPAT_WAIT", "60"))
RUN = uuid.uuid4().hex[:6]
APP = f"/compat-{RUN}/web"
STUCK = f"/compat-{RUN}/stuck"
STUCK2 = f"/compat-{RUN}/stuck2"
CLONE = f"/compat-{RUN}/clone"
HEALTHY = f"/compat-{RUN}/healthy"
GROUP = f"/compat-{RUN}-grp"
GROUP_APP = f"{GROUP}/worker"

# With BERTH_USER/BERTH_PASSWORD the client authenticates with HTTP basic auth, as
# marathon-python does against Marathon's --http_credentials.
USER = os.environ.get("BERTH_USER")
PASSWORD = os.environ.get("BERTH_PASSWORD")
client = MarathonClient(URL, username=USER, password=PASSWORD)
results = {"passed": 0, "failed": 0}
ctx = {}


class CheckFailed(Exception):
    pass


def expect(cond, msg):
    if not cond:
        raise CheckFailed(msg)


def check(name):
    def deco(fn):
        try:
            detail = fn()
        except Exception as e:  # noqa: BLE001 - every failure is a finding
            results["failed"] += 1
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
            if not isinstance(e, CheckFailed):
                tb = traceback.format_exc().strip().splitlines()
                for line in tb[-6:]:
                    print(f"     {line}", flush=True)
        else:
            results["passed"] += 1
            print(f"PASS {name}" + (f" ({detail})" if detail else ""), flush=True)
        return fn

    return deco


def wait_for(desc, fn, timeout=WAIT, interval=0.5):
    """Polls fn until it returns a truthy value; raises CheckFailed with the last value."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise CheckFailed(f"timed out after {timeout:.0f}s waiting for {desc} (last: {last!r})")


def running(app_id):
    app = client.get_app(app_id)
    return app.tasks_running


def wait_running(app_id, n):
    def ok():
        app = client.get_app(app_id)
        live = [t for t in app.tasks if t.state == "TASK_RUNNING"]
        return app.tasks_running == n and len(live) == n and app
    return wait_for(f"{n} running tasks of {app_id}", ok)


def deployments_of(app_id):
    return [d for d in client.list_deployments() if app_id in (d.affected_apps or [])]


def ctx_ids(app_id):
    return [t.id for t in client.get_app(app_id).tasks if t.state == "TASK_RUNNING"]


def wait_no_deployments(app_id=None):
    if app_id is None:
        return wait_for("no deployments", lambda: client.list_deployments() == [] or None)
    return wait_for(f"no deployments of {app_id}", lambda: not deployments_of(app_id))


def deployment_result(r, what):
    expect(isinstance(r, dict), f"{what} returned {r!r}, not a dict")
    expect(r.get("deploymentId"), f"{what} returned no deploymentId: {r!r}")
    expect(r.get("version"), f"{what} returned no version: {r!r}")
    marathon.util.to_datetime(r["version"])
    return r


# --- event stream readers (started first so they see everything) --------------------------
events = {"parsed": [], "errors": [], "types": [], "first_at": None, "stream_error": None}
filtered = {"parsed": [], "error": None}
started_at = time.time()


def read_all_events():
    """Reads the raw stream (so one bad event does not end it) and parses each event with the
    client's EventFactory, as event_stream(raw=False) would."""
    ef = EventFactory()
    try:
        for raw in client.event_stream(raw=True):
            if events["first_at"] is None:
                events["first_at"] = time.time()
            try:
                data = json.loads(raw.strip())
                events["types"].append(data.get("eventType"))
                ev = ef.process(data)
                expect(isinstance(ev, MarathonEvent), f"not a MarathonEvent: {ev!r}")
                marathon.util.to_datetime(data["timestamp"])
                events["parsed"].append(ev)
            except Exception as e:  # noqa: BLE001
                events["errors"].append(f"{type(e).__name__}: {e} in {raw.strip()[:300]}")
    except Exception as e:  # noqa: BLE001
        events["stream_error"] = f"{type(e).__name__}: {e}"


def read_filtered_events():
    """The client's own typed reader with an event_type filter, as users call it."""
    try:
        for ev in client.event_stream(event_types=["status_update_event", "deployment_success"]):
            filtered["parsed"].append(ev)
    except Exception as e:  # noqa: BLE001
        filtered["error"] = f"{type(e).__name__}: {e}"


for target in (read_all_events, read_filtered_events):
    threading.Thread(target=target, daemon=True).start()


# --- system ---------------------------------------------------------------------------------
@check("ping")
def _():
    r = client.ping()
    expect(r.strip() == b"pong", f"ping returned {r!r}")


@check("get_info")
def _():
    info = client.get_info()
    expect(isinstance(info, MarathonInfo), f"got {info!r}")
    parts = tuple(int(x) for x in info.version.split(".")[:3])
    expect(parts >= (0, 11, 0), f"version {info.version} < 0.11.0 (integration suite skips events)")
    expect(info.http_config is not None and info.marathon_config is not None
           and info.zookeeper_config is not None, "missing http/marathon/zookeeper config")
    return f"version {info.version}"


@check("get_leader")
def _():
    r = client.get_leader()
    expect(isinstance(r, dict) and ":" in str(r.get("leader", "")), f"got {r!r}")
    return r["leader"]


@check("event_stream: first event within 10 s")
def _():
    wait_for("first SSE event", lambda: events["first_at"] or events["stream_error"], timeout=10, interval=0.1)
    expect(events["stream_error"] is None, f"stream failed: {events['stream_error']}")
    return f"{events['types'][0]} after {events['first_at'] - started_at:.2f}s"


# --- apps -----------------------------------------------------------------------------------
@check("create_app (5 x sleep 3600)")
def _():
    app = client.create_app(APP, MarathonApp(cmd="sleep 3600", instances=5, mem=16, cpus=0.1))
    expect(isinstance(app, MarathonApp), f"create_app returned {app!r} (expected 201 + app)")
    expect(app.id == APP, f"id {app.id}")
    expect(app.instances == 5, f"instances {app.instances}")
    expect(app.deployments, "created app lists no deployments")
    ctx["create_deployment"] = app.deployments[0]["id"] if isinstance(app.deployments[0], dict) else None


@check("list_deployments non-empty right after create")
def _():
    deps = client.list_deployments()
    expect(all(isinstance(d, MarathonDeployment) for d in deps), f"got {deps!r}")
    mine = [d for d in deps if APP in (d.affected_apps or [])]
    expect(mine, f"no deployment affects {APP}: {deps!r}")
    d = mine[0]
    expect(d.steps and d.total_steps, f"deployment without steps: {d!r}")
    return f"{d.id}, {d.total_steps} steps"


@check("create_app duplicate -> ConflictError")
def _():
    try:
        client.create_app(APP, MarathonApp(cmd="sleep 3600", instances=1, mem=16, cpus=0.1))
    except ConflictError:
        return None
    raise CheckFailed("no 409")


@check("wait for 5 running")
def _():
    wait_running(APP, 5)
    wait_no_deployments(APP)


@check("list_apps (plain, embed_tasks, embed_counts, filters)")
def _():
    apps = client.list_apps()
    expect(any(a.id == APP for a in apps), f"{APP} not listed")
    apps = client.list_apps(embed_tasks=True, embed_counts=True)
    mine = [a for a in apps if a.id == APP]
    expect(mine, f"{APP} not listed with embeds")
    a = mine[0]
    expect(len(a.tasks) == 5 and all(isinstance(t, MarathonTask) for t in a.tasks), f"tasks {a.tasks!r}")
    expect(a.tasks_running == 5, f"tasksRunning {a.tasks_running}")
    by_id = client.list_apps(app_id=APP)
    expect([x.id for x in by_id] == [APP], f"id filter gave {[x.id for x in by_id]}")
    by_cmd = client.list_apps(cmd="sleep 3600")
    expect(any(x.id == APP for x in by_cmd), "cmd filter lost the app")
    none = client.list_apps(cmd="no-such-command-anywhere")
    expect(not any(x.id == APP for x in none), "cmd filter kept a non-matching app")
    return f"{len(apps)} apps"


@check("get_app (tasks by default, timestamps parse)")
def _():
    a = client.get_app(APP)
    expect(a.id == APP and a.cmd == "sleep 3600" and a.instances == 5, f"got {a!r}")
    expect(len(a.tasks) == 5, f"{len(a.tasks)} tasks embedded by default")
    expect(a.version, "no version")
    marathon.util.to_datetime(a.version)
    expect(a.version_info is not None and a.version_info.last_config_change_at is not None,
           "no versionInfo")
    a2 = client.get_app(APP, embed_tasks=True, embed_counts=True, embed_last_task_failure=True,
                        embed_task_stats=True, embed_readiness=True, embed_deployments=True)
    expect(a2.id == APP, "embed variant")
    # Relative ids and a double slash, as users paste them.
    a3 = client.get_app(APP.lstrip("/"))
    expect(a3.id == APP, "relative id")


@check("get_app unknown -> NotFoundError")
def _():
    try:
        client.get_app(f"/compat-{RUN}/nope")
    except NotFoundError as e:
        return str(e)[:80]
    raise CheckFailed("no 404")


@check("list_tasks (all and per app)")
def _():
    tasks = client.list_tasks()
    mine = [t for t in tasks if t.app_id == APP]
    expect(len(mine) == 5, f"{len(mine)} tasks of {APP} in /v2/tasks")
    per_app = client.list_tasks(APP)
    expect(len(per_app) == 5, f"{len(per_app)} tasks in /v2/apps/{APP}/tasks")
    for t in per_app:
        expect(t.state == "TASK_RUNNING", f"task {t.id} state {t.state}")
        expect(t.staged_at is not None and t.started_at is not None, f"task {t.id} times")
        expect(t.host and t.slave_id, f"task {t.id} without host/slaveId")
        expect(len(t.service_ports) == len(t.ports) or not t.service_ports,
               f"servicePorts {t.service_ports} vs ports {t.ports}")
    eps = client.list_endpoints()
    expect(any(e.app_id == APP for e in eps) or all(not t.ports for t in per_app),
           "list_endpoints lost the app")
    ctx["tasks"] = [t.id for t in per_app]


@check("scale_app(instances=6)")
def _():
    r = deployment_result(client.scale_app(APP, instances=6), "scale_app")
    wait_running(APP, 6)
    wait_no_deployments(APP)
    return r["deploymentId"]


@check("scale_app(delta=-1)")
def _():
    deployment_result(client.scale_app(APP, delta=-1), "scale_app(delta)")
    wait_running(APP, 5)
    wait_no_deployments(APP)
    expect(client.get_app(APP).instances == 5, "instances != 5")


@check("kill_task(scale=True)")
def _():
    victim = client.list_tasks(APP)[0].id
    t = client.kill_task(APP, victim, scale=True)
    # Marathon answers scale=true with the scaling deployment ({deploymentId, version}) and
    # scale=false with {"task": ...}; the client returns a dict or a MarathonTask accordingly.
    if isinstance(t, MarathonTask):
        expect(t.id == victim, f"returned task {t.id}")
    else:
        deployment_result(t, "kill_task(scale=True)")
    wait_for("instances 4", lambda: client.get_app(APP).instances == 4)
    wait_running(APP, 4)
    wait_no_deployments(APP)
    expect(victim not in [x.id for x in client.list_tasks(APP) if x.state == "TASK_RUNNING"],
           "killed task still running")


@check("kill_task(scale=False) -> task, replaced")
def _():
    victim = client.list_tasks(APP)[0].id
    t = client.kill_task(APP, victim)
    expect(isinstance(t, MarathonTask), f"kill_task returned {t!r} (expected {{'task': ...}})")
    expect(t.id == victim and t.app_id == APP, f"returned task {t.id} of {t.app_id}")

    def replaced():
        a = client.get_app(APP)
        ids = [x.id for x in a.tasks if x.state == "TASK_RUNNING"]
        return a.instances == 4 and len(ids) == 4 and victim not in ids
    wait_for("replacement of the killed task", replaced)
    wait_no_deployments(APP)


@check("kill_given_tasks(scale=False) -> replaced")
def _():
    victim = client.list_tasks(APP)[0].id
    r = client.kill_given_tasks([victim], scale=False)
    expect(r is True, f"kill_given_tasks returned {r!r}")

    def replaced():
        a = client.get_app(APP)
        ids = [t.id for t in a.tasks if t.state == "TASK_RUNNING"]
        return a.instances == 4 and len(ids) == 4 and victim not in ids
    wait_for("replacement of the killed task", replaced)
    wait_no_deployments(APP)


@check("update_app (cmd change)")
def _():
    before = client.get_app(APP).version
    ctx["version_before_update"] = before
    r = deployment_result(
        client.update_app(APP, MarathonApp(cmd="sleep 3601", instances=4, mem=16, cpus=0.1)),
        "update_app")
    wait_no_deployments(APP)
    a = wait_running(APP, 4)
    expect(a.cmd == "sleep 3601", f"cmd {a.cmd}")
    expect(a.version != before, "version unchanged")
    expect(all(t.version == a.version for t in a.tasks if t.state == "TASK_RUNNING"),
           "tasks not on the new version")
    return r["deploymentId"]


@check("update_app locked -> ConflictError, force=True works")
def _():
    r = client.update_app(APP, MarathonApp(cmd="sleep 3602", instances=4, mem=16, cpus=0.1))
    deployment_result(r, "update_app")
    conflict = False
    try:
        client.update_app(APP, MarathonApp(cmd="sleep 3601", instances=4, mem=16, cpus=0.1))
    except ConflictError:
        conflict = True
    if not conflict and not deployments_of(APP):
        return "deployment finished before the second PUT; conflict not observable"
    expect(conflict, "second update during a deployment was not a 409")
    deployment_result(client.update_app(
        APP, MarathonApp(cmd="sleep 3601", instances=4, mem=16, cpus=0.1), force=True), "forced update")
    wait_no_deployments(APP)
    wait_running(APP, 4)


@check("restart_app")
def _():
    old = set(ctx_ids(APP))
    r = deployment_result(client.restart_app(APP), "restart_app")
    wait_no_deployments(APP)
    wait_for("all tasks replaced", lambda: len(set(ctx_ids(APP)) - old) == 4 and not (set(ctx_ids(APP)) & old))
    return r["deploymentId"]



@check("list_versions / get_version")
def _():
    versions = client.list_versions(APP)
    expect(len(versions) >= 2, f"versions {versions}")
    for v in versions:
        marathon.util.to_datetime(v)
    expect(ctx.get("version_before_update") in versions, "pre-update version missing")
    old = client.get_version(APP, ctx["version_before_update"])
    expect(isinstance(old, MarathonApp) and old.cmd == "sleep 3600", f"old version {old!r}")
    return f"{len(versions)} versions"


@check("rollback_app")
def _():
    r = deployment_result(client.rollback_app(APP, ctx["version_before_update"]), "rollback_app")
    wait_no_deployments(APP)
    a = client.get_app(APP)
    expect(a.cmd == "sleep 3600", f"cmd after rollback {a.cmd}")
    wait_running(APP, a.instances)
    return f"{r['deploymentId']}, instances {a.instances}"


@check("update_app with a fetched app (round trip), create_app of a clone")
def _():
    a = client.get_app(APP)
    a.labels = {"compat": "yes"}
    deployment_result(client.update_app(APP, a), "update_app(round trip)")
    wait_no_deployments(APP)
    expect(client.get_app(APP).labels == {"compat": "yes"}, "labels not applied")
    expect([x.id for x in client.list_apps(label="compat==yes")] == [APP], "label filter")
    clone = client.get_app(APP)
    clone.instances = 1
    made = client.create_app(CLONE, clone)
    expect(isinstance(made, MarathonApp) and made.id == CLONE, f"clone {made!r}")
    wait_running(CLONE, 1)
    wait_no_deployments(CLONE)


@check("kill_tasks(app) and update_apps([...])")
def _():
    killed = client.kill_tasks(CLONE)
    expect(isinstance(killed, list) and all(isinstance(t, MarathonTask) for t in killed) and len(killed) == 1,
           f"kill_tasks returned {killed!r}")
    wait_for("clone task replaced",
             lambda: [t for t in client.get_app(CLONE).tasks
                      if t.state == "TASK_RUNNING" and t.id != killed[0].id])
    wait_no_deployments(CLONE)
    deployment_result(client.update_apps([MarathonApp(id=CLONE, instances=2)]), "update_apps")
    wait_running(CLONE, 2)
    wait_no_deployments(CLONE)


@check("health checks: app with COMMAND check becomes healthy, results parse")
def _():
    hc = MarathonHealthCheck(protocol="COMMAND", command="true", interval_seconds=1,
                             grace_period_seconds=5, timeout_seconds=2)
    app = client.create_app(HEALTHY, MarathonApp(cmd="sleep 3600", instances=1, mem=16, cpus=0.1,
                                                 health_checks=[hc]))
    expect(isinstance(app, MarathonApp) and len(app.health_checks) == 1, f"{app!r}")
    a = wait_for("1 healthy task", lambda: (lambda x: x.tasks_healthy == 1 and x)(client.get_app(HEALTHY)))
    results = [r for t in a.tasks for r in t.health_check_results]
    expect(results and results[0].alive is True and results[0].last_success is not None, f"{results!r}")
    wait_no_deployments(HEALTHY)


@check("invalid app -> 422 MarathonHttpError with message")
def _():
    try:
        client.create_app(f"/compat-{RUN}/bad", MarathonApp(cmd="x", args=["y"], mem=16, cpus=0.1))
    except MarathonHttpError as e:
        expect(e.status_code == 422, f"status {e.status_code}")
        expect(e.error_message, "no message")
        return e.error_message[:60]
    raise CheckFailed("accepted an app with both cmd and args")


# --- queue and deployments ------------------------------------------------------------------
@check("list_queue (unplaceable app queued)")
def _():
    app = client.create_app(STUCK, MarathonApp(cmd="sleep 3600", instances=2, mem=16, cpus=100000))
    expect(isinstance(app, MarathonApp), f"create_app returned {app!r}")

    def queued():
        q = client.list_queue()
        return [i for i in q if i.app.id == STUCK]
    items = wait_for("queue item", queued, timeout=15)
    for i in client.list_queue():
        expect(isinstance(i, MarathonQueueItem), f"{i!r}")
    item = items[0]
    expect(item.count == 2, f"count {item.count}")
    expect(item.delay is not None, "no delay")
    client.list_queue(embed_last_unused_offers=True)
    client.reset_delay(STUCK)
    return f"count {item.count}, since {item.since}"


@check("delete_deployment (rollback) of a stuck create")
def _():
    deps = deployments_of(STUCK)
    expect(deps, "stuck app has no deployment")
    r = deployment_result(client.delete_deployment(deps[0].id), "delete_deployment")
    expect(r["deploymentId"] != deps[0].id, "rollback has the cancelled deployment's id")
    wait_no_deployments(STUCK)

    def gone():
        try:
            client.get_app(STUCK)
            return False
        except NotFoundError:
            return True
    wait_for("rolled-back create to remove the app", gone, timeout=20)


@check("delete_deployment(force=True)")
def _():
    client.create_app(STUCK2, MarathonApp(cmd="sleep 3600", instances=1, mem=16, cpus=100000))
    deps = deployments_of(STUCK2)
    expect(deps, "stuck2 has no deployment")
    r = client.delete_deployment(deps[0].id, force=True)
    expect(r == {}, f"got {r!r}")
    wait_no_deployments(STUCK2)
    client.delete_app(STUCK2, force=True)
    wait_no_deployments(STUCK2)


@check("delete_deployment unknown -> NotFoundError")
def _():
    try:
        client.delete_deployment(str(uuid.uuid4()))
    except NotFoundError:
        return None
    raise CheckFailed("no 404")


@check("get_metrics")
def _():
    m = client.get_metrics()
    expect(isinstance(m, dict), f"got {type(m)}")
    for k in ("counters", "gauges", "histograms", "meters", "timers"):
        expect(k in m, f"no {k}")
    return f"{len(m['gauges'])} gauges"


# --- groups ---------------------------------------------------------------------------------
@check("create_group")
def _():
    g = MarathonGroup(id=GROUP, apps=[MarathonApp(id=GROUP_APP, cmd="sleep 3600", instances=1,
                                                  mem=16, cpus=0.1)])
    r = deployment_result(client.create_group(g), "create_group")
    wait_running(GROUP_APP, 1)
    wait_no_deployments(GROUP_APP)
    return r["deploymentId"]


@check("list_groups")
def _():
    groups = client.list_groups()
    expect(all(isinstance(g, MarathonGroup) for g in groups), f"{groups!r}")
    ids = [g.id for g in groups]
    expect(GROUP in ids, f"{GROUP} not in {ids}")
    expect(client.list_groups(id=GROUP), "kwargs filter")


@check("get_group")
def _():
    g = client.get_group(GROUP)
    expect(isinstance(g, MarathonGroup) and g.id == GROUP, f"{g!r}")
    expect([a.id for a in g.apps] == [GROUP_APP], f"apps {[a.id for a in g.apps]}")
    root = client.get_group("/")
    expect(root.id == "/", f"root id {root.id}")


@check("update_group with a fetched group")
def _():
    g = client.get_group(GROUP)
    deployment_result(client.update_group(GROUP, g, force=True), "update_group")
    wait_no_deployments(GROUP_APP)


@check("scale_group(2)")
def _():
    deployment_result(client.scale_group(GROUP, 2), "scale_group")
    wait_for("group app at 2 instances", lambda: client.get_app(GROUP_APP).instances == 2)
    wait_running(GROUP_APP, 2)
    wait_no_deployments(GROUP_APP)


@check("delete_group(force=True)")
def _():
    r = client.delete_group(GROUP, force=True)
    expect(isinstance(r, dict) and r.get("version"), f"got {r!r}")
    wait_no_deployments(GROUP_APP)

    def gone():
        try:
            client.get_group(GROUP)
            return False
        except NotFoundError:
            return True
    wait_for("group removed", gone, timeout=20)
    expect(not any(t.app_id == GROUP_APP for t in client.list_tasks()), "group tasks remain")


# --- teardown, as the marathon-python integration suite does -------------------------------
@check("delete_app(force=True) and wait for no deployments")
def _():
    for a in client.list_apps():
        if a.id.startswith(f"/compat-{RUN}"):
            r = client.delete_app(a.id, force=True)
            deployment_result(r, "delete_app")
    wait_no_deployments()
    wait_for("apps gone", lambda: not [a for a in client.list_apps() if a.id.startswith(f"/compat-{RUN}")])
    wait_for("tasks gone", lambda: not [t for t in client.list_tasks() if t.app_id.startswith(f"/compat-{RUN}")])
    try:
        client.get_app(APP)
        raise CheckFailed("deleted app still found")
    except NotFoundError:
        pass


# --- events ---------------------------------------------------------------------------------
@check("event_stream: every event parses with the client's EventFactory")
def _():
    time.sleep(1)
    expect(events["stream_error"] is None, f"stream ended: {events['stream_error']}")
    expect(not events["errors"], f"{len(events['errors'])} bad events, first: {events['errors'][:3]}")
    seen = sorted(set(events["types"]))
    for needed in ("event_stream_attached", "api_post_event", "deployment_info",
                   "deployment_success", "status_update_event", "deployment_step_success"):
        expect(needed in seen, f"never saw {needed}; saw {seen}")
    plans = [e for e in events["parsed"] if hasattr(e, "plan")]
    expect(plans, "no event carried a plan")
    return f"{len(events['parsed'])} events: {', '.join(seen)}"


@check("event_stream(event_types=...) typed reader")
def _():
    expect(filtered["error"] is None, f"stream ended: {filtered['error']}")
    kinds = {type(e).__name__ for e in filtered["parsed"]}
    expect(filtered["parsed"], "no events")
    wrong = kinds - {"MarathonStatusUpdateEvent", "MarathonDeploymentSuccess", "MarathonEventStreamAttached"}
    expect(not wrong, f"filter let through {wrong}")
    return ", ".join(sorted(kinds))


print(f"{results['passed']} passed, {results['failed']} failed", flush=True)
sys.exit(1 if results["failed"] else 0)
