"""Makes the request being served known to audit.record(), so that the service
layer, admin hooks and API views need not pass it down."""

from __future__ import annotations

from audit.log import current_request


class AuditRequestMiddleware:
    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        token = current_request.set(request)
        try:
            return self.get_response(request)
        finally:
            current_request.reset(token)
