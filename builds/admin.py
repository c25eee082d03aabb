from django.contrib import admin
from django.utils.html import format_html

from .models import BuildJob
from .services import cancel_build


@admin.register(BuildJob)
class BuildJobAdmin(admin.ModelAdmin):
    list_display = ["id", "image", "status", "daemon", "attempt", "created_at", "finished_at", "position"]
    list_filter = ["status", "daemon"]
    search_fields = ["id", "image", "digest"]
    # A job's history is what happened: the admin shows it, it does not rewrite it.
    readonly_fields = [f.name for f in BuildJob._meta.fields] + ["position", "log_text"]
    actions = ["cancel"]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.display(description="queue position")
    def position(self, job: BuildJob):
        return job.queue_position()

    @admin.display(description="log")
    def log_text(self, job: BuildJob) -> str:
        lines = job.log_lines.values_list("text", flat=True)[:5000]
        return format_html("<pre>{}</pre>", "\n".join(lines))

    @admin.action(description="Cancel the selected builds")
    def cancel(self, request, queryset):
        outcomes = [f"{job.id[:8]}: {cancel_build(job, request.user)}" for job in queryset]
        self.message_user(request, "; ".join(outcomes))
