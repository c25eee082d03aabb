"""Error answers: short, in the endpoint's own format, never Django's technical page.

Each front door answers its errors the way it answers everything else:

- `/api/` and `/webhooks/`: JSON, `{"detail": "..."}`
- `/b1/`: one line of text/plain, as the seed's API
- anything else (pages, admin, login): a short HTML page

A 500 also carries an `error_id`; the log record with the traceback carries the
same id (`ErrorIdFilter` below), so an operator finds one from the other. Django
logs that record itself (logger `django.request`) right after it asked
`server_error` for the answer, whichever process, thread or middleware the
exception came from.

Django's own 4xx exceptions come here too: a body over DATA_UPLOAD_MAX_MEMORY_SIZE
or too many fields is a 413, not Django's 400.
"""

from __future__ import annotations

import json
import logging
import secrets

from django.conf import settings
from django.core.exceptions import (
    DisallowedHost,
    RequestDataTooBig,
    TooManyFieldsSent,
    TooManyFilesSent,
)
from django.http import HttpRequest, HttpResponse
from django.http.multipartparser import MultiPartParserError
from django.template.loader import render_to_string
from django.utils.html import escape

logger = logging.getLogger(__name__)

JSON_PREFIXES = ("/api/", "/webhooks/")
TEXT_PREFIXES = ("/b1/",)

REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    413: "Content Too Large",
    414: "URI Too Long",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}


def error_format(path: str) -> str:
    """ "json", "text" or "html": how the endpoint at `path` answers."""
    if path.startswith(JSON_PREFIXES):
        return "json"
    if path.startswith(TEXT_PREFIXES):
        return "text"
    return "html"


def error_body(path: str, status: int, detail: str, error_id: str = "") -> tuple[str, bytes]:
    """The content type and body of an error answer for `path`. Plain Python on
    purpose: the ASGI layer (generator_site/request_limits.py) uses it before Django runs."""
    kind = error_format(path)
    if kind == "json":
        body = {"detail": detail, **({"error_id": error_id} if error_id else {})}
        return "application/json", json.dumps(body).encode()
    line = f"{detail} (error id {error_id})" if error_id else detail
    if kind == "text":
        return "text/plain; charset=utf-8", (line.replace("\n", " ") + "\n").encode()
    title = f"{status} {REASONS.get(status, 'Error')}"
    try:
        page = render_to_string("errors/error.html", {"title": title, "detail": line})
    except Exception:  # a broken template must not turn one error into another
        logger.exception("the error page template failed; answering a bare page")
        page = f"<!doctype html><title>{escape(title)}</title><h1>{escape(title)}</h1><p>{escape(line)}</p>\n"
    return "text/html; charset=utf-8", page.encode()


def error_response(request: HttpRequest, status: int, detail: str, error_id: str = "") -> HttpResponse:
    content_type, body = error_body(request.path, status, detail, error_id)
    return HttpResponse(body, status=status, content_type=content_type)


def new_error_id() -> str:
    return secrets.token_hex(8)


# --- Django's handlers (generator_site/urls.py names them) ------------------------


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Django's SuspiciousOperation and BadRequest land here."""
    if isinstance(exception, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return error_response(request, 413, f"the request body is larger than the {limit}-byte limit")
    if isinstance(exception, TooManyFieldsSent):
        limit = settings.DATA_UPLOAD_MAX_NUMBER_FIELDS
        return error_response(request, 413, f"the request has more than {limit} fields")
    if isinstance(exception, TooManyFilesSent):
        limit = settings.DATA_UPLOAD_MAX_NUMBER_FILES
        return error_response(request, 413, f"the request has more than {limit} files")
    if isinstance(exception, DisallowedHost):
        # Never request.get_host() here: it raises this very exception again.
        return error_response(request, 400, "the Host header names a host this site does not serve")
    if isinstance(exception, MultiPartParserError):
        return error_response(request, 400, "the multipart body could not be read")
    return error_response(request, 400, "bad request")


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return error_response(request, 403, "you may not do this")


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    # Django's reasons are fixed sentences (no secrets): they help a form user.
    return error_response(request, 403, f"CSRF check failed: {reason or 'no valid token'}")


def page_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return error_response(request, 404, "nothing here")


def server_error(request: HttpRequest) -> HttpResponse:
    """A 500 with an id; the id goes onto the request for ErrorIdFilter to put on
    the traceback's log record, which Django writes as soon as this returns."""
    error_id = new_error_id()
    request.error_id = error_id
    return error_response(request, 500, "internal error: the farm's log has the details under this id", error_id)


class ErrorIdFilter(logging.Filter):
    """Puts a 500's error id into the message of Django's record of it (logger
    `django.request`, which carries the request and the traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error_id = getattr(getattr(record, "request", None), "error_id", "")
        if error_id and not getattr(record, "error_id", ""):
            record.error_id = error_id
            record.msg = f"{record.msg} error_id={error_id}"
        return True
