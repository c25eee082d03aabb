"""BuildKit's step timings read from the stored lines (builds/logs/steps.py), on logs
captured from real farm builds (tests/logs/), and kept per repository."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.utils import timezone

from builds.logs.steps import StepTimes
from builds.metrics import figures as metrics
from builds.models import StepStats

LOGS = Path(__file__).parents[2] / "logs"


def timings(name: str) -> dict[str, float]:
    steps = StepTimes()
    for line in (LOGS / name).read_text().splitlines():
        steps.feed(line)
    return steps.timings


def test_it_times_the_dockerfiles_steps_of_parallel_stages():
    times = timings("buildkit-parallel-stages.log")
    assert times["[slow 1/1] RUN sleep 4; echo slow"] == 4.9
    assert times["[left 1/1] RUN for i in 1 2 3 4 5 6; do echo left $i; sleep 1.5; done"] == 10.0
    assert times["[base 2/2] RUN echo 1c49fe34"] == 0.3
    # BuildKit's own steps are not the Dockerfile's.
    assert not [title for title in times if not title.startswith("[") or title.startswith("[internal]")]


def titles(name: str) -> dict[str, str]:
    """#N -> the step's title (its first line)."""
    found: dict[str, str] = {}
    for line in (LOGS / name).read_text().splitlines():
        if line.startswith("#"):
            number, rest = line[1:].split(" ", 1)
            found.setdefault(number, rest)
    return found


def test_a_cached_or_failed_step_has_no_time():
    cached, failed = titles("buildkit-cached-step.log")["5"], titles("buildkit-failed-step.log")["10"]
    assert cached.startswith("[") and failed.startswith("[")
    assert cached not in timings("buildkit-cached-step.log")
    assert failed not in timings("buildkit-failed-step.log")
    assert timings("buildkit-failed-step.log")  # the steps before it were timed


def test_a_classic_log_has_no_buildkit_steps():
    assert timings("classic-succeeded.log") == {}


@pytest.mark.django_db
def test_step_timings_add_up_per_repository():
    today = timezone.now().date()
    metrics.record_steps("o/app", {"[1/2] RUN make": 10.0, "[2/2] RUN test": 2.0}, today)
    metrics.record_steps("o/app", {"[1/2] RUN make": 30.0}, today)
    make = StepStats.objects.get(repository="o/app", step="[1/2] RUN make")
    assert (make.count, make.seconds, make.max_seconds, make.last_seen) == (2, 40.0, 30.0, today)
