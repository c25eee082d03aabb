"""REST API representations of jobs and repositories. Secrets are write-only."""

from __future__ import annotations

from django.conf import settings
from rest_framework import serializers

from builds.jobs import build_secrets, ownership
from builds.models import REGISTRY_HELP, BuildJob, BuildRule, Registry, Repository
from builds.sources import deploy_keys
from lib import crypto, secret_values
from teams.models import Team


class ReadableRepositoryField(serializers.SlugRelatedField):
    """A repository by owner/name among those the requester may read: another
    team's private repository reads as one that does not exist."""

    def get_queryset(self):
        return ownership.readable_repositories(self.context["request"].user)


class MyTeamField(serializers.SlugRelatedField):
    """A team by slug among the requester's (staff: any)."""

    def get_queryset(self):
        user = self.context["request"].user
        return Team.objects.all() if ownership.is_staff(user) else Team.objects.of(user)


class BuildJobSerializer(serializers.ModelSerializer):
    tags = serializers.SerializerMethodField()
    repository = serializers.SlugRelatedField(slug_field="full_name", read_only=True)
    daemon = serializers.SlugRelatedField(slug_field="name", read_only=True)
    cancelled_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    team = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    queue_position = serializers.SerializerMethodField()
    links = serializers.SerializerMethodField()
    children = serializers.SerializerMethodField()
    signatures = serializers.SerializerMethodField()

    class Meta:
        model = BuildJob
        fields = [
            "id",
            "status",
            "image",
            "tags",
            "repository",
            "team",
            "ref",
            "commit_sha",
            "pull_request",
            "fork",
            "not_pushed",
            "schedule_rule",
            "reason",
            "pull",
            "daemon",
            "attempt",
            "queue_position",
            "created_at",
            "started_at",
            "push_started_at",
            "finished_at",
            "image_id",
            "digest",
            "error",
            "build_args",
            "labels",
            "no_cache",
            "builder",
            "target",
            "platforms",
            "platform",
            "parent",
            "children",
            "retry_of",
            "superseded_by",
            "cancelled_by",
            "log_line_count",
            "signatures",
            "links",
        ]

    def get_children(self, job: BuildJob) -> list[dict]:
        """A multi-platform build's builds, one per platform."""
        if not job.platforms or job.parent_id:
            return []
        return [
            {"id": c.id, "platform": c.platform, "status": c.status, "daemon": c.daemon.name if c.daemon else None,
             "digest": c.digest, "error": c.error}
            for c in job.children.select_related("daemon").order_by("platform")
        ]  # fmt: skip

    def get_signatures(self, job: BuildJob) -> dict | None:
        """Where the pushed image's signature and attestations are (cosign's tags) and the key that checks them."""
        found = [a for a in job.attestations.all() if a.digest == job.digest]
        if not job.digest or not found:
            return None
        from builds.models import SigningKey
        from builds.provenance.cosign_layout import CYCLONEDX as SBOM
        from builds.provenance.cosign_layout import attestation_tag, signature_tag

        site, repository = settings.GENERATOR_SITE_URL, job.image_repository
        return {
            "signature": f"{repository}:{signature_tag(job.digest)}",
            "attestations": f"{repository}:{attestation_tag(job.digest)}",
            "provenance": f"{site}/api/v1/builds/{job.id}/attestations/provenance/",
            **(
                {"sbom": f"{site}/api/v1/builds/{job.id}/attestations/sbom/"}
                if any(a.predicate_type == SBOM for a in found)
                else {}
            ),  # fmt: skip
            "public_key": SigningKey.objects.filter(key_id=found[0].key_id).values_list("public_key", flat=True)[0],
        }

    def get_tags(self, job: BuildJob) -> list[str]:
        return [job.image.rsplit(":", 1)[1], *job.extra_tags]

    def get_queue_position(self, job: BuildJob) -> int | None:
        return job.queue_position()

    def get_links(self, job: BuildJob) -> dict[str, str]:
        site = settings.GENERATOR_SITE_URL
        ws = site.replace("https://", "wss://").replace("http://", "ws://")
        links = {
            "self": f"{site}/api/v1/builds/{job.id}/",
            "log": f"{site}/api/v1/builds/{job.id}/log/",
            "websocket": f"{ws}/b1/build/log/ws/{job.id}",
            "page": f"{site}/builds/{job.id}/",
        }
        if job.pull_request_url:
            links["pull_request"] = job.pull_request_url
        return links


class StringMap(serializers.DictField):
    child = serializers.CharField(allow_blank=True)


