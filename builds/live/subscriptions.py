"""A job's live log events, received once per process and handed to its viewers.

A daphne process joins a job's channel group once, with one channel of its own,
however many of its WebSockets follow that job, and passes each event to them
in memory. Redis then does the same work for 1,000 viewers as for one: with a
channel per viewer, channels-redis 4.3 ran a group_add and a group_discard per
viewer, listed every viewer's channel in every group_send, and those commands
from hundreds of viewers at once went past redis-py 8's 100 connections per
pool ("Too many connections": the viewer's WebSocket closed with 1011).

Each viewer has room for 2 MiB of events. One that falls further
behind (its client reads slowly, builds/live/backpressure.py) loses what did not fit
and is told so with MISSED; it reads those lines from the database, where every
line was stored before it was published (builds/logs/writer.py).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import weakref

from channels.layers import get_channel_layer

from builds.logs.writer import group_name

logger = logging.getLogger(__name__)

MISSED = {"type": "missed"}  # stands for events a viewer had no room for: read the database
# What one viewer may have waiting: the events are shared by the process's
# viewers, so this bounds what a lagging one keeps alive, not a copy per viewer.
VIEWER_ROOM_BYTES = 2 * 1024 * 1024
VIEWER_ROOM_EVENTS = 1000
# Lines go to a job's viewers at most every `delivery_interval`; those that came
# meanwhile go together, and each viewer sends them in one frame. A frame costs
# daphne about as much whatever its size (autobahn, Twisted and a send per
# connection): 1,000 viewers of a build publishing 20 batches a second were
# 20,000 frames a second. So the pause grows with the viewers, keeping a job's
# frames under FRAMES_PER_SECOND per process (1,000 viewers: four a second each),
# while the few viewers of most builds see a line within DELIVERY_INTERVAL_MIN.
DELIVERY_INTERVAL_MIN = 0.05
DELIVERY_INTERVAL_MAX = 0.25
FRAMES_PER_SECOND = 4000


def delivery_interval(viewers: int) -> float:
    return min(DELIVERY_INTERVAL_MAX, max(DELIVERY_INTERVAL_MIN, viewers / FRAMES_PER_SECOND))


RETRY_SECONDS = 1.0


class Viewer:
    """One WebSocket's share of a job's events, in the order they were published."""

    def __init__(self, subscription: Subscription) -> None:
        self._subscription = subscription
        self._events: collections.deque[tuple[dict, int]] = collections.deque()  # (event, its text's size)
        self._bytes = 0
        self._arrived = asyncio.Event()
        # False when the process could not join the job's group: the viewer then
        # sees new lines only by reading the database.
        self.live = True

    def deliver(self, event: dict, size: int) -> None:
        if self._bytes + size > VIEWER_ROOM_BYTES or len(self._events) >= VIEWER_ROOM_EVENTS:
            self._events.clear()
            self._events.append((MISSED, 0))
            self._bytes = 0
        else:
            self._events.append((event, size))
            self._bytes += size
        self._arrived.set()

    async def take(self, timeout: float, max_bytes: int) -> list[dict]:
        """The events waiting, oldest first, up to about `max_bytes` of lines
        (at least one): after a wait of up to `timeout` seconds for the first,
        none if none came. A viewer that fell behind gets several at once and
        sends them in fewer frames; one whose client is stalled holds no more
        than that while it waits."""
        if not self._events:
            self._arrived.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._arrived.wait()
            except TimeoutError:
                return []
        events: list[dict] = []
        taken = 0
        while self._events and (not events or taken + self._events[0][1] <= max_bytes):
            event, size = self._events.popleft()
            events.append(event)
            taken += size
        self._bytes -= taken
        return events

    def leave(self) -> None:
        self._subscription.remove(self)
        self._events.clear()


class Subscription:
    """This process's membership of one job's group, while it has viewers."""

    def __init__(self, hub: Hub, job_id: str) -> None:
        self.hub = hub
        self.job_id = job_id
        self.group = group_name(job_id)
        self.viewers: set[Viewer] = set()
        self.channel: str | None = None
        self._receiver: asyncio.Task | None = None
        self._waiting: list[dict] = []
        self._delivery: asyncio.TimerHandle | None = None
        self._delivered_at = float("-inf")
        self.started = asyncio.ensure_future(self._start())

    async def _start(self) -> None:
        layer = self.hub.layer
        self.channel = await layer.new_channel()
        await layer.group_add(self.group, self.channel)
        self._receiver = asyncio.create_task(self._receive(), name=f"live-log-{self.job_id}")

    async def _receive(self) -> None:
        layer = self.hub.layer
        while True:
            try:
                event = await layer.receive(self.channel)
            except Exception:
                logger.warning("live log events of job %s interrupted", self.job_id, exc_info=True)
                self._deliver(MISSED)  # events may have been lost meanwhile
                await asyncio.sleep(RETRY_SECONDS)
                # Redis may have restarted and forgotten the group.
                with contextlib.suppress(Exception):
                    await layer.group_add(self.group, self.channel)
                continue
            self._deliver(event)

    def _deliver(self, event: dict) -> None:
        """Hands the event on now, or with the others at the next delivery. A
        change of status (a few per job: pushing, the end) goes at once, with
        the lines before it: the end frame never waits for the timer."""
        self._waiting.append(event)
        if event.get("type") == "job.status":
            if self._delivery is not None:
                self._delivery.cancel()
            self._hand_on()
            return
        if self._delivery is None:
            loop = asyncio.get_running_loop()
            pause = self._delivered_at + delivery_interval(len(self.viewers)) - loop.time()
            if pause <= 0:
                self._hand_on()
            else:
                self._delivery = loop.call_later(pause, self._hand_on)

    def _hand_on(self) -> None:
        self._delivery = None
        self._delivered_at = asyncio.get_running_loop().time()
        events, self._waiting = self._waiting, []
        for event in events:
            size = sum(len(text) for _, text in event.get("lines", ()))
            for viewer in list(self.viewers):
                viewer.deliver(event, size)

    def remove(self, viewer: Viewer) -> None:
        if viewer in self.viewers:
            self.viewers.discard(viewer)
            if not self.viewers:
                self.hub.forget(self)

    async def stop(self) -> None:
        await asyncio.wait([self.started])  # joined or failed; either way, nothing raised here
        if not self.started.cancelled() and self.started.exception():
            return  # never joined (already logged by the viewers that waited)
        if self._receiver:
            self._receiver.cancel()
        if self._delivery:
            self._delivery.cancel()
        if self.channel:
            try:
                await self.hub.layer.group_discard(self.group, self.channel)
            except Exception:
                logger.warning("could not leave %s", self.group, exc_info=True)


class Hub:
    """The subscriptions of one event loop (a daphne process has one) to one channel layer."""

    def __init__(self, layer) -> None:
        self.layer = layer
        self.subscriptions: dict[str, Subscription] = {}
        self._stopping: set[asyncio.Task] = set()

    async def watch(self, job_id: str) -> Viewer:
        """A viewer of the job's events from now on: once this returns, every
        event published afterwards reaches it (or MISSED does)."""
        subscription = self.subscriptions.get(job_id)
        if subscription is None:
            subscription = self.subscriptions[job_id] = Subscription(self, job_id)
        viewer = Viewer(subscription)
        subscription.viewers.add(viewer)
        try:
            # Shielded: one viewer's cancelled handshake must not cancel the others' join.
            await asyncio.shield(subscription.started)
        except asyncio.CancelledError:
            viewer.leave()
            raise
        except Exception:
            logger.warning("cannot follow job %s live; its viewers read the database", job_id, exc_info=True)
            viewer.live = False
            if self.subscriptions.get(job_id) is subscription:
                del self.subscriptions[job_id]  # the next viewer tries again
        return viewer

    def forget(self, subscription: Subscription) -> None:
        if self.subscriptions.get(subscription.job_id) is subscription:
            del self.subscriptions[subscription.job_id]
        # In a task of its own: a viewer leaves at once, and a cancelled
        # consumer cannot interrupt the group_discard halfway.
        task = asyncio.ensure_future(subscription.stop())
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)


class _Offline:
    """Stands in for a hub when no channel layer is configured."""

    async def watch(self, job_id: str) -> Viewer:
        viewer = Viewer(_NoSubscription())
        viewer.live = False
        return viewer


class _NoSubscription:
    def remove(self, viewer: Viewer) -> None:
        pass


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()


def hub() -> Hub | _Offline:
    """This event loop's hub for the configured channel layer (a new one when the
    layer changed, as tests do)."""
    layer = get_channel_layer()
    if layer is None:
        return _Offline()
    loop = asyncio.get_running_loop()
    current = _hubs.get(loop)
    if current is None or current.layer is not layer:
        current = _hubs[loop] = Hub(layer)
    return current


async def watch(job_id: str) -> Viewer:
    return await hub().watch(job_id)
