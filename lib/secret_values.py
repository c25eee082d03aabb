"""A secret's value at hand: names and sizes checked, handed to BuildKit as files, masked in text.

No models: build secrets (builds/jobs/build_secrets.py) and deploy keys
(builds/sources/deploy_keys.py) are kept encrypted (lib/crypto.py) and come here
in clear only for the build or the clone at hand.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lib.crypto import SecretError

__all__ = ["SecretError", "as_files", "check", "mask_forms", "masked"]

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_VALUE_BYTES = 64 * 1024
MASK = "***"
MIN_MASKED = 4  # characters: a shorter secret is not masked in logs (it would blank out ordinary words)


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
