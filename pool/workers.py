"""Which daemons' queues have a live Celery worker, from the workers' own heartbeats.

Each worker process writes, every GENERATOR_WORKER_HEARTBEAT_SECONDS, one entry
per queue it consumes into a Redis sorted set: member "queue worker-hostname",
score the time. A queue is served while some entry of it is younger than
GENERATOR_WORKER_STALE_SECONDS; a worker that stops cleanly removes its own
entries at once. Knowing which daemons have a worker is then one Redis read,
whatever the size of the pool, where a Celery broadcast (`inspect
active_queues`) waited a second for replies from every worker on every health
check. Each beat also re-detects the QEMU emulation of the worker's host for
its daemons (`EmulationReport`). This module knows no jobs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import redis
from django.conf import settings
from django.db import DatabaseError, connection

from lib.redis_clients import farm_redis
from pool.models import DockerDaemon, queue_for
from pool.platforms import BINFMT_DIR, detect_emulation

logger = logging.getLogger(__name__)

KEY = "generator:worker-queues"

_redis = farm_redis


def _members(queues: Iterable[str], worker: str) -> list[str]:
    return [f"{queue} {worker}" for queue in queues]


def beat(queues: Iterable[str], worker: str, now: float | None = None) -> None:
    """Says that `worker` consumes `queues` now."""
    now = time.time() if now is None else now
    _redis().zadd(KEY, dict.fromkeys(_members(queues, worker), now))


def leave(queues: Iterable[str], worker: str) -> None:
    """A worker stopping cleanly: its queues are unserved at once, not after the stale time."""
    members = _members(queues, worker)
    if members:
        _redis().zrem(KEY, *members)


def live_queues(now: float | None = None) -> set[str]:
    """The queues some worker said it consumes within the stale time."""
    now = time.time() if now is None else now
    stale = now - settings.GENERATOR_WORKER_STALE_SECONDS
    client = _redis()
    with client.pipeline(transaction=False) as pipe:
        pipe.zremrangebyscore(KEY, "-inf", stale - 24 * 3600)  # workers gone for a day: forget them
        pipe.zrangebyscore(KEY, stale, "+inf")
        _, members = pipe.execute()
    return {member.decode().split(" ", 1)[0] for member in members}


class EmulationReport:
    """The platforms QEMU's binfmt handlers on the worker's host run, on its
    daemons' rows (`detected_emulation`; a worker runs where its daemon runs).
    Detected at every beat, so QEMU installed (or removed) after the worker
    started counts within a beat, with no restart: a listing of
    /proc/sys/fs/binfmt_misc, a read of the daemons' rows that say otherwise,
    and a write only when one does."""

    def __init__(self, daemons: list[str], binfmt_dir: Path = BINFMT_DIR) -> None:
        self.daemons, self.binfmt_dir = daemons, binfmt_dir

    def refresh(self) -> list[str]:
        """The daemons whose row it changed."""
        if not self.daemons:
            return []
        found = ",".join(detect_emulation(self.binfmt_dir))
        rows = DockerDaemon.objects.filter(name__in=self.daemons).exclude(detected_emulation=found)
        stale = list(rows.values_list("name", flat=True))
        if stale:
            DockerDaemon.objects.filter(name__in=stale).update(detected_emulation=found)
            logger.info("QEMU emulation of %s is now %r", ", ".join(stale), found or "none")
        return stale


class Heartbeat:
    """A worker's heartbeat thread. A beat that cannot reach Redis is logged and
    tried again at the next; the health check then sees the worker as gone
    only if it stays unreachable past the stale time. The build queues'
    daemons get their host's emulation at each beat too (`EmulationReport`)."""

    def __init__(
        self, queues: list[str], worker: str, interval: float | None = None, *, binfmt_dir: Path = BINFMT_DIR
    ) -> None:
        self.queues, self.worker = queues, worker
        self.interval = interval or settings.GENERATOR_WORKER_HEARTBEAT_SECONDS
        prefix = queue_for("")
        daemons = [queue.removeprefix(prefix) for queue in queues if queue.startswith(prefix)]
        self.emulation = EmulationReport(daemons, binfmt_dir)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)
        try:
            leave(self.queues, self.worker)
        except redis.RedisError:
            logger.warning("could not remove the heartbeat of %s", self.worker, exc_info=True)

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                beat(self.queues, self.worker)
            except redis.RedisError:
                logger.warning("worker heartbeat failed", exc_info=True)
            try:
                self.emulation.refresh()
            except DatabaseError:
                logger.warning("could not record the host's QEMU emulation; trying at the next beat", exc_info=True)
            finally:
                # This thread's own connection, not kept between beats: a pool
                # process forked meanwhile would inherit it, and end it.
                connection.close()
            self._stopped.wait(self.interval)
