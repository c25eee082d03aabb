from django import forms
from django.conf import settings
from django.contrib import admin
from django.utils.html import format_html

from audit.hooks import AuditedAdmin
from builds.jobs.limits import caps_help
from builds.jobs.services import SubmissionError, cancel_build, retry_build
from builds.logs.writer import read_lines
from builds.models import (
    REGISTRY_HELP,
    BaseImage,
    BuildJob,
    BuildRule,
    BuildSecret,
    Registry,
    Repository,
    WebhookDelivery,
)
from builds.sources import deploy_keys
from lib import crypto, secret_values
from lib.admin_widgets import SecretInput, SecretTextarea, keep_or_encrypt, keep_stored_secrets


@admin.register(BuildJob)
class BuildJobAdmin(admin.ModelAdmin):
    list_display = ["id", "image", "status", "team", "repository", "ref", "daemon", "attempt", "created_at", "position"]
    list_filter = ["status", "team", "daemon", "repository"]
    search_fields = ["id", "image", "digest", "commit_sha"]
    # A job's history is what happened: the admin shows it, it does not rewrite it.
    readonly_fields = [f.name for f in BuildJob._meta.fields] + ["position", "log_text"]
    actions = ["cancel", "retry"]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.display(description="queue position")
    def position(self, job: BuildJob):
        return job.queue_position()

    @admin.display(description="log")
    def log_text(self, job: BuildJob) -> str:
        lines, _ = read_lines(job.id, 0, max_lines=5000, max_bytes=16 << 20)
        return format_html("<pre>{}</pre>", "\n".join(text for _, text in lines))

    @admin.action(description="Retry the selected builds (new jobs, linked to these)")
    def retry(self, request, queryset):
        outcomes = []
        for job in queryset:
            try:
                outcomes.append(f"{job.id[:8]}: retried as {retry_build(job, request.user).id[:8]}")
            except SubmissionError as exc:
                outcomes.append(f"{job.id[:8]}: {exc}")
        self.message_user(request, "; ".join(outcomes))

    @admin.action(description="Cancel the selected builds")
    def cancel(self, request, queryset):
        outcomes = [f"{job.id[:8]}: {cancel_build(job, request.user)}" for job in queryset]
        self.message_user(request, "; ".join(outcomes))


class RepositoryForm(forms.ModelForm):
    new_deploy_key = forms.CharField(
        label="Deploy key",
        required=False,
        strip=False,
        widget=SecretTextarea(attrs={"rows": 4, "autocomplete": "off", "spellcheck": "false"}),
        help_text="An SSH private key without a passphrase (-----BEGIN OPENSSH PRIVATE KEY-----...), for ssh:// "
        "and git@ clone URLs: stored encrypted and never shown again. Leave empty to keep the stored one.",
    )
    remove_deploy_key = forms.BooleanField(required=False, help_text="Removes the stored deploy key, if any.")

    class Meta:
        model = Repository
        fields = "__all__"
        widgets = {"webhook_secret": SecretInput(), "access_token": SecretInput()}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name, text in caps_help().items():
            self.fields[name].help_text = text
        if self.instance.pk:
            for name in ("webhook_secret", "access_token"):
                self.fields[name].required = False
                self.fields[name].help_text += " Leave empty to keep the stored value."
        if self.instance.deploy_key_fingerprint:
            self.fields["new_deploy_key"].help_text += f" Stored: {self.instance.deploy_key_fingerprint}."

    def clean(self):
        data = keep_stored_secrets(self, super().clean(), ("webhook_secret", "access_token"))
        self.new_deploy_key = None
        if data.get("new_deploy_key"):
            try:
                self.new_deploy_key = deploy_keys.check(data["new_deploy_key"])
            except deploy_keys.DeployKeyError as exc:
                self.add_error("new_deploy_key", str(exc))
        return data

    def save(self, commit=True):
        if self.new_deploy_key or self.cleaned_data.get("remove_deploy_key"):
            deploy_keys.assign(self.instance, self.new_deploy_key)
        return super().save(commit)


