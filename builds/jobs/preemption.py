"""No team holds the pool: a team's builds beyond its fair share give their slot
back when other teams wait.

The dispatcher already gives each free slot to the team with the fewest builds
running (fair_share.py, `FairQueue`); but a slot frees only when a build ends, so
one team's long builds could hold every slot for hours. So, every
GENERATOR_FAIR_SHARE_INTERVAL seconds (beat, `farm.fair_share`):

1. In each daemon group, the slots of its daemons that take builds are shared
   evenly between the teams with builds there (running, or waiting for that
   group while their own concurrency limit lets them run one more): each gets
   `slots // teams`, and the `slots % teams` left over go to the teams using
   the most (then: running the longest), so that the shares add up to the pool
   and a pool that cannot be split evenly does not take turns forever. A team's
   first build is never beyond its share, whatever it takes (a BuildKit build
   takes its whole daemon, dispatch.slots_in_use). Builds of no team are one team.
2. A team's running builds, in the order they started, fill its share; the
   ones beyond it are its excess. A team whose first excess build started more
   than GENERATOR_FAIR_SHARE_SECONDS ago (it has held more than its share that
   long) while another team waits for the group has its longest-running excess
   build that is still building asked to give its slot back
   (transitions.request_preempt): one per team at a time, until that build has
   given its slot back (its worker hears the ask at its next heartbeat), so the
   next pass sees the freed slot taken, not a build still on its way out. A
   build that is pushing, or being cancelled, is left alone.
3. The build's worker sees the ask at its next heartbeat, stops the build in the
   daemon and puts the job back in the farm's queue as its next attempt
   (transitions.requeue), with the reason, which names the policy.

Requeued rather than failed: running beyond its share is no fault of the build
(a team may use slots nobody else wants), and it goes back to the head of its
team's line (oldest first), to run again when its team's turn comes. The work
it had done is lost, however long it ran: slots beyond a team's share are lent,
not given.

`plan` is pure (no database); `preempt` reads the rows and asks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count
from django.utils import timezone

from builds.jobs import transitions
from builds.jobs.limits import needs_whole_daemon
from builds.models import WAITING, BuildJob
from pool.models import DockerDaemon

logger = logging.getLogger(__name__)

POLICY = "the fair share (GENERATOR_FAIR_SHARE_SECONDS)"


@dataclass(frozen=True)
class Running:
    job_id: str
    attempt: int
    team: int  # 0: no team
    group: str
    slots: int  # what it takes of its daemon's capacity
    started_at: datetime
    stoppable: bool  # building, not being cancelled or asked already
    asked: bool = False  # asked back already: its worker gives the slot back at its next heartbeat


@dataclass(frozen=True)
class Preemption:
    job_id: str
    attempt: int
    team: int
    group: str
    used: int  # slots the team's builds take in the group
    share: int
    slots: int  # the group's
    waiting_teams: int
    seconds: float  # how long the team has held more than its share

    def reason(self, team_name: str) -> str:
        where = f"daemon group {self.group!r}" if self.group else "the shared pool"
        return (
            f"stopped by {POLICY}: {team_name} held {self.used} of the {self.slots} slots of {where}"
            f" (its share {self.share}) for {self.seconds:.0f} s while {self.waiting_teams} other"
            f" team{'s' if self.waiting_teams != 1 else ''} waited"
        )


def shares(slots: int, used: dict[int, int], first_start: dict[int, datetime]) -> dict[int, int]:
    """Each contending team's share of `slots`: even, the remainder to the teams
    using the most, then running the longest (see the module's doc, 1)."""

    def rank(team: int) -> tuple:
        start = first_start.get(team)
        return (-used[team], start is None, start.timestamp() if start else 0.0, team)

    teams = sorted(used, key=rank)
    if not teams:
        return {}
    base, extra = divmod(slots, len(teams))
    return {team: base + (1 if rank < extra else 0) for rank, team in enumerate(teams)}


def excess(builds: list[Running], share: int) -> list[Running]:
    """A team's builds beyond its share, in the order they started: the first
    build never, then each whose slots would take the team past its share."""
    ordered = sorted(builds, key=lambda build: (build.started_at, build.job_id))
    taken, beyond = 0, []
    for number, build in enumerate(ordered):
        taken += build.slots
        if number > 0 and taken > share:
            beyond.append(build)
    return beyond


def plan(
    running: list[Running],
    waiting: dict[str, set[int]],
    slots: dict[str, int],
    now: datetime,
    hold: timedelta,
) -> list[Preemption]:
    """Which builds to ask back: `waiting` is, per group, the teams with a build
    waiting that could run; `slots` the group's capacity."""
    asks = []
    for group, capacity in slots.items():
        here = [build for build in running if build.group == group]
        used: dict[int, int] = {}
        first_start: dict[int, datetime] = {}
        for build in here:
            used[build.team] = used.get(build.team, 0) + build.slots
            first_start[build.team] = min(first_start.get(build.team, build.started_at), build.started_at)
        contenders = dict(used)
        for team in waiting.get(group, set()):
            contenders.setdefault(team, 0)
        share = shares(capacity, contenders, first_start)
        for team in used:
            others = len(waiting.get(group, set()) - {team})
            if not others:
                continue
            mine = [build for build in here if build.team == team]
            if any(build.asked for build in mine):
                continue  # one at a time: its slot is on its way to the teams waiting
            beyond = excess(mine, share[team])
            if not beyond or now - beyond[0].started_at <= hold:
                continue
            chosen = next((build for build in beyond if build.stoppable), None)
            if chosen is not None:
                held = (now - beyond[0].started_at).total_seconds()
                asks.append(
                    Preemption(
                        chosen.job_id, chosen.attempt, team, group, used[team], share[team], capacity, others, held
                    )
                )
    return asks


def preempt() -> list[Preemption]:
    """One pass (beat): reads the pool and the jobs, asks the chosen builds back."""
    seconds = settings.GENERATOR_FAIR_SHARE_SECONDS
    if not seconds:
        return []
    daemons = {daemon.pk: daemon for daemon in DockerDaemon.objects.filter(enabled=True)}
    slots: dict[str, int] = {}
    for daemon in daemons.values():
        if daemon.takes_builds:
            slots[daemon.group] = slots.get(daemon.group, 0) + daemon.capacity
    rows = BuildJob.objects.filter(status__in=transitions.RUNNING, daemon__in=list(daemons)).select_related("team")
    running, names = [], {0: "builds of no team"}
    for job in rows.only(
        "id", "attempt", "team__slug", "daemon", "builder", "status", "started_at", "dispatched_at",
        "cancel_requested_at", "preempt_requested_at",
    ):  # fmt: skip
        daemon = daemons[job.daemon_id]
        if job.team_id:
            names[job.team_id] = f"team {job.team.slug}"
        running.append(
            Running(
                job.id,
                job.attempt,
                job.team_id or 0,
                daemon.group,
                daemon.capacity if needs_whole_daemon(job.builder) else 1,
                job.started_at or job.dispatched_at or timezone.now(),
                job.status == BuildJob.Status.BUILDING
                and job.cancel_requested_at is None
                and job.preempt_requested_at is None,
                asked=job.preempt_requested_at is not None,
            )
        )
    asks = plan(running, waiting_teams(running), slots, timezone.now(), timedelta(seconds=seconds))
    for ask in asks:
        reason = ask.reason(names.get(ask.team, f"team {ask.team}"))
        if transitions.request_preempt(ask.job_id, ask.attempt, reason):
            logger.info("job %s: %s", ask.job_id, reason)
    return asks


def waiting_teams(running: list[Running]) -> dict[str, set[int]]:
    """Per daemon group, the teams with a build waiting for it that their own
    concurrency limit lets run (a team held at its limit gains nothing from a
    freed slot)."""
    rows = BuildJob.objects.filter(WAITING).values("team", "team__max_concurrent_builds", "repository__daemon_group")
    active: dict[int, int] = {}
    for build in running:
        active[build.team] = active.get(build.team, 0) + 1
    teams: dict[str, set[int]] = {}
    for row in rows.annotate(n=Count("id")):
        team, limit = row["team"] or 0, row["team__max_concurrent_builds"]
        if limit and active.get(team, 0) >= limit:
            continue
        teams.setdefault(row["repository__daemon_group"] or "", set()).add(team)
    return teams
