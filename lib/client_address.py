"""Where a request comes from, as the farm records it (audit log, login throttle).

Behind a proxy this is the proxy's address unless daphne is told to read
X-Forwarded-For (`serve.py -- --proxy-headers`, README).
"""

from __future__ import annotations

from django.http import HttpRequest


def client_address(request: HttpRequest) -> str:
    return request.META.get("REMOTE_ADDR") or "unknown"
