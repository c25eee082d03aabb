"""Notification tasks, on GENERATOR_NOTIFY_QUEUE ("notify", the notify worker,
by default): never on a build worker or the control worker."""

from __future__ import annotations

from celery import shared_task

from notifications import events, sending


@shared_task(name=events.FAN_OUT_TASK, ignore_result=True)
def fan_out(job_id: str, event: str) -> None:
    events.fan_out(job_id, event)


@shared_task(name=events.DELIVER_TASK, ignore_result=True)
def deliver(delivery_id: str) -> None:
    # A failed try is due again after its backoff; the sweep below sends it.
    sending.attempt(delivery_id)


@shared_task(name="notify.retry_due", ignore_result=True)
def retry_due() -> None:
    events.send_now(sending.due())


@shared_task(name="notify.prune", ignore_result=True)
def prune() -> None:
    sending.prune()
