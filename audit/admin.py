"""The audit log in admin: read-only, for staff (admin is staff-only)."""

from django.contrib import admin

from audit.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ["at", "actor_name", "action", "kind", "object_repr", "team", "remote_address"]
    list_filter = ["action", "kind", "team"]
    search_fields = ["actor_name", "object_id", "object_repr", "remote_address"]
    date_hierarchy = "at"
    readonly_fields = [f.name for f in AuditEvent._meta.fields]

    # What happened stays as it happened: no one adds, edits or deletes events
    # here (beat prunes them by GENERATOR_AUDIT_RETENTION_DAYS).
    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def has_view_permission(self, request, obj=None) -> bool:
        return request.user.is_active and request.user.is_staff
