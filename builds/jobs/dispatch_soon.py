"""The dispatch pass a submit asks for, off the path of its answer in the web tier.

A submit asks for a pass once its job is committed (builds/jobs/services.py). In
daphne (generator_site/serve.py's processes: asgi.py turns this on) the pass runs in one thread of
the process rather than in the request: the answer does not wait for it, and
the asks of submits that come while a pass runs are served by one more pass,
not one each. A pass sees every job committed before it started, and an ask
that comes while it runs is kept (the event is cleared before the pass), so no
job waits for beat's pass that would not have without this; if the thread
fails, beat's pass every few seconds still dispatches (builds/tasks.py).

Everywhere else (Celery workers, the CLI, the tests' client) the pass runs
where it is asked for, as before.
"""

from __future__ import annotations

import logging
import threading

from django.db import connections

from builds.jobs.dispatch import dispatch

logger = logging.getLogger(__name__)

# Set by generator_site/serve.py for the daphne processes it starts.
DISPATCH_IN_BACKGROUND = "GENERATOR_DISPATCH_IN_BACKGROUND"

_asked = threading.Event()
_started = threading.Lock()
_thread: threading.Thread | None = None
_in_background = False


def in_background() -> None:
    """From now on this process's asks are served by its dispatch thread."""
    global _in_background
    _in_background = True


def dispatch_soon() -> None:
    if not _in_background:
        dispatch()
        return
    _asked.set()
    _ensure_thread()


def _ensure_thread() -> None:
    global _thread
    with _started:
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_serve, name="dispatch-soon", daemon=True)
            _thread.start()


def _serve() -> None:
    while True:
        _asked.wait()
        _asked.clear()  # before the pass: an ask during it brings one more
        try:
            dispatch()
        except Exception:
            logger.exception("a dispatch pass after a submit failed; beat's pass will dispatch the jobs")
        finally:
            connections.close_all()  # this thread's connection goes back to the pool between passes
