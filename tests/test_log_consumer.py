"""The WebSocket log consumer: backlog, live lines, the end, and refusals.

The full ASGI application (origin check, token middleware, router) runs in
process with the in-memory channel layer; the lines come through the same
LogWriter and transitions the workers use.
"""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import override_settings

from builds import transitions
from builds.logs import LogWriter
from builds.models import BuildJob
from generator_site.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


def make_job(daemon, lines: int = 0, status: str = "building") -> BuildJob:
    job = BuildJob.objects.create(image="a/b:latest", dockerfile="FROM busybox\n", daemon=daemon, status=status)
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
