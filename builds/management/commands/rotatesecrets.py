"""Re-encrypts every stored build secret with the first key of GENERATOR_SECRETS_KEYS.

Rotation: put the new key first in GENERATOR_SECRETS_KEYS (keep the old one after
it), restart, run this, then drop the old key.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand
from django.db import transaction

from builds import secrets
from builds.models import BuildSecret


class Command(BaseCommand):
    help = "Re-encrypts every build secret with the first key of GENERATOR_SECRETS_KEYS."

    def handle(self, *args, **options) -> None:
        count = 0
        with transaction.atomic():
            for secret in BuildSecret.objects.select_for_update().only("pk", "value"):
                BuildSecret.objects.filter(pk=secret.pk).update(value=secrets.rotate(secret.value))
                count += 1
        self.stdout.write(f"re-encrypted {count} build secret(s) with the first key")
