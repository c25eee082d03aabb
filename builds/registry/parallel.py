"""Several registry requests at once, each thread with a session of its own.

A signature and its attestations are five small blobs and two manifests: one
after the other, a dozen round trips after the push, the largest share of
what signing a small image cost (issue 26). Blobs do not depend on each other,
and a manifest only on its blobs: `AtOnce` runs a list of calls at once, each
with a RegistryAPI of its thread (a requests session is not for sharing
between threads), and raises the first call's error.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from builds.registry.client import RegistryAPI

T = TypeVar("T")
MOST_AT_ONCE = 6  # a signature and its attestations: five blobs in one round


class AtOnce:
    """Up to MOST_AT_ONCE threads, each with a RegistryAPI of its own, opened
    when first needed and kept for the next calls (one login per thread), all
    closed on leaving."""

    def __init__(self, open_api: Callable[[], RegistryAPI]) -> None:
        self._open_api = open_api
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened = contextlib.ExitStack()
        self._pool = ThreadPoolExecutor(max_workers=MOST_AT_ONCE, thread_name_prefix="registry")

    def __enter__(self) -> AtOnce:
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=True)
        self._opened.close()

    def each(self, calls: list[Callable[[RegistryAPI], T]]) -> list[T]:
        """The calls' answers, in order, once all are made; the first one's error if any failed."""
        return list(self._pool.map(self._run, calls))

    def _run(self, call: Callable[[RegistryAPI], T]) -> T:
        api = getattr(self._local, "api", None)
        if api is None:
            with self._lock:
                api = self._local.api = self._opened.enter_context(self._open_api())
        return call(api)
