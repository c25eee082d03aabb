"""Celery tasks. Thin: they take primary keys and call the runner."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from . import runner


@shared_task(
    name="builds.run_build",
    acks_late=True,
    ignore_result=True,
    soft_time_limit=settings.GENERATOR_BUILD_TIMEOUT,
    time_limit=settings.GENERATOR_BUILD_TIMEOUT + 60,
)
def run_build(job_id: str, attempt: int) -> None:
    runner.run_build(job_id, attempt, worker=run_build.request.hostname or "")
