"""From a build's event to deliveries: cheap where the build runs, the rest on
the notify worker.

builds/jobs/transitions.py sends `job_event` after the status change committed. Here,
in whatever process made the change (a build worker, daphne, the reaper), one
query asks whether any endpoint wants the event, and if so one task message
goes to the notify queue (GENERATOR_NOTIFY_QUEUE, "notify" by default). Nothing
here may raise into the build: a broken database or broker is logged and the
event is lost, the build goes on.
"""

from __future__ import annotations

import json
import logging

from celery import current_app
from django.db import transaction
from django.db.models import Q

from builds.models import BuildJob
from notifications.models import EVENTS, Delivery, Endpoint
from notifications.payloads import email_subject, email_text, slack_body, webhook_body

logger = logging.getLogger(__name__)

FAN_OUT_TASK = "notify.fan_out"
DELIVER_TASK = "notify.deliver"


def on_job_event(sender, job_id: str, event: str, **kwargs) -> None:
    try:
        if event not in EVENTS:
            return
        wanted = Endpoint.objects.filter(
            Q(repository__isnull=True) | Q(repository__jobs__id=job_id), active=True, **{f"on_{event}": True}
        )
        if wanted.exists():
            current_app.send_task(FAN_OUT_TASK, args=[job_id, event])
    except Exception:
        logger.warning("could not queue the %s notifications of job %s", event, job_id, exc_info=True)


def fan_out(job_id: str, event: str) -> list[str]:
    """One delivery per endpoint that wants `event` of the job; their first try
    is sent at once. Answers the deliveries' ids."""
    job = BuildJob.objects.select_related("repository", "team", "submitted_by").filter(pk=job_id).first()
    if job is None or event not in EVENTS:
        return []
    ids = []
    with transaction.atomic():
        for endpoint in Endpoint.objects.for_event(job.repository_id, event):
            body = body_for(endpoint, job, event)
            if body is None:
                continue
            delivery = Delivery.objects.create(endpoint=endpoint, job=job, event=event, body=body)
            ids.append(str(delivery.pk))
        transaction.on_commit(lambda: send_now(ids))
    return ids


def body_for(endpoint: Endpoint, job: BuildJob, event: str) -> str | None:
    if endpoint.kind == Endpoint.Kind.SLACK:
        return slack_body(job, event)
    if endpoint.kind == Endpoint.Kind.EMAIL:
        to = recipients(endpoint, job)
        if not to:
            return None  # nobody to tell (the pusher is not known)
        return json.dumps({"to": to, "subject": email_subject(job, event), "text": email_text(job, event)})
    return webhook_body(job, event)


def recipients(endpoint: Endpoint, job: BuildJob) -> list[str]:
    listed = [a.strip() for a in endpoint.email_to.replace(",", "\n").splitlines() if a.strip()]
    if endpoint.email_pusher:
        pusher = job.pusher_email or (job.submitted_by.email if job.submitted_by_id else "")
        if pusher:
            listed.append(pusher)
    return list(dict.fromkeys(listed))


def send_now(delivery_ids: list[str]) -> None:
    for delivery_id in delivery_ids:
        try:
            current_app.send_task(DELIVER_TASK, args=[delivery_id])
        except Exception:
            # Its next_try_at has come: the retry sweep (beat) sends it.
            logger.warning("could not queue delivery %s", delivery_id, exc_info=True)
