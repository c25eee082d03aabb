"""`manage.py registrykey`: the registry token server's ES256 key and its
certificate, made once where settings name them (GENERATOR_REGISTRY_TOKEN_KEY,
_CERT); prints the key's libtrust `kid`. docker-compose's web runs it at start
(`make up` makes them itself: scripts/farm.py). Rotation: docs/security.md."""

from __future__ import annotations

from cryptography import x509
from django.conf import settings
from django.core.management.base import BaseCommand

from lib.registry_keys import ensure_key, libtrust_kid


class Command(BaseCommand):
    help = "Make the registry token signing key and certificate if missing; print the key's kid."

    def handle(self, *args, **options):
        key, cert = settings.GENERATOR_REGISTRY_TOKEN_KEY, settings.GENERATOR_REGISTRY_TOKEN_CERT
        made = ensure_key(key, cert)
        kid = libtrust_kid(x509.load_pem_x509_certificate(cert.read_bytes()).public_key())
        self.stdout.write(f"{'made' if made else 'kept'} the registry token key {key} (kid {kid}); certificate {cert}")
