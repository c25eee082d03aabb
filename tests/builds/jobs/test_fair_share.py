"""A team's fair share of the farm: its limits at submit (builds/jobs/quotas.py), the
dispatcher's fair share between teams (builds/jobs/dispatch.py), queue positions
under it, and a team's log-line limit failing a build (builds/logs/writer.py), on the
real database, dispatcher, runner and bench/fake_engine.py's Engine API.

Team A owns localhost:5000/team-a/, team B localhost:5000/team-b/; alice is in
A, bob in B, carol is A's admin (tests/conftest.py).
"""

from __future__ import annotations

import base64
import threading
from http.server import ThreadingHTTPServer

import pytest
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from bench.fake_engine import EngineHandler
from builds.jobs import transitions
from builds.jobs.dispatch import dispatch
from builds.models import BuildJob, BuildLogLine
from builds.worker.runner import run_build
from pool.models import DockerDaemon

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("both_builders"),
]

DOCKERFILE = "FROM busybox\nRUN echo hi\n"


def api_as(user) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {user.api_token}")
    return api


def rest_build(user, team_slug: str, tag: str = "latest"):
    # Classic: a BuildKit build would have its daemon to itself (builds/jobs/limits.py).
    image = f"localhost:5000/{team_slug}/app:{tag}"
    fields = {"image": image, "dockerfile": DOCKERFILE, "builder": "classic"}
    return api_as(user).post("/api/v1/builds/", fields, format="json")


def waiting(team, count: int, image: str = "app") -> list[BuildJob]:
    return [
        BuildJob.objects.create(
            image=f"localhost:5000/{team.slug}/{image}:{n}", dockerfile=DOCKERFILE, team=team, builder="classic"
        )
        for n in range(count)
    ]


def started(jobs) -> list[bool]:
    return [BuildJob.objects.get(pk=job.pk).daemon_id is not None for job in jobs]


def end(job_ids) -> None:
    for job in BuildJob.objects.filter(pk__in=job_ids):
        transitions.claim(job.id, 1, job.daemon_id, "w", 60)
        transitions.fail(job.id, 1, "done")


@pytest.fixture
def both_builders(settings):
    settings.GENERATOR_BUILDERS = ["buildkit", "classic"]


@pytest.fixture
def pool():
    return DockerDaemon.objects.create(name="one", url="tcp://127.0.0.1:9", capacity=2)


# --- at submit: reject mode ------------------------------------------------------------


def test_a_team_at_its_concurrency_limit_gets_429_with_retry_after(alice, bob, teams, pool):
    a, _ = teams
    a.max_concurrent_builds = 1
    a.save()
    assert rest_build(alice, "team-a", "1").status_code == 201
    refused = rest_build(alice, "team-a", "2")
    assert refused.status_code == 429
    assert refused["Retry-After"] == "30"
    assert "team team-a" in refused.json()["detail"] and "max_concurrent_builds" in refused.json()["detail"]
    assert rest_build(bob, "team-b").status_code == 201  # another team's share is its own
    assert BuildJob.objects.filter(team=a).count() == 1


def test_a_team_over_its_hourly_limit_is_told_when_to_come_back_over_b1(client, alice, teams, pool):
    a, _ = teams
    a.max_builds_per_hour = 2
    a.save()
    encoded = base64.b64encode(DOCKERFILE.encode()).decode()

    def seed():
        return client.get(
            "/b1/build",
            {"imagename": "localhost:5000/team-a/app:x", "dockerfile": encoded},
            headers={"Authorization": f"Token {alice.api_token}"},
        )

    assert [seed().status_code for _ in range(2)] == [200, 200]
    # The oldest of the two leaves the sliding hour in a little under an hour.
    BuildJob.objects.filter(team=a).update(created_at=timezone.now() - timezone.timedelta(minutes=50))
    refused = seed()
    assert refused.status_code == 429
    assert 595 <= int(refused["Retry-After"]) <= 600
    assert "max_builds_per_hour" in refused.content.decode()
    BuildJob.objects.filter(team=a).update(created_at=timezone.now() - timezone.timedelta(minutes=61))
    assert seed().status_code == 200  # they left the hour