class PlatformsField(serializers.Field):
    """A list of os/arch, or (in a multipart form) one comma-separated string."""

    def to_internal_value(self, data):
        if isinstance(data, str):
            data = [p for p in (part.strip() for part in data.split(",")) if p]
        if not isinstance(data, list) or not all(isinstance(p, str) for p in data):
            raise serializers.ValidationError('a list of platforms such as ["linux/amd64", "linux/arm64"]')
        return data

    def to_representation(self, value):
        return value


class BuildCreateSerializer(serializers.Serializer):
    """A build from exactly one source: `dockerfile` text, an uploaded `context`
    (.tar or .tar.gz, multipart), or a registered `repository` and a `ref`."""

    image = serializers.CharField(help_text="repository:tag to push, e.g. localhost:5000/team/app:1.0")
    dockerfile = serializers.CharField(required=False, allow_blank=False, trim_whitespace=False)
    context = serializers.FileField(required=False, help_text="A .tar or .tar.gz build context.")
    dockerfile_path = serializers.CharField(required=False, default="Dockerfile")
    repository = ReadableRepositoryField(slug_field="full_name", required=False)
    team = serializers.CharField(
        required=False, default="", allow_blank=True, max_length=50,
        help_text="The team (slug) the build is for; default: the repository's, else the one of your teams that "
        "owns the image's namespace.",
    )  # fmt: skip
    ref = serializers.CharField(required=False, default="", help_text="Branch, tag or commit of the repository.")
    extra_tags = serializers.ListField(child=serializers.CharField(), required=False, default=list)
    build_args = StringMap(required=False, default=dict)
    labels = StringMap(required=False, default=dict)
    no_cache = serializers.BooleanField(required=False, default=False)
    builder = serializers.ChoiceField(
        choices=["classic", "buildkit"], required=False, default="",
        help_text="classic or buildkit; default: the repository's, else the farm's (GENERATOR_DEFAULT_BUILDER).",
    )  # fmt: skip
    target = serializers.CharField(required=False, default="", help_text="The stage of a multi-stage build to stop at.")
    platforms = PlatformsField(
        required=False, default=list,
        help_text="Build for these platforms (os/arch) into one image index, e.g. [\"linux/amd64\", \"linux/arm64\"]; "
        "default: the daemon's own platform.",
    )  # fmt: skip
    secrets = StringMap(
        required=False, default=dict, write_only=True,
        help_text="This build's own secrets, name -> value, for RUN --mount=type=secret,id=NAME (BuildKit); "
        "stored encrypted until the build ends, never shown.",
    )  # fmt: skip


class BuildRuleSerializer(serializers.ModelSerializer):
    class Meta:
        model = BuildRule
        fields = [
            "source", "pattern", "tags", "included", "ignored",
            "schedule", "schedule_timezone", "schedule_jitter", "schedule_fired_at",
        ]  # fmt: skip
        read_only_fields = ["schedule_fired_at"]

    def validate(self, data):
        BuildRule(**data).clean()
        return data


