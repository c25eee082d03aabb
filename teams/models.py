"""Teams (organisations), their members, and the image namespaces they own.

A team owns repositories and builds (builds/models/ points here); this module
knows no jobs. An image belongs to the team whose namespace is the longest
prefix of it, at a path boundary: `localhost:5000/` may be one team's while
`localhost:5000/team-a/` is another's, and `localhost:5000/team-a/app` then
belongs to the second.
"""

from __future__ import annotations

import re

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models.functions import Lower

from lib.references import DOCKER_HUB, DOCKER_HUB_SPELLINGS, InvalidReference, parse_registry_host, registry_host

_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*")


class TeamQuerySet(models.QuerySet):
    def of(self, user) -> TeamQuerySet:
        """The teams `user` is a member of (none for an anonymous user)."""
        if user is None or not user.is_authenticated:
            return self.none()
        return self.filter(memberships__user=user)

    def administered_by(self, user) -> TeamQuerySet:
        return self.of(user).filter(memberships__role=Membership.Role.ADMIN)


class Team(models.Model):
    """A team, and its fair share of the farm: limits an operator sets (empty: none).
    builds/jobs/quotas.py enforces them at submit, builds/jobs/dispatch.py in the queue and
    builds/logs/writer.py in the log writer; its registry quota, teams/registry_quota.py."""

    class OverLimit(models.TextChoices):
        FARM = "", "the farm's setting (GENERATOR_TEAM_OVER_LIMIT)"
        REJECT = "reject", "reject (429 with Retry-After)"
        QUEUE = "queue", "queue (the build waits its turn)"

    name = models.CharField(max_length=100, unique=True)
    slug = models.SlugField(max_length=50, unique=True, help_text="How builds and the API name the team.")
    max_concurrent_builds = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)],
        help_text="Builds of the team running at once; empty: no limit.",
    )  # fmt: skip
    max_builds_per_hour = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)],
        help_text="Builds submitted in any sliding hour (queue mode: started); empty: no limit.",
    )  # fmt: skip
    max_log_lines = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)],
        help_text="Log lines per build: a build past it fails. The farm's GENERATOR_MAX_LOG_LINES still holds.",
    )  # fmt: skip
    over_limit = models.CharField(
        max_length=8, blank=True, choices=OverLimit.choices, default=OverLimit.FARM,
        help_text="Over the concurrency or hourly limit, a submit is refused or waits its turn.",
    )  # fmt: skip
    registry_quota_bytes = models.PositiveBigIntegerField(
        null=True, blank=True,
        help_text="Bytes the team's images may take in the farm's registry; empty: the farm's"
        " GENERATOR_TEAM_REGISTRY_QUOTA_BYTES. Over it, the team's tokens carry no push and its submits get 429.",
    )  # fmt: skip
    # The sum of the distinct blobs its tags name (teams/registry_quota.py keeps it with RegistryBlob).
    registry_used_bytes = models.PositiveBigIntegerField(default=0, editable=False)
    registry_counted_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    # The user the team's API tokens act as (teams/tokens.py): made with its first token.
    token_user = models.OneToOneField(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="token_team",
        editable=False,
    )  # fmt: skip

    objects = TeamQuerySet.as_manager()

    class Meta:
        ordering = ["slug"]
        # Unique ignoring case, so that no team passes for another on pages,
        # notifications and the audit log (`TEAM-A` beside `team-a`). lower() is
        # ASCII-only on SQLite: `clean()` and the API fold all of Unicode first.
        constraints = [
            models.UniqueConstraint(
                Lower("slug"),
                name="team_slug_unique_ignoring_case",
                violation_error_message="A team with this slug (ignoring case) already exists.",
            ),
            models.UniqueConstraint(
                Lower("name"),
                name="team_name_unique_ignoring_case",
                violation_error_message="A team with this name (ignoring case) already exists.",
            ),
        ]

    def __str__(self) -> str:
        return self.slug

    def clean(self) -> None:
        errors = {}
        for field in ("slug", "name"):
            if taken := taken_ignoring_case(field, getattr(self, field), exclude_pk=self.pk):
                errors[field] = taken
        if errors:
            raise ValidationError(errors)

    @property
    def registry_quota(self) -> int | None:
        """The team's registry quota in bytes, or None for none (the farm's default 0)."""
        if self.registry_quota_bytes is not None:
            return self.registry_quota_bytes
        return settings.GENERATOR_TEAM_REGISTRY_QUOTA_BYTES or None

    @property
    def over_limit_mode(self) -> str:
        return self.over_limit or settings.GENERATOR_TEAM_OVER_LIMIT

    def has_member(self, user) -> bool:
        return bool(user and user.is_authenticated) and self.memberships.filter(user=user).exists()

    def has_admin(self, user) -> bool:
        return (
            bool(user and user.is_authenticated)
            and self.memberships.filter(user=user, role=Membership.Role.ADMIN).exists()
        )


