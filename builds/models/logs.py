"""A job's log: its lines, and the archive of an old job's."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from builds.models.jobs import BuildJob


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


class BuildLogArchive(models.Model):
    """A finished job's log moved out of BuildLogLine into one compressed object in
    the log store (builds/logs/archive.py): its lines `first_seq`..`last_seq`, as
    gzipped JSON lines `[seq, text]`. While this row exists the job has no rows in
    BuildLogLine up to `last_seq`; readers go through builds/logs/writer.py:read_lines."""

    job = models.OneToOneField(BuildJob, on_delete=models.CASCADE, primary_key=True, related_name="log_archive")
    name = models.CharField(max_length=255, help_text="Its object in the log store (STORAGES['logs']).")
    first_seq = models.PositiveIntegerField()
    last_seq = models.PositiveIntegerField()
    lines = models.PositiveIntegerField()
    text_bytes = models.PositiveBigIntegerField(help_text="UTF-8 bytes of the lines' text.")
    stored_bytes = models.PositiveBigIntegerField(help_text="Bytes of the compressed object.")
    archived_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"log archive of {self.job_id}"
