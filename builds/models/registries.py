"""The registries the farm pushes to: the allow-list, with optional credentials."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models

from lib.references import DOCKER_HUB, DOCKER_HUB_SPELLINGS, InvalidReference, parse_registry_host


class RegistryQuerySet(models.QuerySet):
    def allowing(self, host: str) -> RegistryQuerySet:
        """The rows that let builds push to `host` (as `ImageReference.registry`
        gives it). Hosts match exactly, but for Docker Hub's two spellings."""
        return self.filter(host__in=DOCKER_HUB_SPELLINGS if host == DOCKER_HUB else [host])


class Registry(models.Model):
    """A registry builds may push to (the allow-list), with push credentials if it
    asks for them. The password is write-only: admin and the API accept it and
    never show it; it is stored encrypted (lib/crypto.py) and goes to the
    daemon with each push (builds/registry/accounts.py), unless the build's team
    has its own account for the registry."""

    host = models.CharField(
        max_length=255, unique=True, help_text="As in image references: registry.example.com:5000, or docker.io."
    )
    username = models.CharField(max_length=200, blank=True)
    password = models.TextField(blank=True, help_text="Encrypted.")
    # Off: the farm's account pushes only, and a build pulls there with its team's own account or none.
    builds_pull_with_farm_account = models.BooleanField(
        default=False,
        help_text="Every team's builds pull from this registry with the farm's account (a shared mirror or "
        "base-image registry), unless the team has its own account there. Pushes use it in any case.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = RegistryQuerySet.as_manager()

    class Meta:
        ordering = ["host"]
        verbose_name_plural = "registries"

    def __str__(self) -> str:
        return self.host

    def clean(self) -> None:
        try:
            self.host = parse_registry_host(self.host)
        except InvalidReference as exc:
            raise ValidationError({"host": str(exc)}) from None
        if bool(self.username) != bool(self.password):
            raise ValidationError("give both a username and a password, or neither (a registry without auth)")


# Help for the rows' forms (admin, REST API): changing the fields' help_text would take a migration.
REGISTRY_HELP = {
    "host": "Builds push only to the registries listed here (the allow-list); any other is refused at submit."
    " As in image names: registry.example.com:5000, localhost:5000, or docker.io for Docker Hub."
    " Hosts match exactly: localhost:5000 and 127.0.0.1:5000 are two rows.",
    "username": "Only for a registry that asks for credentials; leave both empty to push without auth.",
    "password": "Write-only: never shown again.",
}
