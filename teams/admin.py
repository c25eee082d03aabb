"""Teams in admin (staff only, as all of admin): members and their roles, the
namespaces each team pushes into, its API tokens and its registry accounts."""

from django import forms
from django.contrib import admin
from django.template.response import TemplateResponse

from audit.hooks import AuditedAdmin
from lib.admin_widgets import SecretInput, keep_or_encrypt
from teams import tokens
from teams.models import Membership, Namespace, RegistryCredential, Team, TeamToken
from teams.registry_quota import describe_use


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 1
    autocomplete_fields = ["user"]


class NamespaceInline(admin.TabularInline):
    model = Namespace
    extra = 1


class RegistryCredentialForm(forms.ModelForm):
    class Meta:
        model = RegistryCredential
        fields = ["team", "host", "username", "password"]
        widgets = {"password": SecretInput()}
        help_texts = {"password": "Write-only: never shown again. Leave empty to keep the stored one."}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["password"].required = not self.instance.pk

    def clean(self):
        return keep_or_encrypt(self, super().clean(), "password")


@admin.register(RegistryCredential)
class RegistryCredentialAdmin(AuditedAdmin, admin.ModelAdmin):
    """A team's own accounts on registries: its builds push with them, over the farm's (Registries)."""

    form = RegistryCredentialForm
    list_display = ["host", "team", "username", "updated_at"]
    list_filter = ["team"]
    search_fields = ["host", "username"]


@admin.register(Team)
class TeamAdmin(AuditedAdmin, admin.ModelAdmin):
    list_display = ["slug", "name", "members", "namespace_list", "limits", "registry_use", "created_at"]
    readonly_fields = ["registry_use"]
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

    @admin.display(description="registry use")
    def registry_use(self, team: Team) -> str:
        return describe_use(team)

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


@admin.register(TeamToken)
class TeamTokenAdmin(admin.ModelAdmin):
    """Made here (the key is shown once, on the page after), revoked by an action;
    never changed or deleted, so what each one did stays readable."""

    list_display = ["name", "team", "prefix", "created_by", "created_at", "last_used_at", "expires_at", "revoked_at"]
    list_filter = ["team"]
    search_fields = ["name", "prefix"]
    fields = ["team", "name", "expires_at", "prefix", "created_by", "created_at", "last_used_at", "revoked_at"]
    readonly_fields = ["prefix", "created_by", "created_at", "last_used_at", "revoked_at"]
    actions = ["revoke"]

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def save_model(self, request, obj, form, change):
        # Only adds come here (no one may change a token): issue() makes the key and audits.
        token, request.new_team_token_key = tokens.issue(
            obj.team, obj.name, created_by=request.user, expires_at=obj.expires_at
        )
        obj.pk, obj.prefix, obj.created_at = token.pk, token.prefix, token.created_at

    def response_add(self, request, obj, post_url_continue=None):
        context = {**self.admin_site.each_context(request), "token": obj, "key": request.new_team_token_key}
        return TemplateResponse(request, "admin/teams/teamtoken/created.html", context)

    @admin.action(description="Revoke the selected tokens (they then get 401)")
    def revoke(self, request, queryset):
        revoked = sum(tokens.revoke(token, actor=request.user) for token in queryset.select_related("team"))
        self.message_user(request, f"revoked {revoked} token(s)")
