"""Log records as one line each, with fields: logfmt (key=value) or JSON lines.

Every process (daphne, the Celery workers, beat) logs through `settings.LOGGING`,
which puts `ContextFilter` and `LineFormatter` on the one console handler:

    time=2026-11-27T23:46:01.027Z level=info logger=builds.worker.runner role=worker pid=812
      job=62439e33... daemon=d1 attempt=1 msg="..."

(one line). The fields of the job being built (`job`, `daemon`, `attempt`) are
set once per task run with `log_fields` (builds/tasks.py), not at every call.
Newlines and quotes in a message or a traceback are escaped, so a record stays
one line; passwords in URLs, secret query parameters and Authorization headers
are masked.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

# The fields a task run sets, in the order they are printed.
CONTEXT_FIELDS = ("job", "daemon", "attempt")
FORMATS = ("logfmt", "json")

_context: ContextVar[dict[str, object] | None] = ContextVar("generator_log_fields", default=None)


@contextmanager
def log_fields(**fields: object) -> Iterator[None]:
    """Adds `fields` to every record logged inside the block, in this thread."""
    token = _context.set({**(_context.get() or {}), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def process_role(argv: list[str] | None = None) -> str:
    """What this process is, from its command line: web, worker, beat, or the
    program's name (manage, pytest...). GENERATOR_PROCESS_ROLE overrides it."""
    argv = sys.argv if argv is None else argv
    # argv[0] is the script: `.venv/bin/daphne`, `.venv/bin/celery`, or
    # `.../celery/__main__.py` for `python -m celery`.
    script = argv[0] if argv else ""
    if "daphne" in script:
        return "web"
    if "celery" in script:
        # The control worker runs beat inside it (`worker --beat`), as compose's `beat` does.
        return "beat" if {"beat", "--beat", "-B"} & set(argv) else "worker"
    return os.path.splitext(os.path.basename(script))[0] or "python"


class ContextFilter(logging.Filter):
    """Stamps each record with the process role and the current task run's fields."""

    def __init__(self, role: str = "") -> None:
        super().__init__()
        self.role = role or process_role()

    def filter(self, record: logging.LogRecord) -> bool:
        record.role = self.role
        for name, value in (_context.get() or {}).items():
            if not hasattr(record, name):  # an explicit `extra=` wins
                setattr(record, name, value)
        return True


# --- secrets -------------------------------------------------------------------

_SECRETS = [
    # scheme://user:password@host
    (re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]*:)[^\s@/]+@"), r"\1***@"),
    # ?token=... &password=...
    (
        re.compile(r"([?&](?:access_token|token|password|passwd|secret|api_key|key|signature|sig)=)[^&\s\"']+", re.I),
        r"\1***",
    ),
    # Authorization: Token abc / "Authorization": "Bearer abc"
    (re.compile(r"(Authorization[\"']?\s*[:=]\s*[\"']?(?:Token|Bearer|Basic)\s+)[^\s\"',}]+", re.I), r"\1***"),
]


def redact(text: str) -> str:
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


# --- one line per record ---------------------------------------------------------

# Characters that would end or blur a line: escaped in logfmt values.
_ESCAPES = {ord('"'): '\\"', ord("\\"): "\\\\", ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}
_ESCAPES.update({c: f"\\u{c:04x}" for c in [*range(0x20), 0x7F, 0x85, 0x2028, 0x2029] if c not in _ESCAPES})
_BARE = re.compile(r"[^\s\"=\\\x00-\x1f\x7f\x85\u2028\u2029]+")


def logfmt_value(value: object) -> str:
    text = str(value)
    if _BARE.fullmatch(text):
        return text
    return '"' + text.translate(_ESCAPES) + '"'


class LineFormatter(logging.Formatter):
    """One record, one line: `style` is "logfmt" (key=value) or "json"."""

    def __init__(self, style: str = "logfmt") -> None:
        super().__init__()
        if style not in FORMATS:
            raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {style!r}")
        self.style = style

    def fields(self, record: logging.LogRecord) -> dict[str, object]:
        fields: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "role": getattr(record, "role", ""),
            "pid": record.process,
        }
        for name in CONTEXT_FIELDS:
            if (value := getattr(record, name, None)) is not None:
                fields[name] = value
        fields["msg"] = redact(record.getMessage())
        if record.exc_info:
            fields["exc"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            fields["exc"] = redact(record.exc_text)
        if record.stack_info:
            fields["stack"] = redact(self.formatStack(record.stack_info))
        return fields

    def format(self, record: logging.LogRecord) -> str:
        fields = self.fields(record)
        if self.style == "json":
            return json.dumps(fields, default=str)
        return " ".join(f"{key}={logfmt_value(value)}" for key, value in fields.items())
