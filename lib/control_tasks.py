"""The control worker's tasks (the "farm" queue, and beat's others): none can hold it.

One control worker runs beat and every bookkeeping task: dispatch, the reaper,
health checks, housekeeping. A task stuck there (a statement waiting on a lock
that a vanished build host's session holds, issue 25) stopped dispatch for
everyone. So each control task:
1. has Celery time limits: soft (SoftTimeLimitExceeded in the task, which ends
   it) and, CONTROL_HARD_GRACE seconds later, hard (its pool process killed and
   replaced);
2. on PostgreSQL, runs its statements under `lock_timeout` (a lock another
   session holds is given up after GENERATOR_CONTROL_LOCK_TIMEOUT_SECONDS, the
   task's caller decides what then) and `statement_timeout` (its soft limit:
   no statement outlives its task).
The control worker also runs two processes (scripts/localfarm.py, compose), so
a task that runs to its limit holds one while dispatch goes on in the other.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from celery import shared_task
from django.conf import settings
from django.db import DatabaseError, connection
from django.db.backends.signals import connection_created
from django.dispatch import receiver

CONTROL_HARD_GRACE = 30  # seconds between the soft and the hard time limit


def control_task(name: str, *, seconds: float, **options) -> Callable:
    """`shared_task(name=...)` for the control worker: time limits `seconds`
    (soft) and `seconds + CONTROL_HARD_GRACE` (hard), and its statements limited
    as above. The limits are on the task (`soft_time_limit`, `time_limit`)."""

    def wrap(body: Callable) -> Callable:
        @functools.wraps(body)
        def run(*args, **kwargs):
            lock_timeout = settings.GENERATOR_CONTROL_LOCK_TIMEOUT_SECONDS
            with statement_limits(lock_timeout=lock_timeout, statement_timeout=seconds):
                return body(*args, **kwargs)

        return shared_task(
            name=name, ignore_result=True, soft_time_limit=seconds, time_limit=seconds + CONTROL_HARD_GRACE, **options
        )(run)

    return wrap


_limits = threading.local()


@contextmanager
def statement_limits(*, lock_timeout: float, statement_timeout: float) -> Iterator[None]:
    """On PostgreSQL, this thread's statements wait at most `lock_timeout` seconds
    for a lock and run at most `statement_timeout` seconds meanwhile: set on its
    connection now and on any it opens inside, reset after. On SQLite, nothing
    (its busy timeout already bounds a wait for the write lock)."""
    _limits.values = {"lock_timeout": _ms(lock_timeout), "statement_timeout": _ms(statement_timeout)}
    try:
        if connection.vendor == "postgresql":
            if connection.connection is None:
                connection.ensure_connection()  # set by _limit_new_session
            else:
                _apply(connection)
        yield
    finally:
        del _limits.values
        if connection.vendor == "postgresql" and connection.connection is not None:
            try:
                with connection.cursor() as cursor:
                    cursor.execute("RESET lock_timeout; RESET statement_timeout")
            except DatabaseError:  # a broken session keeps no limits: let it go
                connection.close()


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def _apply(conn) -> None:
    with conn.cursor() as cursor:
        for name, value in _limits.values.items():
            cursor.execute("SELECT set_config(%s, %s, false)", [name, value])


@receiver(connection_created)
def _limit_new_session(sender, connection, **kwargs) -> None:
    """A connection opened inside `statement_limits` (after a lost one) gets them too."""
    if connection.vendor == "postgresql" and getattr(_limits, "values", None):
        _apply(connection)


def gave_up_waiting(exc: BaseException) -> bool:
    """Whether a database error is a statement stopped by `lock_timeout` or `statement_timeout`."""
    return getattr(exc.__cause__, "sqlstate", None) in ("55P03", "57014")
