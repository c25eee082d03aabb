"""A build job and its uploaded context."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db import models
from django.db.models import OuterRef, QuerySet, Subquery
from django.utils import timezone

from builds.jobs.fair_share import TeamQueue, place
from builds.models.untagged_image import UntaggedImageField, untagged
from teams.models import Team


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
    # The image without its tag, indexed with started_at: the warm daemon's lookup (builds/models/untagged_image.py).
    untagged_image = UntaggedImageField()
    # More tags of the same repository, pushed with the same image.
    extra_tags = models.JSONField(default=list, blank=True)
    # A Dockerfile submitted as text, or empty when the source is a repository's commit.
    dockerfile = models.TextField(blank=True)
    repository = models.ForeignKey("Repository", null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs")
    ref = models.CharField(max_length=255, blank=True, help_text="The pushed git ref, e.g. refs/heads/main.")
    commit_sha = models.CharField(max_length=40, blank=True)
    # A pull request's build (builds/github/pull_requests.py): its number and page, and
    # whether its head is a fork's (no secrets, deploy key or registry account).
    pull_request = models.PositiveIntegerField(null=True, blank=True, help_text="The pull request it checks.")
    pull_request_url = models.URLField(max_length=300, blank=True)
    fork = models.BooleanField(
        default=False, help_text="A fork's pull request: no secrets, deploy key or registry credentials reach it."
    )
    # The rule whose schedule started it (builds/triggers/schedules.py): one at a time per rule.
    schedule_rule = models.ForeignKey(
        "BuildRule", null=True, blank=True, on_delete=models.SET_NULL, related_name="scheduled_jobs"
    )
    not_pushed = models.CharField(
        max_length=200, blank=True, help_text="Why the image is built and not pushed (a check); empty: it is pushed."
    )
    # Why the farm started it by itself (builds/triggers/base_images.py: a base image's new digest).
    reason = models.CharField(
        max_length=1000,
        blank=True,
        help_text="Why the farm started this build by itself; empty: a push, a person or a schedule started it.",
    )
    pull = models.BooleanField(
        default=False, help_text="Pull the base images even where the daemon holds them (a base-image update's build)."
    )
    # From a push webhook's `pusher`, for notifications' e-mail (notifications/).
    pusher_email = models.EmailField(blank=True)
    superseded_by = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    retry_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="retries")
    # For an uploaded context (BuildContext): the Dockerfile's path inside it.
    dockerfile_path = models.CharField(max_length=300, default="Dockerfile")
    build_args = models.JSONField(default=dict, blank=True)
    labels = models.JSONField(default=dict, blank=True)
    no_cache = models.BooleanField(default=False)
    builder = models.CharField(
        max_length=16, choices=[("classic", "classic"), ("buildkit", "BuildKit")], default="classic",
        help_text="The builder that ran (or will run) the build.",
    )  # fmt: skip
    target = models.CharField(max_length=128, blank=True, help_text="The build stage to stop at (multi-stage).")
    # A multi-platform build is a parent (its `platforms`, no daemon of its own, its
    # digest the image index's) and one child per platform (builds/jobs/multiplatform.py).
    platforms = models.JSONField(default=list, blank=True, help_text="A parent's platforms, e.g. linux/arm64.")
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="children")
    platform = models.CharField(max_length=64, blank=True, help_text="A child's platform; empty: the daemon's own.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True)
    daemon = models.ForeignKey(
        "pool.DockerDaemon", null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs"
    )
    attempt = models.PositiveIntegerField(default=1)
    worker = models.CharField(max_length=255, blank=True, help_text="The Celery worker that ran the attempt.")
    submitted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # The team it was built for: its members read it (builds/jobs/ownership.py). None: staff only.
    team = models.ForeignKey("teams.Team", null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    # When the build's task message was sent to its daemon's queue.
    # Indexed: the dispatcher reads the last hour's starts per team (fair share, hourly limits).
    dispatched_at = models.DateTimeField(null=True, blank=True, db_index=True)
    # The running attempt's worker renews this; past it, the reaper takes the worker for dead.
    lease_expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    # The fair share (builds/jobs/preemption.py) asked the worker to give the slot back:
    # it puts the build back in the farm's queue at its next heartbeat, the reason in `error`.
    preempt_requested_at = models.DateTimeField(null=True, blank=True)
    cancelled_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    started_at = models.DateTimeField(null=True, blank=True)
    push_started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    image_id = models.CharField(max_length=80, blank=True)
    digest = models.CharField(max_length=80, blank=True)
    error = models.TextField(blank=True)
    log_line_count = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "build job"
        # What a submit and a dispatch pass ask of the history, each one step down an
        # index however many jobs there are (tests/builds/jobs/test_submit_query_plans.py): the
        # image repository's last build, a team's last start, its hour of submissions
        # and its active builds (SQLite, without statistics, took the team's whole history for these).
        indexes = [
            models.Index(fields=["untagged_image", "started_at"], name="job_untagged_image_started"),
            models.Index(fields=["team", "dispatched_at"], name="job_team_dispatched"),
            models.Index(fields=["team", "created_at"], name="job_team_created"),
            models.Index(fields=["team", "status"], name="job_team_status"),
        ]

    def __str__(self) -> str:
        return f"{self.id} {self.image} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL

    @property
    def build_seconds(self) -> float | None:
        end = self.push_started_at or (self.finished_at if self.started_at else None)
        return (end - self.started_at).total_seconds() if end and self.started_at else None

    @property
    def push_seconds(self) -> float | None:
        if self.push_started_at and self.finished_at:
            return (self.finished_at - self.push_started_at).total_seconds()
        return None

    @property
    def is_parent(self) -> bool:
        return bool(self.platforms) and self.parent_id is None

    @property
    def tags(self) -> list[str]:
        return [self.image.rsplit(":", 1)[1], *self.extra_tags]

    @property
    def daemon_group(self) -> str:
        """The daemon group its repository is pinned to; '' (the shared pool) for a
        build without a repository. Read `repository` with select_related in loops."""
        return self.repository.daemon_group if self.repository_id else ""

    @property
    def image_repository(self) -> str:
        """The image without its tag: builds of one image repository share a layer cache."""
        return untagged(self.image)

    def queue_position(self) -> int | None:
        """1 for the next job the farm will dispatch; None once it has a daemon.

        Its place under the dispatcher's fair share (builds/jobs/fair_share.py:
        `place`, by the rule the dispatcher walks the queue with). Three or four
        queries, whatever the queue's length or the history's.
        """
        if self.status != self.Status.QUEUED or self.daemon_id is not None or self.is_parent:
            return None
        waiting = BuildJob.objects.filter(WAITING)
        rows = list(
            waiting.values("team").annotate(
                waiting=models.Count("id"), older=models.Count("id", filter=models.Q(created_at__lt=self.created_at))
            )
        )
        running_rows = (
            BuildJob.objects.filter(status__in=self.ACTIVE, daemon__isnull=False)
            .values("team")
            .annotate(running=models.Count("id"))
        )
        running = {row["team"]: row["running"] for row in running_rows}
        # As the dispatcher reads them: the last start in the past hour, else never.
        last_start = {team or None: last for team, last in last_starts({r["team"] or 0 for r in rows}).items()}
        teams = {
            row["team"]: TeamQueue(
                running.get(row["team"], 0), last_start.get(row["team"]), row["waiting"], row["older"]
            )
            for row in rows
        }
        mine = teams.pop(self.team_id, None) or TeamQueue(
            running.get(self.team_id, 0), last_start.get(self.team_id), 1, 0
        )
        return place(mine, teams.values())


# Jobs waiting for a daemon: not a multi-platform parent, whose children are built instead.
WAITING = models.Q(status=BuildJob.Status.QUEUED, daemon__isnull=True, platforms=[])

# The sliding hour of dispatches, as the fair share and queue mode's hourly limit
# read it (builds/jobs/dispatch.py, BuildJob.queue_position): per team, asked only
# of the teams that have a build waiting, one step down the (team, dispatched_at)
# index each, so that a farm that started 100,000 builds this hour does not read
# them all on every submit and every pass.
HOUR = timedelta(hours=1)


def _in_the_hour() -> QuerySet:
    return BuildJob.objects.filter(dispatched_at__gte=timezone.now() - HOUR)


def last_starts(team_ids: set[int]) -> dict[int, datetime]:
    """Per team id of `team_ids` (0: builds of no team): when its last build was
    given a daemon, if that was in the sliding hour before now; the others are left out."""
    latest = _in_the_hour().order_by("-dispatched_at").values("dispatched_at")
    found: dict[int, datetime] = {}
    if named := team_ids - {0}:
        of_team = Subquery(latest.filter(team=OuterRef("pk"))[:1])
        rows = Team.objects.filter(pk__in=named).annotate(last=of_team).values_list("pk", "last")
        found.update({pk: last for pk, last in rows if last is not None})
    if 0 in team_ids and (last := latest.filter(team__isnull=True).values_list("dispatched_at", flat=True).first()):
        found[0] = last
    return found


def started_this_hour(team_id: int, up_to: int) -> int:
    """How many of a team's builds were given a daemon in the sliding hour,
    counted up to `up_to` (its hourly limit: all the limit needs to know)."""
    return _in_the_hour().filter(team_id=team_id).order_by().values("pk")[:up_to].count()


class BuildContext(models.Model):
    """An uploaded build context, checked and rewritten (builds/uploads/contexts.py), kept
    as a file in the context store (builds/uploads/store.py), never in the
    database. The row outlives the file, which is pruned a while after the job
    ended, so that a retry can say why it cannot build."""

    job = models.OneToOneField(BuildJob, on_delete=models.CASCADE, primary_key=True, related_name="context")
    name = models.CharField(max_length=255, help_text="Its file in the context store (STORAGES['contexts']).")
    size = models.PositiveBigIntegerField(default=0, help_text="Bytes of the checked tar.")
    members = models.PositiveIntegerField(default=0, help_text="Files, directories and links in it.")
    created_at = models.DateTimeField(default=timezone.now)
    pruned_at = models.DateTimeField(null=True, blank=True, help_text="When its file was deleted.")

    def __str__(self) -> str:
        return f"context of {self.job_id}"


class CheckRun(models.Model):
    """A job's check run on GitHub (builds/github/check_runs.py): its id once created,
    the last status sent, and a short lease that lets one report at a time
    send, so an older state never follows a newer one."""

    job = models.OneToOneField(BuildJob, primary_key=True, on_delete=models.CASCADE, related_name="check_run")
    run_id = models.BigIntegerField(null=True, blank=True, help_text="GitHub's id of the check run.")
    installation_id = models.BigIntegerField(null=True, blank=True)
    sent_status = models.CharField(max_length=16, blank=True, help_text="queued, in_progress or completed.")
    sending_until = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"check run {self.run_id} of {self.job_id}"
