"""Teams in admin (staff only, as all of admin): members and their roles, and the
namespaces each team pushes into."""

from django.contrib import admin

from audit.hooks import AuditedAdmin

from .models import Membership, Namespace, Team


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 1
    autocomplete_fields = ["user"]


class NamespaceInline(admin.TabularInline):
    model = Namespace
    extra = 1


@admin.register(Team)
class TeamAdmin(AuditedAdmin, admin.ModelAdmin):
    list_display = ["slug", "name", "members", "namespace_list", "limits", "created_at"]
    search_fields = ["slug", "name"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline, NamespaceInline]

    @admin.display(description="members")
    def members(self, team: Team) -> int:
        return team.memberships.count()

    @admin.display(description="limits (running, per hour, log lines)")
    def limits(self, team: Team) -> str:
        figures = (team.max_concurrent_builds, team.max_builds_per_hour, team.max_log_lines)
        return ", ".join(str(f) if f else "-" for f in figures) + f" ({team.over_limit_mode})"

    @admin.display(description="namespaces")
    def namespace_list(self, team: Team) -> str:
        return ", ".join(n.prefix for n in team.namespaces.all())

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("namespaces")


@admin.register(Namespace)
class NamespaceAdmin(AuditedAdmin, admin.ModelAdmin):
    list_display = ["prefix", "team", "created_at"]
    list_filter = ["team"]
    search_fields = ["prefix"]
