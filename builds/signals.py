"""What builds/ tells whoever listens (notifications/) without knowing them."""

from __future__ import annotations

import logging

from django.db import transaction
from django.dispatch import Signal

from builds.models import BuildJob

logger = logging.getLogger(__name__)

# Sent after commit with job_id and event; receivers must be quick, and one that
# raises is logged: nothing a listener does reaches the build.
job_event = Signal()

# The events of a status change (transitions.py); "queued" is also a new job's
# (services.py). Pushing is a step inside a build, not news.
EVENTS = {
    "queued": "queued",
    "building": "started",
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "cancelled",
}


def announce(job_id: str, event: str) -> None:
    """Tells listeners of `event` once the current transaction commits."""

    def send() -> None:
        for _receiver, result in job_event.send_robust(sender=BuildJob, job_id=job_id, event=event):
            if isinstance(result, Exception):
                logger.warning("a listener of job %s's %s event failed: %r", job_id, event, result)

    transaction.on_commit(send)


# Sent after commit with parent_id when a child of a multi-platform build moved:
# its parent follows (builds/jobs/multiplatform.py listens, connected in apps.py,
# since the parent writes through transitions, which sends this).
child_moved = Signal()


def child_moves(parent_id: str) -> None:
    """Tells the parent's listeners once the current transaction commits."""

    def send() -> None:
        for _receiver, result in child_moved.send_robust(sender=BuildJob, parent_id=parent_id):
            if isinstance(result, Exception):
                # The next child's move, or the reaper's pass, settles it again.
                logger.error("could not settle multi-platform build %s", parent_id, exc_info=result)

    transaction.on_commit(send)
