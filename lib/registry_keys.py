"""The registry token server's signing key: made, named and used here.

The farm's registry (Debian's docker-registry, distribution 2.8) runs with
`auth.token`: it trusts tokens signed by a key whose certificate is in its
`rootcertbundle`, and finds that key by the token header's `kid`, the key's
libtrust ID (shared/docs/machines.md, "Checked 2026-12-06"). An ES256 key
(P-256) in a self-signed certificate does: made once by `make up` in var/, 0600,
both paths in settings (GENERATOR_REGISTRY_TOKEN_KEY, _CERT). Rotation:
docs/security.md.

No Django here: scripts/farm.py makes the key before any settings exist, and
scripts/localfarm.py signs the farm's own tokens with it.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
import secrets
import time
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ALGORITHM = "ES256"
CERT_YEARS = 10  # the certificate's dates do not matter to the registry; the key is what it trusts


def ensure_key(key_path: Path, cert_path: Path) -> bool:
    """Makes the key (0600) and its self-signed certificate if the key is not
    there yet; True if it made them."""
    key_path, cert_path = Path(key_path), Path(cert_path)
    if key_path.exists() and cert_path.exists():
        return False
    key_path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _write_private(key_path, pem)
    cert_path.write_bytes(self_signed_certificate(key).public_bytes(serialization.Encoding.PEM))
    return True


def self_signed_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "generator registry token signer")])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365 * CERT_YEARS))
        .sign(key, hashes.SHA256())
    )


def _write_private(path: Path, data: bytes) -> None:
    """Written through a 0600 descriptor: never readable by others, not even for a moment."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)


def libtrust_kid(public_key) -> str:
    """How distribution names a key: SHA-256 of its DER SubjectPublicKeyInfo,
    the first 30 bytes in base32, in 12 groups of 4 joined by ':'."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


class Signer:
    """Signs registry tokens with the key at `key_path`."""

    def __init__(self, key_path: Path, *, issuer: str, service: str) -> None:
        self.key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
        self.kid = libtrust_kid(self.key.public_key())
        self.issuer, self.service = issuer, service

    def sign(self, subject: str, access: list[dict], lifetime: int, *, now: float | None = None) -> dict:
        """A token granting `access` ([{type, name, actions}]) to `subject` for
        `lifetime` seconds, as the token endpoint answers it."""
        issued = int(now if now is not None else time.time())
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,  # a string: distribution 2.8 refuses a list
            "exp": issued + lifetime,
            "nbf": issued - 1,
            "iat": issued,
            "jti": secrets.token_urlsafe(16),
            "access": access,
        }
        token = jwt.encode(claims, self.key, algorithm=ALGORITHM, headers={"kid": self.kid})
        when = datetime.datetime.fromtimestamp(issued, datetime.UTC).isoformat().replace("+00:00", "Z")
        return {"token": token, "access_token": token, "expires_in": lifetime, "issued_at": when}

    def farm_token(self, scope: str, lifetime: int = 3600) -> str:
        """A token for exactly `scope` (`repository:NAME:ACTIONS`), for the farm's
        own reads and writes (RegistryAPI's token_source): never handed to a build
        or a person."""
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        access = [{"type": kind, "name": name, "actions": actions.split(",")}]
        return self.sign("generator", access, lifetime)["token"]


def repository_access(name: str, actions: list[str]) -> dict:
    return {"type": "repository", "name": name, "actions": actions}
