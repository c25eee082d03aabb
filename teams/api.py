"""REST API v1 for teams, their members and namespaces.

Everyone logged in reads their own teams (staff: all); another team is a 404.
Staff create and delete teams, give out namespaces (a namespace decides who
may push where, so a team may not claim one) and set a team's limits (its fair
share of the farm); a team's admins rename it and manage its members, its API
tokens (teams/tokens.py) and its registry credentials. Every change is in the
audit log (audit/).
"""

from __future__ import annotations

from contextlib import contextmanager

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from drf_spectacular.utils import extend_schema, extend_schema_field, extend_schema_view
from rest_framework import exceptions, mixins, permissions, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from audit.hooks import AuditedViewSet
from audit.log import record
from lib import crypto
from teams import tokens as team_tokens
from teams.models import Membership, Namespace, RegistryCredential, Team, TeamToken, taken_ignoring_case
from teams.registry_quota import over_quota

LIMIT_FIELDS = ["max_concurrent_builds", "max_builds_per_hour", "max_log_lines", "over_limit", "registry_quota_bytes"]


def _staff(user) -> bool:
    return bool(user and user.is_authenticated and user.is_staff)


class MembershipSerializer(serializers.ModelSerializer):
    username = serializers.SlugRelatedField(
        source="user", slug_field="username", queryset=get_user_model().objects.filter(is_active=True)
    )

    class Meta:
        model = Membership
        fields = ["username", "role"]


class TeamSerializer(serializers.ModelSerializer):
    namespaces = serializers.SlugRelatedField(slug_field="prefix", many=True, read_only=True)
    members = MembershipSerializer(source="memberships", many=True, read_only=True)
    registry_usage = serializers.SerializerMethodField()

    class Meta:
        model = Team
        fields = ["id", "slug", "name", "namespaces", "members", *LIMIT_FIELDS, "registry_usage", "created_at"]
        read_only_fields = ["created_at"]

    @extend_schema_field(
        {
            "type": "object",
            "description": "The team's storage in the farm's registry (its distinct blobs) against the quota in"
            " force (registry_quota_bytes, else the farm's default; null: none).",
        }
    )
    def get_registry_usage(self, team: Team) -> dict:
        return {
            "used_bytes": team.registry_used_bytes,
            "quota_bytes": team.registry_quota,
            "over_quota": over_quota(team),
            "counted_at": team.registry_counted_at,
        }

    def validate_slug(self, value: str) -> str:
        return self._unique_ignoring_case("slug", value)

    def validate_name(self, value: str) -> str:
        return self._unique_ignoring_case("name", value)

    def _unique_ignoring_case(self, field: str, value: str) -> str:
        if taken := taken_ignoring_case(field, value, exclude_pk=getattr(self.instance, "pk", None)):
            raise serializers.ValidationError(taken)
        return value

    def validate(self, data):
        user = self.context["request"].user
        # A team's admin may send its limits back as they stand (a PUT of what GET gave), not change them.
        changed = [f for f in LIMIT_FIELDS if f in data and data[f] != getattr(self.instance, f, None)]
        if changed and not _staff(user):
            raise exceptions.PermissionDenied(f"only staff set a team's limits ({', '.join(changed)})")
        return data


class NamespaceSerializer(serializers.ModelSerializer):
    team = serializers.SlugRelatedField(slug_field="slug", queryset=Team.objects.all())

    class Meta:
        model = Namespace
        fields = ["id", "team", "prefix", "public", "created_at"]
        read_only_fields = ["created_at"]
        extra_kwargs = {"prefix": {"validators": []}}  # checked below, once written as Docker reads it

    def validate_prefix(self, value: str) -> str:
        candidate = Namespace(prefix=value)
        try:
            candidate.clean()
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict["prefix"]) from None
        taken = Namespace.objects.filter(prefix=candidate.prefix).exclude(pk=getattr(self.instance, "pk", None))
        if taken.exists():
            raise serializers.ValidationError(f"{candidate.prefix} is already a namespace")
        return candidate.prefix


class TeamTokenSerializer(serializers.ModelSerializer):
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = TeamToken
        fields = ["id", "name", "prefix", "created_by", "created_at", "last_used_at", "expires_at", "revoked_at"]
        read_only_fields = ["prefix", "created_at", "last_used_at", "revoked_at"]

    def validate_expires_at(self, value):
        if value is not None and value <= timezone.now():
            raise serializers.ValidationError("already past: give a time to come, or none")
        return value


class NewTeamTokenSerializer(TeamTokenSerializer):
    token = serializers.CharField(
        read_only=True,
        help_text="The key, for 'Authorization: Token <key>'. Shown this once: only its hash is stored.",
    )

    class Meta(TeamTokenSerializer.Meta):
        fields = [*TeamTokenSerializer.Meta.fields, "token"]


