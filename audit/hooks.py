"""Admin and REST API hooks that record into the audit log (audit/log.py).

Mixed into a ModelAdmin (`AuditedAdmin`) or a DRF view set (`AuditedViewSet`)
before the base class. They record the names of the fields that changed, never
their values; `secret_fields` are written as their own events ("secret",
"deploy key") so that a change to one is easy to find.
"""

from __future__ import annotations

from audit.log import record

# Fields whose change is an event of its own kind: a repository's secrets and deploy key.
SECRET_KINDS = {"secrets": "secret", "deploy_key": "deploy key", "new_deploy_key": "deploy key",
                "remove_deploy_key": "deploy key"}  # fmt: skip


# The names events use for rows whose model's name reads otherwise.
KINDS = {"pool.dockerdaemon": "daemon", "builds.buildsecret": "secret"}


def kind_of(obj) -> str:
    return KINDS.get(obj._meta.label_lower) or str(obj._meta.verbose_name).lower()


def team_of(obj):
    """The team a row belongs to: itself for a team, else its `team` (if any)."""
    if obj._meta.label == "teams.Team":
        return obj
    return getattr(obj, "team", None)


def record_change(action: str, obj, fields=(), *, actor=None, extra: dict | None = None) -> None:
    """One event for the row, plus one per secret-like field among `fields`."""
    fields = sorted(set(fields))
    plain = [f for f in fields if f not in SECRET_KINDS]
    details = {"fields": plain} if plain else {}
    record(action, kind_of(obj), obj, actor=actor, team=team_of(obj), details=details)
    for kind in sorted({SECRET_KINDS[f] for f in fields if f in SECRET_KINDS}):
        names = (extra or {}).get("secret_names", []) if kind == "secret" else []
        record("change", kind, obj, actor=actor, team=team_of(obj), details={"names": names} if names else {})


class AuditedAdmin:
    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        changed = [f for f in form.changed_data if f != "remove_deploy_key" or form.cleaned_data.get(f)]
        record_change("change" if change else "create", obj, changed, actor=request.user)

    def delete_model(self, request, obj):
        record_change("delete", obj, actor=request.user)
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            record_change("delete", obj, actor=request.user)
        super().delete_queryset(request, queryset)

    def save_formset(self, request, form, formset, change):
        super().save_formset(request, form, formset, change)
        for obj in formset.new_objects:
            record_change("create", obj, actor=request.user)
        for obj, fields in formset.changed_objects:
            record_change("change", obj, fields, actor=request.user)
        for obj in formset.deleted_objects:
            record_change("delete", obj, actor=request.user)


class AuditedViewSet:
    """Names what a request set before saving: a serializer's save may pop its
    own fields (a repository's rules and secrets) from validated_data."""

    def _asked(self, serializer) -> tuple[list[str], dict]:
        data = serializer.validated_data
        secrets = data.get("secrets") or {}
        return list(data), ({"secret_names": sorted(secrets)} if secrets else {})

    def perform_create(self, serializer):
        fields, extra = self._asked(serializer)
        super().perform_create(serializer)
        record_change("create", serializer.instance, fields, extra=extra)

    def perform_update(self, serializer):
        fields, extra = self._asked(serializer)
        super().perform_update(serializer)
        record_change("change", serializer.instance, fields, extra=extra)

    def perform_destroy(self, instance):
        record_change("delete", instance)
        super().perform_destroy(instance)
