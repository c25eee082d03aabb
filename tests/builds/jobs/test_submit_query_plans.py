"""Every query a submit makes reads a bounded number of rows, however long the
farm's history (issue 26): each is run again under EXPLAIN ANALYZE on
PostgreSQL, with sequential scans priced out, against a history of finished
builds, most of them in the last hour and of the very image and team submitted.

A query on the jobs, log or audit tables fails the test if PostgreSQL can only
scan the table, or if it reads more rows than a submit may (an index that
matches the whole history is no better than a scan). SQLite has no such
planner to ask: there bench/history.py measures the same path.
"""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest
from django.db import connection
from django.db.models import F
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from builds.models import BuildJob
from pool.models import DockerDaemon
from teams.models import Team

pytestmark = pytest.mark.postgres  # asks PostgreSQL's planner: make test's PostgreSQL pass runs it

HISTORY = 4000  # finished builds
# What one submit may read from a table that grows with history: the dispatcher's
# batch of waiting jobs (200) and the builds that are active, not the past.
MOST_ROWS = 500
GROWING_TABLES = {"builds_buildjob", "builds_buildlogline", "audit_auditevent", "notifications_delivery"}
DOCKERFILE = "FROM busybox\nRUN echo hi\n"


@pytest.fixture
def farm(operator, team):
    """Two daemons with room (so the dispatcher looks for the warm one), the
    team's limits on (so the quota counts run), and the history: another team's
    builds of the same image repository, and one of its builds waiting."""
    team.max_concurrent_builds = 100
    team.max_builds_per_hour = 100
    team.over_limit = "reject"
    team.save()
    other = Team.objects.create(slug="busy", name="Busy")
    daemons = [DockerDaemon.objects.create(name=f"plan-{n}", url="tcp://127.0.0.1:9", capacity=100) for n in range(2)]
    now = timezone.now()
    # Three in four are the other team's, of the last hour; the rest the team's own, of two days ago.
    ages = {n: timedelta(seconds=3000 - n / 2) if n % 4 else timedelta(days=2, seconds=n) for n in range(HISTORY)}
    BuildJob.objects.bulk_create(
        BuildJob(
            id=f"{n:032x}",
            image=f"localhost:5000/plans/app:{n}",
            dockerfile=DOCKERFILE,
            team=other if n % 4 else team,
            submitted_by=operator,
            status=BuildJob.Status.SUCCEEDED,
            daemon=daemons[n % 2],
            dispatched_at=now - age,
            started_at=now - age,
            finished_at=now - age + timedelta(seconds=10),
        )
        for n, age in ages.items()
    )
    history = BuildJob.objects.filter(pk__in=[f"{n:032x}" for n in ages])
    history.update(created_at=F("dispatched_at") - timedelta(seconds=1))  # auto_now_add: set after
    BuildJob.objects.create(image="localhost:5000/plans/app:waiting", dockerfile=DOCKERFILE, team=other)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return operator


def plan_problems(sql: str) -> list[str]:
    """What is wrong with one query's plan: a sequential scan of a growing table,
    or a scan of one that reads more than MOST_ROWS rows."""
    with connection.cursor() as cursor:
        cursor.execute("SAVEPOINT plan")  # EXPLAIN ANALYZE runs an UPDATE too: undone below
        try:
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}")
            plan = cursor.fetchone()[0]
        finally:
            cursor.execute("ROLLBACK TO SAVEPOINT plan")
    if isinstance(plan, str):
        plan = json.loads(plan)
    problems = []
    for node in _nodes(plan[0]["Plan"]):
        table = node.get("Relation Name")
        if table not in GROWING_TABLES:
            continue
        if node["Node Type"] == "Seq Scan":
            problems.append(f"a sequential scan of {table}")
            continue
        read = node["Actual Rows"] * node["Actual Loops"] + node.get("Rows Removed by Filter", 0)
        read += node.get("Rows Removed by Index Recheck", 0)
        if read > MOST_ROWS:
            problems.append(f"{read:.0f} rows of {table} read by a {node['Node Type']} ({node.get('Index Name')})")
    return problems


def _nodes(node: dict):
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)


def explained(queries: list[dict]) -> list[str]:
    failures = []
    for query in queries:
        sql = query["sql"]
        if not sql.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE")):
            continue  # INSERTs touch no rows but their own; SAVEPOINTs are bookkeeping
        failures += [f"{problem}: {sql[:300]}" for problem in plan_problems(sql)]
    return failures


def test_a_seed_api_submit_reads_no_history(client, farm, django_capture_on_commit_callbacks):
    params = {"imagename": "localhost:5000/plans/app:new", "dockerfile": base64.b64encode(DOCKERFILE.encode()).decode()}
    headers = {"Authorization": f"Token {farm.api_token}"}
    with CaptureQueriesContext(connection) as queries, django_capture_on_commit_callbacks(execute=True):
        response = client.get("/b1/build", params, headers=headers)
    assert response.status_code == 200, response.content
    assert BuildJob.objects.get(pk=response.content.decode()).daemon_id is not None  # the dispatch pass ran
    failures = explained(queries.captured_queries)
    assert failures == [], "\n".join(failures)


def test_a_rest_submit_and_its_answer_read_no_history(farm, django_capture_on_commit_callbacks):
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {farm.api_token}")
    body = {"image": "localhost:5000/plans/app:rest", "dockerfile": DOCKERFILE}
    # Two: the second's answer has a queue position to work out behind the first.
    DockerDaemon.objects.update(draining=True)
    api.post("/api/v1/builds/", body, format="json")
    with CaptureQueriesContext(connection) as queries, django_capture_on_commit_callbacks(execute=True):
        response = api.post("/api/v1/builds/", {**body, "image": "localhost:5000/plans/app:rest2"}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["queue_position"] == 3  # behind the other team's and the first
    failures = explained(queries.captured_queries)
    assert failures == [], "\n".join(failures)