class RegistryCredentialSerializer(serializers.ModelSerializer):
    """Sent again for the same host, it replaces the stored one. The password is
    write-only: kept encrypted (lib/crypto.py), never answered."""

    class Meta:
        model = RegistryCredential
        fields = ["id", "host", "username", "password", "created_at", "updated_at"]
        read_only_fields = ["created_at", "updated_at"]
        extra_kwargs = {
            "password": {"write_only": True, "help_text": "Write-only: never shown again."},
        }

    def validate(self, data):
        candidate = RegistryCredential(host=data.get("host", getattr(self.instance, "host", "")))
        try:
            candidate.clean()
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict) from None
        if not data.get("password"):
            raise serializers.ValidationError({"password": "give the registry account's password (or token)"})
        return {**data, "host": candidate.host, "password": crypto.encrypt(data["password"])}


class TeamAccess(permissions.BasePermission):
    message = "only staff create or delete teams; only a team's admins or staff change it or its members"

    def has_permission(self, request, view) -> bool:
        if view.action in ("create", "destroy"):
            return _staff(request.user)
        return True

    def has_object_permission(self, request, view, team: Team) -> bool:
        return request.method in permissions.SAFE_METHODS or _staff(request.user) or team.has_admin(request.user)


@contextmanager
def _unique_ignoring_case():
    """Two requests naming teams alike at once: the second meets the database's
    constraint (teams/models.py) after both passed validation."""
    try:
        with transaction.atomic():
            yield
    except IntegrityError:
        raise serializers.ValidationError(
            {"detail": "another team has this slug or name (ignoring case): it was saved a moment ago"}
        ) from None


