"""Build jobs and their logs; the GitHub repositories that trigger builds, their
rules, and the webhook deliveries received."""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

from builds.jobs.fair_share import TeamQueue, place
from builds.jobs.limits import over_the_caps
from builds.sources.deploy_keys import DeployKeyError, check_known_hosts
from builds.triggers.path_filters import FilterError, check_globs
from builds.triggers.rules import RuleError, check_rule
from builds.triggers.schedules import ScheduleError
from builds.triggers.schedules import check as check_schedule
from lib.errors import RegistryNotAllowed
from lib.outbound import RefusedURL, check_url
from lib.references import DOCKER_HUB, DOCKER_HUB_SPELLINGS, InvalidReference, parse_reference, parse_registry_host
from pool.platforms import check as check_platform
from pool.platforms import split as split_platforms
from teams.models import namespace_refusal


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
        return self.image.rsplit(":", 1)[0] if ":" in self.image.rsplit("/", 1)[-1] else self.image

    def queue_position(self) -> int | None:
        """1 for the next job the farm will dispatch; None once it has a daemon.

        Its place under the dispatcher's fair share (builds/jobs/fair_share.py:
        `place`, by the rule the dispatcher walks the queue with). Three
        queries, whatever the queue's length.
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
        recent = BuildJob.objects.filter(dispatched_at__gte=timezone.now() - timedelta(hours=1))
        last_start = dict(recent.values("team").annotate(last=models.Max("dispatched_at")).values_list("team", "last"))
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


def validate_image_repository(value: str) -> None:
    try:
        reference = parse_reference(value)
    except InvalidReference as exc:
        raise ValidationError(str(exc)) from None
    if reference.tag or reference.digest:
        raise ValidationError("give the image repository without a tag; the build rules make the tags")


def validate_clone_url(value: str) -> None:
    allowed = ("https://", "http://", "ssh://", "git@")
    if settings.GENERATOR_ALLOW_LOCAL_REPOSITORIES:
        allowed += ("file://",)
    if not value.startswith(allowed):
        raise ValidationError(f"a clone URL must start with one of {', '.join(allowed)}")
    try:
        check_url(value, allow_local=settings.GENERATOR_ALLOW_LOCAL_REPOSITORIES, what="the clone URL")
    except RefusedURL as exc:
        raise ValidationError(str(exc)) from None


class Repository(models.Model):
    """A GitHub repository whose pushes build an image."""

    full_name = models.CharField(max_length=200, unique=True, help_text="owner/name, as GitHub spells it.")
    # Only its team builds it, and its webhook builds for that team. None: an operator's own.
    team = models.ForeignKey("teams.Team", null=True, blank=True, on_delete=models.PROTECT, related_name="repositories")
    public = models.BooleanField(
        default=False, help_text="Anyone may read its builds' logs and badges (as GENERATOR_PUBLIC_LOGS does for all)."
    )
    # Registered by an operator and never taken from a payload: a webhook must not
    # make the farm read file:///etc or an internal host.
    clone_url = models.CharField(max_length=500, validators=[validate_clone_url])
    webhook_secret = models.CharField(max_length=200, help_text="The secret set on the GitHub webhook.")
    access_token = models.CharField(
        max_length=200,
        blank=True,
        help_text="For private repositories and commit statuses: a GitHub token. Never shown or logged.",
    )
    image = models.CharField(
        max_length=400, validators=[validate_image_repository], help_text="Image repository, e.g. registry/team/app."
    )
    context_dir = models.CharField(max_length=300, blank=True, help_text="Build context inside the repository.")
    dockerfile_path = models.CharField(
        max_length=300, default="Dockerfile", help_text="The Dockerfile, relative to the build context."
    )
    build_args = models.JSONField(default=dict, blank=True)
    cancel_superseded_running = models.BooleanField(
        default=False, help_text="A newer push to a ref also cancels its running build (queued ones always are)."
    )
    build_timeout = models.PositiveIntegerField(
        null=True, blank=True, help_text="Seconds; empty for the farm's default."
    )
    max_concurrent_builds = models.PositiveSmallIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)], help_text="Empty for the farm's per-image limit."
    )
    daemon_group = models.CharField(
        max_length=100,
        blank=True,
        help_text="Build only on the daemons of this group (pool); empty: the shared pool.",
    )
    builder = models.CharField(
        max_length=16, blank=True, choices=[("classic", "classic"), ("buildkit", "BuildKit")],
        help_text="Empty: the farm's default builder (GENERATOR_DEFAULT_BUILDER).",
    )  # fmt: skip
    platforms = models.CharField(
        max_length=255,
        blank=True,
        help_text="Build every push for these platforms into one image index, e.g. linux/amd64,linux/arm64 "
        "(BuildKit); empty: the daemon's own platform.",
    )

    class Network(models.TextChoices):
        FILTERED = "filtered", "filtered (the farm's egress policy)"
        NONE = "none", "none (RUN steps have no network)"

    network = models.CharField(max_length=16, choices=Network.choices, default=Network.FILTERED)
    # Overrides of the daemon's per-build limits, up to the operator's caps (settings).
    build_memory_mb = models.PositiveIntegerField(
        "memory per build (MiB)", null=True, blank=True, validators=[MinValueValidator(16)]
    )
    build_cpus = models.FloatField("CPUs per build", null=True, blank=True, validators=[MinValueValidator(0.01)])
    build_pids = models.PositiveIntegerField(
        "processes per build", null=True, blank=True, validators=[MinValueValidator(16)]
    )
    # The SSH deploy key, encrypted (builds/sources/deploy_keys.py): set through admin's and the API's
    # write-only field, never shown; its public fingerprint is.
    deploy_key = models.TextField(blank=True, editable=False)
    deploy_key_fingerprint = models.CharField(max_length=100, blank=True, editable=False)
    known_hosts = models.TextField(
        blank=True,
        help_text="SSH host keys of the clone URL's host (and of ssh submodules), in known_hosts form "
        "(ssh-keyscan HOST, checked against its published fingerprints). GitHub's published keys are always known.",
    )
    forward_ssh_to_build = models.BooleanField(
        "forward the deploy key to builds",
        default=False,
        help_text="Lets RUN --mount=type=ssh (BuildKit) use the deploy key through an SSH agent. "
        "Any Dockerfile of this repository can then use the key for as long as its build runs.",
    )
    default_branch = models.CharField(
        max_length=255,
        blank=True,
        help_text="Its default branch, as GitHub's last push said: that branch's last image is every build's cache.",
    )

    class PullRequests(models.TextChoices):
        OFF = "off", "off (pull requests do not build)"
        INTERNAL = "internal", "internal (branches of this repository only, not forks)"
        ALL = "all", "all (forks too: without secrets, deploy key or registry credentials, never pushed)"

    pull_requests = models.CharField(
        max_length=16,
        choices=PullRequests.choices,
        default=PullRequests.INTERNAL,
        help_text="Which pull requests build (GitHub's pull_request events): their head commit is built and, "
        "unless a pull_request rule gives tags, not pushed.",
    )
    hook_verified_at = models.DateTimeField(null=True, blank=True, help_text="When GitHub's ping arrived.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["full_name"]
        verbose_name_plural = "repositories"

    def __str__(self) -> str:
        return self.full_name

    def clean(self) -> None:
        if not isinstance(self.build_args, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.build_args.items()
        ):
            raise ValidationError({"build_args": "build args are an object of strings to strings"})
        for field in ("context_dir", "dockerfile_path"):
            value = getattr(self, field)
            if value.startswith("/") or ".." in value.split("/"):
                raise ValidationError({field: "a path inside the repository: no leading / and no .."})
        try:
            check_known_hosts(self.known_hosts)
        except DeployKeyError as exc:
            raise ValidationError({"known_hosts": str(exc)}) from None
        if errors := over_the_caps(self):
            raise ValidationError(errors)
        try:
            self.platforms = ",".join(check_platform(p) for p in split_platforms(self.platforms))
        except ValueError as exc:
            raise ValidationError({"platforms": str(exc)}) from None
        if self.platforms and self.builder == "classic":
            raise ValidationError({"platforms": "multi-platform builds are BuildKit's: choose that builder"})
        self._check_registry()
        self._check_namespace()

    def _check_namespace(self) -> None:
        """A team's repository pushes only into its team's namespaces (checked again at each push)."""
        if self.team_id is None:
            return  # an operator's own repository
        try:
            repository = parse_reference(self.image).repository
        except InvalidReference:
            return
        if refusal := namespace_refusal(self.team, repository):
            raise ValidationError({"image": refusal})

    def _check_registry(self) -> None:
        """Pushes go only to allowed registries: a repository may not name another.
        (Its webhook checks again: the row may be deleted later.)"""
        try:
            host = parse_reference(self.image).registry
        except InvalidReference:
            return  # the field's own validator says why
        if not Registry.objects.allowing(host).exists():
            raise ValidationError({"image": str(RegistryNotAllowed(host))})


class BuildRule(models.Model):
    """When a push builds, and which tags it gets (like Docker Hub's build rules).
    A pull_request rule names the base branch a pull request goes into and
    pushes its build under its tags (pr-{number}); without one it is only built."""

    class Source(models.TextChoices):
        BRANCH = "branch"
        TAG = "tag"
        PULL_REQUEST = "pull_request", "pull request (into this base branch)"

    repository = models.ForeignKey(Repository, on_delete=models.CASCADE, related_name="rules")
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.BRANCH)
    pattern = models.CharField(
        max_length=200,
        help_text="A branch or tag name (a pull request's base branch), or /a regular expression/ matched "
        "against the whole name.",
    )
    tags = models.CharField(
        max_length=400,
        help_text="Comma-separated tag templates: {ref}, {sha}, {short_sha}, {1}... (regex groups); "
        "{number} for a pull request (pr-{number}).",
    )
    # Path filters (builds/triggers/path_filters.py), as Cloud Build's includedFiles / ignoredFiles.
    included = models.JSONField(
        default=list,
        blank=True,
        help_text='Path globs, e.g. ["src/**", "Dockerfile"]: a push builds only if a changed file matches one. '
        "** crosses directories. Empty: any file.",
    )
    ignored = models.JSONField(
        default=list,
        blank=True,
        help_text='Path globs, e.g. ["docs/**", "**/*.md"]: a push whose changed files all match them builds nothing.',
    )

    # A schedule (builds/triggers/schedules.py): builds the branch's head at its cron times.
    schedule = models.CharField(
        max_length=100,
        blank=True,
        help_text="A cron expression, e.g. 0 3 * * * (03:00 daily), for a branch rule: builds the branch's head "
        "then. Empty: no schedule.",
    )
    schedule_timezone = models.CharField(
        max_length=64, default="UTC", help_text="The schedule's time zone, an IANA name such as Europe/Berlin."
    )
    schedule_jitter = models.PositiveIntegerField(
        default=60,
        help_text="Seconds, up to 3600: the rule starts its builds a fixed delay of up to this after each tick, "
        "so that many schedules do not start in the same second.",
    )
    schedule_fired_at = models.DateTimeField(
        default=timezone.now, help_text="The last tick fired, or when the rule was made: the next is after it."
    )

    class Meta:
        ordering = ["repository", "id"]

    def __str__(self) -> str:
        return f"{self.source} {self.pattern} -> {self.tags}"

    def save(self, *args, **kwargs) -> None:
        """A schedule set or changed starts from now: no tick of before it fires."""
        if self.pk and self.schedule:
            stored = BuildRule.objects.filter(pk=self.pk).values("schedule", "schedule_timezone").first()
            if stored and (stored["schedule"], stored["schedule_timezone"]) != (self.schedule, self.schedule_timezone):
                self.schedule_fired_at = timezone.now()
        super().save(*args, **kwargs)

    def clean(self) -> None:
        try:
            check_rule(self.pattern, self.tags, self.source)
        except RuleError as exc:
            raise ValidationError(str(exc)) from None
        try:
            check_schedule(
                self.schedule.strip(), self.schedule_timezone, self.schedule_jitter,
                source=self.source, pattern=self.pattern, templates=self.tags,
            )  # fmt: skip
        except ScheduleError as exc:
            raise ValidationError({"schedule": str(exc)}) from None
        self.schedule = self.schedule.strip()
        for field in ("included", "ignored"):
            if getattr(self, field) is None:  # a form's empty JSON field
                setattr(self, field, [])
            try:
                check_globs(getattr(self, field), field)
            except FilterError as exc:
                raise ValidationError({field: str(exc)}) from None


class WebhookDelivery(models.Model):
    """A webhook delivery that passed its signature check, and what came of it."""

    delivery_id = models.CharField(max_length=100, unique=True)
    event = models.CharField(max_length=50)
    repository = models.ForeignKey(Repository, null=True, on_delete=models.SET_NULL, related_name="deliveries")
    received_at = models.DateTimeField(auto_now_add=True)
    status_code = models.PositiveSmallIntegerField()
    result = models.TextField()
    response = models.JSONField(default=dict)
    # On the delivery that built a push: a digest of (repository, ref, commit).
    # Unique, so that of two deliveries of one push at once only one builds
    # (builds/github/webhooks.py); cleared when its dedupe window is over.
    push_key = models.CharField(max_length=64, null=True, blank=True, unique=True, editable=False)

    class Meta:
        ordering = ["-received_at"]
        verbose_name_plural = "webhook deliveries"

    def __str__(self) -> str:
        return f"{self.event} {self.delivery_id}"


class RegistryQuerySet(models.QuerySet):
    def allowing(self, host: str) -> RegistryQuerySet:
        """The rows that let builds push to `host` (as `ImageReference.registry`
        gives it). Hosts match exactly, but for Docker Hub's two spellings."""
        return self.filter(host__in=DOCKER_HUB_SPELLINGS if host == DOCKER_HUB else [host])


class Registry(models.Model):
    """A registry builds may push to (the allow-list), with push credentials if it
    asks for them. The password is write-only: admin and the API accept it and
    never show it; it is stored encrypted (lib/crypto.py) and goes to the
    daemon with each push (builds/registry/accounts.py), unless the build's team
    has its own account for the registry."""

    host = models.CharField(
        max_length=255, unique=True, help_text="As in image references: registry.example.com:5000, or docker.io."
    )
    username = models.CharField(max_length=200, blank=True)
    password = models.TextField(blank=True, help_text="Encrypted.")
    # Off: the farm's account pushes only, and a build pulls there with its team's own account or none.
    builds_pull_with_farm_account = models.BooleanField(
        default=False,
        help_text="Every team's builds pull from this registry with the farm's account (a shared mirror or "
        "base-image registry), unless the team has its own account there. Pushes use it in any case.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = RegistryQuerySet.as_manager()

    class Meta:
        ordering = ["host"]
        verbose_name_plural = "registries"

    def __str__(self) -> str:
        return self.host

    def clean(self) -> None:
        try:
            self.host = parse_registry_host(self.host)
        except InvalidReference as exc:
            raise ValidationError({"host": str(exc)}) from None
        if bool(self.username) != bool(self.password):
            raise ValidationError("give both a username and a password, or neither (a registry without auth)")


# Help for the rows' forms (admin, REST API): changing the fields' help_text would take a migration.
REGISTRY_HELP = {
    "host": "Builds push only to the registries listed here (the allow-list); any other is refused at submit."
    " As in image names: registry.example.com:5000, localhost:5000, or docker.io for Docker Hub."
    " Hosts match exactly: localhost:5000 and 127.0.0.1:5000 are two rows.",
    "username": "Only for a registry that asks for credentials; leave both empty to push without auth.",
    "password": "Write-only: never shown again.",
}


class BuildSecret(models.Model):
    """A secret for `RUN --mount=type=secret,id=NAME` (BuildKit): a repository's,
    or one build's own (deleted when that build ends). The value is encrypted
    (lib/crypto.py) and never shown: admin and the API take it, write-only."""

    repository = models.ForeignKey(Repository, null=True, blank=True, on_delete=models.CASCADE, related_name="secrets")
    job = models.ForeignKey(BuildJob, null=True, blank=True, on_delete=models.CASCADE, related_name="secrets")
    name = models.CharField(max_length=64, help_text="The id a Dockerfile mounts: RUN --mount=type=secret,id=NAME")
    value = models.TextField(help_text="Encrypted.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["repository", "name"], name="one_secret_per_repository_name"),
            models.UniqueConstraint(fields=["job", "name"], name="one_secret_per_job_name"),
            models.CheckConstraint(
                condition=models.Q(repository__isnull=True) ^ models.Q(job__isnull=True), name="secret_has_one_owner"
            ),
        ]

    def __str__(self) -> str:
        return self.name


# The farm's figures, kept as they happen (builds/metrics/figures.py), so that neither a
# Prometheus scrape nor the insights page reads per-job rows.


class MetricCounter(models.Model):
    """A Prometheus counter's value for one set of labels (e.g. finished jobs of a
    repository and status), added to by the transaction that counts it."""

    name = models.CharField(max_length=100)
    labels = models.CharField(max_length=400, help_text="JSON object, sorted keys.")
    value = models.FloatField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["name", "labels"], name="one_counter_per_labels")]

    def __str__(self) -> str:
        return f"{self.name}{self.labels} {self.value}"


