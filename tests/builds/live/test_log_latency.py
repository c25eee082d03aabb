"""A log line reaches its viewers without waiting for a batch or a timer, while
batching still bounds a chatty build's database writes (issue 26).

No timings asserted: what is checked is whether a line or a status is handed on
before the producer goes on, and how many INSERTs 10,000 lines take.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from channels.layers import InMemoryChannelLayer
from django.db import connection
from django.test.utils import CaptureQueriesContext

from builds.live import subscriptions as live
from builds.logs import writer as logs
from builds.logs.writer import LogWriter
from builds.models import BuildJob, BuildLogLine


@pytest.fixture
def job(daemon):
    return BuildJob.objects.create(image="a/b:latest", dockerfile="FROM busybox\n", daemon=daemon, status="building")


@pytest.mark.django_db(transaction=True)
def test_a_single_line_is_published_before_the_build_prints_another(job, monkeypatch):
    published: list[list] = []
    monkeypatch.setattr(logs, "publish", lambda job_id, event: published.append(event["lines"]))
    seen_while_the_step_works = []

    def produce(emit):
        emit("#5 [2/2] RUN make")
        # The step works without printing: the viewer must have its line by now,
        # with a batch of 500 far from full and a flush timer of a minute.
        for _ in range(200):
            if published:
                break
            time.sleep(0.01)
        seen_while_the_step_works.extend(published)
        emit("#5 DONE 2.0s")
        return "image-id"

    writer = LogWriter(job.id, last_seq=0, batch_lines=500, flush_seconds=60)
    assert writer.pump(produce) == "image-id"
    assert seen_while_the_step_works == [[(1, "#5 [2/2] RUN make")]]
    assert [line for batch in published for line in batch] == [(1, "#5 [2/2] RUN make"), (2, "#5 DONE 2.0s")]


@pytest.mark.django_db(transaction=True)
def test_ten_thousand_fast_lines_are_stored_in_far_fewer_writes(job, monkeypatch):
    published: list[list] = []
    monkeypatch.setattr(logs, "publish", lambda job_id, event: published.append(event["lines"]))
    writer = LogWriter(job.id, last_seq=0, batch_lines=500, flush_seconds=0.05)
    with CaptureQueriesContext(connection) as queries:
        writer.pump(lambda emit: [emit(f"line {n}") for n in range(10_000)])
    inserts = [q for q in queries if q["sql"].startswith("INSERT") and BuildLogLine._meta.db_table in q["sql"]]
    assert BuildLogLine.objects.filter(job=job).count() == 10_000
    assert len(inserts) <= 100  # batches of up to 500 lines, at most 50 a second: not a write per line
    assert len(published) <= 100 and sum(len(batch) for batch in published) == 10_000


async def test_a_change_of_status_reaches_the_viewers_at_once_with_the_lines_before_it():
    hub = live.Hub(InMemoryChannelLayer())
    viewer = await hub.watch("job1")
    subscription = hub.subscriptions["job1"]
    first = {"type": "log.lines", "lines": [(1, "a")]}
    second = {"type": "log.lines", "lines": [(2, "b")]}
    ended = {"type": "job.status", "status": "succeeded"}
    subscription._deliver(first)  # nothing handed on lately: at once
    subscription._deliver(second)  # just after a delivery: waits for the next
    assert [event for event, _ in viewer._events] == [first]
    subscription._deliver(ended)  # the end never waits for the timer
    assert [event for event, _ in viewer._events] == [first, second, ended]
    assert subscription._delivery is None
    viewer.leave()
    await asyncio.sleep(0)


def test_lines_go_to_a_few_viewers_within_50_ms_and_less_often_to_many():
    assert live.delivery_interval(1) == live.delivery_interval(100) == 0.05
    assert live.delivery_interval(1000) == live.delivery_interval(5000) == 0.25
    # Up to 1,000 viewers a job's frames per second in one daphne process stay
    # under the bound; past it, four a second each, as before issue 26.
    for viewers in (200, 500, 1000):
        assert viewers / live.delivery_interval(viewers) <= live.FRAMES_PER_SECOND