def taken_ignoring_case(field: str, value: str, *, exclude_pk: int | None = None) -> str | None:
    """Why `value` cannot be a team's slug or name: another team has it, ignoring
    case, Unicode case folding included (`Équipe`, `ÉQUIPE`), which SQLite's
    lower() does not do. Teams are few: they are compared here, not in SQL."""
    folded = (value or "").casefold()
    for team in Team.objects.exclude(pk=exclude_pk).only("pk", "slug", "name"):
        if getattr(team, field).casefold() == folded:
            return f"team {team.slug} already has the {field} {getattr(team, field)!r} (ignoring case)"
    return None


class Membership(models.Model):
    class Role(models.TextChoices):
        MEMBER = "member", "member (builds, reads, cancels their own builds)"
        ADMIN = "admin", "admin (also manages members and cancels any of the team's builds)"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)

    class Meta:
        ordering = ["team", "user"]
        constraints = [models.UniqueConstraint(fields=["team", "user"], name="one_membership_per_team_user")]

    def __str__(self) -> str:
        return f"{self.user} in {self.team} ({self.role})"


def canonical_image(image_repository: str) -> str:
    """An image repository as a namespace prefix reads it: the registry host as
    Docker reads it, the path with Docker Hub's `library/`, and a closing '/'
    (`busybox` -> `docker.io/library/busybox/`)."""
    host = registry_host(image_repository)
    first, slash, rest = image_repository.partition("/")
    if host != DOCKER_HUB:
        path = rest
    else:
        path = rest if slash and first in DOCKER_HUB_SPELLINGS else image_repository
        if "/" not in path:
            path = f"library/{path}"
    return f"{host}/{path}/"


def parse_namespace(text: str) -> str:
    """`localhost:5000/team-a` -> `localhost:5000/team-a/`; a registry alone is
    all of it (`localhost:5000/`). Raises InvalidReference with the reason."""
    host, _, path = text.strip().strip("/").partition("/")
    host = parse_registry_host(host)
    components = [c for c in path.split("/") if c] if path else []
    for component in components:
        if not _PATH_COMPONENT.fullmatch(component):
            raise InvalidReference(f"{component!r} is not an image path component (lowercase letters, digits, . _ -)")
    return "/".join([host, *components]) + "/"


class NamespaceQuerySet(models.QuerySet):
    def owning(self, image_repository: str) -> Namespace | None:
        """The namespace an image repository is in: the longest prefix of it, at a '/'."""
        canonical = canonical_image(image_repository)
        parts = canonical.rstrip("/").split("/")
        prefixes = ["/".join(parts[:n]) + "/" for n in range(1, len(parts) + 1)]
        return self.filter(prefix__in=prefixes).select_related("team").order_by("-prefix").first()


