"""Trying a delivery, recording its answer, and when to try again.

The database, not the broker, holds what is left to send: a delivery is due
when it is pending and its `next_try_at` has come. So a lost task message, a
restarted Redis or a worker killed mid-send delays a notification until the
next sweep (beat, `notify.retry_due`) but loses none.

1. A try starts by claiming the delivery with a compare-and-swap: the row must
   be pending and due; the claim moves `next_try_at` past the try's deadline,
   so a duplicate message or the sweep finds it not due and leaves it.
2. The try is recorded (Attempt), then the delivery is delivered, failed for
   good (tries exhausted, a 4xx that is not 408/429, a refused address), or
   due again after the backoff: GENERATOR_NOTIFY_BACKOFF_SECONDS doubled at
   each try, at most GENERATOR_NOTIFY_BACKOFF_MAX_SECONDS.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.mail import EmailMessage
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from lib import crypto
from lib.outbound import RefusedURL
from notifications import http, receivers, signing
from notifications.events import send_now
from notifications.models import Attempt, Delivery, Endpoint

logger = logging.getLogger(__name__)

USER_AGENT = "Generator-Notifications/1"


@dataclass
class Outcome:
    status_code: int | None = None
    excerpt: str = ""
    error: str = ""
    permanent: bool = False

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def backoff(tries: int) -> float:
    """Seconds to wait after try number `tries` (1, 2, ...) failed."""
    base = settings.GENERATOR_NOTIFY_BACKOFF_SECONDS
    return min(base * 2 ** (tries - 1), settings.GENERATOR_NOTIFY_BACKOFF_MAX_SECONDS)


def attempt(delivery_id: str) -> float | None:
    """One try of a due delivery. Answers the seconds until the next try, or
    None when there is none (delivered, given up, or not this caller's to try)."""
    now = timezone.now()
    hold = timedelta(seconds=settings.GENERATOR_NOTIFY_TIMEOUT * 2 + 30)
    claimed = Delivery.objects.filter(pk=delivery_id, state=Delivery.State.PENDING, next_try_at__lte=now).update(
        next_try_at=now + hold, tries=F("tries") + 1
    )
    if not claimed:
        return None
    delivery = Delivery.objects.select_related("endpoint").get(pk=delivery_id)
    started, clock = timezone.now(), time.monotonic()
    try:
        outcome = send(delivery)
    except Exception as exc:  # a bug here must not leave the delivery held forever
        logger.exception("delivery %s failed unexpectedly", delivery_id)
        outcome = Outcome(error=f"internal error: {exc.__class__.__name__}")
    duration_ms = int((time.monotonic() - clock) * 1000)
    Attempt.objects.create(
        delivery=delivery,
        number=delivery.tries,
        started_at=started,
        duration_ms=duration_ms,
        status_code=outcome.status_code,
        response_excerpt=outcome.excerpt,
        error=outcome.error,
    )
    if outcome.delivered:
        _finish(delivery, Delivery.State.DELIVERED)
        return None
    if outcome.permanent or delivery.tries >= settings.GENERATOR_NOTIFY_MAX_TRIES:
        _finish(delivery, Delivery.State.FAILED)
        return None
    delay = backoff(delivery.tries)
    Delivery.objects.filter(pk=delivery.pk).update(next_try_at=timezone.now() + timedelta(seconds=delay))
    return delay


def _finish(delivery: Delivery, state: str) -> None:
    Delivery.objects.filter(pk=delivery.pk).update(state=state, next_try_at=None)


def due(limit: int = 200) -> list[str]:
    rows = Delivery.objects.filter(state=Delivery.State.PENDING, next_try_at__lte=timezone.now())
    return [str(pk) for pk in rows.order_by("next_try_at").values_list("pk", flat=True)[:limit]]


def prune() -> int:
    """Deliveries (and their tries) older than GENERATOR_NOTIFY_RETENTION_DAYS go."""
    cutoff = timezone.now() - timedelta(days=settings.GENERATOR_NOTIFY_RETENTION_DAYS)
    _, deleted = Delivery.objects.filter(created_at__lt=cutoff).exclude(state=Delivery.State.PENDING).delete()
    return deleted.get(Delivery._meta.label, 0)


def redeliver(delivery: Delivery) -> Delivery:
    """The same body to the same endpoint again, as a new delivery (its own id
    and tries), sent at once."""
    with transaction.atomic():
        again = Delivery.objects.create(
            endpoint=delivery.endpoint,
            job=delivery.job,
            event=delivery.event,
            body=delivery.body,
            redelivery_of=delivery,
        )
        transaction.on_commit(lambda: send_now([str(again.pk)]))
    return again


def send(delivery: Delivery) -> Outcome:
    endpoint = delivery.endpoint
    if not endpoint.active:
        return Outcome(error="the endpoint is turned off", permanent=True)
    if endpoint.kind == Endpoint.Kind.EMAIL:
        return _mail(delivery)
    return _post(delivery)


def headers_for(delivery: Delivery, body: bytes) -> dict[str, str]:
    endpoint = delivery.endpoint
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if endpoint.kind == Endpoint.Kind.WEBHOOK:
        headers["X-Generator-Event"] = delivery.event
        headers["X-Generator-Delivery"] = str(delivery.pk)
        if endpoint.secret:
            headers[signing.HEADER] = signing.signature(crypto.decrypt(endpoint.secret), body)
    return headers


def _post(delivery: Delivery) -> Outcome:
    try:
        receiver = receivers.check(delivery.endpoint.url)
    except RefusedURL as exc:
        return Outcome(error=str(exc), permanent=True)
    body = delivery.body.encode()
    try:
        answer = http.post(
            receiver,
            body,
            headers_for(delivery, body),
            connect_timeout=settings.GENERATOR_NOTIFY_CONNECT_TIMEOUT,
            timeout=settings.GENERATOR_NOTIFY_TIMEOUT,
            max_bytes=settings.GENERATOR_NOTIFY_RESPONSE_BYTES,
        )
    except http.SendError as exc:
        return Outcome(error=str(exc))
    # The receiver said no: trying again would not change its mind (but 408, 429 may).
    refused = 400 <= answer.status < 500 and answer.status not in (408, 429)
    return Outcome(status_code=answer.status, excerpt=answer.excerpt, permanent=refused)


def _mail(delivery: Delivery) -> Outcome:
    message = json.loads(delivery.body)
    try:
        EmailMessage(message["subject"], message["text"], to=message["to"], headers=_mail_headers(delivery)).send()
    except Exception as exc:  # smtplib and socket errors: the mail server may be back later
        return Outcome(error=f"the mail server did not take it: {exc.__class__.__name__}: {exc}"[:500])
    return Outcome(status_code=250, excerpt=f"sent to {len(message['to'])} recipient(s)")


def _mail_headers(delivery: Delivery) -> dict[str, str]:
    return {"X-Generator-Event": delivery.event, "X-Generator-Delivery": str(delivery.pk)}
