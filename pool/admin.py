from django.contrib import admin

from .models import DockerDaemon


@admin.register(DockerDaemon)
class DockerDaemonAdmin(admin.ModelAdmin):
    list_display = ["name", "url", "capacity", "enabled", "queue"]
    list_filter = ["enabled"]
    search_fields = ["name", "url"]
    readonly_fields = ["queue", "created_at", "updated_at"]
