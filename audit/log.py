"""The one way into the audit log: `record()`.

Called from the service layer (submit, retry, cancel), admin's save hooks and
the API views, with what was acted on and the names of what changed: never a
value (a secret, a key, a token must not be copied here).

Who and from where come from the request being served (audit/middleware.py),
unless given: the user as the session or DRF's token authentication set it, and
the address as the login throttle reads it (REMOTE_ADDR: the proxy's, unless
daphne is told to trust X-Forwarded-For, README). Outside a request (a webhook's
build is a request too; beat, the CLI's management commands are not) the
address is empty.
"""

from __future__ import annotations

import contextvars
import getpass
import os
import socket
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from audit.models import AuditEvent
from lib.client_address import client_address

current_request: contextvars.ContextVar = contextvars.ContextVar("audit_request", default=None)


def record(
    action: str,
    kind: str,
    obj=None,
    *,
    actor=None,
    team=None,
    details: dict | None = None,
    label: str = "",
    via: str = "",
) -> AuditEvent:
    """Stores one event. `obj` is the row acted on (its pk and str are kept);
    `label` stands for a row whose pk or str is itself a secret (an API token's
    key), which is then not kept; `team` a Team or a slug; `details` names
    (fields, members), never values; `via` names who acted when no user did (a
    management command: `command_actor()`)."""
    request = current_request.get()
    if actor is None and request is not None:
        actor = getattr(request, "user", None)
    if actor is not None and not actor.is_authenticated:
        actor = None
    if team is None:
        team = getattr(obj, "team", None) if obj is not None else None
    return AuditEvent.objects.create(
        actor=actor,
        actor_name=(actor.get_username() if actor else via)[:150],
        action=action,
        kind=kind,
        object_id=str(obj.pk) if obj is not None and obj.pk is not None and not label else "",
        object_repr=(label or (str(obj) if obj is not None else ""))[:300],
        team=getattr(team, "slug", team or "") or "",
        details=details or {},
        remote_address=client_address(request) if request is not None else "",
    )


def command_actor(command: str) -> str:
    """Who ran a management command, as the audit log names them: the command,
    the operating system's user and the host (the shell is its "from where")."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid
        user = f"uid {os.getuid()}"
    return f"manage.py {command} ({user}@{socket.gethostname()})"


def prune(now=None) -> int:
    """Deletes events older than GENERATOR_AUDIT_RETENTION_DAYS. Answers how many."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.GENERATOR_AUDIT_RETENTION_DAYS)
    deleted, _ = AuditEvent.objects.filter(at__lt=cutoff).delete()
    return deleted
