"""The farm's own queue: dispatch, rescue, reaping, cancel and claims, on the real
database and the test Redis as broker (no worker consumes these tests' messages)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import redis
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from builds.jobs import dispatch as dispatch_module
from builds.jobs import transitions
from builds.jobs.dispatch import dispatch, rescue_stranded
from builds.jobs.reaper import reap
from builds.jobs.services import cancel_build
from builds.models import BuildJob, BuildLogLine
from pool.models import DockerDaemon

pytestmark = pytest.mark.django_db(transaction=True)


def daemon(name: str, capacity: int = 2, **fields) -> DockerDaemon:
    return DockerDaemon.objects.create(name=name, url="tcp://127.0.0.1:9", capacity=capacity, **fields)


def waiting(count: int, image: str = "localhost:5000/team/app:latest") -> list[BuildJob]:
    jobs = []
    for _ in range(count):
        jobs.append(BuildJob.objects.create(image=image, dockerfile="FROM busybox\n"))
    return jobs


def refreshed(jobs):
    return [BuildJob.objects.get(pk=job.pk) for job in jobs]


@override_settings(GENERATOR_MAX_BUILDS_PER_IMAGE=0)
def test_jobs_wait_in_order_until_a_daemon_has_room(redis_url):
    one = daemon("one", capacity=1)
    two = daemon("two", capacity=2)
    jobs = waiting(5, image="localhost:5000/a:1")
    assert dispatch() == 3
    jobs = refreshed(jobs)
    assert sorted(j.daemon.name for j in jobs[:3]) == ["one", "two", "two"]
    assert [j.daemon for j in jobs[3:]] == [None, None]
    assert [j.queue_position() for j in jobs] == [None, None, None, 1, 2]
    # One message per assignment, on each daemon's own queue.
    broker = redis.Redis.from_url(redis_url)
    assert broker.llen(one.queue) >= 1 and broker.llen(two.queue) >= 2
    assert dispatch() == 0  # full

    transitions.claim(jobs[0].id, 1, jobs[0].daemon_id, "w", 60)
    transitions.fail(jobs[0].id, 1, "boom")
    assert dispatch() == 1
    assert BuildJob.objects.get(pk=jobs[3].pk).daemon_id == jobs[0].daemon_id


@override_settings(
    GENERATOR_MAX_BUILDS_PER_IMAGE=0,
    GENERATOR_BUILDERS=["classic", "buildkit"],
    GENERATOR_BUILDKIT_SHARED_DAEMONS=False,
)
def test_a_buildkit_build_has_its_daemon_to_itself_where_daemons_do_not_run_the_farms_runc():
    # BuildKit's RUN steps share one cgroup per daemon (builds/jobs/limits.py): alone
    # on it, a build's limits are its own.
    one = daemon("one", capacity=2)
    classic = waiting(1, image="localhost:5000/a:1")
    buildkit = waiting(2, image="localhost:5000/b:1")
    BuildJob.objects.filter(pk__in=[j.pk for j in buildkit]).update(builder="buildkit")
    later_classic = waiting(1, image="localhost:5000/c:1")
    assert dispatch() == 2  # the classic builds fill the daemon's two slots; BuildKit waits for a whole one
    assert [j.daemon_id for j in refreshed(classic + buildkit + later_classic)] == [one.pk, None, None, one.pk]

    for job in classic + later_classic:
        transitions.claim(job.id, 1, one.pk, "w", 60)
        transitions.fail(job.id, 1, "done")
    assert dispatch() == 1
    assert [j.daemon_id for j in refreshed(buildkit)] == [one.pk, None]
    more = waiting(1, image="localhost:5000/d:1")
    assert dispatch() == 0  # a free slot, but the BuildKit build has the daemon
    assert refreshed(more)[0].daemon_id is None

    with override_settings(GENERATOR_BUILDKIT_SHARED_DAEMONS=True):
        assert dispatch() == 1
    assert [j.daemon_id for j in refreshed(buildkit)] == [one.pk, one.pk]


def test_sick_draining_and_disabled_daemons_get_nothing():
    daemon("sick", healthy=False)
    daemon("draining", draining=True)
    daemon("off", enabled=False)
    jobs = waiting(2)
    assert dispatch() == 0
    assert [j.daemon for j in refreshed(jobs)] == [None, None]


def test_the_daemon_that_built_the_image_last_gets_it_again():
    cold, warm = daemon("cold"), daemon("warm")
    BuildJob.objects.create(
        image="localhost:5000/team/app:v1", dockerfile="x", daemon=warm, status="succeeded", started_at=timezone.now()
    )
    [job] = waiting(1, image="localhost:5000/team/app:v2")
    dispatch()
    assert BuildJob.objects.get(pk=job.pk).daemon == warm
    assert cold.pk  # the cold one was free, and idle


@override_settings(GENERATOR_MAX_BUILDS_PER_IMAGE=2)
def test_one_busy_image_cannot_take_the_whole_pool():
    daemon("big", capacity=8)
    busy = waiting(4, image="localhost:5000/busy:latest")
    other = waiting(1, image="localhost:5000/other:latest")
    assert dispatch() == 3
    assert [j.daemon is not None for j in refreshed(busy + other)] == [True, True, False, False, True]


@override_settings(GENERATOR_MAX_BUILDS_PER_IMAGE=1)
def test_a_build_passed_over_in_the_few_read_does_not_hold_those_behind_it():
    # Three free slots: the pass reads the first three; two of them are the busy image's, passed
    # over, and the builds behind them (beyond the three) may still go.
    daemon("one", capacity=3)
    busy = waiting(3, image="localhost:5000/busy:latest")
    other = waiting(2, image="localhost:5000/other:latest")
    assert dispatch() == 2
    assert [j.daemon is not None for j in refreshed(busy + other)] == [True, False, False, True, False]


@override_settings(GENERATOR_MAX_BUILDS_PER_IMAGE=0)
def test_a_freed_slot_reads_no_more_of_each_teams_queue_than_there_are_free_slots(monkeypatch):
    one = daemon("one", capacity=2)
    jobs = waiting(30, image="localhost:5000/a:1")
    read = []
    fair_queue = dispatch_module.FairQueue
    monkeypatch.setattr(
        dispatch_module, "FairQueue", lambda batch, *a: read.append(len(batch)) or fair_queue(batch, *a)
    )
    assert dispatch() == 2
    transitions.claim(jobs[0].id, 1, one.pk, "w", 60)
    transitions.fail(jobs[0].id, 1, "done")
    assert dispatch() == 1
    assert read == [2, 1]  # not 30 each time
    assert [j.daemon_id for j in refreshed(jobs[:4])] == [one.pk, one.pk, one.pk, None]  # in order


def test_jobs_of_a_daemon_that_stopped_taking_builds_go_back_to_the_queue():
    sick = daemon("sick")
    [job] = waiting(1)
    dispatch()
    DockerDaemon.objects.filter(pk=sick.pk).update(healthy=False)
    assert rescue_stranded() == 1
    assert BuildJob.objects.get(pk=job.pk).daemon is None


@override_settings(GENERATOR_DISPATCH_STALE_SECONDS=30)
def test_a_job_nobody_claimed_for_too_long_goes_back_to_the_queue():
    daemon("quiet")
    fresh, stale = waiting(2)
    dispatch()
    BuildJob.objects.filter(pk=stale.pk).update(dispatched_at=timezone.now() - timedelta(seconds=31))
    assert rescue_stranded() == 1
    assert BuildJob.objects.get(pk=fresh.pk).daemon is not None
    assert BuildJob.objects.get(pk=stale.pk).daemon is None


def test_a_claim_counts_once_and_only_on_the_assigned_daemon():
    a, b = daemon("a"), daemon("b")
    [job] = waiting(1)
    dispatch()
    assigned = BuildJob.objects.get(pk=job.pk).daemon
    other = b if assigned == a else a
    assert not transitions.claim(job.id, 1, other.pk, "w", 60)
    assert not transitions.claim(job.id, 2, assigned.pk, "w", 60)
    assert transitions.claim(job.id, 1, assigned.pk, "w", 60)
    assert not transitions.claim(job.id, 1, assigned.pk, "w", 60)  # a redelivered message


def running_job(lease_delta: float, attempt: int = 1) -> BuildJob:
    d = DockerDaemon.objects.first() or daemon("d")
    return BuildJob.objects.create(
        image="a/b:latest",
        dockerfile="x",
        daemon=d,
        status="building",
        attempt=attempt,
        worker="worker-d@host",
        lease_expires_at=timezone.now() + timedelta(seconds=lease_delta),
    )


@override_settings(GENERATOR_MAX_ATTEMPTS=3)
def test_the_reaper_requeues_a_build_whose_worker_is_gone():
    lost, alive = running_job(-1), running_job(+60)
    assert reap() == 1
    lost = BuildJob.objects.get(pk=lost.pk)
    assert (lost.status, lost.attempt, lost.daemon, lost.worker) == ("queued", 2, None, "")
    assert "worker lost: worker-d@host stopped sending heartbeats during attempt 1" in lost.error
    assert BuildLogLine.objects.get(job=lost).text.endswith("trying again (attempt 2 of 3)")
    assert BuildJob.objects.get(pk=alive.pk).status == "building"


@override_settings(GENERATOR_MAX_ATTEMPTS=3)
def test_the_reaper_fails_a_build_after_the_last_attempt():
    job = running_job(-1, attempt=3)
    reap()
    job = BuildJob.objects.get(pk=job.pk)
    assert job.status == "failed" and job.finished_at
    assert job.error.endswith("(gave up after 3 attempts)") and job.error.startswith("worker lost")


def test_the_reaper_finishes_a_cancel_whose_worker_is_gone():
    job = running_job(-1)
    BuildJob.objects.filter(pk=job.pk).update(cancel_requested_at=timezone.now())
    reap()
    assert BuildJob.objects.get(pk=job.pk).status == "cancelled"


def test_cancel_stops_a_waiting_job_at_once_and_asks_a_running_one(django_user_model):
    operator = django_user_model.objects.create_user("op")
    daemon("d")
    [queued] = waiting(1)
    running = running_job(+60)
    assert cancel_build(queued, operator) == "cancelled"
    queued = BuildJob.objects.get(pk=queued.pk)
    assert (queued.status, queued.cancelled_by) == ("cancelled", operator)
    assert BuildLogLine.objects.get(job=queued).text == "[generator] Cancelled by op before it started"

    assert cancel_build(running, operator) == "stopping"
    assert BuildJob.objects.get(pk=running.pk).cancel_requested_at is not None
    assert not transitions.renew_lease(running.id, 1, 60)  # the worker's next heartbeat sees it
    assert cancel_build(queued, operator) == "already cancelled"


@override_settings(GENERATOR_MAX_BUILDS_PER_IMAGE=0)
def test_a_pass_asks_for_warm_daemons_once_per_image_and_only_when_there_is_a_choice(django_assert_max_num_queries):
    daemon("one", capacity=3)
    daemon("two", capacity=3)
    for index in range(40):
        waiting(1, image=f"localhost:5000/app-{index % 2}:{index}")
    # Anything waiting?, the lock (PostgreSQL), the daemons, three loads, the teams'
    # running builds and last hour's starts (fair share), the waiting jobs, two warm
    # lookups (one per image repository), one update per assignment, and transaction
    # bookkeeping: 19 at most (a warm lookup per job made 22 on SQLite).
    with django_assert_max_num_queries(19):
        assert dispatch() == 6


@override_settings(GENERATOR_MAX_BUILDS_PER_IMAGE=0)
def test_a_pass_reads_no_field_of_a_job_or_daemon_one_by_one(teams, django_assert_max_num_queries):
    # The pass reads only some fields (dispatch.JOB_FIELDS, DAEMON_FIELDS): one it uses and did not read
    # would cost a query per job or daemon (20 in all as it is, and PostgreSQL's lock).
    from builds.models import Repository

    a, b = teams
    a.max_concurrent_builds, b.max_builds_per_hour, b.over_limit = 3, 5, "queue"
    a.save()
    b.save()
    repository = Repository.objects.create(
        full_name="team-a/app", clone_url="https://github.com/team-a/app.git", webhook_secret="hook",
        image="localhost:5000/team-a/app", team=a, max_concurrent_builds=2,
    )  # fmt: skip
    for index in range(10):
        daemon(f"d{index}", capacity=2)
    for index in range(10):
        BuildJob.objects.create(image=f"localhost:5000/team-a/app:{index}", dockerfile="FROM busybox\n", team=a)
        BuildJob.objects.create(
            image=f"localhost:5000/team-a/app:r{index}", dockerfile="FROM busybox\n", team=a, repository=repository
        )
        BuildJob.objects.create(image=f"localhost:5000/team-b/app:{index}", dockerfile="FROM busybox\n", team=b)
    with django_assert_max_num_queries(20 + (connection.vendor == "postgresql")):
        assert dispatch() == 8  # team A's 3, team B's hourly 5


def test_a_pass_with_nothing_waiting_takes_no_lock(django_assert_num_queries):
    daemon("one")
    with django_assert_num_queries(1):  # only "is anything waiting?"
        assert dispatch() == 0


@override_settings(GENERATOR_MAX_BUILDS_PER_IMAGE=0)
def test_a_job_submitted_during_a_pass_is_dispatched_without_waiting_for_beat(redis_url, monkeypatch):
    import threading
    import time

    from django.db import connection

    from builds.jobs import dispatch as dispatch_module

    daemon("one", capacity=4)
    early = waiting(1, image="localhost:5000/early:1")[0]
    in_pass, over_limit = threading.Event(), dispatch_module._over_limit

    def slow_over_limit(*args):
        if not in_pass.is_set():  # the first pass has read the waiting jobs: hold it there
            in_pass.set()
            time.sleep(0.5)
        return over_limit(*args)

    monkeypatch.setattr(dispatch_module, "_over_limit", slow_over_limit)

    def first_dispatcher():
        try:
            dispatch()
        finally:
            connection.close()

    first = threading.Thread(target=first_dispatcher)
    first.start()
    assert in_pass.wait(5)
    late = waiting(1, image="localhost:5000/late:1")[0]
    started = time.monotonic()
    dispatch()  # PostgreSQL: counts its ask and leaves; SQLite: waits for the write lock
    returned_after = time.monotonic() - started
    first.join(10)
    assert [job.daemon is not None for job in refreshed([early, late])] == [True, True]
    if connection.vendor == "postgresql":
        assert returned_after < 0.3  # it did not queue behind the running pass
