"""The WebSocket log consumer: backlog, live lines, the end, and refusals.

The full ASGI application (origin check, token middleware, router) runs in
process with the in-memory channel layer; the lines come through the same
LogWriter and transitions the workers use.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import io
import json
import multiprocessing
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from asgiref.sync import SyncToAsync
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from daphne.testing import DaphneProcess
from django.conf import settings
from django.db import connections
from django.test import override_settings

from builds import cli
from builds.jobs import transitions
from builds.logs.writer import LogWriter
from builds.models import BuildJob, BuildLogLine
from generator_site import settings as site_settings
from generator_site.asgi import application
from teams.models import Team

pytestmark = pytest.mark.django_db(transaction=True)


def make_job(daemon, lines: int = 0, status: str = "building") -> BuildJob:
    team = Team.objects.get_or_create(slug="default", defaults={"name": "Default"})[0]  # the reader's
    job = BuildJob.objects.create(
        image="a/b:latest", dockerfile="FROM busybox\n", daemon=daemon, status=status, team=team
    )
    writer = LogWriter(job.id, last_seq=0, batch_lines=1000, flush_seconds=60)
    for i in range(1, lines + 1):
        writer.write(f"backlog {i}")
    writer.flush()
    return job


def communicator(job_id: str, token: str | None = None, origin: str | None = None, query: str = ""):
    headers = []
    if token:
        headers.append((b"authorization", f"Token {token}".encode()))
    if origin:
        headers.append((b"origin", origin.encode()))
    path = f"/b1/build/log/ws/{job_id}" + (f"?{query}" if query else "")
    return WebsocketCommunicator(application, path, headers=headers)


async def receive_lines(ws, count: int) -> list[tuple[int, str]]:
    lines = []
    while len(lines) < count:
        frame = await ws.receive_json_from(timeout=5)
        assert frame["type"] == "log", frame
        lines += [(line["seq"], line["text"]) for line in frame["lines"]]
    return lines


async def test_backlog_then_live_lines_then_the_end(daemon, reader):
    job = await database_sync_to_async(make_job)(daemon, lines=3)
    ws = communicator(job.id, reader.api_token)
    connected, _ = await ws.connect()
    assert connected
    assert await receive_lines(ws, 3) == [(1, "backlog 1"), (2, "backlog 2"), (3, "backlog 3")]

    def more_lines_then_success():
        writer = LogWriter(job.id, last_seq=3, batch_lines=2, flush_seconds=60)
        for text in ["live 4", "live 5"]:
            writer.write(text)
        writer.flush()  # as the runner does before each change of state
        transitions.start_push(job.id, 1, "sha256:" + "a" * 64)
        writer.write("live 6")
        writer.flush()
        transitions.succeed(job.id, 1, "sha256:" + "b" * 64)

    await database_sync_to_async(more_lines_then_success)()
    assert await receive_lines(ws, 2) == [(4, "live 4"), (5, "live 5")]
    assert await ws.receive_json_from() == {"type": "status", "status": "pushing"}
    assert await receive_lines(ws, 1) == [(6, "live 6")]
    end = await ws.receive_json_from()
    assert end == {
        "type": "end",
        "status": "succeeded",
        "error": "",
        "image_id": "sha256:" + "a" * 64,
        "digest": "sha256:" + "b" * 64,
        "lines": 6,
    }
    assert (await ws.receive_output())["type"] == "websocket.close"


async def test_a_missed_message_is_recovered_from_the_database(daemon, reader):
    job = await database_sync_to_async(make_job)(daemon, lines=1)
    ws = communicator(job.id, reader.api_token)
    await ws.connect()
    assert await receive_lines(ws, 1) == [(1, "backlog 1")]

    def store_unpublished_then_publish_more():
        from builds.models import BuildLogLine

        # Lines 2-3 are stored but their message is lost (say, the layer was full).
        BuildLogLine.objects.bulk_create(
            [BuildLogLine(job=job, seq=2, text="lost 2"), BuildLogLine(job=job, seq=3, text="lost 3")]
        )
        writer = LogWriter(job.id, last_seq=3, batch_lines=10, flush_seconds=60)
        writer.write("live 4")
        writer.flush()

    await database_sync_to_async(store_unpublished_then_publish_more)()
    assert await receive_lines(ws, 3) == [(2, "lost 2"), (3, "lost 3"), (4, "live 4")]
    await ws.disconnect()


async def test_a_finished_job_sends_everything_then_closes(daemon, reader):
    job = await database_sync_to_async(make_job)(daemon, lines=2500, status="failed")
    ws = communicator(job.id, reader.api_token, query="after=100")
    await ws.connect()
    lines = await receive_lines(ws, 2400)
    assert [seq for seq, _ in lines] == list(range(101, 2501))
    end = await ws.receive_json_from()
    assert (end["type"], end["status"], end["lines"]) == ("end", "failed", 2500)


async def test_an_unknown_job_is_refused_with_a_reason(db, reader):
    ws = communicator("f" * 32, reader.api_token)
    await ws.connect()
    assert await ws.receive_json_from() == {"type": "error", "message": f"no build job with id {'f' * 32!r}"}
    assert (await ws.receive_output())["code"] == 4404


async def test_anonymous_readers_are_refused_by_default(daemon):
    job = await database_sync_to_async(make_job)(daemon, lines=1)
    ws = communicator(job.id)
    await ws.connect()
    assert (await ws.receive_json_from())["type"] == "error"
    assert (await ws.receive_output())["code"] == 4401


async def test_public_logs_need_no_login(daemon):
    job = await database_sync_to_async(make_job)(daemon, lines=1)
    with override_settings(GENERATOR_PUBLIC_LOGS=True):
        ws = communicator(job.id)
        await ws.connect()
        assert await receive_lines(ws, 1) == [(1, "backlog 1")]
        await ws.disconnect()


async def test_a_bad_after_is_refused(daemon, reader):
    job = await database_sync_to_async(make_job)(daemon, lines=1)
    ws = communicator(job.id, reader.api_token, query="after=-3")
    await ws.connect()
    assert "after must be a whole number" in (await ws.receive_json_from())["message"]
    assert (await ws.receive_output())["code"] == 4400


@pytest.mark.parametrize(
    ("origin", "allowed"), [(None, True), ("http://localhost:8080", True), ("https://evil.example", False)]
)
async def test_browsers_from_other_sites_are_refused(daemon, reader, origin, allowed):
    job = await database_sync_to_async(make_job)(daemon, lines=1)
    ws = communicator(job.id, reader.api_token, origin=origin)
    connected, _ = await ws.connect()
    assert connected is allowed
    await ws.disconnect()


async def test_a_lost_end_event_still_ends_the_stream(daemon, reader, monkeypatch):
    from builds.consumers import BuildLogConsumer

    monkeypatch.setattr(BuildLogConsumer, "recheck_seconds", 0.2)
    job = await database_sync_to_async(make_job)(daemon, lines=1)
    ws = communicator(job.id, reader.api_token)
    await ws.connect()
    assert await receive_lines(ws, 1) == [(1, "backlog 1")]

    def finish_without_publishing():
        # What a worker that died with its publisher's queue leaves behind.
        from builds.models import BuildLogLine

        BuildLogLine.objects.create(job=job, seq=2, text="unpublished 2")
        BuildJob.objects.filter(pk=job.pk).update(status="succeeded", log_line_count=2)

    await database_sync_to_async(finish_without_publishing)()
    assert await receive_lines(ws, 1) == [(2, "unpublished 2")]
    end = await ws.receive_json_from(timeout=5)
    assert (end["type"], end["status"], end["lines"]) == ("end", "succeeded", 2)


async def test_a_viewer_with_every_line_gets_the_end_from_the_event_without_a_read(daemon, reader, monkeypatch):
    from builds import consumers

    reads = []
    real = consumers.state_and_lines
    monkeypatch.setattr(consumers, "state_and_lines", lambda *args: reads.append(args) or real(*args))
    job = await database_sync_to_async(make_job)(daemon, lines=2)
    ws = communicator(job.id, reader.api_token)
    await ws.connect()
    assert await receive_lines(ws, 2) == [(1, "backlog 1"), (2, "backlog 2")]
    assert len(reads) == 1  # the backlog's

    await database_sync_to_async(transitions.fail)(job.id, 1, "the daemon went away")
    end = await ws.receive_json_from()
    assert end == {"type": "end", "status": "failed", "error": "the daemon went away", "image_id": "", "digest": "",
                   "lines": 2}  # fmt: skip
    assert len(reads) == 1


async def test_an_end_event_past_the_lines_a_viewer_saw_sends_the_rest_first(daemon, reader):
    job = await database_sync_to_async(make_job)(daemon, lines=1)
    ws = communicator(job.id, reader.api_token)
    await ws.connect()
    assert await receive_lines(ws, 1) == [(1, "backlog 1")]

    def store_unpublished_then_fail():
        # Line 2's message is lost (say, the layer was full); the end's says there were 2.
        BuildLogLine.objects.create(job=job, seq=2, text="lost 2")
        BuildJob.objects.filter(pk=job.pk).update(log_line_count=2)
        transitions.fail(job.id, 1, "broken")

    await database_sync_to_async(store_unpublished_then_fail)()
    assert await receive_lines(ws, 1) == [(2, "lost 2")]
    end = await ws.receive_json_from()
    assert (end["type"], end["status"], end["lines"]) == ("end", "failed", 2)


async def test_an_end_read_from_the_database_for_a_gap_is_not_sent_again_for_the_end_event(daemon, reader):
    job = await database_sync_to_async(make_job)(daemon, lines=1)
    ws = communicator(job.id, reader.api_token)
    await ws.connect()
    assert await receive_lines(ws, 1) == [(1, "backlog 1")]

    def gap_then_end():
        # Line 2 goes out at once; line 4's message comes within the delivery pause, so with the end's, and
        # its gap (line 3's message was lost) sends the viewer to the database, which has the end too.
        writer = LogWriter(job.id, last_seq=1, batch_lines=10, flush_seconds=60)
        writer.write("live 2")
        writer.flush()
        BuildLogLine.objects.create(job=job, seq=3, text="lost 3")
        writer.last_seq = 3
        writer.write("live 4")
        writer.flush()
        transitions.fail(job.id, 1, "broken")

    await database_sync_to_async(gap_then_end)()
    assert await receive_lines(ws, 3) == [(2, "live 2"), (3, "lost 3"), (4, "live 4")]
    end = await ws.receive_json_from()
    assert (end["type"], end["lines"]) == ("end", 4)
    assert (await ws.receive_output())["type"] == "websocket.close"  # one end frame, then the close
    assert await ws.receive_nothing()


async def receive_frames_until_end(ws, timeout: float = 20) -> tuple[list[str], dict]:
    """Every frame as sent (text), up to and including the end frame."""
    frames = []
    while True:
        text = await ws.receive_from(timeout=timeout)
        frames.append(text)
        if json.loads(text)["type"] == "end":
            return frames, json.loads(text)


def lines_of(frames: list[str]) -> list[tuple[int, str]]:
    return [(line["seq"], line["text"]) for f in map(json.loads, frames) if f["type"] == "log" for line in f["lines"]]


async def test_a_huge_log_streams_in_frames_under_the_limit_with_a_long_line_cut_alike_in_store_and_stream(
    daemon, reader
):
    line_700 = "x" * 690 + " {:>8}"
    huge = "\x1b[31m" + "y" * (5 * 1024 * 1024)  # an escape too: JSON makes it 6 bytes
    job = await database_sync_to_async(make_job)(daemon)

    def write(first: int, last: int, extra: list[str] = ()) -> None:
        # The runner's settings: 500-line batches, flushed every 100 ms.
        writer = LogWriter(job.id, last_seq=first - 1, batch_lines=500, flush_seconds=0.1)
        for i in range(first, last + 1):
            writer.write(line_700.format(i))
        for text in extra:
            writer.write(text)
        writer.flush()

    await database_sync_to_async(write)(1, 1500)  # the backlog a viewer finds
    ws = communicator(job.id, reader.api_token)
    await ws.connect()

    def live_then_success() -> None:
        write(1501, 3000, [huge, "after the huge line"])
        transitions.start_push(job.id, 1, "sha256:" + "a" * 64)
        transitions.succeed(job.id, 1, "sha256:" + "b" * 64)

    await database_sync_to_async(live_then_success)()
    frames, end = await receive_frames_until_end(ws)
    late = communicator(job.id, reader.api_token)  # all of it from the database
    await late.connect()
    late_frames, _ = await receive_frames_until_end(late)

    stored = await database_sync_to_async(
        lambda: list(BuildLogLine.objects.filter(job=job).order_by("seq").values_list("seq", "text"))
    )()
    cut = stored[3000][1]
    assert len(cut.encode()) <= settings.GENERATOR_MAX_LOG_LINE_BYTES
    assert cut.startswith("\x1b[31myyy")
    assert cut.endswith(f"… [line cut: {len(huge.encode()):,} bytes]")
    assert end["lines"] == 3002
    for received in (frames, late_frames):
        assert lines_of(received) == stored  # every line once, in order, as stored
        sizes = [len(frame.encode()) for frame in received]
        assert max(sizes) < 1024 * 1024
        # Only a frame of one line may pass the frame budget (the cut line, escapes and all).
        over = [
            json.loads(f) for f, size in zip(received, sizes, strict=True) if size > settings.GENERATOR_LOG_FRAME_BYTES
        ]
        assert [len(f["lines"]) for f in over] == [1] * len(over)


class CountingApp:
    """The site's ASGI application, counting its WebSocket instances still running
    (in shared memory: it runs in daphne's process)."""

    def __init__(self) -> None:
        self.running = multiprocessing.Value("i", 0)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "websocket":
            return await application(scope, receive, send)
        with self.running.get_lock():
            self.running.value += 1
        try:
            return await application(scope, receive, send)
        finally:
            with self.running.get_lock():
                self.running.value -= 1


def after_fork() -> None:
    """In daphne's process: the thread that runs this process's database calls
    did not survive the fork, though asgiref's executor still counts it."""
    connections.close_all()
    SyncToAsync.single_thread_executor = ThreadPoolExecutor(max_workers=1)


@contextlib.contextmanager
def real_daphne(app, port: int | None = None):
    """daphne serving `app` in a forked process, as `make up` runs it: Twisted's
    buffers, autobahn's frames. The child inherits this process's settings (the
    test database file among them)."""
    connections.close_all()  # not shared across the fork
    process = DaphneProcess(host="127.0.0.1", get_application=lambda: app, setup=after_fork, port=port)
    process.start()
    try:
        assert process.ready.wait(15), "daphne did not start"
        yield process.port.value
    finally:
        process.terminate()
        process.join(10)


def open_without_reading(port: int, path: str, token: str) -> socket.socket:
    """A WebSocket handshake, then nothing read: a client gone to sleep. Its
    receive buffer is small, so the server's data cannot all vanish into the kernel."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Token {token}\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)  # byte by byte: nothing past the handshake is read
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


@override_settings(GENERATOR_WS_SEND_BUFFER_BYTES=256 * 1024, GENERATOR_WS_SLOW_CLIENT_SECONDS=1)
def test_a_client_that_stops_reading_is_closed_and_its_stream_ends(daemon, reader):
    job = make_job(daemon)  # still building: the stream would wait for more
    writer = LogWriter(job.id, last_seq=0, batch_lines=1000, flush_seconds=60)
    # 20 MB: far more than the kernel's buffers hold, in lines short enough that
    # even 2,000 of them fit the 1 MiB frames autobahn allows.
    for i in range(50_000):
        writer.write(f"{i:>8} " + "z" * 391)
    writer.flush()
    app = CountingApp()
    with real_daphne(app) as port:
        pid = multiprocessing.active_children()[0].pid
        idle = rss_kib(pid)
        sleeper = open_without_reading(port, f"/b1/build/log/ws/{job.id}", reader.api_token)
        deadline = time.monotonic() + 15
        while app.running.value == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert app.running.value == 1
        peak = idle
        while app.running.value and time.monotonic() < deadline:
            peak = max(peak, rss_kib(pid))
            time.sleep(0.05)
        assert app.running.value == 0, "the stream to a client that does not read went on"
        # Twisted held no more than the send buffer for it, not the 20 MB log.
        assert (peak - idle) / 1024 < 12, f"daphne grew by {(peak - idle) / 1024:.0f} MiB"
        sleeper.close()


@pytest.fixture
def farm_channel_layer(redis_url):
    """The farm's own channel layer (settings.py: channels-redis, its pool), on the suite's Redis."""
    config = copy.deepcopy(site_settings.CHANNEL_LAYERS)
    config["default"]["CONFIG"]["hosts"][0]["address"] = redis_url
    with override_settings(CHANNEL_LAYERS=config):
        yield redis.Redis.from_url(redis_url)


async def test_200_viewers_of_one_job_each_get_every_line_through_one_group_member(daemon, reader, farm_channel_layer):
    job = await database_sync_to_async(make_job)(daemon, lines=10)
    viewers = [communicator(job.id, reader.api_token) for _ in range(200)]
    assert all(connected for connected, _ in await asyncio.gather(*(ws.connect(timeout=60) for ws in viewers)))
    # The backlog first; once a viewer has it, it is following the job live.
    for ws in viewers:
        assert [seq for seq, _ in await receive_lines(ws, 10)] == list(range(1, 11))
    # One member for this process, however many of its viewers follow the job.
    assert farm_channel_layer.zcard(f"asgi:group:build-log.{job.id}") == 1

    def chatty_build_then_success() -> None:
        writer = LogWriter(job.id, last_seq=10, batch_lines=50, flush_seconds=60)
        for i in range(11, 1011):
            writer.write(f"live {i}")
        writer.flush()
        transitions.start_push(job.id, 1, "sha256:" + "a" * 64)
        transitions.succeed(job.id, 1, "sha256:" + "b" * 64)

    await database_sync_to_async(chatty_build_then_success)()
    for ws in viewers:
        frames, end = await receive_frames_until_end(ws, timeout=30)
        assert [seq for seq, _ in lines_of(frames)] == list(range(11, 1011))
        assert end["lines"] == 1010
    # The last viewer gone, the process leaves the group.
    for _ in range(100):
        if farm_channel_layer.zcard(f"asgi:group:build-log.{job.id}") == 0:
            break
        await asyncio.sleep(0.05)
    assert farm_channel_layer.zcard(f"asgi:group:build-log.{job.id}") == 0


def test_the_cli_prints_a_huge_log_whole_and_resumes_after_the_farm_restarts(daemon, reader, monkeypatch):
    monkeypatch.setattr(cli, "RESUME_TRIES", 30)  # room for daphne to start again
    job = make_job(daemon)
    writer = LogWriter(job.id, last_seq=0, batch_lines=500, flush_seconds=60)
    for i in range(3000):
        writer.write(f"{i:>8} " + "x" * 691)
    writer.write("y" * (5 * 1024 * 1024))
    writer.flush()
    out = io.StringIO()
    outcome = []
    app = CountingApp()
    with real_daphne(app) as port:
        argv = ["--server", f"http://127.0.0.1:{port}", "--token", reader.api_token, "logs", job.id]
        follower = threading.Thread(target=lambda: outcome.append(cli.main(argv, out=out)))
        follower.start()
        deadline = time.monotonic() + 30
        while out.getvalue().count("\n") < 3001 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert out.getvalue().count("\n") == 3001
    with real_daphne(app, port=port):  # the farm back after a restart
        writer.write("after the restart")
        writer.flush()
        transitions.start_push(job.id, 1, "sha256:" + "a" * 64)
        transitions.succeed(job.id, 1, "sha256:" + "b" * 64)
        follower.join(30)
    assert outcome == [0]
    stored = list(BuildLogLine.objects.filter(job=job).order_by("seq").values_list("text", flat=True))
    assert out.getvalue().splitlines() == stored  # each line once, the cut one as stored
    assert stored[-2].endswith("… [line cut: 5,242,880 bytes]")
