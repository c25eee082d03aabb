"""Where a build's events go (Endpoint) and what became of each sending (Delivery, Attempt)."""

from __future__ import annotations

import uuid

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

EVENTS = ("queued", "started", "succeeded", "failed", "cancelled")


class EndpointQuerySet(models.QuerySet):
    def for_event(self, repository_id: int | None, event: str) -> EndpointQuerySet:
        """The active endpoints that want `event` of a build of `repository_id`:
        that repository's and the farm-wide ones (no repository)."""
        scope = models.Q(repository__isnull=True)
        if repository_id is not None:
            scope |= models.Q(repository_id=repository_id)
        return self.filter(scope, active=True, **{f"on_{event}": True})


class Endpoint(models.Model):
    class Kind(models.TextChoices):
        WEBHOOK = "webhook", "webhook (JSON, signed)"
        SLACK = "slack", "Slack incoming webhook"
        EMAIL = "email", "e-mail"

    name = models.CharField(max_length=100)
    repository = models.ForeignKey(
        "builds.Repository",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="notification_endpoints",
        help_text="Empty: farm-wide, for every build (staff only).",
    )
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.WEBHOOK)
    url = models.URLField(max_length=500, blank=True, help_text="The receiver (webhook and Slack).")
    # Encrypted like build secrets (lib/crypto.py); never shown or answered.
    secret = models.CharField(max_length=500, blank=True, help_text="Signs webhook bodies (HMAC-SHA256). Write-only.")
    email_to = models.TextField(blank=True, help_text="E-mail addresses, one a line or comma-separated.")
    email_pusher = models.BooleanField(
        default=False, help_text="E-mail also whoever pushed the commit (or submitted the build), when known."
    )
    on_queued = models.BooleanField(default=False)
    on_started = models.BooleanField(default=False)
    on_succeeded = models.BooleanField(default=True)
    on_failed = models.BooleanField(default=True)
    on_cancelled = models.BooleanField(default=True)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = EndpointQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"

    def clean(self) -> None:
        """A receiver the farm may send to, or someone to mail; checked again at each send."""
        from django.core.validators import validate_email

        from lib.outbound import RefusedURL
        from notifications.receivers import check

        if not self.events:
            raise ValidationError("choose at least one event to notify of")
        if self.kind == self.Kind.EMAIL:
            addresses = [a.strip() for a in self.email_to.replace(",", "\n").splitlines() if a.strip()]
            if not addresses and not self.email_pusher:
                raise ValidationError({"email_to": "give an address, or mail the pusher"})
            for address in addresses:
                try:
                    validate_email(address)
                except ValidationError:
                    raise ValidationError({"email_to": f"{address!r} is not an e-mail address"}) from None
            return
        if not self.url:
            raise ValidationError({"url": f"a {self.get_kind_display()} needs the receiver's URL"})
        try:
            check(self.url)
        except RefusedURL as exc:
            raise ValidationError({"url": str(exc)}) from None

    @property
    def events(self) -> list[str]:
        return [event for event in EVENTS if getattr(self, f"on_{event}")]

    @property
    def has_secret(self) -> bool:
        return bool(self.secret)


class Delivery(models.Model):
    """One event for one endpoint: the body as sent (signed at each try), tried
    until it is taken or the tries run out. A redelivery is a new row."""

    class State(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        FAILED = "failed"  # tries ran out, or refused for good

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="deliveries")
    job = models.ForeignKey("builds.BuildJob", null=True, on_delete=models.SET_NULL, related_name="+")
    event = models.CharField(max_length=16)
    body = models.TextField(help_text="The JSON sent (webhook, Slack) or the e-mail's text.")
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING, db_index=True)
    tries = models.PositiveSmallIntegerField(default=0)
    next_try_at = models.DateTimeField(null=True, blank=True, default=timezone.now, db_index=True)
    redelivery_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "deliveries"

    def __str__(self) -> str:
        return f"{self.event} -> {self.endpoint.name} ({self.state})"


class Attempt(models.Model):
    """One try of a delivery and its answer."""

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attempts")
    number = models.PositiveSmallIntegerField()
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField()
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    response_excerpt = models.TextField(blank=True, help_text="The start of the receiver's answer (bounded).")
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["delivery", "number"]

    def __str__(self) -> str:
        return f"try {self.number}: {self.status_code or self.error}"
