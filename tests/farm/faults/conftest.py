"""Fault injection: each test breaks a real process of the farm and checks that
every job still ends in a true state. Whatever a test broke is started again
after it."""

from __future__ import annotations

import re

import pytest

from builds.models import BuildJob, BuildLogLine
from tests.farm.conftest import wait_for  # noqa: F401  (the fault tests import it from here)


@pytest.fixture
def restore(farm):
    yield farm
    farm.ensure_running()


def job(job_id: str) -> BuildJob:
    return BuildJob.objects.select_related("daemon", "cancelled_by").get(pk=job_id)


def wait_until_status(job_id: str, statuses: set[str], timeout: float = 90) -> BuildJob:
    return wait_for(
        lambda: (j := job(job_id)).status in statuses and j, timeout=timeout, what=f"job {job_id} reaching {statuses}"
    )


def wait_until_logged(job_id: str, text: str, timeout: float = 60) -> None:
    wait_for(
        lambda: BuildLogLine.objects.filter(job_id=job_id, text__contains=text).exists(),
        timeout=timeout,
        what=f"{text!r} in the log of {job_id}",
    )


def wait_until_printed(job_id: str, line: str, timeout: float = 60) -> None:
    """Until the build itself printed `line`: its RUN container is running then.
    (The Dockerfile step that prints it is logged earlier, before the container
    exists, and a line is stored as soon as the output pauses.)"""
    either = rf"^(#[0-9]+ [0-9]+\.[0-9]+ )?{re.escape(line)}$"  # BuildKit's prefix, or the classic builder's none
    wait_for(
        lambda: BuildLogLine.objects.filter(job_id=job_id, text__regex=either).exists(),
        timeout=timeout,
        what=f"the build printing {line!r} ({job_id})",
    )


def log_texts(job_id: str) -> list[str]:
    return list(BuildLogLine.objects.filter(job_id=job_id).order_by("seq").values_list("text", flat=True))


def assert_gapless_log(job_id: str) -> None:
    seqs = list(BuildLogLine.objects.filter(job_id=job_id).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, len(seqs) + 1))
    assert job(job_id).log_line_count == len(seqs)
