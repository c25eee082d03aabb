"""No team holds the pool (builds/jobs/preemption.py): the fair share of each team, which
of a team's builds are beyond it, when one is asked back, and the ask on the real
database (the worker's side, requeue at its heartbeat, is tests/farm/test_fair_share.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from builds.jobs import preemption, transitions
from builds.jobs.preemption import Running, excess, plan, shares
from builds.models import BuildJob
from builds.worker.runner import Preempted, Watch
from pool.models import DockerDaemon

T0 = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)
HOLD = timedelta(seconds=10)


def build(
    job_id: str, team: int, started: int, *, slots: int = 1, group: str = "", stoppable: bool = True, asked=False
) -> Running:
    return Running(job_id, 1, team, group, slots, T0 + timedelta(seconds=started), stoppable and not asked, asked)


def test_a_pool_is_shared_evenly_and_what_is_left_goes_to_the_teams_using_most():
    assert shares(4, {1: 4, 2: 0}, {1: T0}) == {1: 2, 2: 2}
    # 4 slots, 3 teams: 1 each, the one left over to the team using most, then running longest.
    later = T0 + timedelta(seconds=5)
    assert shares(4, {1: 2, 2: 2, 3: 0}, {1: T0, 2: later}) == {1: 2, 2: 1, 3: 1}
    assert shares(4, {1: 2, 2: 2, 3: 0}, {1: later, 2: T0}) == {1: 1, 2: 2, 3: 1}
    assert sum(shares(7, {1: 3, 2: 3, 3: 1}, {1: T0, 2: T0, 3: T0}).values()) == 7


def test_a_teams_builds_fill_its_share_in_the_order_they_started_and_its_first_is_never_beyond_it():
    a1, a2, a3 = build("a1", 1, 0, slots=2), build("a2", 1, 5, slots=2), build("a3", 1, 9, slots=2)
    assert excess([a3, a1, a2], 2) == [a2, a3]
    assert excess([a1], 1) == []  # a BuildKit build takes its daemon's 2 slots: still within
    assert excess([a1, a2], 0) == [a2]


def test_a_flooding_team_gives_back_its_longest_running_excess_build_once_it_held_it_long_enough():
    # Two daemons of capacity 2, BuildKit builds take a whole daemon: team 1 holds both.
    running = [build("a1", 1, 0, slots=2), build("a2", 1, 3, slots=2)]
    waiting = {"": {1, 2}}  # team 2 waits (and team 1 has more waiting)

    assert plan(running, waiting, {"": 4}, T0 + timedelta(seconds=13), HOLD) == []  # 10 s over its share: not more
    [ask] = plan(running, waiting, {"": 4}, T0 + timedelta(seconds=14), HOLD)
    assert (ask.job_id, ask.team, ask.used, ask.share, ask.slots, ask.waiting_teams) == ("a2", 1, 4, 2, 4, 1)
    reason = ask.reason("team flood")
    assert reason.startswith("stopped by the fair share (GENERATOR_FAIR_SHARE_SECONDS): team flood held 4 of the 4")
    assert "slots of the shared pool (its share 2) for 11 s while 1 other team waited" in reason


def test_nothing_is_asked_back_while_no_other_team_waits_or_every_team_is_within_its_share():
    later = T0 + timedelta(minutes=10)
    flood = [build("a1", 1, 0), build("a2", 1, 1), build("a3", 1, 2), build("a4", 1, 3)]
    assert plan(flood, {"": {1}}, {"": 4}, later, HOLD) == []  # only its own builds wait: the pool is its to use
    assert plan(flood, {}, {"": 4}, later, HOLD) == []
    # 4 slots, 3 teams, 2 + 1 + 1: the slot left over stays where it is, nobody takes turns.
    settled = [build("a1", 1, 0), build("a2", 1, 1), build("b1", 2, 2), build("c1", 3, 3)]
    assert plan(settled, {"": {1, 2, 3}}, {"": 4}, later, HOLD) == []
    # Two BuildKit builds fill the pool; a third team waits, but each has its one build.
    whole = [build("a1", 1, 0, slots=2), build("b1", 2, 1, slots=2)]
    assert plan(whole, {"": {3}}, {"": 4}, later, HOLD) == []


def test_a_team_waiting_in_another_group_takes_nothing_from_this_one():
    flood = [build("a1", 1, 0), build("a2", 1, 1)]
    assert plan(flood, {"gpu": {2}}, {"": 2, "gpu": 2}, T0 + timedelta(minutes=10), HOLD) == []
    [ask] = plan(flood, {"": {2}}, {"": 2, "gpu": 2}, T0 + timedelta(minutes=10), HOLD)
    assert ask.job_id == "a2" and ask.group == ""


def test_a_pushing_build_is_left_to_finish_and_the_next_excess_one_goes():
    # Shares of 2 each: a1 and a2 are team 1's, a3 and a4 beyond it.
    running = [build("a1", 1, 0), build("a2", 1, 1, stoppable=False), build("a3", 1, 2), build("a4", 1, 3)]
    [ask] = plan(running, {"": {2}}, {"": 4}, T0 + timedelta(minutes=1), HOLD)
    assert ask.job_id == "a3"  # the longest-running excess build
    running = [build("a1", 1, 0), build("a2", 1, 1), build("a3", 1, 2, stoppable=False), build("a4", 1, 3)]
    [ask] = plan(running, {"": {2}}, {"": 4}, T0 + timedelta(minutes=1), HOLD)
    assert ask.job_id == "a4"
    assert ask.seconds == 58  # the team has held more than its share since a3 started


def test_a_team_gives_back_one_build_at_a_time_until_its_slot_is_free():
    """Four of four slots, a share of 2: one ask, and none more while that build is
    still on its way out (its worker hears it at its next heartbeat); a second pass
    that asked again would stop two builds for the one that waits."""
    later = T0 + timedelta(minutes=1)
    flood = [build("a1", 1, 0), build("a2", 1, 1), build("a3", 1, 2), build("a4", 1, 3)]
    [ask] = plan(flood, {"": {1, 2}}, {"": 4}, later, HOLD)
    assert ask.job_id == "a3"
    flood[2] = build("a3", 1, 2, asked=True)
    assert plan(flood, {"": {1, 2}}, {"": 4}, later, HOLD) == []
    # Gone: the other team's build took its slot; the flood still holds 3 of 4 while a third team waits.
    flood = [build("a1", 1, 0), build("a2", 1, 1), build("a4", 1, 3), build("b1", 2, 50)]
    [ask] = plan(flood, {"": {1, 3}}, {"": 4}, later, HOLD)
    assert ask.job_id == "a4"


# --- on the database ---------------------------------------------------------------------


@pytest.fixture
def pool(db):
    return [DockerDaemon.objects.create(name=f"d{i}", url=f"tcp://127.0.0.1:{9 + i}", capacity=2) for i in range(2)]


def running_job(team, daemon, tag: str, started: datetime, builder: str = "buildkit") -> BuildJob:
    job = BuildJob.objects.create(
        image=f"localhost:5000/{team.slug}/app:{tag}", dockerfile="FROM busybox\n", team=team, builder=builder
    )
    transitions.assign(job.id, daemon.pk)
    transitions.claim(job.id, 1, daemon.pk, "worker", 60)
    BuildJob.objects.filter(pk=job.pk).update(started_at=started)
    return job


def test_the_pass_asks_the_flooding_teams_build_back_and_its_worker_hears_it_at_its_heartbeat(pool, teams, settings):
    settings.GENERATOR_FAIR_SHARE_SECONDS = 10
    settings.GENERATOR_BUILDKIT_SHARED_DAEMONS = False  # each BuildKit build holds its daemon's 2 slots
    a, b = teams
    old = timezone.now() - timedelta(minutes=5)
    first = running_job(a, pool[0], "1", old)
    second = running_job(a, pool[1], "2", old + timedelta(seconds=30))
    BuildJob.objects.create(image="localhost:5000/team-a/app:3", dockerfile="FROM busybox\n", team=a)
    assert preemption.preempt() == []  # only team A waits
    BuildJob.objects.create(image="localhost:5000/team-b/app:1", dockerfile="FROM busybox\n", team=b)

    [ask] = preemption.preempt()

    assert ask.job_id == second.pk
    job = BuildJob.objects.get(pk=second.pk)
    assert job.status == "building" and job.preempt_requested_at is not None
    assert job.error.startswith("stopped by the fair share (GENERATOR_FAIR_SHARE_SECONDS): team team-a held 4 of")
    assert BuildJob.objects.get(pk=first.pk).preempt_requested_at is None
    assert preemption.preempt() == []  # asked already: the next pass waits for the worker
    # The worker's heartbeat finds no row to renew, and is told why.
    watch = Watch(job)
    assert not transitions.renew_lease(job.id, job.attempt, 60)
    with pytest.raises(Preempted):
        watch.stop()
    # Its requeue: the next attempt waits, without a daemon, with the reason; never a state in between.
    assert transitions.requeue(job.id, job.attempt, job.error)
    job.refresh_from_db()
    assert (job.status, job.attempt, job.daemon_id, job.preempt_requested_at) == ("queued", 2, None, None)
    assert job.error.startswith("stopped by the fair share")


def test_a_build_that_reached_its_push_before_its_worker_saw_the_ask_pushes(pool, teams, settings):
    a, b = teams
    old = timezone.now() - timedelta(minutes=5)
    running_job(a, pool[0], "1", old)
    job = running_job(a, pool[1], "2", old)
    assert transitions.request_preempt(job.id, 1, "stopped by the fair share")
    assert not transitions.request_preempt(job.id, 1, "asked twice")  # one ask is enough

    assert transitions.start_push(job.id, 1, "sha256:" + "0" * 64)
    job.refresh_from_db()
    assert job.status == "pushing" and job.preempt_requested_at is None and job.error == ""
    assert transitions.renew_lease(job.id, 1, 60)
    assert not transitions.request_preempt(job.id, 1, "too late: it is pushing")


def test_a_team_held_at_its_own_limit_does_not_count_as_waiting(pool, teams, settings):
    a, b = teams
    b.max_concurrent_builds = 1
    b.save()
    old = timezone.now() - timedelta(minutes=5)
    running_job(a, pool[0], "1", old, builder="classic")
    running_job(a, pool[0], "2", old, builder="classic")
    running_job(a, pool[1], "3", old, builder="classic")
    running_job(b, pool[1], "1", old, builder="classic")
    BuildJob.objects.create(image="localhost:5000/team-b/app:2", dockerfile="FROM busybox\n", team=b)
    assert preemption.preempt() == []  # B may run no more than its one: nothing to free for it
    b.max_concurrent_builds = None
    b.save()
    [ask] = preemption.preempt()
    assert ask.team == a.pk and (ask.used, ask.share) == (3, 2)


def test_a_fair_share_of_zero_seconds_turns_it_off(pool, teams, settings):
    settings.GENERATOR_FAIR_SHARE_SECONDS = 0
    a, b = teams
    old = timezone.now() - timedelta(minutes=5)
    running_job(a, pool[0], "1", old)
    running_job(a, pool[1], "2", old)
    BuildJob.objects.create(image="localhost:5000/team-b/app:1", dockerfile="FROM busybox\n", team=b)
    assert preemption.preempt() == []
