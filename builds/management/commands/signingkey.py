"""Prints the farm's public signing key (PEM), making the key first if there is
none; `--rotate` makes a new one and retires the old (still listed by
`GET /api/v1/signing-key/?all=1`, so what it signed can still be checked)."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from audit.log import command_actor, record
from builds.models import SigningKey
from builds.provenance import signing


class Command(BaseCommand):
    help = "Prints the farm's public signing key, making it if needed; --rotate makes a new one."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--rotate", action="store_true", help="retire the active key and make a new one")

    def handle(self, *args, rotate: bool = False, **options) -> None:
        had = SigningKey.objects.filter(scope=signing.FARM, retired_at__isnull=True).exists()
        key = signing.rotate() if rotate else signing.active_key()
        if rotate or not had:  # the key that signs the farm's images changed: who did it, when
            details = {"replaces_active_key": True} if rotate else None
            record("create", "signing key", key, details=details, via=command_actor("signingkey"))
        self.stdout.write(key.public_key.rstrip("\n"))
