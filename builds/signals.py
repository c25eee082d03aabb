"""What builds/ tells whoever listens (notifications/) without knowing them."""

from __future__ import annotations

from django.dispatch import Signal

# Sent after commit with job_id and event ("queued", "started", "succeeded",
# "failed", "cancelled"); receivers must be quick and must not raise into a build.
job_event = Signal()
