"""Daemon housekeeping as the farm sees it: the pool prunes (pool/disk_prune.py),
this names what the builds running on each daemon use, so that none of it goes."""

from __future__ import annotations

import logging

from celery import current_app
from django.db.models import Min
from django.utils import timezone

from builds.models import BuildJob
from pool import disk_prune as housekeeping
from pool.models import DockerDaemon

logger = logging.getLogger(__name__)
PRUNE_TASK = "farm.prune_daemons"


def protected_on(daemon: DockerDaemon) -> housekeeping.Protected:
    """The tags and image ids of the daemon's active builds, and the moment from
    which anything tagged is kept: when the oldest of them started, or now (a build
    that starts during the prune tags its image after it)."""
    active = BuildJob.objects.filter(daemon=daemon, status__in=BuildJob.ACTIVE)
    references, image_ids = set(), set()
    for job in active.only("image", "extra_tags", "image_id"):
        references.update(f"{job.image_repository}:{tag}" for tag in job.tags)
        if job.image_id:
            image_ids.add(job.image_id)
    oldest = active.aggregate(oldest=Min("started_at"))["oldest"]
    now = timezone.now()
    return housekeeping.Protected(frozenset(references), frozenset(image_ids), min(oldest or now, now))


def prune_soon(daemon_id: int) -> None:
    """Asks the control worker to prune one daemon now (its disk filled), rather
    than at the next of beat's passes: it takes builds again as soon as it can."""
    try:
        current_app.send_task(PRUNE_TASK, kwargs={"daemon_ids": [daemon_id]})
    except Exception:  # beat's next pass prunes it anyway
        logger.warning("could not ask for a prune of daemon %s", daemon_id, exc_info=True)
