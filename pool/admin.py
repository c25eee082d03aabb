from django import forms
from django.contrib import admin, messages
from django.db.models import Count, Q
from django.template.defaultfilters import filesizeformat

from audit.hooks import AuditedAdmin, record_change
from pool import disk_prune, health
from pool.models import DISK_FIELDS, HEALTH_FIELDS, DockerDaemon


class DockerDaemonForm(forms.ModelForm):
    """The client key is write-only: never rendered; left empty, the stored key
    stays, unless both certificates are cleared too (the entry drops TLS)."""

    class Meta:
        model = DockerDaemon
        fields = "__all__"
        widgets = {"tls_key": forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"})}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk and self.instance.tls_key:
            self.fields["tls_key"].help_text = "A key is stored. Leave empty to keep it."

    def clean(self):
        data = super().clean()
        if self.instance.pk and not data.get("tls_key") and (data.get("tls_ca") or data.get("tls_cert")):
            data["tls_key"] = DockerDaemon.objects.get(pk=self.instance.pk).tls_key
        return data  # then the model's clean checks the whole entry


@admin.register(DockerDaemon)
class DockerDaemonAdmin(AuditedAdmin, admin.ModelAdmin):
    form = DockerDaemonForm
    list_display = [
        "name",
        "url",
        "group",
        "load",
        "limits",
        "disk",
        "enabled",
        "draining",
        "healthy",
        "engine_version",
        "platforms",
        "latency_ms",
        "last_seen_at",
        "consecutive_failures",
    ]
    list_filter = ["enabled", "draining", "healthy", "disk_full", "group"]
    search_fields = ["name", "url"]
    readonly_fields = ["queue", *HEALTH_FIELDS, *DISK_FIELDS, "created_at", "updated_at"]
    actions = ["drain", "enable", "disable", "check_now", "prune_now"]

    @admin.display(description="platforms")
    def platforms(self, daemon: DockerDaemon) -> str:
        return ", ".join(daemon.builds_platforms) or "not reported"

    def get_queryset(self, request):
        # Admin is an entry point, above both apps: it may count the jobs a daemon holds.
        active = Q(jobs__status__in=("queued", "building", "pushing"))
        return super().get_queryset(request).annotate(active_builds=Count("jobs", filter=active))

    @admin.display(description="load", ordering="active_builds")
    def load(self, daemon) -> str:
        return f"{daemon.active_builds}/{daemon.capacity}"

    @admin.display(description="per build")
    def limits(self, daemon) -> str:
        return f"{daemon.build_memory_mb} MiB, {daemon.build_cpus:g} CPU, {daemon.build_pids} processes"

    @admin.display(description="disk (farm images / build cache)")
    def disk(self, daemon) -> str:
        if daemon.disk_measured_at is None:
            return "not measured yet"
        full = " FULL" if daemon.disk_full else ""
        images, cache = daemon.disk_farm_images_bytes, daemon.disk_build_cache_bytes
        return f"{filesizeformat(images)} / {filesizeformat(cache)}{full}"

    @admin.action(description="Drain: finish running builds, take no new ones")
    def drain(self, request, queryset):
        _audit(request, queryset, ["draining"])
        count = queryset.update(draining=True)
        self.message_user(request, f"{count} daemon(s) draining; their waiting jobs move to other daemons.")

    @admin.action(description="Enable: take builds again")
    def enable(self, request, queryset):
        _audit(request, queryset, ["enabled", "draining"])
        count = queryset.update(enabled=True, draining=False)
        self.message_user(request, f"{count} daemon(s) enabled.")

    @admin.action(description="Disable: take no new builds")
    def disable(self, request, queryset):
        _audit(request, queryset, ["enabled"])
        count = queryset.update(enabled=False)
        self.message_user(request, f"{count} daemon(s) disabled.")

    @admin.action(description="Check health now")
    def check_now(self, request, queryset):
        for daemon in queryset:
            result = health.check_now(daemon)
            if result.ok:
                self.message_user(request, f"{daemon}: Docker {result.version}, {result.latency_ms} ms")
            else:
                self.message_user(request, f"{daemon}: {result.error}", level=messages.WARNING)

    @admin.action(description="Prune disk now (images and build cache down to the daemon's limits)")
    def prune_now(self, request, queryset):
        for name, result in disk_prune.prune_daemons(queryset).items():
            if result.error:
                self.message_user(request, f"{name}: {result.error}", level=messages.WARNING)
            else:
                self.message_user(request, f"{name}: {result.summary()}")


def _audit(request, queryset, fields: list[str]) -> None:
    for daemon in queryset:
        record_change("change", daemon, fields, actor=request.user)
