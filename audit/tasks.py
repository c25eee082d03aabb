from __future__ import annotations

from celery import shared_task

from . import log


@shared_task(name="audit.prune", ignore_result=True)
def prune() -> None:
    # Events older than GENERATOR_AUDIT_RETENTION_DAYS.
    log.prune()
