#!/usr/bin/env python3
"""Drive a Berth server with chronos-python 1.2.1 (PyPI ``chronos-python``), unchanged.

Usage: BERTH_URL=http://127.0.0.1:8080 BERTH_USER=u BERTH_PASSWORD=p python chronos_python_test.py

chronos-python talks to ``/v1/scheduler/*`` with HTTP basic auth (sent after a 401 with a
``WWW-Authenticate`` challenge), treats any empty 2xx but 204 as an error, and parses every
body as JSON when it can. Each check prints PASS/FAIL; the last line is ``N passed, M failed``
(parsed by the Rust test) and the exit status is non-zero on failure.
"""

import os
import sys
import traceback
import uuid
from urllib.parse import urlparse

import chronos

URL = os.environ.get("BERTH_URL", "http://127.0.0.1:8080").rstrip("/")
USER = os.environ.get("BERTH_USER")
PASSWORD = os.environ.get("BERTH_PASSWORD")
RUN = uuid.uuid4().hex[:6]
PARENT = f"compat-{RUN}-etl"
CHILD = f"compat-{RUN}-report"

u = urlparse(URL)
client = chronos.connect(u.netloc, proto=u.scheme, username=USER, password=PASSWORD)
results = {"passed": 0, "failed": 0}


def expect(cond, msg):
    if not cond:
        raise AssertionError(msg)


def check(name):
    def run(f):
        try:
            detail = f()
            results["passed"] += 1
            print(f"PASS {name}" + (f": {detail}" if detail else ""), flush=True)
        except Exception as e:  # noqa: BLE001 - report every failure and go on
            results["failed"] += 1
            print(f"FAIL {name}: {e!r}", flush=True)
            traceback.print_exc()
        return f

    return run


@check("add an iso8601 job (POST /v1/scheduler/iso8601, 204)")
def _():
    r = client.add({
        "name": PARENT, "command": "echo etl", "owner": "ops@example.com",
        "disabled": False, "schedule": "R/2030-01-01T00:00:00Z/PT1H",
    })
    expect(r is None, f"expected no body, got {r!r}")


@check("add a dependent job (POST /v1/scheduler/dependency, 204)")
def _():
    r = client.add({
        "name": CHILD, "command": "echo report", "owner": "ops@example.com",
        "disabled": False, "parents": [PARENT],
    })
    expect(r is None, f"expected no body, got {r!r}")


@check("update a job (add with update=True)")
def _():
    r = client.update({
        "name": PARENT, "command": "echo etl v2", "owner": "ops@example.com",
        "disabled": False, "schedule": "R/2030-01-01T00:00:00Z/PT1H",
    })
    expect(r is None, f"expected no body, got {r!r}")


@check("an unknown parent is an API error")
def _():
    try:
        client.add({"name": f"compat-{RUN}-orphan", "command": "x", "owner": "",
                    "disabled": False, "parents": ["does-not-exist"]})
    except chronos.ChronosAPIError:
        return "raised ChronosAPIError"
    raise AssertionError("no error")


@check("list")
def _():
    jobs = {j["name"]: j for j in client.list()}
    expect(PARENT in jobs and CHILD in jobs, f"missing jobs: {sorted(jobs)}")
    expect(jobs[PARENT]["command"] == "echo etl v2", jobs[PARENT])
    expect(jobs[CHILD]["parents"] == [PARENT], jobs[CHILD])
    return f"{len(jobs)} jobs"


@check("search by name and by command")
def _():
    by_name = [j["name"] for j in client.search(name=PARENT.upper())]
    expect(by_name == [PARENT], by_name)
    by_cmd = [j["name"] for j in client.search(command="report")]
    expect(CHILD in by_cmd, by_cmd)


@check("job_stat of a never-run job: all zeros")
def _():
    s = client.job_stat(CHILD)
    h = s["histogram"]
    for k in ("75thPercentile", "95thPercentile", "98thPercentile", "99thPercentile", "median", "mean"):
        expect(h[k] == 0.0, f"{k} = {h[k]!r}")
    expect(h["count"] == 0, h)
    expect(s["taskStatHistory"] == [], s)


@check("run (PUT /v1/scheduler/job/{name}, 204)")
def _():
    expect(client.run(PARENT) is None, "run returned a body")


@check("the stats endpoints")
def _():
    for f in (client.scheduler_stat_99th, client.scheduler_stat_98th, client.scheduler_stat_95th,
              client.scheduler_stat_75th, client.scheduler_stat_median, client.scheduler_stat_mean):
        rows = {r["jobNameLabel"]: r["time"] for r in f()}
        expect(rows.get(CHILD) == 0.0, f"{f.__name__}: {rows}")


@check("graph csv")
def _():
    g = client.scheduler_graph()
    expect(isinstance(g, str), repr(g))
    lines = g.splitlines()
    # The run just started executes on berth dev's agent: it may be queued, running or done.
    states = {tuple(l.split(",")[1:]) for l in lines if l.startswith("node,")}
    expect(any(n == PARENT and st in ("fresh", "success") and rs in ("queued", "running", "idle")
               for n, st, rs in states), lines)
    expect(any(n == CHILD and rs in ("queued", "running", "idle") for n, _, rs in states), lines)
    expect(f"link,{PARENT},{CHILD}" in lines, lines)


@check("metrics (unprefixed /metrics): version and gauges")
def _():
    m = client.metrics()
    expect("version" in m and "gauges" in m, sorted(m))
    expect(m["gauges"]["berth.jobs"]["value"] >= 2, m["gauges"].get("berth.jobs"))
    expect(isinstance(m["gauges"]["berth.jobs.runs.queued"]["value"], int), m["gauges"].get("berth.jobs.runs.queued"))


@check("delete_tasks (DELETE /v1/scheduler/task/kill/{name}, 204)")
def _():
    expect(client.delete_tasks(PARENT) is None, "returned a body")


@check("delete (204); the child inherits the schedule")
def _():
    expect(client.delete(PARENT) is None, "returned a body")
    jobs = {j["name"]: j for j in client.list()}
    expect(PARENT not in jobs, sorted(jobs))
    expect(jobs[CHILD]["schedule"] == "R/2030-01-01T00:00:00Z/PT1H", jobs[CHILD])
    expect(client.delete(CHILD) is None, "returned a body")


@check("a wrong password is refused")
def _():
    bad = chronos.connect(u.netloc, proto=u.scheme, username=USER or "x", password="wrong")
    try:
        bad.list()
    except chronos.ChronosAPIError:
        return "raised"
    raise AssertionError("listed with a wrong password")


print(f"{results['passed']} passed, {results['failed']} failed", flush=True)
sys.exit(1 if results["failed"] else 0)