def test_without_limits_a_team_submits_as_before(alice, teams, pool):
    assert [rest_build(alice, "team-a", str(n)).status_code for n in range(5)] == [201] * 5


# --- queue mode: the build waits its turn ---------------------------------------------------


def test_in_queue_mode_a_team_over_its_limit_waits_while_others_go(alice, bob, teams):
    a, b = teams
    DockerDaemon.objects.create(name="big", url="tcp://127.0.0.1:9", capacity=4)
    a.max_concurrent_builds, a.over_limit = 1, "queue"
    a.save()
    responses = [rest_build(alice, "team-a", str(n)) for n in range(3)]
    assert [r.status_code for r in responses] == [201, 201, 201]  # taken, not refused
    mine = [BuildJob.objects.get(pk=r.json()["id"]) for r in responses]
    other = rest_build(bob, "team-b").json()["id"]
    assert started(mine) == [True, False, False]  # one at a time, the pool has room
    assert BuildJob.objects.get(pk=other).daemon_id is not None
    end([mine[0].id])
    assert dispatch() == 1
    assert started(mine) == [True, True, False]


@override_settings(GENERATOR_TEAM_OVER_LIMIT="queue")
def test_in_queue_mode_the_hourly_limit_counts_builds_started_in_the_last_hour(teams, pool):
    a, _ = teams
    a.max_builds_per_hour = 1
    a.save()
    jobs = waiting(a, 2)
    assert dispatch() == 1
    end([jobs[0].id])
    assert dispatch() == 0  # a free slot, but the team started one this hour
    BuildJob.objects.filter(pk=jobs[0].pk).update(dispatched_at=timezone.now() - timezone.timedelta(minutes=61))
    assert dispatch() == 1


# --- the dispatcher's fair share ---------------------------------------------------------------


@override_settings(GENERATOR_MAX_BUILDS_PER_IMAGE=0)
def test_one_teams_long_queue_does_not_hold_another_teams_build_behind_it(teams, pool):
    a, b = teams
    many = waiting(a, 300)  # more than a pass's batch
    assert dispatch() == 2
    assert sum(started(many)) == 2
    [one] = waiting(b, 1)
    assert BuildJob.objects.get(pk=one.pk).queue_position() == 1
    assert BuildJob.objects.get(pk=many[2].pk).queue_position() == 2
    end([j.id for j in many[:1]])  # one slot frees: B's build is next, not A's third
    assert dispatch() == 1
    assert started([one, many[2]]) == [True, False]


@override_settings(GENERATOR_MAX_BUILDS_PER_IMAGE=0)
def test_free_slots_go_to_the_team_with_fewest_running_then_oldest_inside_a_team(teams):
    a, b = teams
    DockerDaemon.objects.create(name="big", url="tcp://127.0.0.1:9", capacity=5)
    jobs_a = waiting(a, 4)
    jobs_b = waiting(b, 4)
    assert dispatch() == 5
    # A's oldest first (a tie at 0 running: its head is older), then by turns.
    assert started(jobs_a) == [True, True, True, False]
    assert started(jobs_b) == [True, True, False, False]


@override_settings(GENERATOR_MAX_BUILDS_PER_IMAGE=0)
def test_a_queue_position_counts_only_what_goes_before_it(teams, pool):
    a, b = teams
    jobs_a = waiting(a, 5)
    dispatch()  # A runs two
    [one] = waiting(b, 1)
    positions = [BuildJob.objects.get(pk=j.pk).queue_position() for j in [*jobs_a, one]]
    # B's build goes first (0 running against 2); then A's in order.
    assert positions == [None, None, 2, 3, 4, 1]


