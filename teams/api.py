"""REST API v1 for teams, their members and namespaces.

Everyone logged in reads their own teams (staff: all); another team is a 404.
Staff create and delete teams, give out namespaces (a namespace decides who
may push where, so a team may not claim one) and set a team's limits (its fair
share of the farm); a team's admins rename it and manage its members. Every
change is in the audit log (audit/).
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import exceptions, mixins, permissions, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from audit.hooks import AuditedViewSet
from audit.log import record

from .models import Membership, Namespace, Team

LIMIT_FIELDS = ["max_concurrent_builds", "max_builds_per_hour", "max_log_lines", "over_limit"]


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

    class Meta:
        model = Team
        fields = ["id", "slug", "name", "namespaces", "members", *LIMIT_FIELDS, "created_at"]
        read_only_fields = ["created_at"]

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
        fields = ["id", "team", "prefix", "created_at"]
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


class TeamAccess(permissions.BasePermission):
    message = "only staff create or delete teams; only a team's admins or staff change it or its members"

    def has_permission(self, request, view) -> bool:
        if view.action in ("create", "destroy"):
            return _staff(request.user)
        return True

    def has_object_permission(self, request, view, team: Team) -> bool:
        return request.method in permissions.SAFE_METHODS or _staff(request.user) or team.has_admin(request.user)


@extend_schema_view(
    list=extend_schema(description="Your teams (staff: all), with namespaces and members."),
    retrieve=extend_schema(description="One of your teams; another team is a 404."),
    create=extend_schema(description="Staff only."),
    update=extend_schema(
        description="The team's admins or staff; its limits (max_concurrent_builds, "
        "max_builds_per_hour, max_log_lines, over_limit): staff only."
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
        user, role = form.validated_data["user"], form.validated_data["role"]
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
        admins = team.memberships.filter(role=Membership.Role.ADMIN)
        if membership.role == Membership.Role.ADMIN and admins.count() == 1 and not _staff(request.user):
            return Response({"detail": "the team's last admin cannot be removed: make another admin first"}, 409)
        membership.delete()
        record("delete", "membership", team, team=team, details={"members": [username]})
        return Response(TeamSerializer(self.get_object()).data, status=status.HTTP_200_OK)


class StaffWrites(permissions.BasePermission):
    message = "only staff give out namespaces: a namespace decides who may push where"

    def has_permission(self, request, view) -> bool:
        return request.method in permissions.SAFE_METHODS or _staff(request.user)


@extend_schema_view(
    list=extend_schema(description="Your teams' namespaces (staff: all)."),
    create=extend_schema(description="Staff only. `prefix`: a registry host and a path, e.g. localhost:5000/team-a/."),
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