@extend_schema_view(
    list=extend_schema(description="Your teams (staff: all), with namespaces and members."),
    retrieve=extend_schema(description="One of your teams; another team is a 404."),
    create=extend_schema(description="Staff only."),
    update=extend_schema(
        description="The team's admins or staff; its limits (max_concurrent_builds, "
        "max_builds_per_hour, max_log_lines, over_limit, registry_quota_bytes): staff only."
    ),
    partial_update=extend_schema(description="The team's admins or staff; its limits: staff only."),
    destroy=extend_schema(description="Staff only; a team that still owns repositories cannot be deleted (409)."),
)
class TeamViewSet(AuditedViewSet, viewsets.ModelViewSet):
    serializer_class = TeamSerializer
    permission_classes = [permissions.IsAuthenticated, TeamAccess]
    lookup_field = "slug"

    def get_queryset(self):
        teams = Team.objects.all() if _staff(self.request.user) else Team.objects.of(self.request.user)
        return teams.prefetch_related("namespaces", "memberships__user").order_by("slug")

    def perform_create(self, serializer):
        with _unique_ignoring_case():
            super().perform_create(serializer)

    def perform_update(self, serializer):
        with _unique_ignoring_case():
            super().perform_update(serializer)

    def destroy(self, request, *args, **kwargs):
        team = self.get_object()
        if team.repositories.exists():
            names = ", ".join(team.repositories.values_list("full_name", flat=True)[:5])
            return Response({"detail": f"team {team.slug} still owns repositories: {names}"}, status=409)
        return super().destroy(request, *args, **kwargs)

    @extend_schema(
        request=MembershipSerializer,
        responses={200: TeamSerializer},
        description="Add a member or change a member's role (member or admin): the team's admins or staff.",
    )
    @action(detail=True, methods=["post"])
    def members(self, request, slug=None):
        team = self.get_object()
        form = MembershipSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        user, role = form.validated_data["user"], form.validated_data.get("role", Membership.Role.MEMBER)
        if team_tokens.is_token_user(user):
            return Response({"detail": f"{user.get_username()!r} is a team's token user: its tokens set its team"}, 400)
        _, created = Membership.objects.update_or_create(team=team, user=user, defaults={"role": role})
        details = {"members": [user.get_username()], "role": role}
        record("create" if created else "change", "membership", team, team=team, details=details)
        return Response(TeamSerializer(self.get_object()).data)

    @extend_schema(
        request=None,
        responses={200: TeamSerializer},
        description="Remove a member: the team's admins or staff. The last admin cannot be removed (409).",
    )
    @action(detail=True, methods=["delete"], url_path=r"members/(?P<username>[^/]+)")
    def remove_member(self, request, slug=None, username=None):
        team = self.get_object()
        membership = team.memberships.filter(user__username=username).first()
        if membership is None:
            return Response({"detail": f"{username!r} is not a member of team {team.slug}"}, status=404)
        if membership.user_id == team.token_user_id:
            return Response({"detail": "the team's token user stays: revoke its tokens instead"}, status=400)
        admins = team.memberships.filter(role=Membership.Role.ADMIN)
        if membership.role == Membership.Role.ADMIN and admins.count() == 1 and not _staff(request.user):
            return Response({"detail": "the team's last admin cannot be removed: make another admin first"}, 409)
        membership.delete()
        record("delete", "membership", team, team=team, details={"members": [username]})
        return Response(TeamSerializer(self.get_object()).data, status=status.HTTP_200_OK)

    def _administered(self) -> Team:
        team = self.get_object()  # someone outside the team: 404
        if not (_staff(self.request.user) or team.has_admin(self.request.user)):
            raise exceptions.PermissionDenied("only the team's admins or staff manage its tokens and credentials")
        return team

    @extend_schema(
        methods=["GET"],
        responses={200: TeamTokenSerializer(many=True)},
        description="The team's API tokens, revoked ones too; never their keys. The team's admins or staff "
        "(a member: 403; someone outside the team: 404).",
    )
    @extend_schema(
        methods=["POST"],
        request=TeamTokenSerializer,
        responses={201: NewTeamTokenSerializer},
        description="Make a team token: the team's admins or staff. The answer's `token` (gtt_...) is the key, "
        "shown this once. `Authorization: Token <key>` then acts as a member (not admin) of this team alone: "
        "it submits into the team's namespaces, reads and cancels the team's builds (REST, /b1, WebSocket, CLI).",
    )
    @action(detail=True, methods=["get", "post"], serializer_class=TeamTokenSerializer, pagination_class=None)
    def tokens(self, request, slug=None):
        team = self._administered()
        if request.method == "GET":
            return Response(TeamTokenSerializer(team.tokens.select_related("created_by"), many=True).data)
        form = TeamTokenSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        token, key = team_tokens.issue(team, created_by=request.user, **form.validated_data)
        return Response({**NewTeamTokenSerializer(token).data, "token": key}, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=None,
        responses={204: None},
        description="Revoke a team token (it then gets 401): the team's admins or staff. The row stays, "
        "with its revocation time.",
    )
    @action(detail=True, methods=["delete"], url_path=r"tokens/(?P<token_id>[0-9]+)")
    def revoke_token(self, request, slug=None, token_id=None):
        token = self._administered().tokens.filter(pk=token_id).first()
        if token is None:
            return Response({"detail": f"team {slug} has no token {token_id}"}, status=404)
        team_tokens.revoke(token, actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        methods=["GET"],
        responses={200: RegistryCredentialSerializer(many=True)},
        description="The team's registry accounts (host, username; never the password): the team's admins or staff.",
    )
    @extend_schema(
        methods=["POST"],
        request=RegistryCredentialSerializer,
        responses={201: RegistryCredentialSerializer, 200: RegistryCredentialSerializer},
        description="Set the team's account for a registry (201; 200 when it replaces the one for that host): "
        "the team's admins or staff. The team's builds push to that registry with it, over the farm's "
        "own credentials. The password is write-only and stored encrypted.",
    )
    @action(
        detail=True,
        methods=["get", "post"],
        url_path="registry-credentials",
        serializer_class=RegistryCredentialSerializer,
        pagination_class=None,
    )
    def registry_credentials(self, request, slug=None):
        team = self._administered()
        if request.method == "GET":
            return Response(RegistryCredentialSerializer(team.registry_credentials.all(), many=True).data)
        form = RegistryCredentialSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        try:
            credential, created = RegistryCredential.objects.update_or_create(
                team=team, host=data["host"], defaults={"username": data["username"], "password": data["password"]}
            )
        except IntegrityError:  # the same host set twice at once
            return Response({"detail": f"{data['host']} was set at the same moment: send it again"}, status=409)
        details = {"fields": ["host", "username"]}
        record("create" if created else "change", "registry credential", credential, team=team, details=details)
        answer = RegistryCredentialSerializer(credential).data
        return Response(answer, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    @extend_schema(request=None, responses={204: None}, description="Remove one: the team's admins or staff.")
    @action(detail=True, methods=["delete"], url_path=r"registry-credentials/(?P<credential_id>[0-9]+)")
    def remove_registry_credential(self, request, slug=None, credential_id=None):
        credential = self._administered().registry_credentials.filter(pk=credential_id).first()
        if credential is None:
            return Response({"detail": f"team {slug} has no registry credential {credential_id}"}, status=404)
        record("delete", "registry credential", credential, team=credential.team)
        credential.delete()
        return Response(status=status.HTTP_204_NO_CONTENT)


class StaffWrites(permissions.BasePermission):
    message = "only staff give out namespaces: a namespace decides who may push where"

    def has_permission(self, request, view) -> bool:
        return request.method in permissions.SAFE_METHODS or _staff(request.user)


@extend_schema_view(
    list=extend_schema(description="Your teams' namespaces (staff: all)."),
    create=extend_schema(
        description="Staff only. `prefix`: a registry host and a path, e.g. localhost:5000/team-a/. `public`: every "
        "team and anonymous clients may pull from it in the farm's registry (its push stays the team's)."
    ),
    update=extend_schema(description="Staff only."),
    partial_update=extend_schema(description="Staff only."),
    destroy=extend_schema(description="Staff only."),
)
class NamespaceViewSet(
    AuditedViewSet,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Where each team's builds may push: the longest namespace that holds an image decides whose it is."""

    serializer_class = NamespaceSerializer
    permission_classes = [permissions.IsAuthenticated, StaffWrites]

    def get_queryset(self):
        user = self.request.user
        namespaces = Namespace.objects.all()
        if not _staff(user):
            namespaces = namespaces.filter(team__in=Team.objects.of(user))
        return namespaces.select_related("team").order_by("prefix")
