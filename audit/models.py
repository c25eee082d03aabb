"""The audit log: who did what to the farm, and from where.

An app of its own, below builds/, teams/ and pool/: each of them records into
it (audit/log.py), and it knows none of them, so no app has to import another
to be audited. Rows are written once and never changed; beat prunes them after
GENERATOR_AUDIT_RETENTION_DAYS.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class AuditEvent(models.Model):
    class Action(models.TextChoices):
        SUBMIT = "submit"
        RETRY = "retry"
        CANCEL = "cancel"
        CREATE = "create"
        CHANGE = "change"
        DELETE = "delete"
        DENY = "deny"  # credentials refused (the registry's token server)

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Kept when the user is deleted; "" for the farm itself (a webhook, beat).
    actor_name = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=16, choices=Action.choices)
    # What was acted on: "build", "repository", "secret", "deploy key", "token", "team",
    # "membership", "namespace", "daemon", "registry"; its id and how it read then.
    kind = models.CharField(max_length=32)
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField(max_length=300, blank=True)
    team = models.CharField(max_length=50, blank=True, help_text="The slug of the team it belonged to.")
    # Names of what changed, never values: a secret's value must not end up here.
    details = models.JSONField(default=dict, blank=True)
    remote_address = models.CharField(
        max_length=64, blank=True, help_text="The client's address as the web tier saw it; empty outside a request."
    )

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["kind", "object_id"])]

    def __str__(self) -> str:
        who = self.actor_name or "the farm"
        return f"{who} {self.action} {self.kind} {self.object_repr}"
