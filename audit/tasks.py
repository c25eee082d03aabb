from __future__ import annotations

from django.conf import settings

from audit import log
from lib.control_tasks import control_task


@control_task("audit.prune", seconds=settings.GENERATOR_HOUSEKEEPING_TASK_SECONDS)
def prune() -> None:
    # Events older than GENERATOR_AUDIT_RETENTION_DAYS.
    log.prune()
