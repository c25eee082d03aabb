"""Re-encrypts every stored secret with the first key of GENERATOR_SECRETS_KEYS:
build secrets, deploy keys, the farm's registry passwords and the teams', the
farm's signing keys.

Rotation: put the new key first in GENERATOR_SECRETS_KEYS (keep the old one after
it), restart, run this, then drop the old key.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand
from django.db import transaction

from builds.models import BuildSecret, Registry, Repository, SigningKey
from lib import crypto
from teams.models import RegistryCredential

# (model, encrypted field, rows that have one, what the report calls them)
STORED = [
    (BuildSecret, "value", {}, "build secret(s)"),
    (Repository, "deploy_key", {"deploy_key": ""}, "deploy key(s)"),
    (Registry, "password", {"password": ""}, "registry password(s)"),
    (RegistryCredential, "password", {}, "team registry password(s)"),
    (SigningKey, "private_key", {}, "signing key(s)"),
]


class Command(BaseCommand):
    help = "Re-encrypts every stored secret (build secrets, deploy keys, registry passwords) with the first key."

    def handle(self, *args, **options) -> None:
        counts = []
        with transaction.atomic():
            for model, field, empty, what in STORED:
                count = 0
                for row in model.objects.select_for_update().exclude(**empty).only("pk", field):
                    model.objects.filter(pk=row.pk).update(**{field: crypto.rotate(getattr(row, field))})
                    count += 1
                counts.append(f"{count} {what}")
        self.stdout.write(f"re-encrypted {', '.join(counts)} with the first key")
