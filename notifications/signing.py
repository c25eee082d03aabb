"""Webhook signatures, as GitHub signs its own: HMAC-SHA256 of the raw body
under the endpoint's secret, sent as `X-Generator-Signature-256: sha256=<hex>`."""

from __future__ import annotations

import hashlib
import hmac

HEADER = "X-Generator-Signature-256"


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str) -> bool:
    """What a receiver does: recompute, compare in constant time."""
    return hmac.compare_digest(signature(secret, body), header)
