from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save


class AuditConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "audit"

    def ready(self) -> None:
        from rest_framework.authtoken.models import Token

        # API tokens are made and revoked by DRF's own admin and by management
        # commands (createtoken, ensureadmin): the model's signals see them all.
        post_save.connect(_token_saved, sender=Token, dispatch_uid="audit-token-saved")
        post_delete.connect(_token_deleted, sender=Token, dispatch_uid="audit-token-deleted")


def _token_saved(sender, instance, created, **kwargs) -> None:
    from audit.log import record

    # The key is the token's pk and its str: never kept, only whose token it is.
    who = instance.user.get_username()
    record("create" if created else "change", "token", None, label=f"API token of {who}", details={"user": who})


def _token_deleted(sender, instance, **kwargs) -> None:
    from audit.log import record

    who = instance.user.get_username()
    record("delete", "token", None, label=f"API token of {who}", details={"user": who})
