"""Job rows' own retention: finished jobs older than GENERATOR_JOB_RETENTION_DAYS
go, with their log lines and their archived log (0, the default: kept forever).

`prune_due` (beat, `farm.prune_jobs`) deletes a bounded batch per run, oldest
first, so a farm that turns the setting on for years of history catches up
over several runs without holding the control worker or the database long:

1. The candidates are finished jobs (succeeded, failed, cancelled: states a job
   never leaves) that ended before the cutoff, and never a job with a child
   still under way (a multi-platform parent may fail while a child's push is
   running). A child goes with its parent, never alone, so a parent's page
   never loses one platform.
2. In one transaction the batch is deleted again under the same conditions:
   the rows, and by cascade their children, log lines, archive rows, context
   rows and secrets; notification deliveries keep their record with no job.
3. After the commit the archive objects those rows named are deleted from the
   log store. One that cannot be deleted now is an object no row names, which
   log_archive.prune_orphans deletes later.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet, Sum
from django.utils import timezone

from builds.logs import archive as log_archive
from builds.models import BuildJob, BuildLogArchive

logger = logging.getLogger(__name__)


def due(now: datetime | None = None) -> QuerySet[BuildJob]:
    """Finished top-level jobs ended before the retention, with no child under
    way, oldest first; none when the retention is 0 (keep forever)."""
    days = settings.GENERATOR_JOB_RETENTION_DAYS
    if not days:
        return BuildJob.objects.none()
    cutoff = (now or timezone.now()) - timedelta(days=days)
    return (
        BuildJob.objects.filter(parent__isnull=True, status__in=BuildJob.TERMINAL, finished_at__lt=cutoff)
        .exclude(children__in=BuildJob.objects.exclude(status__in=BuildJob.TERMINAL))
        .order_by("finished_at")
    )


def prune_due(now: datetime | None = None, *, max_jobs: int | None = None, max_lines: int | None = None) -> int:
    """Deletes up to `max_jobs` due jobs (their children counted with them),
    stopping before the log lines in the table to delete pass `max_lines` (at
    least one job goes). Answers how many jobs went, children included."""
    max_jobs = max_jobs or settings.GENERATOR_JOB_PRUNE_BATCH_JOBS
    max_lines = max_lines or settings.GENERATOR_LOG_ARCHIVE_BATCH_LINES
    # Lines still in the table: an archived job's count is of lines in the log store.
    rows = list(due(now).values_list("id", "log_line_count", "log_archive__job_id")[:max_jobs])
    unarchived_children = BuildJob.objects.filter(parent__in=[row[0] for row in rows], log_archive__isnull=True)
    children_lines = dict(
        unarchived_children.values("parent").annotate(lines=Sum("log_line_count")).values_list("parent", "lines")
    )
    batch, lines = [], 0
    for job_id, count, archived in rows:
        more = (0 if archived else count) + (children_lines.get(job_id) or 0)
        if batch and lines + more > max_lines:
            break
        batch.append(job_id)
        lines += more
    if not batch:
        return 0
    with transaction.atomic():
        going = due(now).filter(pk__in=batch)
        family = Q(job__in=going) | Q(job__parent__in=going)
        names = list(BuildLogArchive.objects.filter(family).exclude(name="").values_list("name", flat=True))
        deleted = going.delete()[1].get(BuildJob._meta.label, 0)
    for name in names:
        try:
            log_archive.store().delete(name)
        except OSError:  # left for log_archive.prune_orphans
            logger.warning("could not delete %s from the log store", name, exc_info=True)
    logger.info("pruned %d finished jobs (%d log lines in the table, %d archived logs)", deleted, lines, len(names))
    return deleted
