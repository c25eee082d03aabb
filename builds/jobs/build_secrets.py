"""Build secrets: encrypted at rest, handed to BuildKit as files, masked in logs.

Values are encrypted with Fernet (AES-128-CBC + HMAC-SHA256) under the keys of
GENERATOR_SECRETS_KEYS: the first key encrypts, every key decrypts, so an
operator rotates by putting a new key first, running `manage.py rotatesecrets`,
then dropping the old one. Without that setting one key is derived from
GENERATOR_SECRET_KEY (changing that key then makes stored secrets unreadable).

A secret reaches a build only as a file for `RUN --mount=type=secret,id=NAME`:
never an environment variable or build arg (those land in `docker history`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_VALUE_BYTES = 64 * 1024
MASK = "***"
MIN_MASKED = 4  # characters: a shorter secret is not masked in logs (it would blank out ordinary words)


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


def check(secrets: dict[str, str]) -> None:
    """Names BuildKit takes as secret ids, and values of a sane size."""
    for name, value in secrets.items():
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise SecretError(f"{name!r} is not a secret name: letters, digits, . _ - (up to 64)")
        if not isinstance(value, str) or not value or len(value.encode()) > MAX_VALUE_BYTES:
            raise SecretError(f"secret {name} must be a non-empty string of at most {MAX_VALUE_BYTES} bytes")


@contextlib.contextmanager
def as_files(secrets: dict[str, str]) -> Iterator[dict[str, str]]:
    """Each secret in a 0600 file of a 0700 folder, removed on leaving: the
    `--secret id=NAME,src=PATH` BuildKit reads."""
    with tempfile.TemporaryDirectory(prefix="build-secrets-") as folder:
        paths = {}
        for name, value in secrets.items():
            path = Path(folder) / name
            path.touch(mode=0o600)
            path.write_text(value)
            paths[name] = str(path)
        yield paths


def store(owner: dict, secrets: dict[str, str]) -> None:
    """Creates or replaces the named secrets of `owner` ({"repository": r} or {"job": j})."""
    from builds.models import BuildSecret

    check(secrets)
    for name, value in secrets.items():
        BuildSecret.objects.update_or_create(**owner, name=name, defaults={"value": encrypt(value)})


def for_job(job) -> dict[str, str]:
    """The build's secrets in clear: its repository's, and its own over them. A
    fork's pull request gets none of its repository's (builds/github/pull_requests.py)."""
    from builds.models import BuildSecret

    rows = BuildSecret.objects.filter(models_q_for(job)).order_by("job_id", "name")
    values = {}
    for row in sorted(rows, key=lambda r: r.job_id is not None):  # the build's own win
        values[row.name] = decrypt(row.value)
    return values


def models_q_for(job):
    from django.db.models import Q

    repository = Q(repository_id=job.repository_id) if job.repository_id and not job.fork else Q(pk__in=[])
    return Q(job_id=job.id) | repository


def forget_ended() -> int:
    """Deletes the secrets of builds that have ended: they are kept only while a build may still run."""
    from builds.models import BuildJob, BuildSecret

    deleted, _ = BuildSecret.objects.filter(job__status__in=BuildJob.TERMINAL).delete()
    return deleted


def mask_forms(values: list[str]) -> list[str]:
    """What is written as *** for these secret values: each exact value and,
    since a log line never holds a value that spans lines, each of its lines
    (a trailing \r dropped, as the log splits them); none shorter than
    MIN_MASKED. Longest first, so a value is masked before a part of it. Not
    masked: any other form of a value (base64, reversed, split across lines or
    output chunks by the build itself, URL-encoded)."""
    forms = set()
    for value in values:
        forms.add(value)
        forms.update(line.removesuffix("\r") for line in value.split("\n"))
    return sorted((form for form in forms if len(form) >= MIN_MASKED), key=len, reverse=True)


def masked(text: str, values: list[str]) -> str:
    for value in values:
        text = text.replace(value, MASK)
    return text