class Namespace(models.Model):
    """Where a team's builds may push: a registry host and a path prefix. The
    longest prefix that matches an image decides whose it is."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="namespaces")
    prefix = models.CharField(
        max_length=300,
        unique=True,
        help_text="A registry host and a path prefix, e.g. localhost:5000/team-a/ (or localhost:5000/ for all of it).",
    )
    public = models.BooleanField(
        default=False,
        help_text="Every team (and anyone anonymous) may pull from it, e.g. localhost:5000/library/ for shared bases."
        " Only staff set it.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = NamespaceQuerySet.as_manager()

    class Meta:
        ordering = ["prefix"]

    def __str__(self) -> str:
        return self.prefix

    def clean(self) -> None:
        try:
            self.prefix = parse_namespace(self.prefix)
        except InvalidReference as exc:
            raise ValidationError({"prefix": str(exc)}) from None


def namespace_refusal(team: Team | None, image_repository: str) -> str:
    """Why `team` may not push to `image_repository`, or '' if it may."""
    return owner_refusal(team, image_repository, Namespace.objects.owning(image_repository))


def owner_refusal(team: Team | None, image_repository: str, namespace: Namespace | None) -> str:
    """namespace_refusal, given the namespace that owns the image repository
    (Namespace.objects.owning), for a caller that has already read it."""
    if namespace is None:
        return (
            f"{image_repository} is in no team's namespace: builds push only into their team's namespaces"
            " (an operator adds them under Teams)"
        )
    if team is None or namespace.team_id != team.pk:
        whose = f"team {team.slug}" if team else "none of your teams"
        return f"{image_repository} is in namespace {namespace.prefix}, which {whose} does not own"
    return ""


class TeamToken(models.Model):
    """An API token of a team, not of a person: `Authorization: Token gtt_...`
    acts as the team's token user (teams/tokens.py), a member of that team alone.
    Only the SHA-256 of the key is stored; the key is shown once, when made."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="tokens")
    name = models.CharField(max_length=100, help_text="What the token is for (a CI job, a script).")
    # The key's first characters, to tell tokens apart in lists and to find a leaked one.
    prefix = models.CharField(max_length=16, editable=False)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty: until revoked.")
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["team", "-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class RegistryCredential(models.Model):
    """A team's account on a registry: its builds push to `host` with it, over the
    farm's own (builds.Registry). The password is encrypted (lib/crypto.py)
    and write-only: admin and the API take it and never show it."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="registry_credentials")
    host = models.CharField(max_length=255, help_text="As in image names: registry.example.com:5000, or docker.io.")
    username = models.CharField(max_length=200)
    password = models.TextField(help_text="Encrypted.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["team", "host"]
        constraints = [models.UniqueConstraint(fields=["team", "host"], name="one_registry_credential_per_team_host")]

    def __str__(self) -> str:
        return f"{self.username} at {self.host}"

    def clean(self) -> None:
        try:
            self.host = parse_registry_host(self.host)
        except InvalidReference as exc:
            raise ValidationError({"host": str(exc)}) from None


class RegistryBlob(models.Model):
    """A blob a tag in the farm's registry names, counted for the team owning its
    repository: the tag's manifest (or index, and each manifest it lists), their
    configs and layers. A tag pushed again replaces its rows; a team's use is the
    sum of its distinct digests (teams/registry_quota.py)."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="registry_blobs")
    repository = models.CharField(max_length=300, help_text="The repository's path in the registry.")
    tag = models.CharField(max_length=128)
    digest = models.CharField(max_length=100)
    size = models.PositiveBigIntegerField()

    class Meta:
        ordering = ["repository", "tag", "digest"]
        constraints = [
            models.UniqueConstraint(fields=["repository", "tag", "digest"], name="one_registry_blob_per_tag_digest")
        ]
        indexes = [models.Index(fields=["team", "digest"], name="registry_blob_team_digest")]

    def __str__(self) -> str:
        return f"{self.repository}:{self.tag} {self.digest} ({self.size} bytes)"
