"""LogWriter: lines stored in order and in batches, and flushed when the build goes quiet."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection, connections

from builds.logs.writer import LogWriter
from builds.models import BuildJob, BuildLogLine

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def job(daemon):
    return BuildJob.objects.create(image="a/b:latest", dockerfile="FROM busybox\n", daemon=daemon, status="building")


def stored(job):
    return list(BuildLogLine.objects.filter(job=job).order_by("seq").values_list("seq", "text"))


def test_the_first_line_is_stored_at_once_then_lines_go_in_batches_with_gapless_numbers(job):
    writer = LogWriter(job.id, last_seq=0, batch_lines=3, flush_seconds=60)
    writer.write("line 0")
    assert len(stored(job)) == 1  # a viewer sees the build start without waiting
    for i in range(1, 8):
        writer.write(f"line {i}")
    assert len(stored(job)) == 7  # then two full batches; the eighth line waits
    writer.flush()
    assert stored(job) == [(i + 1, f"line {i}") for i in range(8)]
    assert BuildJob.objects.get(pk=job.pk).log_line_count == 8


def test_a_later_attempt_continues_the_numbering(job):
    LogWriter(job.id, last_seq=0, batch_lines=10, flush_seconds=60).pump(lambda emit: [emit("first attempt")])
    LogWriter(job.id, last_seq=1, batch_lines=10, flush_seconds=60).pump(lambda emit: [emit("second attempt")])
    assert stored(job) == [(1, "first attempt"), (2, "second attempt")]


def test_pump_flushes_a_half_batch_when_the_build_goes_quiet(job):
    seen_during_the_quiet = []

    def produce(emit):
        emit("RUN sleep 60")
        time.sleep(0.5)  # the step is silent; the viewer must already see its first line
        seen_during_the_quiet.append(BuildLogLine.objects.filter(job_id=job.id).count())
        connection.close()
        emit("done")
        return "image-id"

    writer = LogWriter(job.id, last_seq=0, batch_lines=100, flush_seconds=0.05)
    assert writer.pump(produce) == "image-id"
    assert seen_during_the_quiet == [1]
    assert stored(job) == [(1, "RUN sleep 60"), (2, "done")]


def test_a_session_the_producer_opened_is_closed_when_it_ends(job):
    # Nothing else would close it: a build's producer that read the database left a PostgreSQL session
    # open per build (bench/scale.py's workers ran out of connections).
    held = []

    def produce(emit):
        emit(f"{BuildJob.objects.filter(pk=job.pk).count()} job")
        held.append(connections["default"])
        return "image-id"

    LogWriter(job.id, last_seq=0, batch_lines=100, flush_seconds=60).pump(produce)
    (producers,) = held
    assert producers is not connections["default"]  # the producer's thread had its own
    assert producers.connection is None  # and it is closed
    assert stored(job) == [(1, "1 job")]


def test_pump_stores_what_came_before_an_error_and_raises_it(job):
    def produce(emit):
        emit("Step 1/2 : FROM busybox")
        raise RuntimeError("the daemon went away")

    writer = LogWriter(job.id, last_seq=0, batch_lines=100, flush_seconds=60)
    with pytest.raises(RuntimeError, match="went away"):
        writer.pump(produce)
    assert stored(job) == [(1, "Step 1/2 : FROM busybox")]
    assert not [t for t in threading.enumerate() if t.name.startswith("log-pump-")]


def test_a_runaway_log_is_truncated_with_a_marker_but_keeps_its_outcome(job):
    writer = LogWriter(job.id, last_seq=0, batch_lines=100, flush_seconds=60, max_lines=3)
    for i in range(10):
        writer.write(f"output {i}")
    writer.write("[generator] Pushed a/b:latest@sha256:abc")
    writer.flush()
    assert [text for _, text in stored(job)] == [
        "output 0",
        "output 1",
        "output 2",
        "[generator] Log truncated: more than 3 lines; the build's further output is not stored",
        "[generator] Pushed a/b:latest@sha256:abc",
    ]


def test_pump_stores_a_line_as_soon_as_the_build_pauses(job):
    seen_during_the_pause = []

    def produce(emit):
        emit("RUN sleep 60")
        time.sleep(0.3)  # far less than flush_seconds: the pause alone must store the line
        seen_during_the_pause.append(BuildLogLine.objects.filter(job_id=job.id).count())
        connection.close()
        emit("done")
        return "image-id"

    writer = LogWriter(job.id, last_seq=0, batch_lines=100, flush_seconds=60)
    writer.pump(produce)
    assert seen_during_the_pause == [1]


def test_a_chatty_build_is_stored_in_batches_not_line_by_line(job):
    writer = LogWriter(job.id, last_seq=0, batch_lines=500, flush_seconds=60)
    flushes = []
    flush = writer.flush
    writer.flush = lambda: (flushes.append(len(writer._pending)), flush())
    started = time.monotonic()
    writer.pump(lambda emit: [emit(f"line {i}") for i in range(20_000)])
    elapsed = time.monotonic() - started
    assert len(stored(job)) == 20_000
    # Full batches, plus at most one short batch per MIN_FLUSH_GAP of the run.
    assert len([n for n in flushes if n]) <= 20_000 / 500 + elapsed / LogWriter.MIN_FLUSH_GAP + 2


def test_a_nul_in_the_output_is_stored_as_a_replacement_character(job):
    # PostgreSQL refuses NUL in text; the build's log must not fail over it.
    writer = LogWriter(job.id, last_seq=0, batch_lines=10, flush_seconds=60)
    writer.write("binary\x00garbage")
    writer.flush()
    assert stored(job) == [(1, "binary\ufffdgarbage")]


def test_a_line_over_the_cap_is_stored_cut_with_a_marker_saying_how_long_it_was(job):
    writer = LogWriter(job.id, last_seq=0, batch_lines=10, flush_seconds=60, max_line_bytes=1000)
    writer.write("a" * 1000)  # at the cap: kept whole
    writer.write("é" * 5000)  # 10,000 bytes of two-byte characters
    writer.write("b" * 1_234_567)
    writer.flush()
    (_, at_cap), (_, accents), (_, long) = stored(job)
    assert at_cap == "a" * 1000
    assert accents.endswith("… [line cut: 10,000 bytes]")
    assert accents.startswith("éé") and set(accents.removesuffix("… [line cut: 10,000 bytes]")) == {"é"}
    assert long == "b" * (1000 - len("… [line cut: 1,234,567 bytes]".encode())) + "… [line cut: 1,234,567 bytes]"
    assert all(len(text.encode()) <= 1000 for _, text in stored(job))


def test_lines_go_out_in_batches_of_about_one_frame_of_text(job):
    writer = LogWriter(job.id, last_seq=0, batch_lines=500, flush_seconds=60, batch_bytes=10_000)
    flushes = []
    flush = writer.flush
    writer.flush = lambda: (flushes.append(len(writer._pending)), flush())
    for i in range(100):
        writer.write(f"{i:>4} " + "x" * 995)  # 1,000 bytes each
    writer.flush()
    # The first line at once, then a batch per 10,000 bytes, long before 500 lines.
    assert [n for n in flushes if n] == [1, 10, 10, 10, 10, 10, 10, 10, 10, 10, 9]
    assert len(stored(job)) == 100
