"""PostgreSQL sessions that cannot outlive their client (docs/architecture.md, "Failures").

A build host cut off the network leaves its session on the server as it was.
PostgreSQL notices a vanished client only from TCP, and by default only after
two hours of keepalive silence; a session cut between a statement and its
COMMIT holds its row and index locks all that time, and whoever writes the same
rows (the reaper's `worker lost` line, the next attempt's log) waits on it.

So every connection asks for:
1. `idle_in_transaction_session_timeout`: a session that has sent nothing for
   that long inside a transaction is ended and its transaction rolled back. This
   is what frees the locks when a proxy in between (pgbouncer, a relay) keeps
   the TCP connection alive for a client that is gone.
2. TCP keepalives on both ends (libpq's `keepalives_*` and `tcp_user_timeout`
   for the client, the server's `tcp_keepalives_*` and `tcp_user_timeout` for
   the session): a dead peer is noticed within `idle + interval x count`
   seconds, not two hours, on either side.

No `statement_timeout` for every session: a worker's statements are small,
and what one can wait on is a lock held by a session that (1) ends, or by a
control task's, which has its own limits (lib/control_tasks.py).
A worker held up that way for up to the idle timeout still renews its lease
in time, as the timeout is at most lease minus heartbeat (settings.py).
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured


def session_options(
    options: dict,
    *,
    idle_in_transaction_seconds: float,
    keepalive_idle_seconds: int,
    keepalive_interval_seconds: int,
    keepalive_count: int,
) -> dict:
    """`options` (a PostgreSQL DATABASES entry's OPTIONS) with the settings above added;
    an `options` string already there (DATABASE_URL's `?options=`) is kept, before ours."""
    if idle_in_transaction_seconds <= 0:
        raise ImproperlyConfigured("GENERATOR_DB_IDLE_IN_TRANSACTION_SECONDS must be more than 0")
    if min(keepalive_idle_seconds, keepalive_interval_seconds, keepalive_count) < 1:
        raise ImproperlyConfigured("GENERATOR_DB_KEEPALIVE_* must be 1 or more")
    dead_after_ms = (keepalive_idle_seconds + keepalive_interval_seconds * keepalive_count) * 1000
    server = {
        "idle_in_transaction_session_timeout": f"{round(idle_in_transaction_seconds * 1000)}ms",
        "tcp_keepalives_idle": keepalive_idle_seconds,
        "tcp_keepalives_interval": keepalive_interval_seconds,
        "tcp_keepalives_count": keepalive_count,
        "tcp_user_timeout": dead_after_ms,
    }
    ours = " ".join(f"-c {name}={value}" for name, value in server.items())
    return {
        **options,
        "keepalives": 1,
        "keepalives_idle": keepalive_idle_seconds,
        "keepalives_interval": keepalive_interval_seconds,
        "keepalives_count": keepalive_count,
        "tcp_user_timeout": dead_after_ms,
        "options": f"{options['options']} {ours}" if options.get("options") else ours,
    }
