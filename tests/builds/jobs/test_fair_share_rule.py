"""The fair-share rule itself (builds/jobs/fair_share.py), without a database:
the order the dispatcher walks (`FairQueue`) and a waiting build's place (`place`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from builds.jobs.fair_share import FairQueue, TeamQueue, place

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def job(team: int, minute: int) -> SimpleNamespace:
    return SimpleNamespace(team_id=team, created_at=T0 + timedelta(minutes=minute), name=f"{team}@{minute}")


def test_the_team_with_fewest_running_goes_first_and_teams_take_turns():
    jobs = [job(1, 0), job(1, 1), job(1, 2), job(2, 3), job(2, 4)]
    queue = FairQueue(jobs, running={1: 1}, last_start={})
    order = []
    for item in queue:
        order.append(item.name)
        queue.started()
    # Team 2 runs nothing: its oldest first; then a tie at one running each, and team 2
    # started last, so team 1's turn; and so on.
    assert order == ["2@3", "1@0", "2@4", "1@1", "1@2"]


def test_a_held_team_gives_no_more_jobs_in_the_pass():
    jobs = [job(1, 0), job(1, 1), job(2, 2)]
    queue = FairQueue(jobs, running={}, last_start={})
    order = []
    for item in queue:
        order.append(item.name)
        if item.team_id == 1:
            queue.hold_team()
    assert order == ["1@0", "2@2"]


def test_a_job_that_waits_leaves_its_team_in_its_turn():
    queue = FairQueue([job(1, 0), job(1, 1), job(2, 2)], running={}, last_start={})
    assert [item.name for item in queue] == ["1@0", "1@1", "2@2"]  # nothing started: the older first


def test_at_a_tie_the_older_build_goes_first_when_no_team_started_lately():
    # Both teams idle, never started: the other team's only build goes first if it is older.
    older = TeamQueue(running=0, last_start=None, waiting=1, older=1)
    newer = TeamQueue(running=0, last_start=None, waiting=1, older=0)
    mine = TeamQueue(running=0, last_start=None, waiting=1, older=0)
    assert place(mine, [older]) == 2
    assert place(mine, [newer]) == 1


def test_at_a_tie_the_team_that_started_longest_ago_goes_first():
    mine = TeamQueue(running=0, last_start=T0, waiting=1, older=0)
    earlier = TeamQueue(running=0, last_start=T0 - timedelta(minutes=5), waiting=1, older=0)
    later = TeamQueue(running=0, last_start=T0 + timedelta(minutes=5), waiting=1, older=1)
    assert place(mine, [earlier]) == 2  # newer, but its team's turn
    assert place(mine, [later]) == 1  # older, but this team's turn


def test_a_team_with_more_running_waits_its_turns():
    # Two running here, none there: their first two builds, then the tie at three.
    mine = TeamQueue(running=2, last_start=T0, waiting=1, older=0)
    theirs = TeamQueue(running=0, last_start=T0 - timedelta(minutes=1), waiting=5, older=5)
    assert place(mine, [theirs]) == 4
    assert place(mine, [TeamQueue(running=0, last_start=None, waiting=1, older=1)]) == 2