class MetricBucket(models.Model):
    """One bucket of a histogram for one set of labels: how many observations fell
    in it (not cumulative) and their sum. `bucket` indexes the family's bounds in
    builds/metrics/figures.py; one past the last is +Inf."""

    name = models.CharField(max_length=100)
    labels = models.CharField(max_length=400, help_text="JSON object, sorted keys.")
    bucket = models.PositiveSmallIntegerField()
    count = models.PositiveBigIntegerField(default=0)
    sum = models.FloatField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["name", "labels", "bucket"], name="one_row_per_bucket")]

    def __str__(self) -> str:
        return f"{self.name}{self.labels}[{self.bucket}] {self.count}"


class DailyJobStats(models.Model):
    """The jobs that ended on one day (UTC), per repository and status: what the
    insights page draws. '' is the builds without a repository."""

    day = models.DateField()
    repository = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=16)
    count = models.PositiveIntegerField(default=0)
    started = models.PositiveIntegerField(default=0, help_text="Of them, how many a worker claimed.")
    pushed = models.PositiveIntegerField(default=0, help_text="Of them, how many reached the push.")
    wait_seconds = models.FloatField(default=0, help_text="Sum, submit to claim, of the started ones.")
    build_seconds = models.FloatField(default=0, help_text="Sum, claim to push (or end).")
    push_seconds = models.FloatField(default=0)
    run_seconds = models.FloatField(default=0, help_text="Sum, claim to end.")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["repository", "day", "status"], name="one_stats_row_per_key")]
        verbose_name_plural = "daily job stats"

    def __str__(self) -> str:
        return f"{self.day} {self.repository or '-'} {self.status}: {self.count}"


