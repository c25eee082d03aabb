"""Repositories built from git, their rules, their secrets and the webhook deliveries they got."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

from builds.jobs.limits import over_the_caps
from builds.models.jobs import BuildJob
from builds.models.registries import Registry
from builds.sources.deploy_keys import DeployKeyError, check_known_hosts
from builds.triggers.path_filters import FilterError, check_globs
from builds.triggers.rules import RuleError, check_rule
from builds.triggers.schedules import ScheduleError
from builds.triggers.schedules import check as check_schedule
from lib.errors import RegistryNotAllowed
from lib.outbound import RefusedURL, check_url
from lib.references import InvalidReference, parse_reference
from pool.platforms import check as check_platform
from pool.platforms import split as split_platforms
from teams.models import namespace_refusal


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
    # The farm's GitHub App on this repository (builds/github/app.py): learnt from
    # the App's webhooks or asked of GitHub; set, builds report check runs, not statuses.
    github_installation_id = models.BigIntegerField(
        null=True, blank=True, help_text="The GitHub App's installation on it (recorded from GitHub)."
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
    rebuild_on_base_image_change = models.BooleanField(
        "rebuild when a base image changes",
        default=False,
        help_text="Build the default branch again when an image its last build was built FROM has a new digest in "
        "its registry (checked every GENERATOR_BASE_IMAGE_INTERVAL seconds; Docker Hub's repository links).",
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


class BaseImage(models.Model):
    """An image a repository's default branch was last built FROM, and what its
    registry says of it now (builds/triggers/base_images.py): a new digest there starts
    one build of the default branch."""

    repository = models.ForeignKey(Repository, on_delete=models.CASCADE, related_name="base_images")
    reference = models.CharField(max_length=600, help_text="registry/path:tag, as the check asks for it.")
    built_digest = models.CharField(
        max_length=80, blank=True, help_text="The digest the last build used; empty: not known (the classic builder)."
    )
    current_digest = models.CharField(max_length=80, blank=True, help_text="What the registry said at the last check.")
    checked_at = models.DateTimeField(null=True, blank=True)
    check_error = models.CharField(max_length=500, blank=True, help_text="Why the last check could not ask.")
    # The change a build was started for: never a second one for it.
    rebuild_digest = models.CharField(max_length=80, blank=True)
    rebuild = models.ForeignKey("BuildJob", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["repository", "reference"]
        constraints = [
            models.UniqueConstraint(fields=["repository", "reference"], name="one_base_image_row_per_reference")
        ]

    def __str__(self) -> str:
        return f"{self.repository} FROM {self.reference}"
