"""The farm's encryption at rest: Fernet (AES-128-CBC + HMAC-SHA256) under GENERATOR_SECRETS_KEYS.

The first key encrypts, every key decrypts, so an operator rotates by putting a
new key first, running `manage.py rotatesecrets`, then dropping the old one.
Without that setting one key is derived from GENERATOR_SECRET_KEY (changing that
key then makes stored secrets unreadable). Build secrets, deploy keys, registry
passwords, signing keys and endpoints' secrets are all kept this way.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


class SecretError(ValueError):
    pass


def _fernet() -> MultiFernet:
    keys = list(settings.GENERATOR_SECRETS_KEYS)
    if not keys:
        derived = hashlib.sha256(b"generator build secrets\0" + settings.SECRET_KEY.encode()).digest()
        keys = [base64.urlsafe_b64encode(derived).decode()]
    return MultiFernet([Fernet(key.encode()) for key in keys])


def encrypt(value: str) -> str:
    return _fernet().encrypt(value.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise SecretError("a stored secret cannot be decrypted with GENERATOR_SECRETS_KEYS") from None


def rotate(token: str) -> str:
    return _fernet().rotate(token.encode()).decode()
