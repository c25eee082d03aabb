"""The farm's signing key: ECDSA P-256, made on first use (or by `make up`,
`manage.py signingkey`), kept in the database with its private half encrypted
under GENERATOR_SECRETS_KEYS like every stored secret (builds/secrets.py;
`manage.py rotatesecrets` re-encrypts it), rotated with
`manage.py signingkey --rotate` (the old key is retired, kept for checking
what it signed). In the database rather than a file in var/ because every
worker signs, and workers on other hosts share the database, not var/.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.db import IntegrityError, transaction
from django.utils import timezone

from . import dsse, secrets
from .models import SigningKey

FARM = "farm"
# How cosign's ECDSA signer signs a payload: SHA-256, a DER signature.
ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


def active_key(scope: str = FARM) -> SigningKey:
    """The scope's key, made now if it has none (two workers at once: one makes it, both use it)."""
    key = SigningKey.objects.filter(scope=scope, retired_at__isnull=True).first()
    if key is not None:
        return key
    try:
        with transaction.atomic():
            return _new_key(scope)
    except IntegrityError:  # another process made it first
        return SigningKey.objects.get(scope=scope, retired_at__isnull=True)


def rotate(scope: str = FARM) -> SigningKey:
    """A new active key; the old one retired (its public key still listed)."""
    with transaction.atomic():
        SigningKey.objects.filter(scope=scope, retired_at__isnull=True).update(retired_at=timezone.now())
        return _new_key(scope)


def private_key(key: SigningKey) -> ec.EllipticCurvePrivateKey:
    loaded = serialization.load_pem_private_key(secrets.decrypt(key.private_key).encode(), password=None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    return loaded


def _new_key(scope: str) -> SigningKey:
    made = ec.generate_private_key(ec.SECP256R1())
    private_pem = made.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public_pem = (
        made.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return SigningKey.objects.create(
        scope=scope,
        private_key=secrets.encrypt(private_pem),
        public_key=public_pem,
        key_id=dsse.key_id(made.public_key()),
    )
