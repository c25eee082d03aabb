"""Endpoints (secrets write-only) and deliveries with their tries, and a
"redeliver" action. Admin is for staff, who see every team's."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages

from lib import crypto
from lib.admin_widgets import SecretInput
from notifications import sending
from notifications.models import Attempt, Delivery, Endpoint


class EndpointForm(forms.ModelForm):
    url = forms.URLField(
        required=False, max_length=500, assume_scheme="https", help_text="The receiver (webhook and Slack)."
    )
    new_secret = forms.CharField(
        required=False,
        widget=SecretInput(),
        help_text="Signs each webhook body (X-Generator-Signature-256). Never shown; empty keeps the stored one.",
    )
    remove_secret = forms.BooleanField(required=False, help_text="Send webhooks unsigned.")

    class Meta:
        model = Endpoint
        exclude = ["secret"]

    def save(self, commit=True):
        if self.cleaned_data.get("new_secret"):
            self.instance.secret = crypto.encrypt(self.cleaned_data["new_secret"])
        elif self.cleaned_data.get("remove_secret"):
            self.instance.secret = ""
        return super().save(commit)


@admin.register(Endpoint)
class EndpointAdmin(admin.ModelAdmin):
    form = EndpointForm
    list_display = ["name", "kind", "repository", "url", "active", "signed", "created_at"]
    list_filter = ["kind", "active", "repository__team"]
    search_fields = ["name", "url", "repository__full_name"]

    @admin.display(boolean=True, description="signed")
    def signed(self, endpoint: Endpoint) -> bool:
        return endpoint.has_secret


class AttemptInline(admin.TabularInline):
    model = Attempt
    extra = 0
    can_delete = False
    fields = ["number", "started_at", "duration_ms", "status_code", "error", "response_excerpt"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = ["created_at", "event", "endpoint", "job", "state", "tries", "last_answer", "redelivery_of"]
    list_filter = ["state", "event", "endpoint__kind", "endpoint"]
    search_fields = ["id", "job__id", "endpoint__name"]
    readonly_fields = [
        "id",
        "endpoint",
        "job",
        "event",
        "state",
        "tries",
        "next_try_at",
        "redelivery_of",
        "created_at",
        "body",
    ]
    inlines = [AttemptInline]
    actions = ["redeliver"]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("endpoint", "job").prefetch_related("attempts")

    @admin.display(description="last answer")
    def last_answer(self, delivery: Delivery) -> str:
        tries = list(delivery.attempts.all())
        if not tries:
            return "-"
        last = tries[-1]
        return f"{last.status_code or last.error[:80]} ({last.duration_ms} ms)"

    @admin.action(description="Redeliver the selected deliveries (the same body, as new deliveries)")
    def redeliver(self, request, queryset) -> None:
        count = 0
        for delivery in queryset.select_related("endpoint"):
            sending.redeliver(delivery)
            count += 1
        self.message_user(request, f"{count} redelivery(ies) queued", messages.SUCCESS)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