class DailyDaemonStats(models.Model):
    """A daemon's builds that ended on one day (UTC) and their claim-to-end time:
    its busy time, counted on the day a build ended."""

    day = models.DateField()
    daemon = models.CharField(max_length=100)
    count = models.PositiveIntegerField(default=0)
    run_seconds = models.FloatField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["daemon", "day"], name="one_stats_row_per_daemon_day")]
        verbose_name_plural = "daily daemon stats"

    def __str__(self) -> str:
        return f"{self.day} {self.daemon}: {self.count}"


class StepStats(models.Model):
    """A repository's BuildKit step (its title, as `[2/3] RUN make`), timed over
    its builds (builds/logs/steps.py): for the insights page's slowest steps."""

    repository = models.CharField(max_length=200, blank=True)
    step = models.CharField(max_length=200)
    count = models.PositiveIntegerField(default=0)
    seconds = models.FloatField(default=0, help_text="Sum.")
    max_seconds = models.FloatField(default=0)
    last_seen = models.DateField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["repository", "step"], name="one_stats_row_per_step")]
        verbose_name_plural = "step stats"

    def __str__(self) -> str:
        return f"{self.repository or '-'} {self.step}: {self.count}"


class SigningKey(models.Model):
    """The farm's ECDSA P-256 key that signs what it pushes (builds/provenance/signing.py):
    its private half encrypted like every stored secret (lib/crypto.py),
    its public half in PEM. One active key per scope; a rotated key is retired,
    never deleted, so images it signed can still be checked."""

    scope = models.CharField(max_length=64, default="farm")
    private_key = models.TextField(editable=False)
    public_key = models.TextField()
    key_id = models.CharField(max_length=64, help_text="SHA-256 of the public key's DER, in hex.")
    created_at = models.DateTimeField(default=timezone.now)
    retired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["scope"], condition=models.Q(retired_at__isnull=True), name="one_active_signing_key_per_scope"
            )
        ]

    def __str__(self) -> str:
        return f"{self.scope} key {self.key_id[:16]}"


class Attestation(models.Model):
    """A signed in-toto statement about an image a job pushed (its provenance,
    its SBOM), as the DSSE envelope also stored in the registry's `.att` tag."""

    job = models.ForeignKey(BuildJob, on_delete=models.CASCADE, related_name="attestations")
    digest = models.CharField(max_length=80, help_text="The image (manifest or index) the statement is about.")
    predicate_type = models.CharField(max_length=200)
    envelope = models.TextField(help_text="The DSSE envelope, JSON.")
    key_id = models.CharField(max_length=64, help_text="The SigningKey that signed it.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["job", "predicate_type"]

    def __str__(self) -> str:
        return f"{self.predicate_type} of {self.digest}"
