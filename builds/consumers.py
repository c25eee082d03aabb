"""The live build log over a WebSocket: backlog first, then live lines, then the end.

Frames are JSON:
  {"type": "log", "lines": [{"seq": 1, "text": "..."}, ...]}
  {"type": "status", "status": "pushing"}
  {"type": "end", "status": "succeeded", "error": "", "image_id": "...", "digest": "...", "lines": 42}
  {"type": "error", "message": "..."}   (then the server closes with a 44xx code)
After "end" the server closes with 1000. `?after=N` resumes after line N.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from generator_site.access import can_read_logs

from .logs import group_name, lines_after
from .models import BuildJob

BACKLOG_BATCH = 2000

CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_BAD_REQUEST = 4400


class BuildLogConsumer(AsyncJsonWebsocketConsumer):
    # While no event arrives for this long, the database is read again: an event
    # lost on the way (a worker that died with its publisher's queue, a full
    # channel) must not leave a viewer waiting forever, least of all for the end.
    recheck_seconds = 10.0

    async def connect(self) -> None:
        self.job_id = self.scope["url_route"]["kwargs"]["job_id"]
        self.group = None
        self.sent = 0
        self.ended = False
        self.lock = asyncio.Lock()  # one catch-up or event at a time: no line twice
        self.last_event = time.monotonic()
        self.recheck = None
        # Accept first so that a refusal can carry a message a person reads:
        # daphne drops close reasons.
        await self.accept()
        if problem := self.scope.get("auth_problem"):
            return await self.refuse(CLOSE_UNAUTHORIZED, problem)
        if not can_read_logs(self.scope["user"]):
            return await self.refuse(CLOSE_UNAUTHORIZED, "authentication required to read build logs")
        after = parse_qs(self.scope.get("query_string", b"").decode()).get("after", ["0"])[0]
        if not after.isdigit():
            return await self.refuse(CLOSE_BAD_REQUEST, f"after must be a whole number, not {after!r}")
        self.sent = int(after)
        if not await job_exists(self.job_id):
            return await self.refuse(CLOSE_NOT_FOUND, f"no build job with id {self.job_id!r}")
        # Join before reading the backlog: a line stored after the read is
        # published after the join, so it reaches this consumer (builds/logs.py).
        self.group = group_name(self.job_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        async with self.lock:
            await self.catch_up()
        if not self.ended:
            self.recheck = asyncio.create_task(self.recheck_while_quiet())

    async def refuse(self, code: int, message: str) -> None:
        await self.send_json({"type": "error", "message": message})
        await self.close(code=code)

    async def disconnect(self, code) -> None:
        if self.recheck:
            self.recheck.cancel()
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def recheck_while_quiet(self) -> None:
        while not self.ended:
            await asyncio.sleep(self.recheck_seconds)
            if time.monotonic() - self.last_event >= self.recheck_seconds:
                async with self.lock:
                    await self.catch_up()

    async def catch_up(self) -> None:
        """Sends every stored line after the last one sent; ends the stream if the job has ended."""
        if self.ended:
            return
        while True:
            # Status first: if the job had ended, all its lines were stored before.
            job = await job_state(self.job_id)
            lines = await database_sync_to_async(lines_after)(self.job_id, self.sent, BACKLOG_BATCH)
            await self.send_lines(lines)
            if len(lines) < BACKLOG_BATCH:
                break
        if job.is_terminal:
            await self.send_end(job)

    async def send_lines(self, lines) -> None:
        if lines:
            await self.send_json({"type": "log", "lines": [{"seq": s, "text": t} for s, t in lines]})
            self.sent = lines[-1][0]

    async def send_end(self, job: BuildJob) -> None:
        self.ended = True
        await self.send_json(
            {
                "type": "end",
                "status": job.status,
                "error": job.error,
                "image_id": job.image_id,
                "digest": job.digest,
                "lines": job.log_line_count,
            }
        )
        await self.close(code=1000)

    # Channel-layer events, published by builds/logs.py and builds/transitions.py.

    async def log_lines(self, event) -> None:
        self.last_event = time.monotonic()
        async with self.lock:
            if self.ended:
                return
            fresh = [(seq, text) for seq, text in event["lines"] if seq > self.sent]
            if fresh and fresh[0][0] != self.sent + 1:
                # Missed a message (layer capacity, a reconnect): the database has it.
                return await self.catch_up()
            await self.send_lines(fresh)

    async def job_status(self, event) -> None:
        self.last_event = time.monotonic()
        async with self.lock:
            if event["status"] in BuildJob.TERMINAL:
                await self.catch_up()
            elif not self.ended:
                await self.send_json({"type": "status", "status": event["status"]})


@database_sync_to_async
def job_exists(job_id: str) -> bool:
    return BuildJob.objects.filter(pk=job_id).exists()


@database_sync_to_async
def job_state(job_id: str) -> BuildJob:
    return BuildJob.objects.only("status", "error", "image_id", "digest", "log_line_count").get(pk=job_id)
