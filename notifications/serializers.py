from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import serializers

from builds.jobs import ownership
from builds.models import Repository
from lib import crypto
from notifications.models import EVENTS, Attempt, Delivery, Endpoint


class TeamRepositoryField(serializers.SlugRelatedField):
    """A repository by full name among those the requester's teams own (staff: any)."""

    def get_queryset(self):
        return ownership.team_repositories(self.context["request"].user)


class EndpointSerializer(serializers.ModelSerializer):
    repository = TeamRepositoryField(
        slug_field="full_name", allow_null=True, required=False,
        help_text="owner/name of one of your team's repositories; null (staff only): farm-wide, every build.",
    )  # fmt: skip
    secret = serializers.CharField(
        required=False, allow_blank=True, write_only=True, trim_whitespace=False, max_length=200,
        help_text="Signs webhook bodies (X-Generator-Signature-256): stored encrypted, never answered; "
        "empty removes it.",
    )  # fmt: skip
    has_secret = serializers.BooleanField(read_only=True)
    events = serializers.MultipleChoiceField(
        choices=EVENTS, required=False, help_text="Which build events to send; default succeeded, failed, cancelled."
    )

    class Meta:
        model = Endpoint
        fields = [
            "id", "name", "repository", "kind", "url", "secret", "has_secret",
            "email_to", "email_pusher", "events", "active", "created_at",
        ]  # fmt: skip

    def to_representation(self, endpoint):
        data = super().to_representation(endpoint)
        data["events"] = endpoint.events
        return data

    def validate_repository(self, repository: Repository | None) -> Repository | None:
        if repository is None and not ownership.is_staff(self.context["request"].user):
            raise serializers.ValidationError("only staff set farm-wide endpoints: name one of your repositories")
        return repository

    def validate(self, data: dict) -> dict:
        probe = Endpoint(**{k: v for k, v in self._merged(data).items() if k not in ("events", "secret")})
        for event in EVENTS:
            setattr(probe, f"on_{event}", event in self._merged(data)["events"])
        try:
            probe.clean()
        except DjangoValidationError as exc:
            raise serializers.ValidationError(getattr(exc, "message_dict", None) or {"detail": exc.messages}) from None
        return data

    def _merged(self, data: dict) -> dict:
        current = {"events": Endpoint().events}  # the model's defaults
        if self.instance is not None:
            current = {
                f: getattr(self.instance, f)
                for f in ("name", "repository", "kind", "url", "email_to", "email_pusher", "active")
            }
            current["events"] = self.instance.events
        return {**current, **data}

    def _apply(self, endpoint: Endpoint, data: dict) -> Endpoint:
        if "events" in data:
            for event in EVENTS:
                setattr(endpoint, f"on_{event}", event in data["events"])
        if "secret" in data:
            endpoint.secret = crypto.encrypt(data["secret"]) if data["secret"] else ""
        for name, value in data.items():
            if name not in ("events", "secret"):
                setattr(endpoint, name, value)
        endpoint.save()
        return endpoint

    def create(self, data: dict) -> Endpoint:
        return self._apply(Endpoint(), {"events": Endpoint().events, **data})

    def update(self, endpoint: Endpoint, data: dict) -> Endpoint:
        return self._apply(endpoint, data)


class AttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = Attempt
        fields = ["number", "started_at", "duration_ms", "status_code", "response_excerpt", "error"]


class DeliverySerializer(serializers.ModelSerializer):
    attempts = AttemptSerializer(many=True, read_only=True)

    class Meta:
        model = Delivery
        fields = ["id", "event", "job", "state", "tries", "next_try_at", "redelivery_of", "created_at", "attempts"]
