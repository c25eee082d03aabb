"""Decoding the base64 fields of the seed API."""

from __future__ import annotations

import base64
import binascii
import re

from django.conf import settings

from lib.errors import SubmissionError, TooLarge

_BASE64 = re.compile(r"[A-Za-z0-9+/\-_]*={0,2}")


def decode_base64_text(value: str, field: str) -> str:
    """Decodes standard or URL-safe base64 into UTF-8 text.

    A '+' sent unescaped in a query string arrives as a space; it is read back as
    '+', since base64 never holds spaces. Missing '=' padding is forgiven.
    """
    compact = value.strip().replace(" ", "+").replace("\n", "").replace("\r", "")
    if not compact:
        raise SubmissionError(f"{field} is empty: it must hold the Dockerfile, base64-encoded")
    limit = settings.GENERATOR_MAX_DOCKERFILE_BYTES
    approximate_size = len(compact) * 3 // 4
    if approximate_size > limit + 2:
        raise TooLarge(f"the Dockerfile is about {approximate_size} bytes; the limit is {limit} bytes")
    if not _BASE64.fullmatch(compact):
        raise SubmissionError(f"{field} is not valid base64: it holds characters outside the base64 alphabet")
    padded = compact.rstrip("=") + "=" * (-len(compact.rstrip("=")) % 4)
    try:
        raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except binascii.Error as exc:
        raise SubmissionError(f"{field} is not valid base64: {exc}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SubmissionError(f"{field} does not decode to UTF-8 text") from None
