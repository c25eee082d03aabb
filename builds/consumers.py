"""The live build log over a WebSocket: backlog first, then live lines, then the end.

Frames are JSON:
  {"type": "log", "lines": [{"seq": 1, "text": "..."}, ...]}
      (a multi-platform parent's lines also have "platform": "linux/arm64", builds/live/frames.py)
  {"type": "status", "status": "pushing"}
  {"type": "end", "status": "succeeded", "error": "", "image_id": "...", "digest": "...", "lines": 42}
  {"type": "error", "message": "..."}   (then the server closes with a 44xx code)
After "end" the server closes with 1000. `?after=N` resumes after line N.

A log frame holds at most GENERATOR_LOG_FRAME_BYTES of JSON (builds/live/frames.py).

A client that leaves GENERATOR_WS_SEND_BUFFER_BYTES unread is sent nothing more
until it reads; one that does not read for GENERATOR_WS_SLOW_CLIENT_SECONDS is
closed with 4408 (builds/live/backpressure.py). It may reconnect with `?after=N`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from builds.jobs.ownership import readable_jobs
from builds.live import subscriptions as live
from builds.live.backpressure import ClientTooSlow, SendBuffer, give_back_memory_soon
from builds.live.frames import END_FIELDS, NO_PLATFORMS, Batch, batch_frames, end_of, log_frames
from builds.logs.writer import read_lines
from builds.models import BuildJob
from teams.access import can_read_logs

logger = logging.getLogger(__name__)

BACKLOG_BATCH = 2000  # lines read from the database at once, at most (and half a frame of text: catch_up)

CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_BAD_REQUEST = 4400
CLOSE_TOO_SLOW = 4408


class BuildLogConsumer(AsyncJsonWebsocketConsumer):
    # No channel per consumer: live events come through this process's one
    # subscription to the job (builds/live/subscriptions.py).
    channel_layer_alias = None

    # While no event arrives for this long, the database is read again: an event
    # lost on the way (a worker that died with its publisher's queue, a full
    # channel) must not leave a viewer waiting forever, least of all for the end.
    recheck_seconds = 10.0

    async def connect(self) -> None:
        self.job_id = self.scope["url_route"]["kwargs"]["job_id"]
        self.viewer: live.Viewer | None = None
        self.stream: asyncio.Task | None = None
        self.sent = 0
        self.status = None
        self.ended = False
        self.platforms = NO_PLATFORMS
        self.client = SendBuffer.of(
            self.base_send,
            high=settings.GENERATOR_WS_SEND_BUFFER_BYTES,
            patience=settings.GENERATOR_WS_SLOW_CLIENT_SECONDS,
        )
        # Accept first so that a refusal can carry a message a person reads:
        # daphne drops close reasons.
        await self.accept()
        if problem := self.scope.get("auth_problem"):
            return await self.refuse(CLOSE_UNAUTHORIZED, problem)
        user = self.scope["user"]
        after = parse_qs(self.scope.get("query_string", b"").decode()).get("after", ["0"])[0]
        platforms = await readable_platforms(user, self.job_id)
        if platforms is None:
            # Another team's build reads as one that does not exist (builds/jobs/ownership.py).
            if not can_read_logs(user):
                return await self.refuse(CLOSE_UNAUTHORIZED, "authentication required to read build logs")
            return await self.refuse(CLOSE_NOT_FOUND, f"no build job with id {self.job_id!r}")
        if not after.isdigit():
            return await self.refuse(CLOSE_BAD_REQUEST, f"after must be a whole number, not {after!r}")
        self.sent = int(after)
        self.platforms = platforms
        # Watch before reading the backlog: a line stored after the read is
        # published after the watch began, so it reaches this viewer (builds/logs/writer.py).
        self.viewer = await live.watch(self.job_id)
        self.stream = asyncio.create_task(self.follow(), name=f"log-stream-{self.job_id}")

    async def refuse(self, code: int, message: str) -> None:
        await self.send_json({"type": "error", "message": message})
        await self.close(code=code)

    async def receive(self, text_data=None, bytes_data=None) -> None:
        """The stream goes one way: whatever a client sends is ignored."""

    async def disconnect(self, code) -> None:
        if self.stream and not self.stream.done():
            self.stream.cancel()
            await asyncio.wait([self.stream])
        if self.viewer:
            self.viewer.leave()
        give_back_memory_soon()  # a connection's buffers, a slow client's above all

    async def follow(self) -> None:
        """The backlog, then the events as they come, until the end or the client goes."""
        try:
            await self.catch_up()
            while not self.ended:
                quiet = self.recheck_seconds if self.viewer.live else min(self.recheck_seconds, 1.0)
                events = await self.viewer.take(timeout=quiet, max_bytes=settings.GENERATOR_LOG_FRAME_BYTES)
                if not events:
                    await self.catch_up()
                else:
                    await self.handle(events)
        except ClientTooSlow as exc:
            logger.info("closing the log stream of job %s: %s", self.job_id, exc)
            await self.close(code=CLOSE_TOO_SLOW)
        except Exception:
            logger.exception("the log stream of job %s failed", self.job_id)
            await self.close(code=1011)
        finally:
            self.viewer.leave()

    async def handle(self, events: list[dict]) -> None:
        """Events in order; consecutive batches of lines go out together."""
        lines: list[dict] = []
        for event in events:
            if event["type"] == "log.lines":
                lines.append(event)
                continue
            if lines:
                await self.live_lines(lines)
                lines = []
            if event is live.MISSED:
                await self.catch_up()
            elif event["type"] == "job.status":
                await self.live_status(event)
            if self.ended:
                return
        if lines:
            await self.live_lines(lines)

    async def catch_up(self) -> None:
        """Sends every stored line after the last one sent; ends the stream if the job has ended."""
        if self.ended:
            return
        more = True
        while more:
            # Room first: a client that stopped reading keeps no page of its log in memory.
            await self.client.wait_for_room()
            # Half a frame of text: with JSON's overhead a page still goes in one frame,
            # so a client that stops reading after it leaves no page waiting here.
            page = settings.GENERATOR_LOG_FRAME_BYTES // 2
            job, lines, more = await state_and_lines(self.job_id, self.sent, page)
            await self.send_lines(lines)
        if job["status"] in BuildJob.TERMINAL:
            await self.send_end(end_of(job))
        elif self.status is None:
            self.status = job["status"]  # as of the connection: no frame for it
        else:
            await self.send_status(job["status"])  # its event may have been missed

    async def live_lines(self, events: list[dict]) -> None:
        batches: list[Batch] = []
        last = self.sent
        for event in events:
            lines = event["lines"]
            if lines[-1][0] <= last:
                continue  # sent already (from the database)
            if lines[0][0] > last + 1:
                # Missed a message (layer capacity, a reconnect): the database has it.
                return await self.catch_up()
            if lines[0][0] == last + 1:
                batches.append(Batch.of(event, self.platforms))
            else:
                batches.append(Batch([(seq, text) for seq, text in lines if seq > last], self.platforms))
            last = lines[-1][0]
        if batches:
            await self.send_frames(batch_frames(batches, settings.GENERATOR_LOG_FRAME_BYTES))
            self.sent = last

    async def live_status(self, event: dict) -> None:
        status, end = event["status"], event.get("end")
        if self.ended:
            return  # the lines before it read the database, which had the end already
        if status not in BuildJob.TERMINAL:
            await self.send_status(status)
        elif end is not None and self.sent >= end["lines"]:
            await self.send_end(end)  # every line sent already: nothing to read
        else:
            await self.catch_up()

    async def send_lines(self, lines) -> None:
        if lines:
            await self.send_frames(log_frames(lines, settings.GENERATOR_LOG_FRAME_BYTES, self.platforms))
            self.sent = lines[-1][0]

    async def send_frames(self, frames: Iterable[str]) -> None:
        for frame in frames:
            await self.client.wait_for_room()
            await self.send(text_data=frame)

    async def send_status(self, status: str) -> None:
        if status != self.status:
            self.status = status
            await self.send_json({"type": "status", "status": status})

    async def send_end(self, end: dict) -> None:
        self.ended = True
        await self.send_json({"type": "end", **end})
        await self.close(code=1000)


@database_sync_to_async
def readable_platforms(user, job_id: str) -> frozenset[str] | None:
    """None if the user may not read the job; else the platforms its lines carry
    (a multi-platform parent's: they never change; none for any other job)."""
    row = readable_jobs(user).filter(pk=job_id).values_list("platforms", "parent_id").first()
    if row is None:
        return None
    platforms, parent_id = row
    return frozenset(platforms) if platforms and parent_id is None else NO_PLATFORMS


@database_sync_to_async
def state_and_lines(job_id: str, after: int, max_bytes: int) -> tuple[dict, list[tuple[int, str]], bool]:
    """The job's state (its END_FIELDS), then its stored lines after `after` (a page:
    and whether more may follow). Status first: if the job had ended, all its lines
    were stored before."""
    job = BuildJob.objects.filter(pk=job_id).values(*END_FIELDS.values()).get()
    lines, more = read_lines(job_id, after, max_lines=BACKLOG_BATCH, max_bytes=max_bytes)
    return job, lines, more