class RepositorySerializer(serializers.ModelSerializer):
    rules = BuildRuleSerializer(many=True, required=False)
    secrets = StringMap(
        required=False, write_only=True,
        help_text="Build secrets, name -> value (BuildKit's RUN --mount=type=secret,id=NAME): set or replaced, "
        "stored encrypted, never shown; an empty value removes one.",
    )  # fmt: skip
    secret_names = serializers.SerializerMethodField()
    team = MyTeamField(
        slug_field="slug", required=False, allow_null=True,
        help_text="The team (slug) that owns it, one of yours; default: your only team. Only staff leave it empty.",
    )  # fmt: skip
    deploy_key = serializers.CharField(
        required=False, allow_blank=True, write_only=True, trim_whitespace=False,
        help_text="An SSH private key without a passphrase, for ssh:// and git@ clone URLs (and, with "
        "forward_ssh_to_build, RUN --mount=type=ssh): stored encrypted, never shown; empty removes it.",
    )  # fmt: skip

    base_images = serializers.SerializerMethodField()

    def get_secret_names(self, repository: Repository) -> list[str]:
        return [secret.name for secret in repository.secrets.all()]

    def get_base_images(self, repository: Repository) -> list[dict]:
        """The images its default branch was last built FROM and what their
        registries said (builds/triggers/base_images.py)."""
        fields = ("reference", "built_digest", "current_digest", "checked_at", "check_error", "rebuild_id")
        return list(repository.base_images.values(*fields))

    class Meta:
        model = Repository
        fields = [
            "id",
            "full_name",
            "team",
            "public",
            "clone_url",
            "webhook_secret",
            "access_token",
            "image",
            "context_dir",
            "dockerfile_path",
            "build_args",
            "cancel_superseded_running",
            "build_timeout",
            "max_concurrent_builds",
            "network",
            "build_memory_mb",
            "build_cpus",
            "build_pids",
            "daemon_group",
            "builder",
            "platforms",
            "pull_requests",
            "rebuild_on_base_image_change",
            "base_images",
            "hook_verified_at",
            "rules",
            "secrets",
            "secret_names",
            "deploy_key",
            "deploy_key_fingerprint",
            "known_hosts",
            "forward_ssh_to_build",
        ]
        read_only_fields = ["hook_verified_at", "deploy_key_fingerprint"]
        extra_kwargs = {"webhook_secret": {"write_only": True}, "access_token": {"write_only": True}}

    def validate(self, data):
        candidate = Repository(**{k: v for k, v in data.items() if k not in ("rules", "secrets", "deploy_key")})
        try:
            secret_values.check({k: v for k, v in data.get("secrets", {}).items() if v})
        except secret_values.SecretError as exc:
            raise serializers.ValidationError({"secrets": str(exc)}) from None
        if data.get("deploy_key"):
            try:
                data["deploy_key"] = deploy_keys.check(data["deploy_key"])
            except deploy_keys.DeployKeyError as exc:
                raise serializers.ValidationError({"deploy_key": str(exc)}) from None
        if self.instance:
            for name in ("build_args", "context_dir", "dockerfile_path", "team", "image"):
                if name not in data:
                    setattr(candidate, name, getattr(self.instance, name))
        elif "team" not in data:
            data["team"] = candidate.team = self._default_team()
        if candidate.team is None and not ownership.is_staff(self.context["request"].user):
            raise serializers.ValidationError({"team": "name the team that owns it: one of yours"})
        candidate.clean()
        return data

    def _default_team(self) -> Team | None:
        user = self.context["request"].user
        if ownership.is_staff(user):
            return None
        teams = list(Team.objects.of(user)[:2])
        if len(teams) != 1:
            raise serializers.ValidationError(
                {"team": "you are in no team" if not teams else "you are in several teams: name one"}
            )
        return teams[0]

    def create(self, data):
        rules = data.pop("rules", [])
        secrets = data.pop("secrets", {})
        repository = Repository(**{k: v for k, v in data.items() if k != "deploy_key"})
        deploy_keys.assign(repository, data.get("deploy_key") or None)
        repository.save()
        BuildRule.objects.bulk_create(BuildRule(repository=repository, **rule) for rule in rules)
        _set_secrets(repository, secrets)
        return repository

    def update(self, repository, data):
        rules = data.pop("rules", None)
        secrets = data.pop("secrets", {})
        if "deploy_key" in data:  # left out: the stored key stays
            deploy_keys.assign(repository, data.pop("deploy_key") or None)
        repository = super().update(repository, data)
        if rules is not None:
            repository.rules.all().delete()
            BuildRule.objects.bulk_create(BuildRule(repository=repository, **rule) for rule in rules)
        _set_secrets(repository, secrets)
        return repository


def _set_secrets(repository: Repository, secrets: dict[str, str]) -> None:
    removed = [name for name, value in secrets.items() if not value]
    repository.secrets.filter(name__in=removed).delete()
    build_secrets.store({"repository": repository}, {k: v for k, v in secrets.items() if v})


class RegistrySerializer(serializers.ModelSerializer):
    """A registry builds may push to: the rows are the allow-list. Credentials are
    optional (both or neither); the password is write-only and stored encrypted,
    and an update that leaves it out keeps the stored one unless it clears the username."""

    class Meta:
        model = Registry
        fields = ["id", "host", "username", "password", "builds_pull_with_farm_account", "created_at"]
        read_only_fields = ["created_at"]
        extra_kwargs = {
            "host": {"help_text": REGISTRY_HELP["host"]},
            "username": {"help_text": REGISTRY_HELP["username"]},
            "password": {"write_only": True, "help_text": REGISTRY_HELP["password"]},
        }

    def validate(self, data):
        stored = self.instance
        username = data.get("username", stored.username if stored else "")
        typed = data.get("password")
        password = typed or (stored.password if stored and username else "")
        candidate = Registry(host=data.get("host", stored.host if stored else ""), username=username, password=password)
        candidate.clean()  # the host as Docker writes it; both credentials or neither
        if Registry.objects.filter(host=candidate.host).exclude(pk=stored.pk if stored else None).exists():
            raise serializers.ValidationError({"host": f"{candidate.host} is already listed"})
        data.update(host=candidate.host, password=crypto.encrypt(typed) if typed else password)
        return data
