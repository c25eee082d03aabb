"""The farm's signing key: ECDSA P-256, made on first use (or by `make up`,
`manage.py signingkey`), kept in the database with its private half encrypted
under GENERATOR_SECRETS_KEYS like every stored secret (lib/crypto.py;
`manage.py rotatesecrets` re-encrypts it), rotated with
`manage.py signingkey --rotate` (the old key is retired, kept for checking
what it signed). A team may bring its own key (teams/api.py
`/api/v1/teams/SLUG/signing-key/`): its builds are then signed with it. In
the database rather than a file in var/ because every worker signs, and
workers on other hosts share the database, not var/.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.db import IntegrityError, transaction
from django.utils import timezone

from builds.models import SigningKey
from builds.provenance import dsse
from lib import crypto

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


def team_scope(team_id: int) -> str:
    return f"team-{team_id}"


def key_for(team_id: int | None) -> SigningKey:
    """The key that signs a build of this team: the team's own if it brought one, else the farm's."""
    if team_id is not None:
        own = SigningKey.objects.filter(scope=team_scope(team_id), retired_at__isnull=True).first()
        if own is not None:
            return own
    return active_key()


def brought_key(private_pem: str) -> ec.EllipticCurvePrivateKey:
    """A key someone brings (a team's): an unencrypted PEM ECDSA P-256 private key; ValueError naming what is wrong."""
    try:
        loaded = serialization.load_pem_private_key(private_pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not an unencrypted PEM private key ({exc.__class__.__name__})") from None
    if not isinstance(loaded, ec.EllipticCurvePrivateKey) or loaded.curve.name != "secp256r1":
        raise ValueError("the signing key must be ECDSA P-256 (openssl ecparam -name prime256v1 -genkey)")
    return loaded


def bring(scope: str, private_pem: str) -> SigningKey:
    """Stores a brought key as the scope's; its previous key is retired, as in a rotation."""
    loaded = brought_key(private_pem)
    with transaction.atomic():
        retire(scope)
        return _store(scope, loaded)


def retire(scope: str) -> int:
    return SigningKey.objects.filter(scope=scope, retired_at__isnull=True).update(retired_at=timezone.now())


def rotate(scope: str = FARM) -> SigningKey:
    """A new active key; the old one retired (its public key still listed)."""
    with transaction.atomic():
        retire(scope)
        return _new_key(scope)


def private_key(key: SigningKey) -> ec.EllipticCurvePrivateKey:
    loaded = serialization.load_pem_private_key(crypto.decrypt(key.private_key).encode(), password=None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    return loaded


def _new_key(scope: str) -> SigningKey:
    return _store(scope, ec.generate_private_key(ec.SECP256R1()))


def _store(scope: str, made: ec.EllipticCurvePrivateKey) -> SigningKey:
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
        private_key=crypto.encrypt(private_pem),
        public_key=public_pem,
        key_id=dsse.key_id(made.public_key()),
    )
