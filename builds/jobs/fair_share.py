"""The fair share between teams: whose waiting build goes next.

One rule, `turn`: the team with the fewest running builds; at a tie, the team
whose last build started longest ago (so teams take turns, on a one-slot pool
too); then the older waiting build. Two readers of it: the dispatcher walks the
queue in that order (`FairQueue`, builds/jobs/dispatch.py), and a waiting
build's place in the queue (`place`, BuildJob.queue_position) is counted by the
same rule from a few counts per team, without reading the queue. Pure: no
models; team ids are 0 for no team.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.utils import timezone

NEVER = datetime.min.replace(tzinfo=UTC)


def turn(running: int, last_start: datetime | None, then: Any) -> tuple:
    """A team's turn for its next build (lowest first): its running builds, when
    its last build started (never: first), then `then` (the build's age)."""
    return (running, last_start or NEVER, then)


class FairQueue:
    """Waiting jobs in fair-share order, for one dispatch pass.

    Iterate it; after each job, say what became of it: `started()` (it counts
    for its team from then on: one more running, its last start now) or
    `hold_team()` (its team has its share: none of its jobs in this pass).
    Said nothing, the job waits and its team's next comes in its turn.
    `running` and `last_start` (per team id) are the caller's, kept up to date.
    """

    def __init__(self, jobs: Iterable, running: dict[int, int], last_start: dict[int, datetime]) -> None:
        self.running = running
        self.last_start = last_start
        self._lines: dict[int, deque] = {}
        for job in jobs:  # oldest first inside each team
            self._lines.setdefault(job.team_id or 0, deque()).append(job)
        self._heap = [self._turn(team) for team in self._lines]
        heapq.heapify(self._heap)
        self._current: int | None = None
        self._held = False

    def _turn(self, team: int) -> tuple:
        return (*turn(self.running.get(team, 0), self.last_start.get(team), self._lines[team][0].created_at), team)

    def __iter__(self) -> FairQueue:
        return self

    def __next__(self):
        self._settle()
        if not self._heap:
            raise StopIteration
        self._current = heapq.heappop(self._heap)[-1]
        self._held = False
        return self._lines[self._current].popleft()

    def started(self) -> None:
        team = self._current
        self.running[team] = self.running.get(team, 0) + 1
        self.last_start[team] = timezone.now()

    def hold_team(self) -> None:
        self._held = True

    def _settle(self) -> None:
        """The team of the job just given takes its next turn, unless held or done."""
        team, self._current = self._current, None
        if team is not None and self._lines[team] and not self._held:
            heapq.heappush(self._heap, self._turn(team))


@dataclass(frozen=True)
class TeamQueue:
    """A team's side of the queue, as seen from one waiting build."""

    running: int
    last_start: datetime | None
    waiting: int  # its builds waiting for a daemon
    older: int  # of those, how many are older than the build asked about


def place(mine: TeamQueue, others: Iterable[TeamQueue]) -> int:
    """1 for the next build the dispatcher takes: the place of a waiting build of
    the team `mine` under `turn`, as if no build ended in between and the pool
    were one. With k its place among its own team's waiting builds and r its
    team's running builds, another team's j-th waiting build with r' running
    goes first if r' + j < r + k, and at a tie if `turn` says so."""
    before = mine.older
    own_place = before + 1
    level = mine.running + own_place - 1
    my_turn = turn(level, mine.last_start, 1)
    for team in others:
        tie = mine.running + own_place - team.running  # their tie-th waiting build ties with this one
        ahead = min(team.waiting, max(0, tie - 1))
        if 1 <= tie <= team.waiting and turn(level, team.last_start, 0 if tie <= team.older else 1) < my_turn:
            ahead += 1
        before += ahead
    return before + 1