class BuildRuleInline(admin.TabularInline):
    model = BuildRule
    extra = 1
    readonly_fields = ["schedule_fired_at"]


class BuildSecretForm(forms.ModelForm):
    """The value is write-only: never rendered back; left empty on a change, it is kept."""

    value = forms.CharField(
        widget=forms.PasswordInput(render_value=False),
        required=False,
        help_text="Stored encrypted and never shown again. Leave empty to keep the stored value.",
    )

    class Meta:
        model = BuildSecret
        fields = ["name", "value"]

    def clean(self):
        data = super().clean()
        if not data.get("value") and not self.instance.pk and data.get("name"):
            raise forms.ValidationError({"value": "a new secret needs a value"})
        try:
            secret_values.check({data["name"]: data.get("value") or "kept"} if data.get("name") else {})
        except secret_values.SecretError as exc:
            raise forms.ValidationError(str(exc)) from None
        return data

    def save(self, commit=True):
        value = self.cleaned_data.get("value")
        secret = super().save(commit=False)
        if value:
            secret.value = crypto.encrypt(value)
        elif secret.pk:
            secret.value = BuildSecret.objects.get(pk=secret.pk).value
        if commit:
            secret.save()
        return secret


class BuildSecretInline(admin.TabularInline):
    model = BuildSecret
    form = BuildSecretForm
    fk_name = "repository"
    extra = 0
    verbose_name = "build secret (BuildKit: RUN --mount=type=secret,id=NAME)"


@admin.register(Repository)
class RepositoryAdmin(AuditedAdmin, admin.ModelAdmin):
    form = RepositoryForm
    inlines = [BuildRuleInline, BuildSecretInline]
    list_display = ["full_name", "team", "public", "image", "daemon_group", "hook_verified_at", "created_at"]
    list_filter = ["team", "public"]
    search_fields = ["full_name", "image"]
    readonly_fields = ["hook_verified_at", "webhook_url", "deploy_key_fingerprint", "github_installation_id"]

    @admin.display(description="webhook URL (payload URL on GitHub, content type application/json)")
    def webhook_url(self, repository) -> str:
        return f"{settings.GENERATOR_SITE_URL}/webhooks/github/"


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = ["received_at", "event", "repository", "status_code", "result"]
    list_filter = ["event", "status_code", "repository"]
    search_fields = ["delivery_id", "result"]
    readonly_fields = [f.name for f in WebhookDelivery._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(BaseImage)
class BaseImageAdmin(admin.ModelAdmin):
    """What the base-image check knows (builds/triggers/base_images.py): read-only, written by builds and checks."""

    list_display = ["repository", "reference", "built_digest", "current_digest", "checked_at", "check_error", "rebuild"]
    list_filter = ["repository"]
    search_fields = ["reference", "repository__full_name"]
    readonly_fields = [f.name for f in BaseImage._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class RegistryForm(forms.ModelForm):
    class Meta:
        model = Registry
        fields = "__all__"
        widgets = {"password": SecretInput()}
        help_texts = REGISTRY_HELP

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk and self.instance.password:
            password = self.fields["password"]
            password.help_text = "A password is stored. Leave empty to keep it; clear the username too to drop it."

    def clean(self):
        data = super().clean()
        if not data.get("username") and not data.get("password"):
            data["password"] = ""  # both cleared: the registry is allowed without credentials
            return data
        return keep_or_encrypt(self, data, "password")


@admin.register(Registry)
class RegistryAdmin(AuditedAdmin, admin.ModelAdmin):
    form = RegistryForm
    list_display = ["host", "credentials", "builds_pull_with_farm_account", "created_at"]
    search_fields = ["host"]

    @admin.display(description="credentials")
    def credentials(self, registry: Registry) -> str:
        return f"user {registry.username}" if registry.username else "none (pushes without auth)"
