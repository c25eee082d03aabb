from __future__ import annotations

from django.conf import settings

from generator_site.control_tasks import control_task

from . import log


@control_task("audit.prune", seconds=settings.GENERATOR_HOUSEKEEPING_TASK_SECONDS)
def prune() -> None:
    # Events older than GENERATOR_AUDIT_RETENTION_DAYS.
    log.prune()
