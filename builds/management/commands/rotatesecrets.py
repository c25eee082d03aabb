"""Re-encrypts every stored build secret and deploy key with the first key of
GENERATOR_SECRETS_KEYS.

Rotation: put the new key first in GENERATOR_SECRETS_KEYS (keep the old one after
it), restart, run this, then drop the old key.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand
from django.db import transaction

from builds import secrets
from builds.models import BuildSecret, Repository


class Command(BaseCommand):
    help = "Re-encrypts every build secret and deploy key with the first key of GENERATOR_SECRETS_KEYS."

    def handle(self, *args, **options) -> None:
        count = keys = 0
        with transaction.atomic():
            for secret in BuildSecret.objects.select_for_update().only("pk", "value"):
                BuildSecret.objects.filter(pk=secret.pk).update(value=secrets.rotate(secret.value))
                count += 1
            for repository in Repository.objects.select_for_update().exclude(deploy_key="").only("pk", "deploy_key"):
                Repository.objects.filter(pk=repository.pk).update(deploy_key=secrets.rotate(repository.deploy_key))
                keys += 1
        self.stdout.write(f"re-encrypted {count} build secret(s) and {keys} deploy key(s) with the first key")
