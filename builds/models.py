"""Build jobs and their logs."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


def new_job_id() -> str:
    return uuid.uuid4().hex


class BuildJob(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued"
        BUILDING = "building"
        PUSHING = "pushing"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    ACTIVE = (Status.QUEUED, Status.BUILDING, Status.PUSHING)
    TERMINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    id = models.CharField(primary_key=True, max_length=32, default=new_job_id, editable=False)
    image = models.CharField(max_length=512, help_text="Where the image is pushed: repository:tag.")
    dockerfile = models.TextField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True)
    daemon = models.ForeignKey(
        "pool.DockerDaemon", null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs"
    )
    attempt = models.PositiveIntegerField(default=1)
    worker = models.CharField(max_length=255, blank=True, help_text="The Celery worker that ran the attempt.")
    submitted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    # When the build's task message was sent to its daemon's queue.
    dispatched_at = models.DateTimeField(null=True, blank=True)
    # The running attempt's worker renews this; past it, the reaper takes the worker for dead.
    lease_expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    cancelled_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    image_id = models.CharField(max_length=80, blank=True)
    digest = models.CharField(max_length=80, blank=True)
    error = models.TextField(blank=True)
    log_line_count = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "build job"

    def __str__(self) -> str:
        return f"{self.id} {self.image} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL

    @property
    def repository(self) -> str:
        """The image without its tag: builds of one repository share a layer cache."""
        return self.image.rsplit(":", 1)[0] if ":" in self.image.rsplit("/", 1)[-1] else self.image

    def queue_position(self) -> int | None:
        """1 for the next job the farm will dispatch; None once it has a daemon."""
        if self.status != self.Status.QUEUED or self.daemon_id is not None:
            return None
        waiting = BuildJob.objects.filter(status=self.Status.QUEUED, daemon__isnull=True)
        return waiting.filter(created_at__lt=self.created_at).count() + 1


class BuildLogLine(models.Model):
    """One line of a job's output. `seq` counts from 1 with no gaps, per job."""

    job = models.ForeignKey(BuildJob, on_delete=models.CASCADE, related_name="log_lines")
    seq = models.PositiveIntegerField()
    text = models.TextField()

    class Meta:
        ordering = ["job", "seq"]
        constraints = [models.UniqueConstraint(fields=["job", "seq"], name="one_line_per_seq")]

    def __str__(self) -> str:
        return f"{self.job_id}#{self.seq}"
