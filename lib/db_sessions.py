"""A running build's database sessions: open for the moments it writes, not while it waits.

A build spends minutes waiting on its daemon, and Django keeps a thread's
connection open until the Celery task ends: every running build held a
PostgreSQL session, and ~38 busy daemons of capacity 2 filled the default
`max_connections` (docs/scaling.md). Now the build's thread lets its connection
go once it has been idle for GENERATOR_DB_IDLE_SECONDS (the log writer asks
between lines, builds/logs/writer.py; the heartbeat after renewing the lease,
builds/worker/runner.py), and opens one again for its next write.

A session that cannot be had right now (PostgreSQL's "too many connections",
a restart) is no reason to fail a build: its writes are tried again with
backoff for up to GENERATOR_DB_RETRY_SECONDS (`retrying`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from django.conf import settings
from django.db import InterfaceError, InternalError, OperationalError, connection

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Sessions:
    """When this thread last used its connection, and letting it go when idle."""

    def __init__(self, idle_seconds: float | None = None) -> None:
        self.idle_seconds = settings.GENERATOR_DB_IDLE_SECONDS if idle_seconds is None else idle_seconds
        self.last_used = time.monotonic()

    def used(self) -> None:
        self.last_used = time.monotonic()

    def release_if_idle(self) -> bool:
        """Closes the connection if unused for the idle time; True if it closed one."""
        if time.monotonic() - self.last_used < self.idle_seconds:
            return False
        return release()


def release() -> bool:
    """Closes this thread's connection unless a transaction holds it (tests, or a
    caller's atomic block). The next query opens a new one."""
    if connection.in_atomic_block or connection.connection is None:
        return False
    connection.close()
    return True


def retrying(write: Callable[[], T], what: str, *, seconds: float | None = None) -> T:
    """`write()`, tried again while the database cannot be reached (a refused or
    lost connection, or a session PostgreSQL ended because it sat idle in its
    transaction: generator_site/postgres.py), with backoff up to 5 s, for at
    most `seconds`. A write that failed this way was rolled back: it runs whole again. Inside a caller's
    transaction nothing is retried (the transaction is lost)."""
    deadline = time.monotonic() + (settings.GENERATOR_DB_RETRY_SECONDS if seconds is None else seconds)
    delay = 0.2
    while True:
        try:
            return write()
        except (OperationalError, InterfaceError, InternalError) as exc:
            if isinstance(exc, InternalError) and not _ended_idle(exc):
                raise
            if connection.in_atomic_block or time.monotonic() + delay > deadline:
                raise
            logger.warning("could not %s (%s); trying again in %.1f s", what, str(exc).strip()[:200], delay)
            release()
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _ended_idle(exc: InternalError) -> bool:
    """PostgreSQL's idle_in_transaction_session_timeout (SQLSTATE 25P03)."""
    return getattr(exc.__cause__, "sqlstate", None) == "25P03"