@override_settings(GENERATOR_MAX_BUILDS_PER_IMAGE=0)
def test_a_fair_pass_keeps_its_query_count_bounded_whatever_the_teams(teams, django_assert_max_num_queries):
    a, b = teams
    DockerDaemon.objects.create(name="big", url="tcp://127.0.0.1:9", capacity=4)
    waiting(a, 100)
    waiting(b, 100)
    # Anything waiting?, the lock (PostgreSQL), the daemons, five loads (slots,
    # images, repositories, teams' running builds, last hour's starts), the ranked
    # waiting jobs, no warm lookup (one daemon: no choice), one update per
    # assignment, transaction bookkeeping: 15 on PostgreSQL, whatever the queue.
    with django_assert_max_num_queries(15):
        assert dispatch() == 4


# --- a team's log-line limit ---------------------------------------------------------------------


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass


@pytest.fixture
def fake_daemon(db, settings):
    # bench/fake_engine.py answers on a loopback port, as bench/scale.py runs it.
    settings.GENERATOR_BUILD_CGROUPS, settings.GENERATOR_INSECURE_LOOPBACK_ENGINES = False, True
    settings.GENERATOR_ATTESTATIONS = False  # a simulated engine: no image to read, no registry to sign into
    server = QuietServer(("127.0.0.1", 0), EngineHandler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield DockerDaemon.objects.create(name="fake", url=f"tcp://127.0.0.1:{server.server_port}", capacity=2)
    server.shutdown()
    server.server_close()


def build_on(daemon, team, lines: int) -> BuildJob:
    job = BuildJob.objects.create(
        image=f"localhost:5000/{team.slug}/chatty:1",
        dockerfile=DOCKERFILE,
        team=team,
        builder="classic",
        labels={"fake-engine.lines": str(lines)},
    )
    assert transitions.assign(job.id, daemon.pk)
    run_build(job.id, 1, daemon.pk, worker="test")
    return BuildJob.objects.get(pk=job.pk)


@override_settings(GENERATOR_MAX_LOG_LINES=1000)
def test_a_build_past_its_teams_log_line_limit_fails_saying_so(teams, fake_daemon):
    a, b = teams
    a.max_log_lines = 20
    a.save()
    job = build_on(fake_daemon, a, lines=200)
    assert job.status == "failed"
    assert job.error == "more than 20 log lines, its team's limit (max_log_lines)"
    texts = list(BuildLogLine.objects.filter(job=job).values_list("text", flat=True))
    assert "[generator] Log limit passed: more than 20 log lines, its team's limit (max_log_lines);" in " ".join(texts)
    assert texts[-1] == f"[generator] Build failed: {job.error}"
    assert len(texts) <= 23  # the limit, its line, the outcome
    # Another team, without a limit, builds the same chatty build to the end.
    assert build_on(fake_daemon, b, lines=200).status == "succeeded"


@override_settings(GENERATOR_MAX_LOG_LINES=30)
def test_the_farms_lower_cap_cuts_the_log_and_the_build_goes_on(teams, fake_daemon):
    a, _ = teams
    a.max_log_lines = 500  # the farm's 30 is the lower: its rule holds
    a.save()
    job = build_on(fake_daemon, a, lines=200)
    assert job.status == "succeeded", job.error
    assert BuildLogLine.objects.filter(job=job, text__startswith="[generator] Log truncated").exists()


# --- who sets the limits -------------------------------------------------------------------------------


def test_staff_set_a_teams_limits_and_its_admin_and_outsiders_may_not(operator, carol, bob, teams):
    limits = {"max_concurrent_builds": 3, "max_builds_per_hour": 50, "max_log_lines": 10000, "over_limit": "queue"}
    done = api_as(operator).patch("/api/v1/teams/team-a/", limits, format="json")
    assert done.status_code == 200 and {k: done.json()[k] for k in limits} == limits
    refused = api_as(carol).patch("/api/v1/teams/team-a/", {"max_concurrent_builds": 99}, format="json")
    assert refused.status_code == 403 and "only staff set a team's limits" in refused.json()["detail"]
    assert api_as(carol).patch("/api/v1/teams/team-a/", {"name": "A team"}, format="json").status_code == 200
    as_read = api_as(carol).get("/api/v1/teams/team-a/").json()  # limits sent back as they stand
    assert api_as(carol).put("/api/v1/teams/team-a/", as_read, format="json").status_code == 200
    assert api_as(bob).patch("/api/v1/teams/team-a/", {"max_concurrent_builds": 99}, format="json").status_code == 404
    bad = api_as(operator).patch("/api/v1/teams/team-a/", {"over_limit": "maybe", "max_log_lines": 0}, format="json")
    assert bad.status_code == 400 and set(bad.json()) == {"over_limit", "max_log_lines"}
    teams[0].refresh_from_db()
    assert teams[0].max_concurrent_builds == 3 and teams[0].over_limit_mode == "queue"


@override_settings(GENERATOR_MAX_BUILDS_PER_IMAGE=0)
def test_on_a_one_slot_pool_the_teams_take_turns(teams):
    # Both teams at 0 running whenever the slot frees: the tie goes to the team
    # served longest ago, not to the older build (which would be A's every time).
    a, b = teams
    DockerDaemon.objects.create(name="small", url="tcp://127.0.0.1:9", capacity=1)
    jobs_a = waiting(a, 3)
    dispatch()
    jobs_b = waiting(b, 2)
    order = []
    for _ in range(4):
        [running] = BuildJob.objects.filter(daemon__isnull=False, status="queued")
        end([running.id])
        dispatch()
        [now] = BuildJob.objects.filter(daemon__isnull=False, status="queued")
        order.append((now.team.slug, now.pk))
    assert order == [
        ("team-b", jobs_b[0].pk),
        ("team-a", jobs_a[1].pk),
        ("team-b", jobs_b[1].pk),
        ("team-a", jobs_a[2].pk),
    ]


def test_a_webhook_push_over_its_teams_limit_is_refused_with_429(teams, pool):
    from builds.jobs.services import submit_push_build
    from builds.models import Repository
    from lib.errors import TooManyBuilds

    a, _ = teams
    a.max_builds_per_hour = 1
    a.save()
    repository = Repository.objects.create(
        full_name="team-a/app", clone_url="https://github.com/team-a/app.git", webhook_secret="hook",
        image="localhost:5000/team-a/app", team=a,
    )  # fmt: skip
    submit_push_build(repository=repository, ref="refs/heads/main", sha="a" * 40, tags=["main"])
    with pytest.raises(TooManyBuilds) as refused:
        submit_push_build(repository=repository, ref="refs/heads/dev", sha="b" * 40, tags=["dev"])
    assert refused.value.status == 429 and "max_builds_per_hour" in str(refused.value)
    assert 3590 <= refused.value.retry_after <= 3600


def test_submits_at_once_cannot_both_pass_a_teams_concurrency_limit(alice, teams, pool, monkeypatch):
    """Every submit passes the early check before any job exists (a pause after
    it makes sure); the check in the creating transaction, under the team's row
    lock, lets one in and refuses the rest."""
    from django.db import connection

    from builds.jobs import services
    from lib.errors import TooManyBuilds

    a, _ = teams
    a.max_concurrent_builds = 1
    a.save()
    submitters = 4
    everyone_checked = threading.Barrier(submitters)
    pool_check = services.ensure_pool_exists_or_raise

    def after_the_early_check(group=""):
        everyone_checked.wait(timeout=10)
        pool_check(group)

    monkeypatch.setattr(services, "ensure_pool_exists_or_raise", after_the_early_check)
    outcomes = []

    def submit(n: int) -> None:
        try:
            services.submit_build(
                image=f"localhost:5000/team-a/app:{n}", dockerfile=DOCKERFILE, submitted_by=alice, team="team-a"
            )
            outcomes.append("taken")
        except TooManyBuilds:
            outcomes.append("refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(submitters)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == ["refused"] * (submitters - 1) + ["taken"]
    assert BuildJob.objects.filter(team=a).count() == 1
